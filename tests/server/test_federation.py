"""The server's round loop (server.federation) with the real ClientApp run in this process (tests.LocalGrid)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from server.federation import _wait_for_nodes, exchange, run_federation
from tests.conftest import REPO
from tests.flower_helpers import FakeGrid, LocalGrid
from uaap import workspace
from uaap.config import RunConfig

# Whole federations in this process: under `make mutate` they run for the round loop's mutants only.
pytestmark = pytest.mark.mutation_scope("server.federation.")

CFG = RunConfig(num_clients=2, min_clients=2, num_rounds=2, local_epochs=1, experiment="tests-fed", seed=3)

# A server process that dies (os._exit: no finally, no atexit, no flush) right after round 1's checkpoint is written.
KILLED_AFTER_CHECKPOINT = textwrap.dedent(
    """
    import os, sys
    from uaap import workspace
    from uaap.config import RunConfig
    from server.federation import run_federation
    from tests.flower_helpers import LocalGrid

    save = workspace.RunDir.save_checkpoint

    def save_then_die(self, ckpt, **kwargs):
        path = save(self, ckpt, **kwargs)
        if ckpt.round == 1:
            os._exit(17)
        return path

    workspace.RunDir.save_checkpoint = save_then_die
    run_federation(LocalGrid(2), RunConfig.from_json(sys.argv[1]), num_partitions=2)
    """
)


def _rounds(rd: workspace.RunDir) -> list[dict]:
    """The round events without what differs between two runs of the same federation (times)."""
    return [{k: v for k, v in e.items() if k not in ("time", "seconds")} for e in rd.events("round")]


def _mlflow_history(run_id: str, key: str) -> list[tuple[int, float]]:
    from uaap.tracking import RUN_TAG, Tracker, ensure_experiment

    tracker = Tracker(CFG.experiment, run_id, kind="federated")
    client = tracker._client
    assert client.search_runs([ensure_experiment(CFG.experiment)], f"tags.`{RUN_TAG}` = '{run_id}'")
    return sorted((m.step, m.value) for m in client.get_metric_history(tracker.mlflow_run_id, key))


def test_a_server_killed_between_checkpoint_and_metrics_resumes_without_losing_the_round(uaap_home: Path) -> None:
    # Reference: the same federation run without interruption (plaintext training is deterministic given the seed).
    reference = run_federation(LocalGrid(2), CFG.replace(run_id="whole"), num_partitions=2)
    assert [e["round"] for e in reference.events("round")] == [0, 1, 2]

    cfg = CFG.replace(run_id="killed", encrypt_checkpoints=True)  # the resume decrypts round 1's checkpoint
    env = {**os.environ, "UAAP_HOME": str(uaap_home), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_CHECKPOINT, cfg.to_json()], env=env, cwd=REPO, capture_output=True
    )
    assert proc.returncode == 17, proc.stderr.decode()[-2000:]
    rd = workspace.run_dir("killed")
    ckpt = rd.latest_checkpoint()
    assert ckpt is not None and ckpt.round == 1
    assert (rd.checkpoint_dir / "round-0001.npz").read_bytes().startswith(b"UAAPAES1"), "stored AES-256-GCM encrypted"
    assert [e["round"] for e in rd.events("round")] == [0], "the kill landed before round 1's metrics line"

    resumed = run_federation(LocalGrid(2), cfg, num_partitions=2)
    assert [s["resumed"] for s in resumed.events("start")] == [False, True]
    assert _rounds(resumed) == _rounds(reference), "every round once, with the uninterrupted run's values"
    for key in ("train_train-loss", "central_accuracy"):
        assert _mlflow_history("killed", key) == _mlflow_history("whole", key)
    assert [step for step, _ in _mlflow_history("killed", "central_accuracy")] == [0, 1, 2]


def test_resume_writes_nothing_twice(uaap_home: Path) -> None:
    # A finished run resumed with more rounds: rounds 0-2 are already recorded, so only round 3 is added.
    first = run_federation(LocalGrid(2), CFG.replace(run_id="twice", num_rounds=2), num_partitions=2)
    more = run_federation(LocalGrid(2), first.read_config().replace(num_rounds=3), num_partitions=2)
    assert [e["round"] for e in more.events("round")] == [0, 1, 2, 3]
    assert [step for step, _ in _mlflow_history("twice", "central_accuracy")] == [0, 1, 2, 3]
    assert [step for step, _ in _mlflow_history("twice", "round_seconds")] == [1, 2, 3]


def test_waiting_for_nodes_times_out_with_the_shortfall() -> None:
    cfg = RunConfig(min_clients=3, round_timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"only 2 of min-clients=3 clients connected within 0.2s"):
        _wait_for_nodes(FakeGrid([1, 2]), cfg, poll=0.02)
    assert 0.2 <= time.monotonic() - t0 < 2.0

    class Joining(FakeGrid):  # the third client connects on the third look
        looks = 0

        def get_node_ids(self) -> list[int]:
            self.looks += 1
            return self.nodes[: 2 + (self.looks >= 3)]

    grid = Joining([1, 2, 3])
    assert _wait_for_nodes(grid, cfg.replace(round_timeout=5.0), poll=0.01) == 3 and grid.looks == 3


def test_a_round_ends_at_its_timeout_with_the_replies_that_came(uaap_home: Path) -> None:
    from flwr.app import ConfigRecord

    from server.federation import initial_arrays
    from strategies import build_strategy
    from uaap.protocol import RUN_CONFIG

    cfg = CFG.replace(num_clients=3, min_clients=3, run_id="late")
    grid = LocalGrid(3, silent=frozenset({2}))  # node 2 never answers
    strategy = build_strategy(cfg)
    msgs = list(strategy.configure_train(1, initial_arrays(cfg), ConfigRecord({RUN_CONFIG: cfg.to_json()}), grid))
    assert sorted(int(m.metadata.dst_node_id) for m in msgs) == [1, 2, 3]
    t0 = time.monotonic()
    replies = exchange(grid, msgs, timeout=0.5)
    waited = time.monotonic() - t0
    assert sorted(int(r.metadata.src_node_id) for r in replies) == [1, 3]
    assert 0.5 <= waited < 2.0, f"waited {waited:.2f}s for a 0.5 s round timeout"
    everyone = LocalGrid(3)
    msgs = list(strategy.configure_train(2, initial_arrays(cfg), ConfigRecord({RUN_CONFIG: cfg.to_json()}), everyone))
    t0 = time.monotonic()
    assert len(exchange(everyone, msgs, timeout=60.0)) == 3
    assert time.monotonic() - t0 < 10.0, "a round whose replies are all in does not wait for its timeout"
