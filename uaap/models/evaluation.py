"""``evaluate(X, y)`` for every classifier and regressor family, from the summable counts a federated client sends.

Its own module, below :mod:`uaap.models.estimators` and :mod:`uaap.models.central`, which both mix it in.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Evaluates:
    """``evaluate(X, y)`` for a fitted scikit-learn-style classifier or regressor, from summable counts."""

    def evaluate(self, X: Any, y: Any) -> dict[str, float]:
        """The task's metrics of this estimator on rows ``X`` with true targets ``y`` (as :mod:`uaap.metrics`)."""
        from uaap.metrics import metrics_from_counts

        return metrics_from_counts(evaluate_counts(self, np.asarray(X), np.asarray(y)))


def evaluate_counts(estimator: Any, X: np.ndarray, y: np.ndarray, n_classes: int | None = None) -> dict[str, Any]:
    """The summable counts of a fitted classifier or regressor on rows ``X`` (what a federated client sends).

    A classifier's probability columns are placed at its ``classes_`` (integer labels 0..k-1), so one trained
    without some class still scores all ``n_classes`` (default: its classes and ``y``'s).
    """
    from uaap.metrics import classification_counts, regression_counts

    regressor = getattr(estimator, "_estimator_type", "") == "regressor" or not hasattr(estimator, "predict_proba")
    if n_classes == 1 or regressor:
        pred = np.asarray(estimator.predict(X), dtype=np.float64)
        return regression_counts(y, pred, center=float(np.mean(y)) if len(y) else 0.0)
    classes = np.asarray(estimator.classes_, dtype=np.int64)
    k = n_classes or int(max(classes.max(), np.max(y) if len(y) else 0)) + 1
    proba = np.zeros((len(X), k))
    proba[:, classes] = estimator.predict_proba(X)
    return classification_counts(np.asarray(y, dtype=np.int64), proba)
