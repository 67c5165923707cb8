"""Federated forecasting end to end in this process (the real ClientApp through tests.LocalGrid): a global LSTM over
lag windows of generated series, one series per client, in the clear, under CKKS and with DP-SGD (Opacus' DPLSTM);
its forecasts scored from summed counts and plotted per series; its ONNX export checked against torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.federation import run_federation
from tests.flower_helpers import LocalGrid
from uaap import crypto, workspace
from uaap.config import RunConfig
from uaap.data import federated
from uaap.models import get_weights
from uaap.training import predict

BASE = RunConfig(
    task="forecast",
    dataset="series",
    model="lstm",
    series_length=60,
    horizon=6,
    lags=12,
    seasonal_period=12,
    num_clients=4,
    min_clients=4,
    num_rounds=3,
    local_epochs=2,
    optimizer="adam",
    learning_rate=0.01,
    batch_size=16,
    strategy="fedavg",
    seed=1,
    experiment="tests-forecast",
)
RUNS = {
    "plain": BASE,
    "he": BASE.replace(secure_aggregation="ckks"),
    "dp-local": BASE.replace(dp_local=True, dp_target_epsilon=8.0, num_rounds=1, strategy="fedprox"),
}


@pytest.fixture(scope="module")
def runs(module_home: Path) -> dict[str, workspace.RunDir]:
    out = {}
    for name, cfg in RUNS.items():
        cfg = crypto.ensure_simulation_keys(cfg.replace(run_id=f"fc-{name}"))
        out[name] = run_federation(LocalGrid(4), cfg, num_partitions=4)
    return out


def _rounds(rd: workspace.RunDir) -> dict[int, dict]:
    return {e["round"]: e for e in rd.events("round")}


@pytest.mark.slow
def test_federated_lstm_learns_and_its_summed_metrics_are_the_pooled_ones(runs: dict) -> None:
    from sklearn.metrics import mean_absolute_error

    rd = runs["plain"]
    rounds = _rounds(rd)
    assert rounds[3]["central"]["mse"] < 0.5 * rounds[0]["central"]["mse"], rounds
    model, meta = workspace.load_model(rd.model_file)
    assert meta["model"] == "lstm" and meta["n_features"] == 12
    clients, _ = federated(rd.read_config(), 4)
    y = np.concatenate([c.test.y for c in clients])
    pooled = mean_absolute_error(y, np.concatenate([predict(model, c.test) for c in clients]))
    assert rounds[3]["evaluate"]["mae"] == pytest.approx(pooled, rel=1e-6)  # the clients' sums = pooled windows


@pytest.mark.slow
def test_forecasts_from_summed_counts_and_one_plot_per_series(runs: dict) -> None:
    from uaap.forecast import report

    rd = runs["plain"]
    cfg = rd.read_config()
    model, _ = workspace.load_model(rd.model_file)
    scores = report.compare(cfg, model, models=("seasonal_naive",), plots=rd.path / "forecasts")
    print({k: {m: round(v, 3) for m, v in s.items()} for k, s in scores.items()})
    assert set(scores) == {"seasonal_naive", "lstm"}
    assert scores["lstm"]["mase"] < 1.5 * scores["seasonal_naive"]["mase"]
    pngs = sorted((rd.path / "forecasts").glob("*.png"))
    assert [p.name for p in pngs] == [f"forecast-series-{k}.png" for k in range(4)]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


@pytest.mark.slow
def test_the_round_log_scores_the_horizon_forecast_from_the_clients_sums_as_pooled_points_would(runs: dict) -> None:
    """Each client adds its own series' horizon counts to its evaluation reply; the server's totals give the MAE,
    RMSE, sMAPE and MASE of every series' held-out tail pooled (computed here point by point), and the comparator
    shows the federated run with them."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    from uaap.compare import collect_runs
    from uaap.forecast import report
    from uaap.forecast.series import load

    rd = runs["plain"]
    cfg = rd.read_config()
    model, _ = workspace.load_model(rd.model_file)
    actual, forecast, scale = [], [], []
    for s in load(cfg):
        history, m = s.history(cfg.horizon), cfg.seasonal_period
        actual.append(s.tail(cfg.horizon))
        forecast.append(report.forecasts(cfg, s, model, models=())[-1].mean)
        scale.append(np.full(cfg.horizon, np.mean(np.abs(history[m:] - history[:-m]))))
    y, f, q = (np.concatenate(v) for v in (actual, forecast, scale))
    last = _rounds(rd)[3]["evaluate"]
    print({k: round(v, 4) for k, v in last.items() if k.startswith("forecast-")})
    assert last["forecast-mae"] == pytest.approx(mean_absolute_error(y, f), rel=1e-9)
    assert last["forecast-rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, f)), rel=1e-9)
    assert last["forecast-smape"] == pytest.approx(100 * np.mean(2 * np.abs(y - f) / (np.abs(y) + np.abs(f))), rel=1e-9)
    assert last["forecast-mase"] == pytest.approx(np.mean(np.abs(y - f) / q), rel=1e-9)
    assert _rounds(rd)[1]["evaluate"]["forecast-mase"] != last["forecast-mase"]  # scored every round, as it learns
    server = _rounds(rd)[3]["central"]  # a simulation's server holds the series too: the same points, pooled
    assert {k: server[k] for k in last if k.startswith("forecast-")} == pytest.approx(
        {k: v for k, v in last.items() if k.startswith("forecast-")}, rel=1e-9
    )
    (row,) = collect_runs([rd.run_id])
    assert row.metric == "mase" and row.value == pytest.approx(last["forecast-mase"])
    assert row.forecast == pytest.approx({k: last[f"forecast-{k}"] for k in ("mae", "smape", "mase")})
    assert row.rmse == pytest.approx(last["forecast-rmse"])  # the horizon's, in the series' units
    (windows,) = collect_runs([rd.run_id], metric="r2")  # a metric the horizon lacks: the one-step windows' own
    assert windows.value == pytest.approx(server["r2"])
    assert [s for s, _ in row.curve] == [0, 1, 2, 3]  # the server's MASE per round, from the initial model on


@pytest.mark.slow
def test_ckks_forecaster_equals_the_plaintext_one_and_dp_sgd_accounts_epsilon(runs: dict, module_home: Path) -> None:
    from uaap.cli import main

    he, plain = runs["he"], runs["plain"]
    assert _rounds(he)[3]["train"]["he-clients"] == 4
    secret = module_home.resolve() / "keys" / he.run_id / crypto.SECRET_FILE
    assert main(["keys", "decrypt-model", str(he.run_id), "--secret-context", str(secret)]) == 0
    ours, _ = workspace.load_model(he.model_file)
    ref, _ = workspace.load_model(plain.model_file)
    drift = max(float(np.abs(a - b).max()) for a, b in zip(get_weights(ours), get_weights(ref), strict=True))
    assert drift <= 1e-4, f"CKKS and plaintext LSTMs differ by {drift:.3g}"
    last = _rounds(runs["dp-local"])[1]
    assert last["replies"] == 4 and not last["failed"]
    assert 0 < last["privacy"]["epsilon"] <= 8.0 + 1e-6
    assert np.isfinite(last["evaluate"]["mae"])


@pytest.mark.slow
def test_lstm_forecaster_exports_to_onnx_that_agrees_with_torch(runs: dict, tmp_path: Path) -> None:
    import onnxruntime as ort
    import torch

    from edge.onnx_export import export
    from edge.source import load_source

    source = load_source(runs["plain"].path)
    (path,) = export(source, tmp_path)
    held = source.heldout_all if source.heldout_all is not None else source.heldout
    X = np.ascontiguousarray(held.X, dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": X})[0].reshape(-1)
    with torch.no_grad():
        want = source.model.eval()(torch.from_numpy(X)).numpy().reshape(-1)
    diff = float(np.abs(got - want).max())
    print(f"LSTM forecaster ONNX vs torch on {len(X)} held-out windows: max |diff| {diff:.1e}")
    assert len(X) >= 24 and diff <= 1e-5


@pytest.mark.slow
def test_a_table_of_several_series_federates_one_series_per_client(module_home: Path, tmp_path: Path) -> None:
    import pandas as pd

    from uaap.forecast.series import generate

    rows = [(str(t)[:10], f"store-{k}", v) for k, s in enumerate(generate(3, 48, 12, seed=7)) for t, v in
            zip(s.time, s.values, strict=True)]  # fmt: skip
    table = tmp_path / "sales.csv"
    pd.DataFrame(rows, columns=["month", "store", "sales"]).to_csv(table, index=False)
    cfg = BASE.replace(
        dataset="csv", data_path=str(table), target="sales", time_column="month", series_column="store",
        num_clients=3, min_clients=3, num_rounds=1, run_id="fc-csv",
    )  # fmt: skip
    rd = run_federation(LocalGrid(3), cfg, num_partitions=3)
    last = _rounds(rd)[1]
    assert last["replies"] == 3 and not last["failed"]
    # each client trains on the windows of its own store only: 48 - 6 held out - 12 lags = 30 windows, so 2 local
    # epochs of batches of 16 take 4 steps; each scores its own 6 held-out points
    assert last["train"]["steps"] == 4 and last["evaluate"]["num-examples"] == 3 * 6
