"""The repository root is a Flower App: ``flwr run . <connection>`` works in simulation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from uaap import workspace
from uaap.processes import free_port, stop_tree

BIN = Path(sys.executable).parent


def _flwr(*args: str, env: dict[str, str], timeout: float = 180) -> dict:
    out = subprocess.run(
        [str(BIN / "flwr"), *args, "--format", "json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return json.loads(out.stdout)


@pytest.mark.slow
def test_flwr_run_dot_runs_the_app_in_simulation(uaap_home: Path, tmp_path: Path) -> None:
    port = free_port()
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "UAAP_HOME": str(uaap_home),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    superlink = subprocess.Popen(
        [
            str(BIN / "flower-superlink"),
            "--simulation",
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
            "--database",
            str(tmp_path / "state.db"),
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        submitted = {}
        for _ in range(30):  # the SuperLink takes a few seconds to listen
            submitted = _flwr(
                "run",
                ".",
                "test",
                "--run-config",
                "num-rounds=2 local-epochs=1 run-id='via-flwr-run'",
                "--federation-config",
                "num-supernodes=4",
                env=env,
            )
            if submitted.get("success"):
                break
            time.sleep(2)
        assert submitted.get("success"), submitted
        status, deadline = "", time.monotonic() + 420
        while not status.startswith("finished") and time.monotonic() < deadline:
            time.sleep(3)
            listing = _flwr("ls", "test", "--run-id", str(submitted["run-id"]), env=env)
            status = listing["runs"][0]["status"] if listing.get("runs") else ""
        # `flwr` reports completion even when a ServerApp fails: check what the app wrote.
        assert status == "finished:completed", (status, (tmp_path / "superlink.log").read_text()[-3000:])
        rd = workspace.run_dir("via-flwr-run")
        rounds = [e for e in rd.events("round") if e["round"] > 0]
        assert [e["round"] for e in rounds] == [1, 2] and all(e["replies"] == 4 for e in rounds)
        assert rd.read_config().local_epochs == 1, "run config overrides reach the ServerApp"
        assert rd.events("end")[-1]["status"] == "completed" and rd.model_file.is_file()
    finally:
        stop_tree(superlink.pid)  # also Flower's out-of-session superexec and its simulation
