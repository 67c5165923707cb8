"""A plain Flower FedAvg app doing the same work as UAAP's app: the baseline of ``simulation.py``.

Same model registry, data partitions (:func:`uaap.data.client_data`), local training
(:func:`uaap.training.local_train`), client-side evaluation and central evaluation as ``server/`` and
``client/``, but none of our loop: Flower's own ``FedAvg.start``, no checkpoints, no metrics.jsonl,
no MLflow, no strategy wrappers or hooks. The run config travels in the train/evaluate ConfigRecord
(as ours does), because ``run_simulation`` passes an empty run config.
"""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from uaap.config import RunConfig
from uaap.data import client_data, federated
from uaap.models import build_model, from_record, get_weights, set_weights, to_record
from uaap.protocol import RUN_CONFIG
from uaap.training import TrainConfig, evaluate, local_train

torch.set_num_threads(1)  # as client/app.py: one thread per simulated client

client_app = ClientApp()


def _setup(msg: Message, context: Context) -> tuple[RunConfig, int, object]:
    cfg = RunConfig.from_json(str(msg.content["config"][RUN_CONFIG]))
    pid = int(context.node_config["partition-id"])
    return cfg, pid, client_data(cfg, pid, int(context.node_config["num-partitions"]))


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training of the received model, exactly as UAAP's client does it (FedAvg: no proximal term)."""
    cfg, pid, data = _setup(msg, context)
    server_round = int(msg.content["config"]["server-round"])
    model = build_model(cfg.model, data.train.n_features, data.train.n_classes, data.train.image_shape)
    set_weights(model, from_record(msg.content["arrays"]))
    tcfg = TrainConfig.from_run(cfg, proximal_mu=0.0, seed=cfg.seed + 1000 * server_round + pid)
    result = local_train(model, data.train, tcfg)
    metrics = MetricRecord({"num-examples": result.num_examples, "train-loss": result.loss})
    return Message(RecordDict({"arrays": to_record(get_weights(model)), "metrics": metrics}), reply_to=msg)


@client_app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Evaluate the received model on the client's validation split."""
    cfg, _, data = _setup(msg, context)
    model = build_model(cfg.model, data.test.n_features, data.test.n_classes, data.test.image_shape)
    set_weights(model, from_record(msg.content["arrays"]))
    metrics = MetricRecord({**evaluate(model, data.test), "num-examples": len(data.test.y)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def make_server_app(cfg: RunConfig, marks: list[float] | None = None) -> ServerApp:
    """A ServerApp running ``FedAvg.start`` for ``cfg``; ``marks`` gets a timestamp per central evaluation.

    Central evaluation runs once before round 1 and at the end of every round, so consecutive marks
    are the rounds' durations.
    """
    from flwr.serverapp.strategy import FedAvg

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        nodes = len(list(grid.get_node_ids()))
        _, test = federated(cfg, cfg.num_clients)
        meta = test
        model = build_model(cfg.model, meta.n_features, meta.n_classes, meta.image_shape, seed=cfg.seed)
        initial = to_record(get_weights(model))

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            set_weights(model, from_record(arrays))
            result = MetricRecord({**evaluate(model, test), "num-examples": len(test.y)})
            if marks is not None:
                marks.append(time.time())
            return result

        strategy = FedAvg(
            fraction_train=cfg.fraction_train,
            fraction_evaluate=cfg.fraction_evaluate,
            min_train_nodes=cfg.min_clients,
            min_evaluate_nodes=min(cfg.min_clients, 1 if cfg.fraction_evaluate == 0 else cfg.min_clients),
            min_available_nodes=min(cfg.min_clients, nodes),
        )
        config = ConfigRecord({RUN_CONFIG: cfg.to_json()})
        strategy.start(
            grid,
            initial_arrays=initial,
            num_rounds=cfg.num_rounds,
            train_config=config,
            evaluate_config=config,
            evaluate_fn=evaluate_fn,
        )

    return app
