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
    flags += [
        "--partition",
        "iid",
        "--strategy",
        "fedavg",
        "--run-id",
        "reg-fed",
        "--register",
        "diabetes-fed@champion",
    ]
    assert main(["simulate", *common, *flags]) == 0
    out = capsys.readouterr().out
    assert "registered diabetes-fed version 1 (runtime native, alias @champion)" in out
    rounds = [e for e in workspace.run_dir("reg-fed").events("round") if e["round"] > 0]
    assert [r["replies"] for r in rounds] == [3, 3]
    assert rounds[-1]["central"]["r2"] > 0.4 and rounds[-1]["evaluate"]["r2"] > 0.2
    assert "R2" in out and f"{rounds[-1]['central']['r2']:.4f}" in out

    # the registered federated model answers over the API as the model itself does on the library's scaled rows
    # (a torch regression network: predictions in the target's units through its saved target scaling)
    import numpy as np
    from fastapi.testclient import TestClient

    from serving import keys
    from serving.app import create_app
    from uaap.data import load_bundled, load_split, train_test
    from uaap.training import predict_values

    rd = workspace.existing_run("reg-fed")
    cfg = rd.read_config()
    raw = train_test(load_bundled("diabetes"), cfg.test_fraction, cfg.seed).test
    rows = [{n: float(v) for n, v in zip(raw.feature_names, r, strict=True)} for r in raw.X[:40]]
    model, meta = workspace.load_model(rd.model_file)
    expected = predict_values(model, load_split(cfg).test.X[:40], meta["target_mean"], meta["target_std"])
    token, _ = keys.create("test", ("predict",))
    with TestClient(create_app()) as client:
        r = client.post("/v1/models/diabetes-fed/predict", json={"rows": rows}, headers={"X-API-Key": token})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose([p["prediction"] for p in r.json()["predictions"]], expected, rtol=0, atol=1e-5)
