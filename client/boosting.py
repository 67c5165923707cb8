"""The client's side of a federated XGBoost run (``model=xgboost``): boost on local rows, evaluate from counts.

The server's booster is checked before it is loaded, as every server message is (:func:`received`): bounded by
the most trees this run can have grown, then :func:`uaap.models.boosting.check_booster`. A bagging client sends
only the trees it added this round (Flower's ``FedXgbBagging`` appends them); a cyclic client sends its whole
booster (Flower's ``FedXgbCyclic`` hands it to the next client).
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from uaap.config import RunConfig
from uaap.data import Split
from uaap.models import boosting
from uaap.protocol import ARRAYS, CLIENT_INFO, METRICS, NUM_EXAMPLES, PARTITION_ID, STEPS, STRAGGLER, TRAIN_LOSS


def most_trees(cfg: RunConfig, settings: boosting.BoostSettings) -> int:
    """The most trees a global booster of this run can hold after its last round."""
    per_round = settings.local_rounds * settings.groups
    clients = 1 if cfg.strategy == "fedxgb-cyclic" else cfg.num_clients
    return cfg.num_rounds * clients * per_round


def received(cfg: RunConfig, msg: Message, settings: boosting.BoostSettings) -> bytes:
    """The server's booster, checked: size bounded by this run, then the booster's own checks (empty in round 1)."""
    raw = boosting.from_record(msg.content.array_records[ARRAYS], settings.max_bytes(most_trees(cfg, settings)))
    if raw:
        trees = boosting.count_trees(raw)
        if trees > most_trees(cfg, settings) or trees % settings.groups:
            raise boosting.BoosterError(f"the server's booster has {trees} trees; this run grows at most "
                                        f"{most_trees(cfg, settings)}, {settings.groups} per round")  # fmt: skip
        boosting.check_booster(raw, settings, trees=trees)
    return raw


def train_boosting(cfg: RunConfig, data: Split, pid: int, msg: Message) -> Message:
    """Add this run's local boosting rounds to the server's booster on the local train split."""
    settings = boosting.settings(cfg, data.train.n_features, data.train.n_classes)
    start = received(cfg, msg, settings)
    raw, loss = boosting.local_boost(start, data.train, settings, new_only=cfg.strategy == "fedxgb-bagging")
    metrics = MetricRecord(
        {NUM_EXAMPLES: len(data.train.y), TRAIN_LOSS: loss, STEPS: settings.local_rounds, STRAGGLER: 0}
    )
    content = RecordDict(
        {ARRAYS: boosting.to_record(raw), METRICS: metrics, CLIENT_INFO: ConfigRecord({PARTITION_ID: pid})}
    )
    return Message(content=content, reply_to=msg)


def evaluate_boosting(cfg: RunConfig, data: Split, pid: int, msg: Message) -> Message:
    """The server's booster on the local validation split, as summable counts."""
    settings = boosting.settings(cfg, data.test.n_features, data.test.n_classes)
    counts = boosting.evaluate_counts(received(cfg, msg, settings), data.test, settings)
    content = RecordDict({METRICS: MetricRecord(counts), CLIENT_INFO: ConfigRecord({PARTITION_ID: pid})})
    return Message(content=content, reply_to=msg)
