"""The base of every UAAP strategy wrapper, and the optional hooks the server's round loop calls.

Flower's own DP wrappers have this shape (``DifferentialPrivacyServerSideFixedClipping(strategy, ...)``):
a wrapper overrides only the steps it changes, so wrappers stack around any strategy. A wrapper does not
forward unknown attributes: whatever needs another layer asks for it by type (:func:`find_layer`), and
the round loop finds hooks by their :class:`typing.Protocol` on every layer of the stack (:func:`layers`).

The hooks, each a small runtime-checkable protocol:

* :class:`Stateful`: ``state_key``, ``state_dict()`` / ``load_state_dict(state)``: checkpointed state
  (e.g. the privacy accountants), restored on resume;
* :class:`BudgetGate`: ``before_round(server_round) -> str | None``: a reason not to run that round;
* :class:`RoundReporter`: ``round_report(server_round) -> dict[str, float]``: extra round metrics;
* :class:`CiphertextModel`: ``encrypted``: the global arrays are ciphertext (no central evaluation, no
  plaintext model at the end).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from flwr.serverapp.strategy import Strategy

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.serverapp import Grid

S = TypeVar("S", bound=Strategy)


@runtime_checkable
class Stateful(Protocol):
    """A layer with state to checkpoint under ``state_key``."""

    state_key: str

    def state_dict(self) -> dict[str, Any]:
        """The state to checkpoint (JSON-serialisable)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...


@runtime_checkable
class BudgetGate(Protocol):
    """A layer that can stop the run before a round."""

    def before_round(self, server_round: int) -> str | None:
        """Why ``server_round`` must not run, or None."""
        ...


@runtime_checkable
class RoundReporter(Protocol):
    """A layer that adds metrics to each round's log."""

    def round_report(self, server_round: int) -> dict[str, float]:
        """Metrics for ``server_round``."""
        ...


@runtime_checkable
class CiphertextModel(Protocol):
    """A layer whose global arrays are ciphertext."""

    encrypted: bool


class StrategyWrapper(Strategy):
    """A strategy that forwards every step to ``strategy``; subclasses override what they change."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

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


def layers(strategy: Strategy) -> Iterator[Strategy]:
    """Every layer of a wrapped strategy, outermost first, ending with the strategy that does the work."""
    layer: Strategy | None = strategy
    while layer is not None:
        yield layer
        layer = layer.strategy if isinstance(layer, StrategyWrapper) else None


def innermost(strategy: Strategy) -> Strategy:
    """The strategy at the bottom of the stack (Flower's FedAvg, FedProx...)."""
    *_, last = layers(strategy)
    return last


def find_layer(strategy: Strategy, kind: type[S]) -> S | None:
    """The outermost layer of type ``kind``, or None."""
    return next((layer for layer in layers(strategy) if isinstance(layer, kind)), None)


def weighted_by_key(strategy: Strategy) -> str:
    """The metric the strategy weights replies by (Flower's ``weighted_by_key``, ``num-examples`` by default)."""
    from uaap.protocol import NUM_EXAMPLES

    return str(getattr(innermost(strategy), "weighted_by_key", NUM_EXAMPLES))


def is_encrypted(strategy: Strategy) -> bool:
    """Whether any layer makes the global arrays ciphertext."""
    return any(isinstance(layer, CiphertextModel) and layer.encrypted for layer in layers(strategy))
