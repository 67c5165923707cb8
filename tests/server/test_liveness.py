"""A client that dies while training leaves the round when its node goes offline, not at the round timeout."""

from __future__ import annotations

import time

from flwr.app import ConfigRecord

from server.federation import exchange, initial_arrays
from strategies import build_strategy
from tests.flower_helpers import LocalGrid
from uaap.config import RunConfig
from uaap.protocol import RUN_CONFIG

CFG = RunConfig(num_clients=3, min_clients=2, num_rounds=1, local_epochs=1, experiment="tests-liveness", seed=3)


class DyingGrid(LocalGrid):
    """Node 3 takes its message and dies: no reply ever, and the SuperLink drops it after its missed heartbeats."""

    def __init__(self) -> None:
        super().__init__(3, silent=frozenset({3}))
        self.offline_after = time.monotonic() + 0.3

    def get_node_ids(self) -> list[int]:
        nodes = super().get_node_ids()
        return [n for n in nodes if n != 3 or time.monotonic() < self.offline_after]


def test_a_node_that_goes_offline_is_not_waited_for(uaap_home) -> None:
    grid = DyingGrid()
    strategy = build_strategy(CFG, num_nodes=3)
    messages = list(strategy.configure_train(1, initial_arrays(CFG), ConfigRecord({RUN_CONFIG: CFG.to_json()}), grid))
    t0 = time.monotonic()
    replies = exchange(grid, messages, timeout=600.0, liveness_every=0.2)
    assert time.monotonic() - t0 < 30, "waited for the dead node"
    assert sorted(int(m.metadata.src_node_id) for m in replies) == [1, 2]


class ShrinkingGrid(LocalGrid):
    """Three nodes; node 3 is gone (offline, no replies) once round 1's messages were pushed."""

    def __init__(self) -> None:
        super().__init__(3)
        self.pushes = 0

    def push_messages(self, messages: list) -> list[str]:
        self.pushes += 1
        if self.pushes > 2:  # round 1 trained and evaluated with three
            self.silent = frozenset({3})
        return super().push_messages(messages)

    def get_node_ids(self) -> list[int]:
        nodes = super().get_node_ids()
        return [n for n in nodes if n != 3 or self.pushes < 2]


def test_later_rounds_go_on_with_the_clients_that_remain(uaap_home, monkeypatch) -> None:
    """min-clients=3 and one client dies: Flower's sampling would wait for a third node forever (it did, in a
    deployment); the next round waits a little for it, then runs with the two that remain."""
    import server.federation as federation

    monkeypatch.setattr(federation, "REJOIN_WAIT", 0.5)
    cfg = CFG.replace(run_id="shrinking", min_clients=3, num_rounds=3, round_timeout=30.0)
    t0 = time.monotonic()
    rd = federation.run_federation(ShrinkingGrid(), cfg, num_partitions=3)
    assert time.monotonic() - t0 < 120
    rounds = [e for e in rd.events("round") if e["round"] > 0]
    assert [(e["round"], e["sampled"], e["replies"]) for e in rounds] == [(1, 3, 3), (2, 2, 2), (3, 2, 2)]
    assert rd.events("end")[-1]["status"] == "completed"


def test_the_default_round_timeout_is_minutes_not_an_hour() -> None:
    """A client that stays online without answering holds a round until round-timeout (it was 3600 s)."""
    assert RunConfig().round_timeout == 600.0
