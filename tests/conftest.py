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
