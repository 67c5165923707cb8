"""Forecasting library: our ARIMA against statsmodels called directly, metrics from summed counts against the pooled
formulas, expanding-window folds, and bad time series refused with the value named."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from uaap.config import RunConfig
from uaap.errors import ConfigError, DataError
from uaap.forecast import metrics, models, series


def test_our_arima_equals_statsmodels_own_fit() -> None:
    from statsmodels.tsa.arima.model import ARIMA

    s = series.generate(1, 60, 12, seed=3)[0]
    history = s.history(6)
    ours = models.arima(history, 6, 12)
    reference = ARIMA(history, order=(1, 1, 1), seasonal_order=(0, 1, 1, 12)).fit().get_forecast(6)
    diff = np.abs(ours.mean - np.asarray(reference.predicted_mean)).max()
    print(f"ARIMA vs statsmodels: max |forecast diff| {diff:.1e}")
    assert diff <= 1e-6
    np.testing.assert_allclose(ours.lower, np.asarray(reference.conf_int(alpha=0.05))[:, 0], atol=1e-6)
    assert ours.lower is not None and ours.upper is not None and np.all(ours.lower < ours.mean)
    assert np.all(ours.mean < ours.upper)


def test_exponential_smoothing_and_seasonal_naive_forecast_a_seasonal_series() -> None:
    s = series.generate(1, 60, 12, seed=1)[0]
    history, tail = s.history(12), s.tail(12)
    naive = models.seasonal_naive(history, 12, 12)
    np.testing.assert_array_equal(naive.mean, history[-12:])  # one season earlier, point by point
    ets = models.exponential_smoothing(history, 12, 12)
    assert ets.lower is not None and np.all(ets.lower < tail.max()) and len(ets.mean) == 12
    flat = np.abs(tail - history.mean()).mean()  # the series' mean as a forecast: what a seasonal model must beat
    assert np.abs(ets.mean - tail).mean() < flat


def test_summed_counts_give_the_pooled_metrics() -> None:
    from sklearn.metrics import mean_absolute_error

    rng = np.random.default_rng(0)
    actuals = [rng.normal(100, 10, 6) for _ in range(3)]
    preds = [a + rng.normal(0, 3, 6) for a in actuals]
    histories = [rng.normal(100, 10, 30) for _ in range(3)]
    scales = [metrics.mase_scale(h, 4) for h in histories]
    clients = [metrics.forecast_counts(a, p, s) for a, p, s in zip(actuals, preds, scales, strict=True)]
    got = metrics.metrics_from_counts(metrics.add_counts(clients))
    y, f = np.concatenate(actuals), np.concatenate(preds)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, f))
    assert got["smape"] == pytest.approx(100 * np.mean(2 * np.abs(y - f) / (np.abs(y) + np.abs(f))))
    per_series_mase = [
        np.mean(np.abs(a - p)) / np.mean(np.abs(h[4:] - h[:-4]))
        for a, p, h in zip(actuals, preds, histories, strict=True)
    ]
    assert got["mase"] == pytest.approx(np.mean(per_series_mase))  # equal horizons: the mean of the series' MASE


def test_expanding_window_cross_validation_sums_its_folds() -> None:
    values = series.generate(1, 48, 12, seed=2)[0].values
    assert metrics.expanding_folds(48, 6, 3, 13) == [30, 36, 42]
    counts = metrics.cross_validate(lambda h, n: models.seasonal_naive(h, n, 12), values, 6, 12, folds=3)
    by_hand = [
        metrics.forecast_counts(values[e : e + 6], values[e - 12 : e - 6], metrics.mase_scale(values[:e], 12))
        for e in (30, 36, 42)
    ]
    assert counts == pytest.approx(metrics.add_counts(by_hand))
    with pytest.raises(DataError, match="need 73 points; the series has 48"):
        metrics.expanding_folds(48, 12, 5, 13)


def _table(times: list[str], values: list[float] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"when": times, "sales": values or [float(i) for i in range(len(times))]})


def test_bad_time_series_are_refused_with_the_value_named(caplog: pytest.LogCaptureFixture) -> None:
    months = [f"2024-{m:02d}-01" for m in range(1, 13)]
    with pytest.raises(DataError, match=r"value 'not a date' \(row 3\) does not parse as a date"):
        series.from_frame(_table(months[:3] + ["not a date"] + months[4:]), "when", "sales")
    with pytest.raises(DataError, match="irregular timestamps in 'when'"):
        series.from_frame(_table(["2024-01-01", "2024-01-03", "2024-01-06", "2024-01-08"]), "when", "sales")
    with pytest.raises(DataError, match="timestamp 2024-02-01 00:00:00 of 'when' appears more than once"):
        series.from_frame(_table(months[:2] + ["2024-02-01"]), "when", "sales")
    with pytest.raises(DataError, match="time-column='date' is not a column"):
        series.from_frame(_table(months), "date", "sales")
    # two days missing on a daily grid: resampled, interpolated, and said so
    days = ["2024-01-01", "2024-01-02", "2024-01-05", "2024-01-06"]
    with caplog.at_level(logging.WARNING):
        (one,) = series.from_frame(_table(days, [0.0, 1.0, 4.0, 5.0]), "when", "sales")
    assert "2 of 6 time steps of when were missing" in caplog.text
    np.testing.assert_allclose(one.values, [0, 1, 2, 3, 4, 5])
    short = series.from_frame(_table(months), "when", "sales")
    with pytest.raises(DataError, match=r"12 points, fewer than horizon \+ lags \+ 1 = 6 \+ 12 \+ 1 = 19"):
        series.check_lengths(short, 6, 12)


def test_forecast_settings_are_checked_before_anything_starts() -> None:
    with pytest.raises(ConfigError, match=r"horizon=0 .*is outside \[1, inf\]"):
        RunConfig(task="forecast", dataset="series", model="lstm", horizon=0)
    with pytest.raises(ConfigError, match="dataset='series' holds time series: pass --task forecast"):
        RunConfig(dataset="series", model="lstm", task="regression")
    with pytest.raises(ConfigError, match="model='mlp' does not do forecast.*For forecast: lstm, gru"):
        RunConfig(task="forecast", dataset="series", model="mlp")
    with pytest.raises(ConfigError, match="needs time-column"):
        RunConfig(task="forecast", dataset="csv", data_path="x.csv", target="sales", model="lstm")
    too_short = RunConfig(task="forecast", dataset="series", model="lstm", series_length=20, horizon=6, lags=14)
    from uaap.data import federated

    with pytest.raises(DataError, match=r"series 'series-0' has 20 points, fewer than horizon \+ lags \+ 1"):
        federated(too_short, too_short.num_clients)


def test_windows_are_scaled_per_series_and_predict_the_next_value() -> None:
    values = np.arange(10, dtype=np.float64) * 2.0 + 100
    X, y = series.windows(values, 3, 2.0)
    assert X.shape == (7, 3) and np.allclose(X[0], [-1, 0, 1]) and np.allclose(y, 2.0)  # next value: mean + 2 steps
    X_tail, y_tail = series.windows(values, 3, 2.0, start=10 - 2 - 3)
    assert len(y_tail) == 2  # the windows whose targets are the last two values


def test_cross_validation_selects_the_model_that_fits_the_series() -> None:
    t = np.arange(72, dtype=np.float64)
    seasonal = 50 + 10 * np.sin(2 * np.pi * t / 12) + np.random.default_rng(0).normal(0, 0.2, 72)
    candidates = {
        "seasonal_naive": models.statistical("seasonal_naive", 12),
        "naive": lambda h, n: models.Forecast("naive", np.full(n, h[-1])),  # the last value: blind to the season
    }
    best, scores = metrics.select(candidates, seasonal, 6, 12, folds=3)
    assert best == "seasonal_naive" and scores["seasonal_naive"] < 0.5 * scores["naive"], scores
    flat = 50 + np.random.default_rng(1).normal(0, 0.2, 72).cumsum()  # a random walk: the last value is best
    assert metrics.select(candidates, flat, 6, 12, folds=3)[0] == "naive"


def test_seasonal_target_is_the_change_from_one_season_earlier() -> None:
    values = 100 + 10 * np.sin(2 * np.pi * np.arange(40) / 12) + np.arange(40) * 0.5
    X, y = series.windows(values, 12, 2.0, period=12)
    np.testing.assert_allclose(y, (values[12:] - values[:-12]) / 2.0, rtol=1e-6)  # 0.5 a step, 12 steps: 6 / 2
    X_level, _ = series.windows(values, 12, 2.0)
    np.testing.assert_array_equal(X, X_level)  # the inputs do not change, only what the network predicts
    with pytest.raises(ConfigError, match="forecast-target='seasonal' .*lags=6 is shorter than seasonal-period=12"):
        RunConfig(task="forecast", dataset="series", lags=6)
    assert RunConfig(task="forecast", dataset="series", lags=6, forecast_target="level").model == "lstm"


def test_prophet_forecasts_a_seasonal_series_with_an_interval() -> None:
    s = series.generate(1, 72, 12, seed=2)[0]
    history, tail = s.history(12), s.tail(12)
    fit = models.prophet(history, 12, 12)
    assert (
        fit.lower is not None
        and fit.upper is not None
        and np.all(fit.lower < fit.mean)
        and np.all(fit.mean < fit.upper)
    )
    assert np.abs(fit.mean - tail).mean() < np.abs(history.mean() - tail).mean()  # beats the flat mean
    np.testing.assert_array_equal(models.prophet(history, 12, 12).mean, fit.mean)  # seeded: the same forecast again
    with pytest.raises(ConfigError, match="forecast-models names 'sarimax', not a per-series forecaster"):
        RunConfig(forecast_models="arima,sarimax")


def test_text_in_the_value_column_is_refused_with_the_value() -> None:
    months = [f"2024-{m:02d}-01" for m in range(1, 13)]
    values: list[object] = [float(i) for i in range(12)]
    values[4] = "n/a"
    with pytest.raises(DataError, match=r"target='sales' holds 'n/a', not a number; a forecast needs numeric"):
        series.from_frame(pd.DataFrame({"when": months, "sales": values}), "when", "sales")
