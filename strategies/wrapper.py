"""The base of every UAAP strategy wrapper: delegate everything to the wrapped strategy.

Flower's own DP wrappers have this shape (``DifferentialPrivacyServerSideFixedClipping(strategy, ...)``):
a wrapper overrides only the steps it changes, so wrappers stack in any order around any strategy.
Attributes it does not have (sampling settings, the server loop's optional hooks such as
``encrypted`` or ``state_dict``) are looked up on the wrapped strategy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flwr.serverapp.strategy import Strategy

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.serverapp import Grid


class StrategyWrapper(Strategy):
    """A strategy that forwards every step to ``strategy``; subclasses override what they change."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def __getattr__(self, name: str) -> Any:
        if name == "strategy":  # not set yet (e.g. during unpickling): no infinite recursion
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def summary(self) -> None:
        """The wrapped strategy's summary."""
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's training messages."""
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The wrapped strategy's aggregation."""
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's evaluation messages."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The wrapped strategy's evaluation metrics."""
        return self.strategy.aggregate_evaluate(server_round, replies)
