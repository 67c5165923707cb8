"""``fedhist``: the server grows trees level by level from the clients' summed histograms (uaap.models.histtrees).

:class:`FedHist` keeps Flower's FedAvg sampling and evaluation and replaces the weighted mean by the histogram
protocol: the global "model" it sends is the growth state (bins, trees so far, open nodes); a training reply is
this client's statistics for that state; the sum of the replies advances the state (bins fitted, or each open
node split). One round is several such exchanges (:meth:`FedHist.busy` says when the round's trees are finished);
``server/federation.py`` runs them inside the round and checkpoints the state after it.

Every client takes part in every exchange (``fraction-train`` does not apply): a node's sums must come from the
same rows at every level. A client lost in the middle of a round leaves the rest of that round's levels to the
others (the tree is then grown on fewer rows below that level, not corrupted). Reply validation sits outside it,
as for every strategy, with :func:`uaap.models.histtrees.check_reply` against the request in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flwr.serverapp.strategy import FedAvg

from uaap.models import histtrees
from uaap.protocol import ARRAYS

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import Strategy

    from uaap.config import RunConfig

log = logging.getLogger("uaap.histtrees")


class FedHist(FedAvg):
    """FedAvg's sampling and summed evaluation; training replies' statistics are summed into the next state."""

    def __init__(self, spec: histtrees.HistSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.state: dict[str, Any] | None = None  # the request in flight

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Open the round's trees when nothing is growing, then ask every client for the state's statistics."""
        self.state = histtrees.start_round(self.spec, histtrees.from_record(arrays))
        return super().configure_train(server_round, histtrees.to_record(self.state), config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The next state, from the sum (ranges: min/max) of every valid reply's statistics."""
        valid, _ = self._check_and_log_replies(list(replies), is_train=True)
        if not valid or self.state is None:
            return None, None
        stats = [histtrees.from_record(m.content.array_records[ARRAYS]) for m in valid]
        before = self.state
        self.state = histtrees.advance(self.spec, before, histtrees.merge(histtrees.stage(before), stats))
        asked = ("ranges", "sketch", "histograms")[histtrees.stage(before)]
        log.debug(
            "round %d: %s from %d clients, %d nodes open", server_round, asked, len(valid), len(self.state["open"])
        )
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return histtrees.to_record(self.state), metrics

    def busy(self) -> bool:
        """Whether this round still has statistics to ask for (bins to fit, nodes open)."""
        return self.state is not None and histtrees.busy(self.state)

    def check(self, record: ArrayRecord) -> None:
        """Refuse a reply that does not answer the request in flight."""
        if self.state is None:
            raise ValueError("no request in flight")
        histtrees.check_reply(self.spec, self.state, histtrees.from_record(record))


def build_hist_strategy(
    cfg: RunConfig, num_nodes: int | None, n_features: int, n_classes: int, task: str, metrics_fn: Any
) -> Strategy:
    """FedHist inside reply validation; ``metrics_fn`` sums the evaluation replies' counts. Every client takes
    part in every exchange (fraction-train 1)."""
    from strategies.forest import tree_sampling, validate_trees

    sampling = {**tree_sampling(cfg, num_nodes, metrics_fn), "fraction_train": 1.0}
    inner = FedHist(histtrees.spec(cfg, n_features, n_classes, task), **sampling)
    return validate_trees(inner, cfg, n_classes, task, inner.check)
