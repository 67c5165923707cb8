"""The repository root is a Flower App that `flwr run .` runs on this environment's packages.

The run itself is README.md's `flwr run .` block, executed by tests/test_docs.py on Flower's own local SuperLink
with runtime dependency installation on (the user's path): uv installs nothing, both rounds aggregate all four
SuperNodes and `flwr ls` says `finished:completed`. What stays here is why uv installs nothing.
"""

from __future__ import annotations

import re
import tomllib

from tests.conftest import REPO


def _pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _declared_names() -> set[str]:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    return {re.split(r"[\s\[<>=!~;@]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}


def test_the_app_declares_every_dependency_pre_installed() -> None:
    """Flower's local SuperLink runs `uv sync` on [project].dependencies; [tool.uv] exclude-dependencies must name
    each, or uv installs it into a fresh environment placed before ours (an unpinned torch: CUDA wheels, SIGSEGV)."""
    tool = _pyproject()["tool"]
    assert isinstance(tool, dict)
    excluded = {n.lower() for n in tool["uv"]["exclude-dependencies"]}
    assert _declared_names() == excluded
    assert "torch" in excluded and "flwr" in excluded
