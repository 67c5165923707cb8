"""`uaap train` and `uaap simulate` on a regression data set from the command line (Flower's Ray backend, no mocks)."""

from __future__ import annotations

import pytest

from uaap import workspace


@pytest.mark.slow
def test_uaap_train_and_simulate_diabetes_report_r2(uaap_home, capsys):
    from uaap.cli import main

    common = ["--dataset", "diabetes", "--learning-rate", "0.01", "--seed", "1"]
    assert main(["train", *common, "--epochs", "10"]) == 0
    out = capsys.readouterr().out
    (run_id,) = workspace.list_runs()
    central = workspace.run_dir(run_id).events("end")[-1]["central"]
    assert f"r2 {central['r2']:.4f}" in out and "accuracy" not in out and central["r2"] > 0.3

    flags = ["--num-clients", "3", "--min-clients", "3", "--num-rounds", "2", "--local-epochs", "3"]
    flags += ["--partition", "iid", "--strategy", "fedavg", "--run-id", "reg-fed"]
    assert main(["simulate", *common, *flags]) == 0
    out = capsys.readouterr().out
    rounds = [e for e in workspace.run_dir("reg-fed").events("round") if e["round"] > 0]
    assert [r["replies"] for r in rounds] == [3, 3]
    assert rounds[-1]["central"]["r2"] > 0.4 and rounds[-1]["evaluate"]["r2"] > 0.2
    assert "R2" in out and f"{rounds[-1]['central']['r2']:.4f}" in out
