"""The ClientApp reads a deployed client's own table (node config data-path/target)."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from tests.flower_helpers import set_task_identity


def test_setup_uses_node_data_path(tmp_path):
    from client.app import _setup
    from uaap.config import RunConfig
    from uaap.protocol import RUN_CONFIG

    rng = np.random.default_rng(0)
    rows = ["f1,f2,f3,kind"] + [
        f"{a:.3f},{b:.3f},{c:.3f},{'ab'[i % 2]}" for i, (a, b, c) in enumerate(rng.normal(size=(50, 3)))
    ]
    csv = tmp_path / "own.csv"
    csv.write_text("\n".join(rows) + "\n")
    cfg = RunConfig(dataset="breast_cancer", num_clients=3, test_fraction=0.2)
    set_task_identity()
    msg = Message(
        content=RecordDict({"config": ConfigRecord({RUN_CONFIG: cfg.to_json()})}),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )
    ctx = Context(
        run_id=1,
        node_id=1,
        node_config={"data-path": str(csv), "target": "kind", "partition-id": 1},
        state=RecordDict(),
        run_config={},
    )
    own, data, pid = _setup(msg, ctx)
    assert own.dataset == "csv" and own.target == "kind" and pid == 1
    assert data.train.n_features == 3 and data.train.n_classes == 2
    assert len(data.train.y) + len(data.test.y) == 50 and len(data.test.y) == 10
    # without data-path the bundled partition is used, as in simulation
    ctx2 = Context(
        run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 3}, state=RecordDict(), run_config={}
    )
    cfg2, data2, _ = _setup(msg, ctx2)
    assert cfg2.dataset == "breast_cancer" and data2.train.n_features == 30
