"""Families trained centrally as scikit-learn-compatible estimators (``uaap train --model random_forest``).

The torch families train through :mod:`uaap.training`; the others are estimators fitted on the pooled training
rows with the run's own settings, so a central run is the reference its federated twin is compared with: a
central forest grows ``trees-per-client x num-clients`` trees, as many as one federated round keeps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from uaap.config import RunConfig
from uaap.errors import ConfigError

ESTIMATOR_FAMILIES = ("random_forest",)


def central_estimator(cfg: RunConfig, n_classes: int) -> Any:
    """The unfitted estimator ``cfg.model`` names (``n_classes`` 1: a regressor)."""
    if cfg.model == "random_forest":
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        kind = RandomForestRegressor if n_classes == 1 else RandomForestClassifier
        return kind(
            n_estimators=cfg.trees_per_client * cfg.num_clients,
            max_depth=cfg.tree_max_depth,
            min_samples_leaf=cfg.tree_min_samples_leaf,
            random_state=cfg.seed,
            n_jobs=1,
        )
    raise ConfigError(
        f"model={cfg.model!r} has no central estimator; estimator families: {', '.join(ESTIMATOR_FAMILIES)}"
    )


def evaluate_counts(
    estimator: Any, X: np.ndarray, y: np.ndarray, n_classes: int, center: float = 0.0
) -> dict[str, Any]:
    """The summable counts of a fitted estimator on rows ``X`` (the same the federated clients send)."""
    from uaap.metrics import classification_counts, regression_counts

    if n_classes == 1:
        return regression_counts(y, np.asarray(estimator.predict(X), dtype=np.float64), center=center)
    proba = np.zeros((len(X), n_classes))
    proba[:, np.asarray(estimator.classes_, dtype=np.int64)] = estimator.predict_proba(X)
    return classification_counts(y, proba)
