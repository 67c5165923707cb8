"""Issue 14's forecasting acceptance: a global LSTM forecaster federated across 20 clients (one generated series
each) beside per-series ARIMA, exponential smoothing, Prophet and seasonal naive, all scored on the same held-out
tails.

The data set is ``dataset=series``: 20 monthly series (length ``--length``, default 120) of level + linear trend +
a yearly sine wave + Gaussian noise, each with its own parameters (:func:`uaap.forecast.series.generate`). The last
``--horizon`` (12) points of each series are held out; every model forecasts them from the history before:

* **lstm (federated)**: ``server.federation.run_federation`` with the real ClientApp of each of the 20 clients run in
  this process (``tests.flower_helpers.LocalGrid``; no Ray), FedAvg, ``--rounds`` rounds of ``--local-epochs``
  epochs (Adam, lr 0.01, batch 16) over lag windows of 24 values scaled per series; its horizon forecast feeds each
  one-step prediction back into the window (:func:`uaap.forecast.models.network`);
* **lstm (central)**: the same network trained by ``uaap.training.local_train`` on every client's windows pooled,
  for as many epochs as one client's training over the whole federation (rounds x local epochs);
* **arima**: SARIMA(1,1,1)(0,1,1)12 by statsmodels per series, checked in this script against statsmodels'
  ``ARIMA`` called directly on the same series (the largest forecast difference is printed);
* **ets**: Holt-Winters (additive error, trend and season) as statsmodels' ``ETSModel``;
* **prophet**: Prophet's piecewise-linear trend plus a 12-step Fourier season (the Stan model its wheel ships);
* **seasonal_naive**: the value one season earlier.

MAE, RMSE, sMAPE (%) and MASE come from each client's summed counts, added across the clients
(:mod:`uaap.forecast.metrics`). One PNG per series (history, actual tail, each forecast, ARIMA's and ETS' 95%
intervals) lands in the federated run's folder, ``forecasts/``.

    .venv/bin/python benchmarks/forecasting.py              # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/forecasting.py --series 4 --rounds 3   # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.flower_helpers (LocalGrid) from a checkout


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print its table (and the JSON of it with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=20)
    parser.add_argument("--length", type=int, default=120)
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--model", default="lstm", choices=("lstm", "gru"))
    parser.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--strategy", default="fedavg", choices=("fedavg", "fedprox"))
    parser.add_argument("--target", default="seasonal", choices=("seasonal", "level"), help="forecast-target")
    parser.add_argument("--no-statistical", action="store_true", help="only the networks (a quicker look)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("UAAP_HOME", tempfile.mkdtemp(prefix="uaap-forecasting-"))
    logging.disable(logging.WARNING)

    from statsmodels.tsa.arima.model import ARIMA

    from server.federation import run_federation
    from tests.flower_helpers import LocalGrid
    from uaap import workspace
    from uaap.config import RunConfig
    from uaap.data import federated
    from uaap.data.core import Dataset
    from uaap.forecast import models, report
    from uaap.forecast.series import load
    from uaap.models import build_model
    from uaap.training import TrainConfig, local_train

    cfg = RunConfig(
        task="forecast", dataset="series", model=args.model, num_clients=args.series, min_clients=args.series,
        series_length=args.length, horizon=args.horizon, lags=24, seasonal_period=12, num_rounds=args.rounds,
        local_epochs=args.local_epochs, optimizer=args.optimizer, learning_rate=args.lr, batch_size=16,
        strategy=args.strategy, forecast_target=args.target,
        seed=0, run_id="forecasting-benchmark", experiment="benchmark-forecasting",
    )  # fmt: skip
    timings: dict[str, float] = {}
    t = time.perf_counter()
    rd = run_federation(LocalGrid(args.series), cfg, num_partitions=args.series)
    timings["federated"] = time.perf_counter() - t
    fed_model, _ = workspace.load_model(rd.model_file)

    t = time.perf_counter()
    clients, _ = federated(cfg, args.series)
    pooled = Dataset(
        "pooled", np.concatenate([c.train.X for c in clients]), np.concatenate([c.train.y for c in clients]), 1,
        clients[0].train.feature_names, task="regression",
    )  # fmt: skip
    central = build_model(args.model, cfg.lags, 1, seed=cfg.seed)
    local_train(central, pooled, TrainConfig(epochs=args.rounds * args.local_epochs, batch_size=16, lr=args.lr,
                                             optimizer=args.optimizer, seed=cfg.seed))  # fmt: skip
    timings["central"] = time.perf_counter() - t

    t = time.perf_counter()
    statistical = () if args.no_statistical else models.STATISTICAL
    scores = report.compare(cfg, fed_model, models=statistical, plots=rd.path / "forecasts")
    timings["statistical + scoring"] = time.perf_counter() - t
    central_scores = report.compare(cfg.replace(model=args.model), central, models=())
    scores[f"{args.model} (central)"] = central_scores[args.model]
    scores[f"{args.model} (federated)"] = scores.pop(args.model)

    worst = 0.0  # our ARIMA against statsmodels' own fit of the same series
    for s in load(cfg) if statistical else ():
        history = s.history(cfg.horizon)
        order, seasonal = models.sarima_orders(cfg.seasonal_period)
        theirs = ARIMA(history, order=order, seasonal_order=seasonal).fit().get_forecast(cfg.horizon).predicted_mean
        worst = max(worst, float(np.abs(models.arima(history, cfg.horizon, cfg.seasonal_period).mean - theirs).max()))

    print(
        f"\n{args.series} series x {args.length} points, horizon {args.horizon}, lags 24, season 12; {args.model}: "
        f"{args.rounds} rounds x {args.local_epochs} local epochs, {args.strategy}, {args.optimizer} lr {args.lr:g}, "
        f"forecast-target {args.target}, 1 series per client"
    )
    print(f"{'model':<20} {'MAE':>8} {'RMSE':>8} {'sMAPE %':>8} {'MASE':>8}")
    for name in (*statistical, f"{args.model} (federated)", f"{args.model} (central)"):
        m = scores[name]
        print(f"{name:<20} {m['mae']:>8.3f} {m['rmse']:>8.3f} {m['smape']:>8.3f} {m['mase']:>8.3f}")
    print(f"ARIMA vs statsmodels' own fit, max |forecast difference| over {args.series} series: {worst:.1e}")
    print("wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    print(f"plots: {rd.path / 'forecasts'}")
    if args.json:
        args.json.write_text(json.dumps({"scores": scores, "arima_max_diff": worst, "seconds": timings}, indent=2))
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    raise SystemExit(main())
