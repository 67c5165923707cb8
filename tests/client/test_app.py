"""The ClientApp reads a deployed client's own table (node config data-path/target)."""

from __future__ import annotations

import numpy as np
import pytest
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


def test_clients_sharing_a_workspace_keep_their_own_dpsgd_history(uaap_home):
    """Three flower-clients on one machine (docs/deploy.md) once all kept their budget under partition-0."""
    import torch

    from client.app import dp_state_key
    from uaap.config import RunConfig
    from uaap.privacy.dpsgd import client_engine, client_report

    def deployed(node_id: int, table: str, target: str = "label") -> Context:
        node = {"data-path": table, "target": target}
        return Context(run_id=1, node_id=node_id, node_config=node, state=RecordDict(), run_config={})

    a, b = deployed(11, "/data/hospital-0.csv"), deployed(12, "/data/hospital-1.csv")
    assert dp_state_key(a) != dp_state_key(b)
    assert dp_state_key(deployed(99, "/data/hospital-0.csv")) == dp_state_key(a), "a rejoining node keeps its budget"
    assert dp_state_key(deployed(11, "/data/hospital-0.csv", "other")) != dp_state_key(a)
    url = "postgresql://owner:s3cret@db/clinic"
    assert "s3cret" not in dp_state_key(deployed(13, url)), "the key names a folder: no password in it"
    sim = Context(run_id=1, node_id=5, node_config={"partition-id": 4}, state=RecordDict(), run_config={})
    assert dp_state_key(sim) == "partition-4"

    cfg = RunConfig(num_rounds=2, batch_size=16, dp_local=True, dp_target_epsilon=4.0, run_id="shared")
    engine = client_engine(cfg, 64, a.state, dp_state_key(a), generator=torch.Generator().manual_seed(0))
    engine.sample_rate, engine.round_steps = 0.25, 4
    engine.accountant.step(engine.noise_multiplier, 0.25, 4)
    engine.on_step(engine)
    assert client_report(cfg, a.state, dp_state_key(a))["dp-total-steps"] == 4  # written to the shared workspace
    later = client_engine(cfg, 64, b.state, dp_state_key(b))  # b starts its first round after a's reply
    assert later.accountant.history == [], "b must not inherit a's spent budget"


def test_a_deployed_forecasting_client_scores_the_horizon_of_every_series_in_its_own_table(tmp_path):
    """Deployed, a client's series are its own table's (all of them: the run's num-clients does not partition them),
    simulated, its share of the run's series; each gives horizon points to the evaluation reply's forecast sums."""
    import pandas as pd

    from client.app import horizon_counts
    from uaap.config import RunConfig
    from uaap.forecast.series import generate
    from uaap.models import build_model

    rows = [(str(t)[:10], f"store-{k}", v) for k, s in enumerate(generate(2, 40, 12, seed=3)) for t, v in
            zip(s.time, s.values, strict=True)]  # fmt: skip
    table = tmp_path / "sales.csv"
    pd.DataFrame(rows, columns=["month", "store", "sales"]).to_csv(table, index=False)
    cfg = RunConfig(task="forecast", model="gru", dataset="csv", data_path=str(table), target="sales",
                    time_column="month", series_column="store", horizon=5, lags=12, num_clients=4)  # fmt: skip
    model = build_model("gru", 12, 1, None, seed=0)
    node = {"data-path": str(table), "target": "sales"}
    deployed = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
    counts = horizon_counts(cfg, deployed, 0, model)
    assert counts["forecast-n"] == 2 * 5 and counts["forecast-abs-error-sum"] > 0
    simulated = Context(run_id=1, node_id=7, node_config={"num-partitions": 2}, state=RecordDict(), run_config={})
    halves = [horizon_counts(cfg, simulated, pid, model) for pid in (0, 1)]
    assert [h["forecast-n"] for h in halves] == [5, 5]
    assert sum(h["forecast-abs-error-sum"] for h in halves) == pytest.approx(counts["forecast-abs-error-sum"])
