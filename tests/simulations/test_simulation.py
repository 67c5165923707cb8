"""Real Ray simulations of the UAAP Flower app (Flower's Ray backend, no mocks)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from uaap import workspace
from uaap.config import RunConfig
from uaap.data import federated
from uaap.training import classification_metrics, evaluate, predict_proba

SMALL = RunConfig(num_clients=5, num_rounds=3, local_epochs=2, seed=3, experiment="tests")


def _weights(rd: workspace.RunDir) -> list[np.ndarray]:
    with np.load(rd.model_file) as npz:
        return [npz[k] for k in sorted(npz.files) if k.startswith("w")]


@pytest.mark.slow
def test_simulation_learns_and_leaves_checkpoints_metrics_model_and_mlflow(uaap_home: Path) -> None:
    from simulations.runner import simulate

    events: list[dict] = []
    rd = simulate(SMALL.replace(strategy="fedavg"), on_event=events.append)
    rounds = {e["round"]: e for e in rd.events("round")}
    assert sorted(rounds) == [0, 1, 2, 3]
    accuracy = [rounds[r]["central"]["accuracy"] for r in range(4)]
    assert accuracy[3] > accuracy[0] + 0.3, f"accuracy must rise over rounds: {accuracy}"
    assert all(rounds[r]["replies"] == 5 for r in (1, 2, 3))
    assert rounds[3]["evaluate"]["accuracy"] > 0.5, "federated evaluation on clients' validation splits"
    assert [e["kind"] for e in events][-1] == "end", "progress callback saw the run end"
    assert sorted(p.name for p in rd.checkpoint_dir.iterdir()) == [f"round-000{r}.npz" for r in (1, 2, 3)]

    model, meta = workspace.load_model(rd.model_file)
    clients, test = federated(rd.read_config(), 5)
    assert evaluate(model, test)["accuracy"] == pytest.approx(accuracy[3])
    assert meta["run_id"] == rd.run_id
    # federated metrics are computed once from the clients' summed counts: the last round's equal the final
    # model's on all the clients' validation rows pooled, macro-F1 included (Dirichlet split: non-IID)
    y = np.concatenate([c.test.y for c in clients])
    pooled = classification_metrics(y, np.concatenate([predict_proba(model, c.test.X) for c in clients]))
    for name in ("accuracy", "f1_macro", "f1_weighted", "loss"):
        assert rounds[3]["evaluate"][name] == pytest.approx(pooled[name], rel=1e-6), name

    import mlflow

    from uaap.tracking import RUN_TAG, tracking_uri

    client = mlflow.MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{rd.run_id}'")
    history = client.get_metric_history(run.info.run_id, "central_accuracy")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1, 2, 3]
    assert run.data.params["strategy"] == "fedavg" and run.info.status == "FINISHED"


@pytest.fixture
def ray_cluster():
    """A separate Ray head process (like a user's cluster), stopped by process group afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [
            ray,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            f"--temp-dir={temp_dir}",
        ],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while subprocess.run([ray, "status", f"--address={address}"], capture_output=True).returncode != 0:
        assert head.poll() is None and time.monotonic() < deadline, "Ray head did not come up"
        time.sleep(1)
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    head.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_fedprox_with_mu_zero_gives_bit_identical_global_weights_to_fedavg(uaap_home: Path, ray_cluster: str) -> None:
    """Both runs attach to one existing Ray cluster, which outlives them (--ray-address)."""
    from simulations.runner import simulate

    cfg = SMALL.replace(num_rounds=2, central_eval=False)
    fedavg = simulate(cfg.replace(strategy="fedavg"), ray_address=ray_cluster)
    fedprox = simulate(cfg.replace(strategy="fedprox", proximal_mu=0.0), ray_address=ray_cluster)
    a, b = _weights(fedavg), _weights(fedprox)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    ray = str(Path(sys.executable).parent / "ray")
    alive = subprocess.run([ray, "status", f"--address={ray_cluster}"], capture_output=True)
    assert alive.returncode == 0, "an attached simulation must leave the user's cluster running"


def _uaap(*args: str, home: Path) -> subprocess.Popen:
    env = {**os.environ, "UAAP_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "uaap.cli", *args],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint_without_losing_rounds(uaap_home: Path) -> None:
    run_id = "run-resume-test"
    proc = _uaap(
        "simulate",
        "--clients",
        "4",
        "--rounds",
        "4",
        "--local-epochs",
        "1",
        "--run-id",
        run_id,
        "--experiment",
        "tests",
        home=uaap_home,
    )
    rd = workspace.RunDir(uaap_home / "runs" / run_id)
    deadline = time.monotonic() + 240
    while not (rd.checkpoint_dir / "round-0002.npz").exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "no checkpoint of round 2 within 240 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole session: driver, Ray head and workers
    proc.wait(timeout=30)
    done_before = rd.latest_checkpoint()
    assert done_before is not None and 2 <= done_before.round < 4
    assert not rd.events("end"), "the killed run must not have finished"

    resumed = _uaap("simulate", "--resume", run_id, home=uaap_home)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"resuming {run_id} after round {done_before.round}" in out
    rounds = sorted({e["round"] for e in rd.events("round")})
    assert rounds == [0, 1, 2, 3, 4], "every round logged once the resumed run finished"
    assert sorted(p.name for p in rd.checkpoint_dir.glob("*.npz")) == [f"round-000{r}.npz" for r in (1, 2, 3, 4)]
    assert rd.events("end")[-1]["status"] == "completed" and rd.model_file.is_file()
    assert rd.events("start")[-1]["round"] == done_before.round + 1
