"""XGBoost federated by Flower's own ``FedXgbBagging`` and ``FedXgbCyclic`` (wrapped, not forked).

The stack, from the inside out:

* Flower's strategy, as Flower ships it: bagging appends every accepted client's new trees to the global booster;
  cyclic hands one client's whole booster to the next client (one client trains per round, in a fixed order);
* :class:`WholeRounds` (bagging only, when a reply holds more than one tree: several classes or local rounds):
  Flower appends ``num_parallel_tree`` trees per reply and marks them class 0, so the reply is made to declare
  all its trees and the aggregate gets XGBoost's per-class layout back (:mod:`uaap.models.boosting`);
* :class:`ValidateBoosters`, outermost: the records and metrics of :class:`strategies.validation.ValidateReplies`,
  and instead of an array layout the booster itself: parsed under a size bound, this run's objective, classes,
  features and fixed intercept, exactly the trees the round expects, every tree well formed, and under cyclic
  training the global trees unchanged in front. A bad reply is rejected and counted, never fatal.

Under cyclic training each round's model is one client's booster: ``min-contributors`` cannot apply (there is one
contributor per round by design) and is lowered to 1 (logged): choose bagging where no one client's model may
be released.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from strategies.validation import InvalidReply, ValidateReplies, _check_metrics, _check_records
from strategies.wrapper import StrategyWrapper
from uaap.config import RunConfig
from uaap.models import boosting
from uaap.protocol import ARRAYS, METRICS

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import Strategy

log = logging.getLogger("uaap.boosting")


def build_boosting_strategy(
    cfg: RunConfig,
    *,
    n_features: int,
    n_classes: int,
    metrics: Callable[[list[RecordDict], str], MetricRecord],
    num_nodes: int | None = None,
) -> ValidateBoosters:
    """Flower's ``FedXgbBagging`` or ``FedXgbCyclic`` for ``cfg``, under :class:`ValidateBoosters`; ``metrics``
    aggregates evaluation replies (``strategies.base.summed_metrics``: from summed counts)."""
    from flwr.serverapp.strategy import FedXgbBagging, FedXgbCyclic

    settings = boosting.settings(cfg, n_features, n_classes)
    available = cfg.min_clients if num_nodes is None else min(cfg.min_clients, num_nodes)
    inner: Strategy
    if cfg.strategy == "fedxgb-cyclic":
        inner = FedXgbCyclic(  # one client per round: Flower allows only all (1.0) or none (0.0) here
            fraction_train=1.0,
            fraction_evaluate=1.0 if cfg.fraction_evaluate > 0 else 0.0,
            min_available_nodes=available,
            evaluate_metrics_aggr_fn=metrics,
        )
        if cfg.min_contributors > 1:
            log.info(
                "fedxgb-cyclic: each round's model is one client's booster; min-contributors=%d does not apply",
                cfg.min_contributors,
            )
    else:
        inner = FedXgbBagging(
            fraction_train=cfg.fraction_train,
            fraction_evaluate=cfg.fraction_evaluate,
            min_train_nodes=cfg.min_clients,
            min_evaluate_nodes=min(cfg.min_clients, 1 if cfg.fraction_evaluate == 0 else cfg.min_clients),
            min_available_nodes=available,
            evaluate_metrics_aggr_fn=metrics,
        )
        if settings.groups * settings.local_rounds > 1:
            inner = WholeRounds(inner, settings)
    return ValidateBoosters(
        inner,
        settings,
        cyclic=cfg.strategy == "fedxgb-cyclic",
        run_id=cfg.run_id,
        max_num_examples=cfg.max_num_examples,
        min_contributors=1 if cfg.strategy == "fedxgb-cyclic" else cfg.min_contributors,
        n_classes=n_classes,
    )


class WholeRounds(StrategyWrapper):
    """Flower's bagging keeps every tree of a reply (K classes, or several local rounds), in XGBoost's layout."""

    def __init__(self, strategy: Strategy, settings: boosting.BoostSettings) -> None:
        super().__init__(strategy)
        self.settings = settings

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Each reply declares all its trees; Flower appends them; the aggregate's classes are restored."""
        replies = list(replies)
        for msg in replies:
            if not msg.has_error():
                raw = boosting.from_record(msg.content.array_records[ARRAYS])
                msg.content.array_records[ARRAYS] = boosting.to_record(boosting.as_one_group(raw, self.settings))
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is not None:
            arrays = boosting.to_record(boosting.restore_classes(boosting.from_record(arrays), self.settings))
        return arrays, metrics


class ValidateBoosters(ValidateReplies):
    """:class:`ValidateReplies` for boosters: each training reply must be this round's booster (module docstring)."""

    def __init__(self, strategy: Strategy, settings: boosting.BoostSettings, *, cyclic: bool, **kwargs: Any) -> None:
        super().__init__(strategy, **kwargs)
        self.settings = settings
        self.cyclic = cyclic
        self.global_trees: list[dict[str, Any]] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global booster's trees (the server's own model), then let Flower's strategy sample."""
        self.global_trees = boosting.trees_of(boosting.from_record(arrays))
        return super().configure_train(server_round, arrays, config, grid)

    def check_train(self, msg: Message) -> None:
        """Records and metrics as for every reply; then the booster against this round's expectations."""
        _check_records(msg, arrays=True)
        _check_metrics(msg.content.metric_records[METRICS], self.train_rules, {})
        added = self.settings.local_rounds * self.settings.groups
        trees = added + (len(self.global_trees) if self.cyclic else 0)
        try:
            raw = boosting.from_record(msg.content.array_records[ARRAYS], self.settings.max_bytes(trees))
            boosting.check_booster(raw, self.settings, trees=trees, prefix=self.global_trees if self.cyclic else None)
        except boosting.BoosterError as exc:
            raise InvalidReply(str(exc)) from None
