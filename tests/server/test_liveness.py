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
