"""Per-series forecasts: seasonal naive, ARIMA/SARIMA and exponential smoothing (statsmodels), Prophet, and a
global network's recursive forecast. Each returns a :class:`Forecast` of ``horizon`` values, with a 95% interval
where the model gives one (statsmodels' state-space models and Prophet do; seasonal naive and the networks do not).

statsmodels and Prophet are imported inside the functions that fit (the ``timeseries`` extra).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from uaap.errors import DataError
from uaap.forecast.series import window_inputs

if TYPE_CHECKING:
    from torch import nn

INTERVAL = 0.95  # the interval's coverage where a model gives one


@dataclass(frozen=True)
class Forecast:
    """A forecast of ``horizon`` values, and its interval (lower, upper) where the model gives one."""

    model: str
    mean: np.ndarray
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None


def seasonal_naive(history: np.ndarray, horizon: int, period: int) -> Forecast:
    """Each future value is the value one season (``period`` steps) earlier: the baseline MASE is scaled by."""
    history = np.asarray(history, dtype=np.float64)
    if len(history) < period:
        raise DataError(f"seasonal naive needs a season of history: {len(history)} points < seasonal-period={period}")
    last = history[len(history) - period :]
    return Forecast("seasonal_naive", np.resize(last, horizon).astype(np.float64))


def sarima_orders(period: int) -> tuple[tuple[int, int, int], tuple[int, int, int, int]]:
    """The orders :func:`arima` fits: ARIMA(1,1,1), with a seasonal (0,1,1) part of ``period`` when there is one."""
    return (1, 1, 1), ((0, 1, 1, period) if period > 1 else (0, 0, 0, 0))


def arima(
    history: np.ndarray,
    horizon: int,
    period: int,
    order: tuple[int, int, int] | None = None,
    seasonal_order: tuple[int, int, int, int] | None = None,
) -> Forecast:
    """ARIMA/SARIMA by statsmodels' ``ARIMA`` (exact likelihood, state space), default orders
    :func:`sarima_orders`; the interval is statsmodels' 95% prediction interval."""
    from statsmodels.tsa.arima.model import ARIMA  # type: ignore[import-untyped]  # statsmodels ships no hints

    default, seasonal_default = sarima_orders(period)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on short series; the forecast is what we judge
        fit = ARIMA(
            np.asarray(history, dtype=np.float64),
            order=order or default,
            seasonal_order=seasonal_order or seasonal_default,
        ).fit()
        pred = fit.get_forecast(horizon)
    ci = np.asarray(pred.conf_int(alpha=1 - INTERVAL))
    return Forecast("arima", np.asarray(pred.predicted_mean, dtype=np.float64), ci[:, 0], ci[:, 1])


def exponential_smoothing(history: np.ndarray, horizon: int, period: int) -> Forecast:
    """Holt-Winters exponential smoothing as a state-space model (statsmodels' ``ETSModel``: additive error, trend
    and, when there is a season, seasonality), with its 95% prediction interval."""
    import pandas as pd
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel  # type: ignore[import-untyped]

    history = np.asarray(history, dtype=np.float64)  # a pandas Series below: ETSModel's intervals need an index
    seasonal = "add" if period > 1 and len(history) >= 2 * period else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = ETSModel(
            pd.Series(history),
            error="add",
            trend="add",
            seasonal=seasonal,
            seasonal_periods=period if seasonal else None,
        ).fit(disp=False)
        frame = fit.get_prediction(start=len(history), end=len(history) + horizon - 1).summary_frame(alpha=1 - INTERVAL)
    return Forecast(
        "ets",
        frame["mean"].to_numpy(dtype=np.float64),
        frame["pi_lower"].to_numpy(dtype=np.float64),
        frame["pi_upper"].to_numpy(dtype=np.float64),
    )


def prophet(history: np.ndarray, horizon: int, period: int) -> Forecast:
    """Prophet: a piecewise-linear trend plus one Fourier season of ``period`` steps, 95% interval from 200 simulated
    paths (seeded, so a run repeats). Prophet reads dates and scales time to [0, 1] itself, so the series is given
    one step a day and the season ``period`` days: any regular series fits, whatever its real step. Fitted with the
    Stan model Prophet's wheel ships (no download); cmdstanpy's per-fit INFO lines are silenced."""
    import logging

    import pandas as pd

    history = np.asarray(history, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cmdstanpy.utils.logging import get_logger
        from prophet import Prophet

        get_logger().setLevel(logging.WARNING)  # made on first use at level DEBUG, with an INFO handler of its own
        logging.getLogger("prophet").setLevel(logging.WARNING)
        stamps = pd.date_range("2000-01-01", periods=len(history) + horizon, freq="D")
        model = Prophet(
            yearly_seasonality=False, weekly_seasonality=False, daily_seasonality=False, interval_width=INTERVAL,
            uncertainty_samples=200,
        )  # fmt: skip
        if period > 1:
            model.add_seasonality(name="season", period=period, fourier_order=max(1, min(10, period // 2)))
        state = np.random.get_state()  # Prophet's interval paths draw from numpy's global generator
        np.random.seed(0)
        try:
            model.fit(pd.DataFrame({"ds": stamps[: len(history)], "y": history}))
            frame = model.predict(pd.DataFrame({"ds": stamps[len(history) :]}))
        finally:
            np.random.set_state(state)
    return Forecast(
        "prophet",
        frame["yhat"].to_numpy(dtype=np.float64),
        frame["yhat_lower"].to_numpy(dtype=np.float64),
        frame["yhat_upper"].to_numpy(dtype=np.float64),
    )


def network(
    model: nn.Module, history: np.ndarray, horizon: int, lags: int, scale: float, name: str = "", period: int = 0
) -> Forecast:
    """A one-step network's forecast: each predicted value joins the window that predicts the next (windows scaled
    as in training: :func:`uaap.forecast.series.window_inputs`; ``period``: the network predicts the change from the
    value one season earlier, :func:`uaap.forecast.series.windows`)."""
    import torch

    values = list(np.asarray(history, dtype=np.float64)[-lags:])
    if len(values) < lags:
        raise DataError(f"the network reads windows of lags={lags} values; this history has {len(values)}")
    model.eval()
    out = []
    with torch.no_grad():
        for _ in range(horizon):
            X, means = window_inputs(np.asarray(values[-lags:])[None, :], scale)
            base = values[-period] if period else float(means[0])
            step = float(model(torch.from_numpy(X)).reshape(-1)[0]) * scale + base
            out.append(step)
            values.append(step)
    return Forecast(name or str(getattr(model, "cell", "network")), np.asarray(out))


Forecaster = Callable[[np.ndarray, int], Forecast]
STATISTICAL = ("seasonal_naive", "arima", "ets", "prophet")  # the per-series models, fitted on each series alone


def statistical(name: str, period: int) -> Forecaster:
    """The per-series model called ``name`` (:data:`STATISTICAL`) as ``f(history, horizon)``."""
    if name == "seasonal_naive":
        return lambda h, n: seasonal_naive(h, n, period)
    if name == "arima":
        return lambda h, n: arima(h, n, period)
    if name == "ets":
        return lambda h, n: exponential_smoothing(h, n, period)
    if name == "prophet":
        return lambda h, n: prophet(h, n, period)
    raise DataError(f"forecast model {name!r} is not known; choose one of: {', '.join(STATISTICAL)}")
