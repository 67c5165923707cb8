"""requirements.lock: every dependency of '.[all,dev]' pinned for Python 3.11 on Linux x86_64, torch on CPU."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import REPO

LOCK = REPO / "requirements.lock"


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")


def _pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith(("#", " ")):
            name, version = line.split("==")
            pins[_name(name)] = version
    return pins


def test_every_declared_dependency_is_pinned() -> None:
    """A dependency added to pyproject.toml without `make lock` would install unpinned: this catches it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    pins = _pins()
    missing = sorted({_name(r) for r in declared if not r.startswith("uaap[")} - set(pins))
    assert missing == [], f"run `make lock`: {missing} are not in requirements.lock"


def test_torch_is_the_makefiles_pin_and_no_cuda_build_comes_with_it() -> None:
    makefile = (REPO / "Makefile").read_text()
    pinned = re.search(r"^TORCH\s*:=\s*torch==(\S+)$", makefile, re.MULTILINE)
    assert pinned, "the Makefile pins torch (TORCH := torch==X)"
    pins = _pins()
    assert pins["torch"] == pinned.group(1), "the lock and the Makefile pin the same torch"
    assert "+" not in pins["torch"], "no local label: the same line holds on any index"
    cuda = [n for n in pins if n.startswith(("nvidia-cu", "triton", "cuda-"))]
    assert cuda == [], f"a CUDA torch build crept into the lock: {cuda}"
    assert re.search(r"--constraint \$\(LOCK\) -e '\.\[all,dev\]'", makefile), "make installs from the lock"
