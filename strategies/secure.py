"""Secure aggregation by CKKS: a wrapper that sums encrypted client updates with the public context only.

Shaped like Flower's DP wrappers: ``SecureAggregation(FedAvg(...), public_context)`` delegates sampling,
configuration and evaluation to the inner strategy and replaces only ``aggregate_train``. The result is the
ciphertext SUM of ``he-weight * w_k`` plus the plaintext total weight; clients decrypt and divide (see
``uaap.crypto`` for the wire format and the security notes).

A ciphertext sum computes a weighted mean and nothing else, so the inner strategy must be one whose
aggregation *is* a weighted mean: Flower's FedAvg or a subclass that keeps FedAvg's ``aggregate_train``
(FedProx). Robust aggregators (FedMedian, Krum, trimmed mean...) need the plaintext values, and server
optimisers (FedAdam, FedYogi, FedAdagrad, FedAvgM) need element-wise products, squares and square roots
of the aggregate: the add-only modulus chain allows no multiplication, and the server holds no secret key
to do them in the clear. Running the server step on the clients' (decrypting) side would need the
optimiser's state to be kept identical on every client across rounds, including clients that join late,
which this protocol does not provide. They are refused at start-up instead of silently becoming FedAvg.

Central DP's noise wrapper (:mod:`strategies.dp_noise`) takes the running encrypted sum from
:meth:`SecureAggregation.sum_replies` and adds the global model and its noise to it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from strategies.wrapper import StrategyWrapper, innermost, layers, weighted_by_key
from uaap import crypto
from uaap.config import RunConfig
from uaap.errors import ConfigError, UaapError
from uaap.protocol import HE_CLIENTS, HE_REJECTED, HE_TOTAL_WEIGHT, HE_WEIGHT

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp import Grid

log = logging.getLogger("uaap.secure")


class SecureAggregation(StrategyWrapper):
    """Wrap a weighted-mean Flower strategy so that training replies are summed as CKKS ciphertexts."""

    encrypted = True  # server loop: the global arrays are ciphertext (no central evaluation, no plaintext model)

    def __init__(self, strategy: Strategy, public_context: crypto.HEContext | str) -> None:
        check_linear(strategy)
        ctx = crypto.server_context(public_context) if isinstance(public_context, str) else public_context
        if ctx.has_secret_key:
            raise crypto.KeyMaterialError(
                f"the server was given a context with a secret key (fingerprint {ctx.short}); give it only "
                f"{crypto.PUBLIC_FILE}"
            )
        super().__init__(strategy)
        self.context = ctx
        self.shapes: list[tuple[int, ...]] | None = None  # the global model's tensors, from the server's own model
        self.last_rejected: list[tuple[int, str]] = []  # (node id, reason) of the last aggregate_train

    def summary(self) -> None:
        """Log the inner strategy's summary and the HE settings."""
        log.info("secure aggregation: CKKS, public context %s", self.context.short)
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model's shapes (from the server's own arrays), then let the inner strategy sample."""
        if crypto.is_encrypted(arrays):
            self.shapes = crypto.record_shapes(arrays)
        else:
            self.shapes = [tuple(int(d) for d in a.shape) for a in arrays.values()]
        return self.strategy.configure_train(server_round, arrays, config, grid)

    # ---- the encrypted sum ----------------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The encrypted weighted sum of the valid replies and their aggregated metrics."""
        acc, metrics = self.sum_replies(server_round, replies)
        return acc.result(), metrics

    def sum_replies(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[crypto.EncryptedSum, MetricRecord | None]:
        """The running encrypted sum of the valid replies; errors, bad bytes and foreign keys are skipped and logged.

        Central DP adds to the returned sum before it becomes a record (:mod:`strategies.dp_noise`).
        """
        acc = crypto.EncryptedSum(self.context, self.shapes)
        summed: list[RecordDict] = []
        self.last_rejected = []
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if msg.has_error():
                self._reject(server_round, node, f"client error: {(msg.error.reason or '')[:200]}")
                continue
            content = msg.content
            try:
                record = _single(content.array_records, "ArrayRecord")
                metrics = _single(content.metric_records, "MetricRecord")
                weight = metrics.get(HE_WEIGHT)
                acc.add(record, None if weight is None else float(weight))  # all checks before the sum changes
            except (UaapError, KeyError, ValueError, TypeError) as exc:
                self._reject(server_round, node, str(exc))
                continue
            summed.append(content)
        if not summed:
            return acc, None
        base = innermost(self.strategy)
        aggr = getattr(base, "train_metrics_aggr_fn", None) or aggregate_metricrecords
        metrics_out: MetricRecord = aggr(summed, weighted_by_key(base))
        if HE_WEIGHT in metrics_out:  # an average of pre-weights means nothing; report the total
            del metrics_out[HE_WEIGHT]
        metrics_out[HE_CLIENTS] = acc.count
        metrics_out[HE_REJECTED] = len(self.last_rejected)
        metrics_out[HE_TOTAL_WEIGHT] = acc.total
        log.info(
            "round %d: summed %d encrypted updates (total weight %g), rejected %d",
            server_round,
            acc.count,
            acc.total,
            len(self.last_rejected),
        )
        return acc, metrics_out

    def _reject(self, server_round: int, node: int, reason: str) -> None:
        self.last_rejected.append((node, reason))
        log.error("round %d: left client node %d out of the encrypted sum: %s", server_round, node, reason)


def check_linear(strategy: Strategy) -> None:
    """Refuse a strategy whose aggregation is neither FedAvg's weighted mean nor a plain sum (a ciphertext sum
    computes only those)."""
    base = innermost(strategy)
    summing = bool(getattr(type(base), "sums_replies", False))  # a plain sum (strategies.statistics.FedStats)
    if summing or (isinstance(base, FedAvg) and type(base).aggregate_train is FedAvg.aggregate_train):
        between = [type(x).__name__ for x in layers(strategy) if x is not base and not _passes_sum(x)]
        if not between:
            return
        raise ConfigError(
            f"secure aggregation sums ciphertexts directly, so the wrapper(s) {', '.join(between)} under it would "
            "be bypassed; wrap them outside SecureAggregation instead"
        )
    raise ConfigError(
        f"secure aggregation cannot run {type(base).__name__}: a ciphertext sum computes FedAvg's weighted mean "
        "and nothing else (robust aggregators need plaintext values; server optimisers such as FedAdam need "
        "products and square roots the add-only CKKS chain cannot do, and the server holds no key). Use "
        "strategy 'fedavg' or 'fedprox', or turn secure aggregation off"
    )


def _passes_sum(layer: Strategy) -> bool:
    """Wrappers that may sit under SecureAggregation: they only check or route replies, never aggregate."""
    return bool(getattr(type(layer), "linear_passthrough", False))


def _single(records: Any, kind: str) -> Any:
    if len(records) != 1:
        raise ValueError(f"reply carries {len(records)} {kind}s; expected exactly one")
    return next(iter(records.values()))


def wrap_secure(cfg: RunConfig, strategy: Strategy) -> Strategy:
    """``strategy`` wrapped in :class:`SecureAggregation` when ``cfg`` asks for CKKS, else unchanged."""
    if not cfg.secure:
        return strategy
    if not cfg.he_public_context:
        raise ConfigError(
            "secure-aggregation='ckks' needs he-public-context (the server's public CKKS context): run "
            "`uaap keys init --out DIR` and pass --he-public-context DIR/public.ckks"
        )
    try:
        ctx = crypto.server_context(cfg.he_public_context)
    except crypto.KeyMaterialError as exc:
        if "does not exist" in str(exc):
            raise ConfigError(
                f"he-public-context={cfg.he_public_context!r} does not exist: run `uaap keys init --out DIR` "
                "and pass --he-public-context DIR/public.ckks"
            ) from exc
        raise
    return SecureAggregation(strategy, ctx)
