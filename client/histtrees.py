"""A client's side of ``fedhist``: answer the server's request with summed statistics of its own rows, and score
the global trees (uaap.models.histtrees says what each statistic reveals).

A training reply carries the statistics the request asks for (feature ranges, a fine histogram per feature, or
per open node and candidate feature the binned sums of gradients/hessians or class counts) and the metrics every
training reply carries; an evaluation reply the finished trees' summable counts on the local validation rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from uaap.models import histtrees
from uaap.protocol import ARRAYS, CLIENT_INFO, METRICS, NUM_EXAMPLES, PARTITION_ID, STEPS, STRAGGLER, TRAIN_LOSS

if TYPE_CHECKING:
    from uaap.config import RunConfig
    from uaap.data import Dataset, Split


def train_hist(cfg: RunConfig, data: Split, pid: int, msg: Message) -> Message:
    """Reply with this client's statistics for the state the server sent."""
    train = data.train
    spec = histtrees.spec(cfg, train.n_features, train.n_classes, train.task)
    state = histtrees.from_record(msg.content.array_records[ARRAYS])
    stats = histtrees.client_statistics(spec, state, train.X, train.y, pid)
    metrics: dict[str, int | float | list[int] | list[float]] = {
        NUM_EXAMPLES: len(train.y), TRAIN_LOSS: _loss(spec, state, train), STEPS: 0, STRAGGLER: 0
    }  # fmt: skip
    content = RecordDict(
        {
            ARRAYS: histtrees.to_record(stats),
            METRICS: MetricRecord(metrics),
            CLIENT_INFO: ConfigRecord({PARTITION_ID: pid}),
        }
    )
    return Message(content=content, reply_to=msg)


def evaluate_hist(cfg: RunConfig, data: Split, pid: int, msg: Message) -> Message:
    """Reply with the finished trees' counts on this client's validation rows."""
    test = data.test
    spec = histtrees.spec(cfg, test.n_features, test.n_classes, test.task)
    counts = histtrees.evaluate_counts(spec, histtrees.from_record(msg.content.array_records[ARRAYS]), test)
    content = RecordDict({METRICS: MetricRecord(counts), CLIENT_INFO: ConfigRecord({PARTITION_ID: pid})})
    return Message(content=content, reply_to=msg)


def _loss(spec: histtrees.HistSpec, state: dict[str, np.ndarray], data: Dataset) -> float:
    """Cross-entropy or standardised MSE of the finished trees on this client's rows (before this request)."""
    if histtrees.stage(state) < histtrees.GROW:
        return 0.0
    out = histtrees.predictions(spec, histtrees.finished(state), data.X)
    if data.regression:
        return float(np.mean(((out - data.y) / data.target_std) ** 2))
    return float(-np.mean(np.log(np.clip(out[np.arange(len(data.y)), data.y], 1e-12, 1.0))))
