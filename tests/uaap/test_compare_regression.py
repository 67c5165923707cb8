"""`uaap compare` with regression runs: compared on R2 (with their RMSE) in a column named for what it holds."""

from __future__ import annotations

import pytest

from uaap.config import RunConfig


def test_regression_runs_are_compared_on_r2_and_rmse_beside_classification(tmp_path, monkeypatch, capsys):
    from uaap.centralized import train_central
    from uaap.cli import main
    from uaap.compare import collect_runs, compare_table, sort_rows
    from uaap.tracking import Tracker

    monkeypatch.setenv("UAAP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    central = train_central(RunConfig(dataset="diabetes", model="logreg", learning_rate=0.01, run_id="reg-c"), epochs=3)
    fed = Tracker("uaap", "reg-f", kind="federated")  # as server.federation logs a regression run
    fed.log_params(RunConfig(dataset="diabetes", run_id="reg-f").to_flower())
    fed.log_metrics({"central_r2": -0.5, "central_rmse": 95.0, "fed_r2": -0.6}, step=1)
    fed.finish()
    cls = Tracker("uaap", "cls", kind="federated")
    cls.log_params(RunConfig(dataset="wine", run_id="cls").to_flower())
    cls.log_metrics({"central_accuracy": 0.9}, step=1)
    cls.finish()

    rows = {r.run_id: r for r in collect_runs()}
    final = central.run_dir.events("end")[-1]["central"]  # the trainer's own record, not MLflow
    assert rows["reg-c"].metric == "r2" and rows["reg-c"].value == pytest.approx(final["r2"])
    assert rows["reg-c"].rmse == pytest.approx(final["rmse"]) and rows["cls"].rmse is None
    assert rows["reg-f"].value == -0.5 and rows["cls"].metric == "accuracy"
    assert [r.run_id for r in sort_rows(list(rows.values())) if r.dataset == "diabetes"] == ["reg-c", "reg-f"]
    by_rmse = collect_runs(metric="rmse", dataset="diabetes")
    assert [r.run_id for r in sort_rows(by_rmse)] == ["reg-c", "reg-f"]  # lower is better

    regression_only = [rows["reg-c"], rows["reg-f"]]
    assert compare_table(regression_only).title == "runs compared on their final r2"
    header = [c.header for c in compare_table(regression_only).columns]
    assert "r2" in header and "rmse" in header and "accuracy" not in header
    assert main(["compare", "--out", str(tmp_path / "cmp.png")]) == 0
    out = capsys.readouterr().out
    assert "accuracy | r2" in out and "r2 -0.5000" in out and "accuracy 0.9000" in out and "95" in out
