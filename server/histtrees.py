"""The server's side of ``fedhist``: the first state, central evaluation, the final model.

The round loop (``server/federation.py``) runs a round's exchanges while ``strategies.histtrees.FedHist`` is busy
and checkpoints the state after the round, so a run resumes at its next round with the same bins and trees. The
final trees are saved as the family's own estimator in ``model.skops``: an ``XGBClassifier`` loaded from the
XGBoost JSON they translate to (model=xgboost), a scikit-learn forest (model=random_forest); ``uaap export``
takes either as it takes a central one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uaap import workspace
from uaap.config import RunConfig
from uaap.models import histtrees

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, MetricRecord

    from uaap.data import Dataset


def grows_histograms(cfg: RunConfig) -> bool:
    """Whether the server grows the run's trees from summed histograms."""
    return cfg.strategy == "fedhist"


def initial_state(cfg: RunConfig, meta: Dataset) -> ArrayRecord:
    """Round 1's state: no bins, no trees."""
    return histtrees.to_record(histtrees.initial_state(histtrees.spec(cfg, meta.n_features, meta.n_classes, meta.task)))


def evaluator(cfg: RunConfig, test: Dataset) -> Callable[..., MetricRecord]:
    """``evaluate_fn(round, arrays)``: the finished trees' metrics on the server's held-out rows, from counts."""
    from flwr.app import MetricRecord

    from uaap.metrics import metrics_from_counts
    from uaap.protocol import NUM_EXAMPLES

    spec = histtrees.spec(cfg, test.n_features, test.n_classes, test.task)

    def evaluate_fn(server_round: int, arrays: ArrayRecord, threshold: float | None = None) -> MetricRecord:
        counts = histtrees.evaluate_counts(spec, histtrees.from_record(arrays), test)
        return MetricRecord({**metrics_from_counts(counts), NUM_EXAMPLES: len(test.y)})

    return evaluate_fn


def final_estimator(cfg: RunConfig, state: dict[str, Any], meta: Dataset) -> Any:
    """The finished trees as the family's estimator: an ``XGBClassifier`` or a scikit-learn forest (None: no tree)."""
    from uaap.models import boosting, forest

    spec = histtrees.spec(cfg, meta.n_features, meta.n_classes, meta.task)
    trees = histtrees.finished(state)
    if not trees.n_trees:
        return None
    if spec.kind == "boosting":
        settings = boosting.settings(cfg, meta.n_features, meta.n_classes)
        return boosting.to_estimator(histtrees.to_booster_json(spec, trees), settings)
    from uaap.models import estimators

    # Every tree saw every client's rows: the forest averages its trees as scikit-learn's does (no class weights,
    # which only a forest of one-client trees needs), in the estimator contract's own class.
    grown = forest.to_sklearn(trees, meta.n_features, forest.outputs(meta.task, meta.n_classes))
    plain = grown if spec.regression else grown.forest_
    out = (estimators.RandomForestRegressor if spec.regression else estimators.RandomForestClassifier)()
    out.__dict__.update(plain.__dict__)
    return out


def save_trees(rd: workspace.RunDir, cfg: RunConfig, arrays: ArrayRecord, meta: Dataset) -> Path | None:
    """The final trees in ``model.skops`` (None when no round finished a tree)."""
    from uaap.data import estimator_meta

    state = histtrees.from_record(arrays)
    model = final_estimator(cfg, state, meta)
    if model is None:
        return None
    spec = histtrees.spec(cfg, meta.n_features, meta.n_classes, meta.task)
    params: dict[str, Any] = {"max_depth": spec.max_depth, "max_bins": spec.max_bins, "strategy": cfg.strategy}
    params |= {"learning_rate": spec.eta} if spec.kind == "boosting" else {
        "trees_per_round": spec.trees_per_round, "min_samples_leaf": spec.min_samples_leaf}  # fmt: skip
    info = estimator_meta(cfg.model, params, cfg, meta, rd.run_id, trees=histtrees.finished(state).n_trees)
    return workspace.save_estimator(rd.path / workspace.ESTIMATOR_FILE, model, info)
