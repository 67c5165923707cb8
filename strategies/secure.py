"""Secure aggregation by CKKS: a wrapper that sums encrypted client updates with the public context only.

Shaped like Flower's DP wrappers: ``SecureAggregation(FedAvg(...), public_context)`` delegates sampling,
configuration and evaluation to the inner strategy and replaces only ``aggregate_train``. The result is the
ciphertext SUM of ``he-weight * w_k`` plus the plaintext total weight; clients decrypt and divide (see
``uaap.crypto`` for the wire format and the security notes). Central DP wraps outside this one and adds its
noise to the encrypted sum with ``uaap.crypto.add_plain``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flwr.serverapp.strategy import Strategy

from strategies.wrapper import StrategyWrapper
from uaap import crypto
from uaap.config import RunConfig
from uaap.errors import ConfigError, UaapError

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, Message, MetricRecord

log = logging.getLogger("uaap.secure")


class SecureAggregation(StrategyWrapper):
    """Wrap any message-based Flower strategy so that training replies are summed as CKKS ciphertexts."""

    encrypted = True  # server loop: the global arrays are ciphertext (no central evaluation, no plaintext model)

    def __init__(self, strategy: Strategy, public_context: crypto.HEContext | str) -> None:
        ctx = crypto.server_context(public_context) if isinstance(public_context, str) else public_context
        if ctx.has_secret_key:
            raise crypto.KeyMaterialError(
                f"the server was given a context with a secret key (fingerprint {ctx.short}); give it only "
                f"{crypto.PUBLIC_FILE}"
            )
        super().__init__(strategy)
        self.context = ctx
        self.last_rejected: list[tuple[int, str]] = []  # (node id, reason) of the last aggregate_train

    def summary(self) -> None:
        """Log the inner strategy's summary and the HE settings."""
        log.info("secure aggregation: CKKS, public context %s", self.context.short)
        self.strategy.summary()

    # ---- the encrypted sum ----------------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Sum the valid replies' ciphertexts; skip (and log) errors, bad bytes and foreign keys."""
        acc = crypto.EncryptedSum(self.context)
        summed: list[Any] = []
        self.last_rejected = []
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if msg.has_error():
                self._reject(server_round, node, f"client error: {msg.error.reason[:200]}")
                continue
            content = msg.content
            try:
                record = _single(content.array_records, "ArrayRecord")
                metrics = _single(content.metric_records, "MetricRecord")
                weight = metrics.get(crypto.METRIC_WEIGHT)
                acc.add(record, None if weight is None else float(weight))  # all checks before the sum changes
            except (UaapError, KeyError, ValueError, TypeError) as exc:
                self._reject(server_round, node, str(exc))
                continue
            summed.append(content)
        if not summed:
            return None, None
        weighted_by = getattr(self.strategy, "weighted_by_key", "num-examples")
        aggr = getattr(self.strategy, "train_metrics_aggr_fn", None)
        if aggr is None:
            from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords as aggr
        metrics_out = aggr(summed, weighted_by)
        if crypto.METRIC_WEIGHT in metrics_out:  # an average of pre-weights means nothing; report the total
            del metrics_out[crypto.METRIC_WEIGHT]
        metrics_out["he-clients"] = acc.count
        metrics_out["he-rejected"] = len(self.last_rejected)
        metrics_out["he-total-weight"] = acc.total
        log.info(
            "round %d: summed %d encrypted updates (total weight %g), rejected %d",
            server_round,
            acc.count,
            acc.total,
            len(self.last_rejected),
        )
        return acc.result(), metrics_out

    def _reject(self, server_round: int, node: int, reason: str) -> None:
        self.last_rejected.append((node, reason))
        log.error("round %d: left client node %d out of the encrypted sum: %s", server_round, node, reason)


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
