"""`uaap runs` names its metric column for what it holds: accuracy, r2 (regression runs), or both."""

from __future__ import annotations


def test_runs_shows_r2_for_regression_runs_and_labels_a_mixed_column(uaap_home, capsys):
    from uaap import workspace
    from uaap.cli import main

    workspace.run_dir("reg").log_event("round", round=2, central={"r2": 0.4321, "rmse": 55.0})
    workspace.run_dir("reg-he").log_event("round", round=2, central={}, evaluate={"r2": 0.1234})
    for run_id in ("reg", "reg-he"):
        (workspace.run_dir(run_id).path / "config.json").write_text("{}")
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "r2" in out and "accuracy" not in out and "0.4321" in out and "0.1234" in out
    workspace.run_dir("cls").log_event("round", round=1, central={"accuracy": 0.9})
    (workspace.run_dir("cls").path / "config.json").write_text("{}")
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "accuracy | r2" in out and "r2 0.4321" in out and "accuracy 0.9000" in out
