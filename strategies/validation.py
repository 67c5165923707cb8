"""Reject malformed client replies before aggregation: a wrapper any strategy can sit on.

``ValidateReplies(FedAvg(...))`` checks every training reply against the global model it was sent
(same array names, shapes, float dtype, all values finite) and its metrics (``num-examples`` present,
finite and positive; every metric value finite). A bad reply is left out and logged (server
log and an ``rejected`` event in ``runs/<run-id>/metrics.jsonl``); the round goes on with the rest.
Evaluation replies get the metric checks. ``build_strategy`` applies it innermost, so the plaintext
path is covered whatever wraps it; ciphertext replies are validated by ``strategies.secure`` (bytes
that do not deserialise, foreign fingerprints), which never hands them to the inner strategy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.serverapp.strategy import Strategy

from strategies.wrapper import StrategyWrapper
from uaap.protocol import NUM_EXAMPLES, REJECTED_REPLIES

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.serverapp import Grid

log = logging.getLogger("uaap.validation")
WEIGHT_KEY = NUM_EXAMPLES


class InvalidReply(ValueError):
    """Why one reply cannot be aggregated."""


class ValidateReplies(StrategyWrapper):
    """Drop replies with wrong shapes, NaN/Inf or bad weights; delegate everything else to ``strategy``."""

    linear_passthrough = True  # only filters replies: secure aggregation may sit on top of it

    def __init__(self, strategy: Strategy, run_id: str = "") -> None:
        super().__init__(strategy)
        self.run_id = run_id
        self.expected: dict[str, tuple[tuple[int, ...], str]] | None = None
        self.rejected: list[dict[str, Any]] = []  # every rejection of this run: round, phase, node, reason

    def summary(self) -> None:
        """The inner strategy's summary."""
        log.info("reply validation: shapes, dtype, finite values, num-examples")
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model's layout (when it is plaintext), then let the inner strategy sample."""
        self.expected = expected_layout(arrays)
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate only the replies that pass :func:`check_train_reply`."""
        good, bad = self._split(server_round, "train", replies, lambda m: check_train_reply(m, self.expected))
        if not good and not [m for m in bad if m.has_error()]:
            log.warning("round %d: no valid training replies", server_round)
        arrays, metrics = self.strategy.aggregate_train(server_round, good + [m for m in bad if m.has_error()])
        if metrics is not None:
            metrics[REJECTED_REPLIES] = sum(1 for m in bad if not m.has_error())
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Aggregate only evaluation replies with sound metrics."""
        good, bad = self._split(server_round, "evaluate", replies, check_metrics)
        return self.strategy.aggregate_evaluate(server_round, good + [m for m in bad if m.has_error()])

    def _split(
        self, server_round: int, phase: str, replies: Iterable[Message], check: Any
    ) -> tuple[list[Message], list[Message]]:
        good: list[Message] = []
        bad: list[Message] = []
        for msg in replies:
            if msg.has_error():  # lost clients: the inner strategy counts and logs them as failures
                bad.append(msg)
                continue
            try:
                check(msg)
            except InvalidReply as exc:
                bad.append(msg)
                self._record(server_round, phase, int(msg.metadata.src_node_id), str(exc))
                continue
            good.append(msg)
        return good, bad

    def _record(self, server_round: int, phase: str, node: int, reason: str) -> None:
        entry = {"round": server_round, "phase": phase, "node": node, "reason": reason}
        self.rejected.append(entry)
        log.error("round %d %s: rejected the reply of node %d: %s", server_round, phase, node, reason)
        if self.run_id:
            from uaap import workspace

            try:
                workspace.run_dir(self.run_id).log_event("rejected", **entry)
            except OSError as exc:  # logging must never take the round down
                log.warning("could not log the rejection: %s", exc)


def expected_layout(arrays: ArrayRecord) -> dict[str, tuple[tuple[int, ...], str]] | None:
    """Name -> (shape, dtype) of a plaintext global model; None when the arrays are not plain floats (HE)."""
    layout = {}
    for name, arr in arrays.items():
        if not np.issubdtype(np.dtype(arr.dtype), np.floating):
            return None
        layout[name] = (tuple(arr.shape), str(arr.dtype))
    return layout


def check_metrics(msg: Message) -> None:
    """``num-examples`` finite and positive, and every metric value finite."""
    records = msg.content.metric_records
    if len(records) != 1:
        raise InvalidReply(f"reply carries {len(records)} MetricRecords; expected exactly one")
    metrics = next(iter(records.values()))
    n = metrics.get(WEIGHT_KEY)
    if not isinstance(n, int | float) or not math.isfinite(n) or n <= 0:
        raise InvalidReply(f"{WEIGHT_KEY}={n!r}; expected a positive finite number")
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:  # dropping the key instead would make the replies' metric keys differ, which FedAvg refuses
        raise InvalidReply(f"non-finite metric values: {', '.join(f'{k}={metrics[k]!r}' for k in bad)}")


def check_train_reply(msg: Message, expected: dict[str, tuple[tuple[int, ...], str]] | None) -> None:
    """A plaintext training reply must match the global model's layout and hold finite values."""
    check_metrics(msg)
    records = msg.content.array_records
    if len(records) != 1:
        raise InvalidReply(f"reply carries {len(records)} ArrayRecords; expected exactly one")
    record = next(iter(records.values()))
    if expected is None:  # ciphertext round: strategies.secure checks the bytes
        return
    names = list(record.keys())
    if names != list(expected):
        missing = sorted(set(expected) - set(names))
        extra = sorted(set(names) - set(expected))
        raise InvalidReply(f"array names differ from the global model (missing {missing}, unexpected {extra})")
    for name in names:
        arr = record[name]
        shape, _ = expected[name]
        if tuple(arr.shape) != shape:
            raise InvalidReply(f"array {name!r} has shape {tuple(arr.shape)}; the global model's is {shape}")
        if not np.issubdtype(np.dtype(arr.dtype), np.floating):
            raise InvalidReply(f"array {name!r} has dtype {arr.dtype}; expected floating point")
        try:
            values = arr.numpy()
        except Exception as exc:  # bytes that do not decode as the declared array
            raise InvalidReply(f"array {name!r} does not decode ({exc.__class__.__name__}: {exc})") from exc
        if values.shape != shape:
            raise InvalidReply(f"array {name!r} decodes to shape {values.shape}; expected {shape}")
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise InvalidReply(f"array {name!r} has {bad} non-finite values (NaN/Inf)")
