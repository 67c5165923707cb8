"""Flower's own XGBoost example set-up doing the same work as UAAP's federated XGBoost: the baseline of ``boosting.py``.

The client and server follow Flower's ``xgboost-quickstart`` (Message API): round 1 trains a fresh booster, later
rounds load the global booster and boost ``num_local_round`` more (bagging sends those last trees, cyclic the whole
booster, as ``xgboost-comprehensive`` does), and the server is ``FedXgbBagging.start`` / ``FedXgbCyclic.start`` from
empty bytes. Same data partitions (:func:`uaap.data.client_data`), same XGBoost parameters
(:class:`uaap.models.boosting.BoostSettings`), client evaluation on the same validation rows and central evaluation
on the same test rows; none of our loop (no checkpoints, metrics.jsonl, MLflow, booster checks or class repair).
The run config travels in the ConfigRecord, because ``run_simulation`` passes an empty run config.
"""

from __future__ import annotations

import time

import numpy as np
import xgboost as xgb
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from uaap.config import RunConfig
from uaap.data import client_data, federated
from uaap.models.boosting import settings
from uaap.protocol import RUN_CONFIG

client_app = ClientApp()


def _setup(msg: Message, context: Context) -> tuple[RunConfig, object, dict]:
    cfg = RunConfig.from_json(str(msg.content["config"][RUN_CONFIG]))
    data = client_data(cfg, int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]))
    params = settings(cfg, data.train.n_features, data.train.n_classes).params()
    return cfg, data, params


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Flower's example client: a fresh booster in round 1, else the global one boosted further."""
    cfg, data, params = _setup(msg, context)
    dtrain = xgb.DMatrix(data.train.X, label=data.train.y)
    rounds = cfg.xgb_local_rounds
    if int(msg.content["config"]["server-round"]) == 1:
        bst = xgb.train(params, dtrain, num_boost_round=rounds)
    else:
        bst = xgb.Booster(params=params)
        bst.load_model(bytearray(msg.content["arrays"]["0"].numpy().tobytes()))
        for _ in range(rounds):
            bst.update(dtrain, bst.num_boosted_rounds())
        if cfg.strategy == "fedxgb-bagging":
            bst = bst[bst.num_boosted_rounds() - rounds : bst.num_boosted_rounds()]
    model = ArrayRecord([np.frombuffer(bst.save_raw("json"), dtype=np.uint8)])
    metrics = MetricRecord({"num-examples": len(data.train.y)})
    return Message(RecordDict({"arrays": model, "metrics": metrics}), reply_to=msg)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Flower's example evaluation: the global booster on the client's validation rows."""
    _, data, params = _setup(msg, context)
    bst = xgb.Booster(params=params)
    bst.load_model(bytearray(msg.content["arrays"]["0"].numpy().tobytes()))
    p = bst.predict(xgb.DMatrix(data.test.X))
    pred = (p > 0.5).astype(int) if p.ndim == 1 else p.argmax(axis=1)
    metrics = MetricRecord({"accuracy": float((pred == data.test.y).mean()), "num-examples": len(data.test.y)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def make_server_app(cfg: RunConfig, marks: list[float] | None = None) -> ServerApp:
    """A ServerApp running Flower's ``FedXgbBagging.start`` or ``FedXgbCyclic.start``; ``marks`` gets a timestamp per
    central evaluation (before round 1 and at the end of each round: consecutive marks are the rounds' durations)."""
    from flwr.serverapp.strategy import FedXgbBagging, FedXgbCyclic

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        _, test = federated(cfg, cfg.num_clients)
        params = settings(cfg, test.n_features, test.n_classes).params()

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            raw = arrays["0"].numpy().tobytes()
            accuracy = 0.0
            if raw:
                bst = xgb.Booster(params=params)
                bst.load_model(bytearray(raw))
                p = bst.predict(xgb.DMatrix(test.X))
                pred = (p > 0.5).astype(int) if p.ndim == 1 else p.argmax(axis=1)
                accuracy = float((pred == test.y).mean())
            if marks is not None:
                marks.append(time.time())
            return MetricRecord({"accuracy": accuracy})

        nodes = len(list(grid.get_node_ids()))
        if cfg.strategy == "fedxgb-cyclic":
            strategy = FedXgbCyclic(min_available_nodes=min(cfg.min_clients, nodes))
        else:
            strategy = FedXgbBagging(
                fraction_train=cfg.fraction_train,
                fraction_evaluate=cfg.fraction_evaluate,
                min_train_nodes=cfg.min_clients,
                min_evaluate_nodes=cfg.min_clients,
                min_available_nodes=min(cfg.min_clients, nodes),
            )
        config = ConfigRecord({RUN_CONFIG: cfg.to_json()})
        strategy.start(
            grid,
            initial_arrays=ArrayRecord([np.frombuffer(b"", dtype=np.uint8)]),
            num_rounds=cfg.num_rounds,
            train_config=config,
            evaluate_config=config,
            evaluate_fn=evaluate_fn,
        )

    return app
