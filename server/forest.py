"""The server's side of a federated random forest: the empty first forest, central evaluation, the final model.

The round loop (``server/federation.py``) is the same as for any family: ``strategies.forest.FedTrees`` turns
replies into the next global forest and the loop checkpoints it like any ArrayRecord. The final forest is saved
as a fitted scikit-learn ``RandomForestClassifier``/``RandomForestRegressor`` in ``model.skops`` (data, no
pickle), which ``uaap export RUN`` converts like any central forest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from uaap import workspace
from uaap.config import RunConfig
from uaap.models import family, forest

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, MetricRecord

    from uaap.data import Dataset


def grows_trees(cfg: RunConfig) -> bool:
    """Whether the run's family federates by ensembling the clients' trees."""
    return family(cfg.model).capabilities.federated == "trees"


def initial_forest(meta: Dataset) -> ArrayRecord:
    """Round 1's global model: a forest of no trees."""
    return forest.to_record(forest.empty(forest.outputs(meta.task, meta.n_classes)))


def evaluator(cfg: RunConfig, test: Dataset) -> Callable[..., MetricRecord]:
    """``evaluate_fn(round, arrays, threshold=None)``: the global forest's metrics on the server's held-out rows,
    from counts (an isolation forest flags rows above the round's threshold, chosen on the clients' validation)."""
    from flwr.app import MetricRecord

    from uaap.metrics import metrics_from_counts
    from uaap.protocol import NUM_EXAMPLES

    def evaluate_fn(server_round: int, arrays: ArrayRecord, threshold: float | None = None) -> MetricRecord:
        trees = forest.from_record(arrays)
        if not trees.n_trees:
            return MetricRecord({NUM_EXAMPLES: 0})
        model = forest.model_of(trees, cfg.model, test.n_features, test.task, test.n_classes)
        counts = forest.evaluate_counts(model, test)
        metrics = metrics_from_counts(counts, anomaly_quantile=cfg.anomaly_quantile, threshold=threshold)
        return MetricRecord({**metrics, NUM_EXAMPLES: len(test.y)})

    return evaluate_fn


def save_forest(rd: workspace.RunDir, cfg: RunConfig, arrays: ArrayRecord, meta: Dataset) -> Path | None:
    """The final forest as a scikit-learn estimator in ``model.skops`` (None when no round grew a tree)."""
    from uaap.anomaly import threshold_meta
    from uaap.data import estimator_meta

    trees = forest.from_record(arrays)
    if not trees.n_trees:
        return None
    params = {"trees_per_client": cfg.trees_per_client, "max_depth": cfg.tree_max_depth,
              "min_samples_leaf": cfg.tree_min_samples_leaf, "strategy": cfg.strategy}  # fmt: skip
    extra = {"trees": trees.n_trees, **threshold_meta(rd, meta.task)}
    info = estimator_meta(cfg.model, params, cfg, meta, rd.run_id, **extra)
    model = forest.model_of(trees, cfg.model, meta.n_features, meta.task, meta.n_classes)
    return workspace.save_estimator(rd.path / workspace.ESTIMATOR_FILE, model, info)
