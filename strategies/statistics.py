"""``fedstats``: the exact federation of families fitted from summed statistics (K-Means, PCA).

:class:`FedStats` keeps Flower's FedAvg sampling and replaces its weighted mean by a plain sum of the replies'
arrays: each reply carries its rows' sufficient statistics (:mod:`uaap.models.summed`), and their totals are the
next round's global arrays. A sum is what a CKKS ciphertext sum computes, so :class:`strategies.secure
.SecureAggregation` may sit on top (``sums_replies``); then the totals stay ciphertext and only the clients read
them. There is no federated evaluation (the model is the clients' own totals); the server evaluates a plaintext
run's model on its held-out rows (``server/federation.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.serverapp.strategy import FedAvg

from uaap.config import RunConfig
from uaap.errors import ConfigError, UaapError
from uaap.models.summed import KMeansRounds, PCARounds, as_arrays, rounds_of
from uaap.protocol import NUM_EXAMPLES, TRAIN_LOSS, as_float, as_int

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import Strategy

log = logging.getLogger("uaap.statistics")
INERTIA = "inertia"  # a round's summed inertia: the K-Means objective at the centroids the round started from


def summed_train_metrics(contents: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Rows and the objective summed over the replies (each reply's ``train-loss`` is its objective per row;
    K-Means reports the total as ``inertia``)."""
    from flwr.app import MetricRecord

    rows, total = 0, 0.0
    for content in contents:
        metrics = next(iter(content.metric_records.values()))
        n = as_int(metrics[NUM_EXAMPLES], NUM_EXAMPLES)
        rows += n
        total += as_float(metrics[TRAIN_LOSS], TRAIN_LOSS) * n
    out = MetricRecord({NUM_EXAMPLES: rows, TRAIN_LOSS: total / rows if rows else 0.0})
    if total > 0:
        out[INERTIA] = total
    return out


class FedStats(FedAvg):
    """FedAvg's sampling, with the replies' arrays summed (float64) instead of averaged."""

    sums_replies = True  # secure aggregation may replace aggregate_train by a ciphertext sum

    def __init__(self, family: KMeansRounds | PCARounds, min_contributors: int = 1, **kwargs: Any) -> None:
        super().__init__(train_metrics_aggr_fn=summed_train_metrics, **kwargs)
        self.family = family
        self.min_contributors = min_contributors  # counted after this layer's own checks (reply validation's before)
        self.sent: dict[str, np.ndarray] | None = None  # this round's plaintext totals, to check replies against
        self.last_rejected: list[tuple[int, str]] = []  # (node id, reason) of the last aggregate_train

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the round's totals (the server's own arrays), then sample as FedAvg does."""
        from uaap import crypto
        from uaap.models import from_record

        self.sent = None if crypto.is_encrypted(arrays) else as_arrays(self.family, from_record(arrays))
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The element-wise sum of the valid replies' arrays (in the order given: sort them for reproducibility)."""
        from flwr.app import Array, ArrayRecord

        valid, _ = self._check_and_log_replies(list(replies), is_train=True)
        valid = self._consistent(server_round, valid)
        if len(valid) < max(1, self.min_contributors):
            if valid:
                log.warning(
                    "round %d: %d consistent statistics, fewer than min-contributors=%d; the totals are not released",
                    server_round,
                    len(valid),
                    self.min_contributors,
                )
            return None, None
        totals: dict[str, np.ndarray] = {}
        for msg in valid:
            for name, array in next(iter(msg.content.array_records.values())).items():
                value = array.numpy().astype(np.float64)
                totals[name] = totals[name] + value if name in totals else value
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        log.info("round %d: summed the statistics of %d clients", server_round, len(valid))
        return ArrayRecord({k: Array(v) for k, v in totals.items()}), metrics

    def _consistent(self, server_round: int, replies: list[Message]) -> list[Message]:
        """The replies whose statistics their rows could give (uaap.models.summed's ``check``); the rest are logged
        and left out. Reply validation has checked names, shapes and finite values already."""
        from uaap.models import from_record

        kept, self.last_rejected = [], []
        for msg in replies:
            try:
                stats = as_arrays(self.family, from_record(next(iter(msg.content.array_records.values()))))
                rows = as_int(next(iter(msg.content.metric_records.values()))[NUM_EXAMPLES], NUM_EXAMPLES)
                if self.sent is not None:
                    self.family.check(stats, rows, self.sent)
            except (UaapError, KeyError, ValueError, TypeError) as exc:
                node = int(msg.metadata.src_node_id)
                self.last_rejected.append((node, str(exc)))
                log.error("round %d: left the statistics of node %d out: %s", server_round, node, exc)
                continue
            kept.append(msg)
        return kept

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: the totals are the model (the server evaluates a plaintext one itself)."""
        return []


def build_statistics_strategy(cfg: RunConfig, num_nodes: int | None = None) -> Strategy:
    """FedStats, under CKKS when the run asks, inside reply validation (as ``strategies.base.build_strategy``)."""
    from strategies.secure import SecureAggregation, wrap_secure
    from strategies.validation import ValidateReplies
    from strategies.wrapper import find_layer

    if cfg.strategy != "fedstats":
        raise ConfigError(f"model={cfg.model!r} is fitted from summed statistics: use strategy 'fedstats'")
    family = rounds_of(cfg.model)
    if family is None:
        raise ConfigError(f"strategy 'fedstats' sums the statistics of model kmeans or pca, not model={cfg.model!r}")
    inner = FedStats(
        family,
        min_contributors=cfg.min_contributors,
        fraction_train=cfg.fraction_train,
        fraction_evaluate=1.0,  # never used: configure_evaluate sends nothing
        min_train_nodes=cfg.min_clients,
        min_evaluate_nodes=0,
        min_available_nodes=cfg.min_clients if num_nodes is None else min(cfg.min_clients, num_nodes),
    )
    stack = wrap_secure(cfg, inner)
    secure = find_layer(stack, SecureAggregation)
    return ValidateReplies(
        stack,
        cfg.run_id,
        he_context=None if secure is None else secure.context,
        max_num_examples=cfg.max_num_examples,
        min_contributors=cfg.min_contributors,
    )
