"""Shared fixtures: every test gets its own workspace; Ray and Flower telemetry stay off."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# TenSEAL must load before TensorFlow or coremltools in one process: loaded after their protobuf runtime, its
# context serialisation segfaults (measured: `import tensorflow, tenseal` then `context.serialize()`). No
# production process loads both (simulation workers block TensorFlow, export never touches keys); this test
# process does, in an order the folder layout decides, so TenSEAL comes first here.
import tenseal  # noqa: F401, I001

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "mutation_scope(*prefixes): under `make mutate` (tests/mutate.py), run only for mutants of the modules "
        "named by these prefixes (integration tests that take seconds; other modules' mutants skip them)",
    )


# `make test` runs pytest on several xdist workers: the suite waits on processes far more than it computes (CI: 12
# min of CPU in 27.6 min). A test module is one unit of work, so its module-scoped federation is built once, on
# one worker; each doc of tests/test_docs.py is a unit of its own, except the two that bind Flower's fixed ports
# (the README's `flwr run` starts a SuperLink on 9091-9093, docs/deploy.md's flower-server listens on 9093), which
# share one so that they never run at the same time. (xdist's own `--dist loadgroup` marks do not reach the
# scheduler under pytest 9: it renames node ids through an attribute pytest 9 no longer reads.)
FIXED_PORT_DOCS = ("README.md", "docs/deploy.md")


def work_unit(nodeid: str) -> str:
    """The unit of work (see above) a test's node id belongs to."""
    module, _, rest = nodeid.partition("::")
    if module == "tests/test_docs.py" and rest.startswith("test_doc_runs_as_written["):
        doc = rest[len("test_doc_runs_as_written[") : -1]
        return "flower-fixed-ports" if doc in FIXED_PORT_DOCS else f"{module}[{doc}]"
    return module


# The longest units (minutes each) are handed out first, so that none of them starts last and runs alone.
LONG_UNITS = ("flower-fixed-ports", "tests/test_docs.py", "tests/test_deploy_e2e.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Collect the long units first (a stable sort: the order within a module is kept)."""
    items.sort(key=lambda item: next((i for i, u in enumerate(LONG_UNITS) if work_unit(item.nodeid).startswith(u)), 9))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's scope scheduling with :func:`work_unit` as the scope."""
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    class ByWorkUnit(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByWorkUnit(config, log)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a ``mutation_scope`` test for a mutant outside its scope (mutmut names the mutant in the environment)."""
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    scope = item.get_closest_marker("mutation_scope")
    if scope is not None and "__mutmut_" in mutant and not mutant.startswith(tuple(scope.args)):
        pytest.skip(f"mutation run: {mutant} is outside this test's scope {scope.args}")


@pytest.fixture
def uaap_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh workspace for one test."""
    home = tmp_path / "uaap-home"
    monkeypatch.setenv("UAAP_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    """One workspace for a test module's expensive runs (federations built once, checked by several tests)."""
    home = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UAAP_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield home


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A CA, a server certificate for ``server.example`` and two client keys (uaap certs init)."""
    from uaap.certs import init_certs

    return init_certs(tmp_path_factory.mktemp("certs") / "fed", hosts=["server.example"], clients=2)
