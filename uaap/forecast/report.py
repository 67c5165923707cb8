"""A forecasting run's comparison: every series forecast by each model over its held-out tail, the metrics from
summed counts (per client, then added as a server would add them), and a plot per series.

Each client (one partition of the series) computes its own counts from its own series; only those sums are
added across clients, so the totals are what a federation can report without any series leaving its client.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from uaap.config import RunConfig
from uaap.forecast.metrics import add_counts, forecast_counts, mase_scale, metrics_from_counts
from uaap.forecast.models import STATISTICAL, Forecast, network, statistical
from uaap.forecast.series import Series, deal, load, scale_of, target_period

if TYPE_CHECKING:
    from torch import nn


def forecasters(cfg: RunConfig) -> tuple[str, ...]:
    """The per-series models a run compares: seasonal naive (the MASE baseline) and the run's ``forecast-models``."""
    named = (m.strip() for m in cfg.forecast_models.split(",") if m.strip())
    return tuple(dict.fromkeys(("seasonal_naive", *named)))


def forecasts(
    cfg: RunConfig, series: Series, net: nn.Module | None = None, models: tuple[str, ...] = STATISTICAL
) -> list[Forecast]:
    """Every model's forecast of the held-out tail of ``series`` (the network's, when given, last)."""
    history = series.history(cfg.horizon)
    out = [statistical(name, cfg.seasonal_period)(history, cfg.horizon) for name in models]
    if net is not None:
        scale = scale_of(history)
        out.append(network(net, history, cfg.horizon, cfg.lags, scale, name=cfg.model, period=target_period(cfg)))
    return out


def client_counts(
    cfg: RunConfig, series: list[Series], net: nn.Module | None = None, models: tuple[str, ...] = STATISTICAL,
    plots: Path | None = None,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """One client's summed counts per model over its series (and their plots into ``plots``)."""
    from uaap.forecast.plot import plot_series

    per_model: dict[str, list[dict[str, float]]] = {}
    for s in series:
        made = forecasts(cfg, s, net, models)
        scale = mase_scale(s.history(cfg.horizon), cfg.seasonal_period)
        for f in made:
            per_model.setdefault(f.model, []).append(forecast_counts(s.tail(cfg.horizon), f.mean, scale))
        if plots is not None:
            plot_series(s, cfg.horizon, made, plots)
    return {name: add_counts(parts) for name, parts in per_model.items()}


def network_counts(cfg: RunConfig, series: list[Series], net: nn.Module) -> dict[str, float]:
    """The summed counts of ``net``'s horizon forecast of each series' held-out tail: what a client of a federated
    forecasting run adds to its evaluation reply (keys :data:`uaap.forecast.metrics.KEYS`)."""
    return client_counts(cfg, series, net, models=())[cfg.model]


def horizon_metrics(cfg: RunConfig, series: list[Series], net: nn.Module) -> dict[str, float]:
    """``net``'s horizon forecast of ``series`` scored as a run records it: ``forecast-mae``, ``-rmse``, ``-smape``
    and ``-mase`` (a server that holds the series, as a simulation's does, beside its test windows' metrics)."""
    from uaap.forecast.metrics import PREFIX

    return {PREFIX + k: v for k, v in metrics_from_counts(network_counts(cfg, series, net)).items()}


def compare(
    cfg: RunConfig,
    net: nn.Module | None = None,
    models: tuple[str, ...] = STATISTICAL,
    plots: Path | None = None,
    clients: int | None = None,
) -> dict[str, dict[str, float]]:
    """MAE, RMSE, sMAPE and MASE per model over every client's series: each client's counts, summed (``clients``:
    how many hold the series, default the run's num-clients; 1 for central training)."""
    n = cfg.num_clients if clients is None else clients
    totals: dict[str, list[dict[str, float]]] = {}
    every = load(cfg)  # once: each client's share is dealt from it
    for pid in range(n):
        for name, counts in client_counts(cfg, deal(every, pid, n), net, models, plots).items():
            totals.setdefault(name, []).append(counts)
    return {name: metrics_from_counts(add_counts(parts)) for name, parts in totals.items()}
