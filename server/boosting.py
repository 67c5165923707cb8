"""The server's side of a federated XGBoost run: the empty first model, central evaluation and the final model.

The round loop (``server/federation.py``) stays the same for boosters: Flower's ``FedXgbBagging``/``FedXgbCyclic``
(``strategies/boosting.py``) turn replies into the next global booster, and the loop checkpoints it like any
ArrayRecord, so a run resumes from its last round. The final booster is stored as a fitted ``XGBClassifier`` in
``model.skops`` (skops: data, no pickle), which ``uaap export RUN`` turns into ONNX or C like any XGBoost model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from uaap import workspace
from uaap.config import RunConfig
from uaap.models import boosting, family

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, MetricRecord

    from uaap.data import Dataset


def boosted(cfg: RunConfig) -> bool:
    """Whether the run's family federates by boosting (XGBoost), not by weights."""
    return family(cfg.model).capabilities.federated == "boosting"


def initial_booster() -> ArrayRecord:
    """Round 1's global model: empty (the first clients start their boosters, as in Flower's XGBoost example)."""
    return boosting.empty_record()


def evaluator(cfg: RunConfig, test: Dataset) -> Callable[[int, ArrayRecord], MetricRecord]:
    """``evaluate_fn(round, arrays)``: the global booster's metrics on the server's held-out rows, from counts."""
    from flwr.app import MetricRecord

    from uaap.metrics import metrics_from_counts
    from uaap.protocol import NUM_EXAMPLES

    settings = boosting.settings(cfg, test.n_features, test.n_classes)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        counts = boosting.evaluate_counts(boosting.from_record(arrays), test, settings)
        return MetricRecord({**metrics_from_counts(counts), NUM_EXAMPLES: len(test.y)})

    return evaluate_fn


def save_booster(rd: workspace.RunDir, cfg: RunConfig, arrays: ArrayRecord, meta: Dataset) -> Path | None:
    """The final booster as an ``XGBClassifier`` in ``model.skops`` (None when no round added a tree)."""
    from uaap.data import estimator_meta

    raw = boosting.from_record(arrays)
    if not raw:
        return None
    settings = boosting.settings(cfg, meta.n_features, meta.n_classes)
    params = {"max_depth": settings.max_depth, "learning_rate": settings.eta, "strategy": cfg.strategy}
    info = estimator_meta("xgboost", params, cfg, meta, rd.run_id, trees=boosting.count_trees(raw))
    return workspace.save_estimator(rd.path / workspace.ESTIMATOR_FILE, boosting.to_estimator(raw, settings), info)
