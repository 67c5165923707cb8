"""`uaap runs` says what a run's events say: how it ended (and why), or whether its loop is alive."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from uaap.commands.runs import run_state


def test_states_come_from_the_events() -> None:
    here = socket.gethostname()
    start = {"kind": "start", "round": 1, "pid": os.getpid(), "host": here}
    failed = {"kind": "end", "status": "failed", "reason": "data file '/srv/x.csv' does not exist"}
    assert run_state([start, failed]) == "failed: data file '/srv/x.csv' does not exist"
    assert run_state([failed]).startswith("failed")  # a failure before the first round still says why
    assert run_state([start, {"kind": "end", "status": "completed", "reason": ""}]) == "completed"
    assert run_state([start]) == "running"  # this process wrote the start and is alive
    dead = {**start, "pid": 2**22 + 12345}
    assert run_state([dead]) == "killed (resume with --resume)"
    assert run_state([failed, dead]) == "killed (resume with --resume)"  # a resume after the failure was killed
    assert run_state([{**start, "host": "elsewhere"}]) == "running or killed (on elsewhere)"
    assert run_state([]) == "not started"


def test_uaap_runs_prints_a_failed_run_as_failed(uaap_home: Path, capsys) -> None:
    from uaap import workspace
    from uaap.cli import main
    from uaap.config import RunConfig

    rd = workspace.run_dir("broken")
    rd.write_config(RunConfig(run_id="broken"))
    rd.log_event("end", status="failed", reason="no client result was accepted")
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "failed: no" in out and "running" not in out
