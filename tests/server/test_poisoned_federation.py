"""A poisoned federation in this process (the real ClientApp and round loop through tests.LocalGrid): the attacker's
reply is the transformation of its honest update, and FedMedian's global model is the coordinate-wise median of
exactly the replies of the clients that finished (stragglers dropped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from client.app import straggler_steps, train
from server.federation import run_federation
from tests.flower_helpers import LocalGrid, set_task_identity
from uaap import workspace
from uaap.attacks import malicious_partitions, poison
from uaap.config import RunConfig
from uaap.protocol import ARRAYS, CONFIG, METRICS, RUN_CONFIG, STRAGGLER

# seed 10: partition 4 attacks, partitions 0 and 2 straggle in round 1 (checked below, not assumed)
CFG = RunConfig(
    strategy="fedmedian", num_clients=5, min_clients=2, num_rounds=1, local_epochs=1, partition="iid", seed=10,
    malicious_fraction=0.2, attack="sign-flip", straggler_fraction=0.4, experiment="tests-poisoned",
    fraction_evaluate=0.0, central_eval=False,
)  # fmt: skip


def _honest_reply(grid: LocalGrid, node: int) -> list[np.ndarray]:
    """What node ``node`` sends for the same round message when nobody attacks (a fresh client, same seed)."""
    sent = next(m for m in grid.pushed if int(m.metadata.dst_node_id) == node and m.metadata.message_type == "train")
    config = ConfigRecord(dict(sent.content.config_records[CONFIG]))
    config[RUN_CONFIG] = RunConfig.from_json(str(config[RUN_CONFIG])).replace(malicious_fraction=0.0).to_json()
    msg = Message(
        content=RecordDict({ARRAYS: sent.content.array_records[ARRAYS], CONFIG: config}),
        dst_node_id=node,
        message_type=MessageType.TRAIN,
    )
    set_task_identity()
    context = Context(1, node, {"partition-id": node - 1, "num-partitions": 5}, RecordDict(), {})
    reply = train(msg, context)
    return [a.numpy() for a in reply.content.array_records[ARRAYS].values()]


def test_fedmedian_of_the_finishers_with_a_sign_flipping_client(uaap_home: Path) -> None:
    attackers = malicious_partitions(CFG)
    stragglers = {p for p in range(5) if straggler_steps(CFG, 1, p, 20) is not None}
    assert attackers == {4} and stragglers == {0, 2}
    sent: dict[int, tuple[list[np.ndarray], int]] = {}

    def record(node: int):  # noqa: ANN202 - a tamper hook that only looks
        def look(reply: Message) -> Message:
            if ARRAYS not in reply.content.array_records:  # an evaluation reply
                return reply
            arrays = [a.numpy().copy() for a in reply.content.array_records[ARRAYS].values()]
            sent[node] = (arrays, int(reply.content.metric_records[METRICS][STRAGGLER]))
            return reply

        return look

    grid = LocalGrid(5, tamper={n: record(n) for n in range(1, 6)})
    rd = run_federation(grid, CFG.replace(run_id="poisoned"), num_partitions=5)
    start = [a.numpy() for a in grid.pushed[0].content.array_records[ARRAYS].values()]

    honest = _honest_reply(grid, 5)
    expected = poison("sign-flip", honest, start, 4.0, np.random.default_rng(0))
    for got, want, s, h in zip(sent[5][0], expected, start, honest, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got - s, -4.0 * (h - s), rtol=1e-4, atol=1e-6)  # the definition, by hand

    assert {n - 1 for n, (_, flag) in sent.items() if flag} == stragglers
    kept = [arrays for arrays, flag in sent.values() if not flag]
    final = workspace.run_dir(rd.run_id).latest_checkpoint()
    assert final is not None and final.round == 1
    for i, name in enumerate(final.arrays):
        np.testing.assert_allclose(final.arrays[name], np.median(np.stack([k[i] for k in kept]), axis=0), rtol=1e-6)
    train_metrics = rd.events("round")[-1]["train"]
    assert train_metrics["stragglers-dropped"] == 2
