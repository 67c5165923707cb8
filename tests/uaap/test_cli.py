"""The ``uaap`` CLI: one command built from the library's modules and the ``uaap.commands`` entry points."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from uaap.cli import GROUP, build_parser

REPO = Path(__file__).resolve().parents[2]
# What `uaap --help` lists today, in this order: library commands and the floors' entry points together.
COMMANDS = [
    "simulate",  # simulations/commands.py
    "train",
    "data",
    "explore",
    "fairness",
    "monitor",
    "explain",
    "config",
    "models",
    "runs",
    "privacy",
    "dashboard",
    "keys",
    "certs",
    "demo",  # simulations/commands.py
    "export",  # edge/commands.py
    "automl",
    "compare",
    "tune-federated",  # simulations/commands.py
    "api-keys",  # serving/commands.py
    "register",  # serving/commands.py
    "serve",  # serving/commands.py
    "ui",  # serving/commands.py
]
UPPER_FLOORS = {"server", "client", "strategies", "simulations", "edge", "serving"}
HEAVY = (
    "ray", "flwr", "torch", "tensorflow", "mlflow", "tenseal", "opacus", "sklearn", "rich", "onnx", "lightgbm",
    "catboost", "scipy", "fairlearn", "shap",
)  # fmt: skip


def _listed(help_text: str) -> list[str]:
    """Command names in the COMMAND section of an argparse help text."""
    section = help_text.split("COMMAND\n", 1)[1].split("\noptions:", 1)[0]
    return re.findall(r"^ {4}(\S+)", section, flags=re.MULTILINE)


def _uaap() -> str:
    script = Path(sys.executable).with_name("uaap")
    found = str(script) if script.exists() else shutil.which("uaap")
    assert found, "the uaap console script is not installed (pip install -e .)"
    return found


def test_help_lists_every_command_in_order() -> None:
    """The installed `uaap --help` lists every command, upper floors included, with no load errors."""
    proc = subprocess.run([_uaap(), "--help"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert _listed(proc.stdout) == COMMANDS


def test_help_loads_no_heavy_module() -> None:
    """Registering every command imports neither Ray, Flower, torch nor the exporters: --help stays fast."""
    code = (
        "import sys; from uaap.cli import build_parser; build_parser();"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_broken_entry_point_is_reported_and_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    """An entry point that cannot load, or cannot register, costs one stderr line; the rest still work."""
    missing = metadata.EntryPoint(name="broken", value="no_such_module:register", group=GROUP)
    clash = metadata.EntryPoint(name="train-again", value="uaap.commands.train:register", group=GROUP)
    installed = list(metadata.entry_points(group=GROUP))
    assert {ep.name for ep in installed} >= {"simulate", "tune-federated", "demo", "export"}

    parser = build_parser([missing, *installed, clash])

    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert "'broken'" in err[0] and "no_such_module" in err[0] and "ModuleNotFoundError" in err[0]
    assert "'train-again'" in err[1] and "conflicting subparser" in err[1]
    assert _listed(parser.format_help()) == COMMANDS
    assert parser.parse_args(["export", "run-1", "--to", "onnx"]).to == "onnx"


def test_library_imports_no_upper_floor() -> None:
    """uaap/ never imports server/, client/, strategies/, simulations/, edge/ or serving/."""
    offenders = []
    for path in sorted((REPO / "uaap").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] in UPPER_FLOORS
            ]
    assert offenders == []
