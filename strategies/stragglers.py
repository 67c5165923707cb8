"""Stragglers as the FedProx paper's FedAvg treats them: their replies are left out of the aggregate.

A straggler (``straggler-fraction``) stops a random number of steps short of its local epochs and says so in
its reply (``straggler = 1``, checked by :mod:`strategies.validation`). Under ``straggler-policy = partial``
(FedProx, and FedProx with mu = 0) its partial work is aggregated like any other update; under ``drop`` (the
paper's FedAvg, which drops devices that do not finish their epochs) this wrapper removes it before the
strategy, the encrypted sum or the central DP noise see the round's replies.

It sits inside the privacy accounting (a dropped reply still reached the server, so its DP-SGD release is
accounted) and inside reply validation (it reads a checked metric only). Validation asks it, by type, how many
replies it dropped, so an aggregate of fewer than ``min-contributors`` kept replies is still withheld.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from strategies.wrapper import StrategyWrapper
from uaap.protocol import STRAGGLER, STRAGGLERS_DROPPED, as_int

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, Message, MetricRecord

log = logging.getLogger("uaap.stragglers")


def is_straggler(msg: Message) -> bool:
    """Whether a (validated) training reply says its client stopped early."""
    return not msg.has_error() and any(
        as_int(rec.get(STRAGGLER, 0), STRAGGLER) for rec in msg.content.metric_records.values()
    )


class DropStragglers(StrategyWrapper):
    """Leave stragglers' replies out of the aggregate; report how many were dropped."""

    linear_passthrough = True  # only routes replies

    last_dropped = 0  # replies dropped in the last aggregate_train

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The inner strategy's aggregate of the replies whose clients finished their epochs."""
        replies = list(replies)
        kept = [m for m in replies if not is_straggler(m)]
        self.last_dropped = len(replies) - len(kept)
        if self.last_dropped:
            log.info("round %d: dropped %d straggler(s), aggregating %d", server_round, self.last_dropped, len(kept))
        if not any(not m.has_error() for m in kept):
            log.warning("round %d: every reply came from a straggler; nothing to aggregate", server_round)
        arrays, metrics = self.strategy.aggregate_train(server_round, kept)
        if metrics is not None:
            metrics[STRAGGLERS_DROPPED] = self.last_dropped
        return arrays, metrics
