"""A client's side of a federated random forest (``fedtrees``): grow trees on its own rows; score the global forest.

Training replies carry this client's trees as arrays (:mod:`uaap.models.forest`; what a tree reveals and how
``tree-max-depth`` / ``tree-min-samples-leaf`` bound it is said there) and the metrics every training reply
carries; evaluation replies carry the global forest's summable counts on the local validation rows, so the
server's metrics are those of all validation rows pooled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from uaap.models import forest
from uaap.protocol import (
    ARRAYS,
    CLIENT_INFO,
    CONFIG,
    METRICS,
    NUM_EXAMPLES,
    PARTITION_ID,
    SERVER_ROUND,
    STEPS,
    STRAGGLER,
    TRAIN_LOSS,
    as_int,
)

if TYPE_CHECKING:
    from uaap.config import RunConfig
    from uaap.data import Dataset, Split


def train_trees(cfg: RunConfig, data: Split, pid: int, msg: Message) -> Message:
    """Reply with the trees this client grows on its training rows this round."""
    server_round = as_int(msg.content.config_records[CONFIG].get(SERVER_ROUND, 1), SERVER_ROUND)
    train = data.train
    seed = cfg.seed * 100_003 + server_round * 1_009 + pid  # every client and round its own trees
    X = np.asarray(train.X, dtype=np.float32)
    if cfg.model == "isolation_forest":  # trained on the normal rows the data layer left it
        grown = forest.local_isolation_forest(X, n_estimators=cfg.trees_per_client, max_samples=256, seed=seed)
    else:
        grown = forest.local_forest(
            X,
            np.asarray(train.y),
            forest.outputs(train.task, train.n_classes),
            n_estimators=cfg.trees_per_client,
            max_depth=cfg.tree_max_depth,
            min_samples_leaf=cfg.tree_min_samples_leaf,
            seed=seed,
        )
    own = forest.model_of(grown, cfg.model, train.n_features, train.task, train.n_classes)
    metrics: dict[str, int | float | list[int] | list[float]] = {
        NUM_EXAMPLES: len(train.y), TRAIN_LOSS: _loss(own, train), STEPS: 0, STRAGGLER: 0
    }  # fmt: skip
    content = RecordDict(
        {
            ARRAYS: forest.to_record(grown),
            METRICS: MetricRecord(metrics),
            CLIENT_INFO: ConfigRecord({PARTITION_ID: pid}),
        }
    )
    return Message(content=content, reply_to=msg)


def evaluate_trees(cfg: RunConfig, data: Split, pid: int, msg: Message) -> Message:
    """Reply with the global forest's counts on this client's validation rows."""
    test = data.test
    received = forest.from_record(msg.content.array_records[ARRAYS])
    forest.check(
        received, test.n_features, forest.outputs(test.task, test.n_classes), regression=test.task != "classification"
    )
    model = forest.model_of(received, cfg.model, test.n_features, test.task, test.n_classes)
    content = RecordDict(
        {METRICS: MetricRecord(forest.evaluate_counts(model, test)), CLIENT_INFO: ConfigRecord({PARTITION_ID: pid})}
    )
    return Message(content=content, reply_to=msg)


def _loss(model: object, data: Dataset) -> float:
    """Cross-entropy (classification), the standardised MSE (regression) or the mean anomaly score (an isolation
    forest on its normal rows) of this client's trees on its rows."""
    if data.task == "anomaly":
        return float(forest.anomaly_scores(model, data.X).mean())
    out = forest.predictions(model, data)
    if data.regression:
        return float(np.mean(((out - data.y) / data.target_std) ** 2))
    return float(-np.mean(np.log(np.clip(out[np.arange(len(data.y)), data.y], 1e-12, 1.0))))
