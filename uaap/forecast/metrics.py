"""Forecast metrics from sums: what each client (or each series) contributes is added, never a ratio averaged.

Per series a client adds, over its held-out points: the count, the sum of |errors|, of squared errors, of the
sMAPE terms ``2|e| / (|y| + |yhat|)``, and of the errors scaled by the series' MASE scale (the in-sample mean
absolute error of the seasonal-naive forecast on its history). The totals give MAE, RMSE, sMAPE (percent) and
MASE of all points pooled (MASE: the mean of the scaled errors, as the M4 competition pools it when every series has
the same horizon). Expanding-window cross-validation sums the same counts over its folds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from uaap.errors import DataError
from uaap.protocol import FORECAST_ABS as ABS
from uaap.protocol import FORECAST_N as COUNT
from uaap.protocol import FORECAST_SCALED as SCALED
from uaap.protocol import FORECAST_SMAPE as SMAPE
from uaap.protocol import FORECAST_SQ as SQ

if TYPE_CHECKING:
    from uaap.forecast.models import Forecaster

KEYS = (COUNT, ABS, SQ, SMAPE, SCALED)  # what a client sends (a federated run's evaluation replies carry them)
PREFIX = "forecast-"  # metrics_from_counts' keys as a run records them beside its other metrics: forecast-mase, ...


def mase_scale(history: np.ndarray, period: int) -> float:
    """The in-sample mean |y_t - y_{t-m}| of the seasonal-naive forecast (m = ``period``; 1: naive)."""
    history = np.asarray(history, dtype=np.float64)
    if len(history) <= period:
        raise DataError(f"MASE needs more than one season of history: {len(history)} points, seasonal-period={period}")
    scale = float(np.mean(np.abs(history[period:] - history[:-period])))
    return scale if scale > 1e-12 else 1.0


def forecast_counts(actual: np.ndarray, forecast: np.ndarray, scale: float) -> dict[str, float]:
    """The summable counts of one series' forecast against its actual values (``scale``: :func:`mase_scale`)."""
    y = np.asarray(actual, dtype=np.float64)
    f = np.asarray(forecast, dtype=np.float64)
    if y.shape != f.shape:
        raise DataError(f"forecast of {f.shape} values against {y.shape} actual values")
    err = np.abs(y - f)
    denom = np.abs(y) + np.abs(f)
    smape = np.divide(2 * err, denom, out=np.zeros_like(err), where=denom > 0)
    return {
        COUNT: float(len(y)),
        ABS: float(err.sum()),
        SQ: float((err**2).sum()),
        SMAPE: float(smape.sum()),
        SCALED: float((err / scale).sum()),
    }


def add_counts(parts: Iterable[dict[str, float]]) -> dict[str, float]:
    """The sum of several clients' (or series') counts."""
    total = dict.fromkeys(KEYS, 0.0)
    for p in parts:
        for k in KEYS:
            total[k] += float(p[k])
    return total


def metrics_from_counts(counts: dict[str, float]) -> dict[str, float]:
    """MAE, RMSE, sMAPE (percent) and MASE of summed counts."""
    n = counts[COUNT]
    if n <= 0:
        raise DataError("no forecast points to score")
    return {
        "mae": counts[ABS] / n,
        "rmse": float(np.sqrt(counts[SQ] / n)),
        "smape": 100.0 * counts[SMAPE] / n,
        "mase": counts[SCALED] / n,
    }


def expanding_folds(length: int, horizon: int, folds: int, min_train: int) -> list[int]:
    """Where each fold's training part ends (its test is the next ``horizon`` points), last fold ending at
    ``length - horizon``: training parts grow by ``horizon`` from fold to fold (an expanding window)."""
    ends = [length - horizon * (folds - i) for i in range(folds)]
    if ends[0] < min_train:
        raise DataError(
            f"{folds} expanding-window folds of horizon {horizon} need {min_train + folds * horizon} points; the "
            f"series has {length}: use fewer folds or a shorter horizon"
        )
    return ends


def cross_validate(
    forecaster: Forecaster, values: np.ndarray, horizon: int, period: int, folds: int = 3, min_train: int = 0
) -> dict[str, float]:
    """Summed counts of ``forecaster`` over expanding-window folds of one series (each fold scaled by its own
    history's MASE scale); :func:`metrics_from_counts` turns them into metrics."""
    values = np.asarray(values, dtype=np.float64)
    parts = []
    for end in expanding_folds(len(values), horizon, folds, max(min_train, period + 1)):
        history = values[:end]
        parts.append(
            forecast_counts(values[end : end + horizon], forecaster(history, horizon).mean, mase_scale(history, period))
        )
    return add_counts(parts)


def select(
    candidates: dict[str, Forecaster], values: np.ndarray, horizon: int, period: int, folds: int = 3
) -> tuple[str, dict[str, float]]:
    """The candidate with the lowest expanding-window cross-validated MASE on ``values`` (a series' history: its
    held-out tail must not be in it), and every candidate's CV MASE."""
    scores = {
        name: metrics_from_counts(cross_validate(f, values, horizon, period, folds))["mase"]
        for name, f in candidates.items()
    }
    return min(scores, key=lambda k: scores[k]), scores
