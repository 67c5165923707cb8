"""Cross-validation folds (k-fold, stratified, time-series) and fold-by-fold scoring.

Folds are computed once, in the driver, and shared by every trial and by the baselines, so all
candidates are scored on exactly the same rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from uaap.errors import ConfigError, DataError

CV_METHODS = ("stratified", "kfold", "timeseries")
METRICS = {
    "accuracy": "max",
    "f1_macro": "max",
    "auc": "max",
    "loss": "min",
    "r2": "max",
    "rmse": "min",
    "mae": "min",
    "mse": "min",
}
REGRESSION_METRICS = ("r2", "rmse", "mae", "mse")

Fold = tuple[np.ndarray, np.ndarray]


def make_folds(y: np.ndarray, method: str = "stratified", k: int = 5, seed: int = 0) -> list[Fold]:
    """``k`` (train, validation) index pairs; time-series folds train on the past and test on the future.

    Stratified folds of a real-valued target (regression) are stratified by its quantile bins.
    """
    from sklearn.model_selection import KFold, StratifiedKFold, TimeSeriesSplit

    if method not in CV_METHODS:
        raise ConfigError(f"cv={method!r} is not supported; choose one of: {', '.join(CV_METHODS)}")
    if k < 2:
        raise ConfigError(f"folds={k}; cross-validation needs at least 2 folds")
    n = len(y)
    if n < 2 * k:
        raise DataError(f"{n} training rows are too few for {k} folds; use fewer folds or more data")
    if method == "stratified" and np.issubdtype(np.asarray(y).dtype, np.floating):
        from uaap.data import quantile_bins

        y = quantile_bins(y, k)
    if method == "stratified":
        counts = np.bincount(y)
        smallest = int(counts[counts > 0].min())
        if smallest < k:
            raise DataError(
                f"the rarest class has {smallest} training rows, fewer than folds={k}: use fewer folds or --cv kfold"
            )
        splitter: Any = StratifiedKFold(k, shuffle=True, random_state=seed)
    elif method == "kfold":
        splitter = KFold(k, shuffle=True, random_state=seed)
    else:
        splitter = TimeSeriesSplit(k)
    return [(np.asarray(tr), np.asarray(te)) for tr, te in splitter.split(np.zeros(n), y)]


def score(metric: str, y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Metrics of predicted probabilities (see :func:`uaap.training.classification_metrics`) incl. ``metric``;
    a one-column ``proba`` holds a regression model's predictions (MSE, RMSE, MAE, R2: :mod:`uaap.metrics`)."""
    from uaap.metrics import regression_metrics
    from uaap.training import classification_metrics

    if proba.ndim == 2 and proba.shape[1] == 1:
        y = np.asarray(y, dtype=np.float64)
        metrics = regression_metrics(y, proba[:, 0], center=float(y.mean()) if len(y) else 0.0)
    else:
        metrics = classification_metrics(y, proba)
    if metric not in metrics:
        raise ConfigError(
            f"metric={metric!r} is not available here (auc needs two classes); choose one of: {', '.join(metrics)}"
        )
    return metrics


def default_metric(n_classes: int) -> str:
    """What a search optimises unless told: accuracy, or R2 for a regression target (one output)."""
    return "r2" if n_classes == 1 else "accuracy"


def check_metric(metric: str, n_classes: int) -> str:
    """Validate the metric name for the task (``n_classes`` 1: regression); returns Tune's mode (``max``/``min``)."""
    if metric not in METRICS:
        raise ConfigError(f"metric={metric!r} is not supported; choose one of: {', '.join(METRICS)}")
    regression = n_classes == 1
    if regression != (metric in REGRESSION_METRICS):
        allowed = REGRESSION_METRICS if regression else tuple(m for m in METRICS if m not in REGRESSION_METRICS)
        raise ConfigError(
            f"metric={metric!r} does not score a {'regression' if regression else 'classification'} target; "
            f"choose one of: {', '.join(allowed)}"
        )
    if metric == "auc" and n_classes != 2:
        raise ConfigError(f"metric='auc' needs two classes; this data has {n_classes}: use accuracy or f1_macro")
    return METRICS[metric]


@dataclass(frozen=True)
class FoldResult:
    """One fold's metrics, the running mean of the target metric and the fit time."""

    fold: int
    metrics: dict[str, float]
    mean: float
    seconds: float


def iter_cv(
    build: Callable[[], Any],
    X: np.ndarray,
    y: np.ndarray,
    folds: list[Fold],
    n_classes: int,
    metric: str,
) -> Iterator[FoldResult]:
    """Fit a fresh estimator per fold and yield each fold's result as soon as it is known."""
    from uaap.automl.families import aligned_proba

    values: list[float] = []
    for i, (tr, te) in enumerate(folds):
        t0 = time.perf_counter()
        est = build()
        est.fit(X[tr], y[tr])
        metrics = score(metric, y[te], aligned_proba(est, X[te], n_classes))
        values.append(metrics[metric])
        yield FoldResult(i + 1, metrics, float(np.mean(values)), time.perf_counter() - t0)


def cross_validate(
    build: Callable[[], Any], X: np.ndarray, y: np.ndarray, folds: list[Fold], n_classes: int, metric: str
) -> list[float]:
    """The target metric on every fold (same folds, same scoring as the trials)."""
    return [r.metrics[metric] for r in iter_cv(build, X, y, folds, n_classes, metric)]
