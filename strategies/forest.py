"""``fedtrees``: a random forest federated by ensembling the trees every client grows on its own rows.

:class:`FedTrees` keeps Flower's FedAvg sampling and evaluation and replaces the weighted mean by a concatenation:
the round's global forest is the previous one plus every accepted reply's trees (:mod:`uaap.models.forest`), in
node-id order so that a rerun builds the same forest. Reply validation sits outside it, as for every strategy,
with the forest's own array check (:func:`uaap.models.forest.check`) in place of the weights' fixed layout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flwr.serverapp.strategy import FedAvg

from uaap.config import RunConfig
from uaap.models import forest

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, Message, MetricRecord
    from flwr.serverapp.strategy import Strategy

log = logging.getLogger("uaap.forest")


class FedTrees(FedAvg):
    """FedAvg's sampling and summed evaluation; training replies' trees are appended to the global forest."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.current: ArrayRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: Any, grid: Any) -> Iterable[Message]:
        """Remember the global forest (this round adds to it), then sample as FedAvg does."""
        self.current = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The global forest with every valid reply's trees appended (replies in node-id order)."""
        valid, _ = self._check_and_log_replies(list(replies), is_train=True)
        if not valid:
            return None, None
        ordered = sorted(valid, key=lambda m: int(m.metadata.src_node_id))
        grown = [forest.from_record(next(iter(m.content.array_records.values()))) for m in ordered]
        before = forest.from_record(self.current) if self.current is not None else None
        merged = forest.merge(([before] if before is not None and before.n_trees else []) + grown)
        metrics = self.train_metrics_aggr_fn([m.content for m in ordered], self.weighted_by_key)
        log.info("round %d: %d trees from %d clients, %d in the forest", server_round,
                 sum(g.n_trees for g in grown), len(grown), merged.n_trees)  # fmt: skip
        return forest.to_record(merged), metrics


def build_trees_strategy(
    cfg: RunConfig, num_nodes: int | None, n_features: int, n_classes: int, task: str, metrics_fn: Any
) -> Strategy:
    """FedTrees inside reply validation (which checks each reply's forest against the data's shape);
    ``metrics_fn`` sums the evaluation replies' counts (``strategies.base.summed_metrics``)."""
    n_outputs = forest.outputs(task, n_classes)

    def check_forest(record: ArrayRecord) -> None:
        forest.check(forest.from_record(record), n_features, n_outputs, regression=task != "classification")

    inner = FedTrees(**tree_sampling(cfg, num_nodes, metrics_fn))
    return validate_trees(inner, cfg, n_classes, task, check_forest)


def tree_sampling(cfg: RunConfig, num_nodes: int | None, metrics_fn: Any) -> dict[str, Any]:
    """FedAvg's sampling and evaluation settings of a tree federation (fedtrees, fedhist)."""
    return {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_clients,
        "min_evaluate_nodes": cfg.min_clients if cfg.fraction_evaluate > 0 else 0,
        "min_available_nodes": cfg.min_clients if num_nodes is None else min(cfg.min_clients, num_nodes),
        "evaluate_metrics_aggr_fn": metrics_fn,
    }


def validate_trees(
    inner: Strategy, cfg: RunConfig, n_classes: int, task: str, check: Callable[[ArrayRecord], None]
) -> Strategy:
    """``inner`` under reply validation, with ``check`` in place of the weights' fixed layout."""
    from strategies.validation import ValidateReplies

    return ValidateReplies(
        inner,
        cfg.run_id,
        max_num_examples=cfg.max_num_examples,
        min_contributors=cfg.min_contributors,
        n_classes=n_classes,
        task=task,
        check_arrays=check,
    )
