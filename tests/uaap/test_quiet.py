"""Third-party chatter stays out of the terminal unless --verbose; UAAP's own output is untouched."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from uaap import quiet


@pytest.fixture(autouse=True)
def _not_verbose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quiet, "VERBOSE", False)


def test_native_output_goes_to_the_log_and_comes_back(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "logs" / "export.log"
    with quiet.native_output(log):
        os.write(1, b"I0000 port.cc:153] oneDNN custom operations are on\n")
        os.write(2, b"WARNING: All log messages before absl::InitializeLog()\n")
        subprocess.run([sys.executable, "-c", "print('fully_quantize: 0')"], check=True)  # a child inherits it
    os.write(1, b"edge export\n")
    out = capfd.readouterr()
    assert out.out == "edge export\n" and out.err == ""
    assert log.read_text().splitlines() == [
        "I0000 port.cc:153] oneDNN custom operations are on",
        "WARNING: All log messages before absl::InitializeLog()",
        "fully_quantize: 0",
    ]


def test_verbose_leaves_everything_on_the_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(quiet, "VERBOSE", True)
    with quiet.native_output(tmp_path / "x.log"):
        os.write(1, b"converter chatter\n")
    assert capfd.readouterr().out == "converter chatter\n" and not (tmp_path / "x.log").exists()


def test_flower_banner_and_mlflow_deprecation_are_filtered(caplog: pytest.LogCaptureFixture) -> None:
    quiet.flower_banners()
    flwr = logging.getLogger("flwr")
    with caplog.at_level(logging.WARNING, logger="flwr"):
        flwr.warning("DEPRECATED FEATURE: The `run_simulation` function is deprecated")
        flwr.warning("round 1: 2 of 3 clients did not reply")
    assert [r.getMessage() for r in caplog.records] == ["round 1: 2 of 3 clients did not reply"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet.python_warnings()
        warnings.warn("The ``noload`` loader strategy is deprecated and will be removed", DeprecationWarning, 1)
        warnings.warn("something UAAP should hear about", UserWarning, 1)
    assert [str(w.message) for w in seen] == ["something UAAP should hear about"]
