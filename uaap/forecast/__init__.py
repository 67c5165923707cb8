"""Forecasting (``--task forecast``): time series read and checked, lag windows for the global networks, per-series
statistical models, forecast metrics from summable counts, expanding-window validation and forecast plots.

* :mod:`uaap.forecast.series`: a table's series (time, value, series id) parsed and checked before anything starts,
  the generated ``series`` data set, and each client's windows (one-step targets, scaled per series);
* :mod:`uaap.forecast.models`: seasonal naive, ARIMA/SARIMA and exponential smoothing (statsmodels) per series, and
  a network's recursive forecast over the horizon;
* :mod:`uaap.forecast.metrics`: MAE, RMSE, sMAPE and MASE from sums a client can send (|errors|, counts and each
  series' seasonal-naive scale), and expanding-window cross-validation;
* :mod:`uaap.forecast.plot`: one PNG per series (history, forecasts, intervals).
"""
