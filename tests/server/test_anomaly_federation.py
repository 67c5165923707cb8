"""Federated anomaly detection end to end in this process (the real ClientApp through tests.LocalGrid): an
autoencoder on breast_cancer (malignant rows are the anomalies), 3 clients, 2 rounds, plain FedAvg, CKKS secure
aggregation and DP-SGD; the threshold from the clients' summed validation histograms, the saved model, ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from server.federation import run_federation
from tests.flower_helpers import LocalGrid
from uaap import crypto, workspace
from uaap.anomaly import detect
from uaap.config import RunConfig
from uaap.data import federated
from uaap.metrics import ERROR_BINS, ERROR_LOG_HIGH, ERROR_LOG_LOW
from uaap.models import get_weights
from uaap.training import reconstruction_errors

BIN = 10 ** ((ERROR_LOG_HIGH - ERROR_LOG_LOW) / ERROR_BINS)
BASE = RunConfig(
    dataset="breast_cancer",
    task="anomaly",
    model="autoencoder",
    partition="iid",
    num_clients=3,
    min_clients=3,
    num_rounds=2,
    local_epochs=10,
    optimizer="adam",
    learning_rate=0.01,
    batch_size=16,
    strategy="fedavg",
    central_eval=True,
    seed=1,
    experiment="tests-anomaly",
)
RUNS = {
    "plain": BASE,
    "he": BASE.replace(secure_aggregation="ckks"),
    "fedprox": BASE.replace(strategy="fedprox", proximal_mu=0.1),
    "dp-local": BASE.replace(dp_local=True, dp_target_epsilon=8.0, local_epochs=5),  # DP-SGD: half the epochs
}


@pytest.fixture(scope="module")
def home(module_home: Path) -> Path:
    return module_home


@pytest.fixture(scope="module")
def runs(home: Path) -> dict[str, workspace.RunDir]:
    out = {}
    for name, cfg in RUNS.items():
        cfg = crypto.ensure_simulation_keys(cfg.replace(run_id=f"anomaly-{name}"))
        out[name] = run_federation(LocalGrid(3), cfg, num_partitions=3)
    return out


def _rounds(rd: workspace.RunDir) -> dict[int, dict]:
    return {e["round"]: e for e in rd.events("round")}


def _reference(y: np.ndarray, errors: np.ndarray, threshold: float) -> dict[str, float]:
    flags = errors > threshold
    return {
        "accuracy": accuracy_score(y, flags),
        "precision": precision_score(y, flags, zero_division=0),
        "recall": recall_score(y, flags),
        "f1": f1_score(y, flags),
    }


@pytest.mark.slow
def test_the_federated_threshold_is_the_pooled_validation_quantile_and_the_metrics_are_the_pooled_ones(runs):
    rd = runs["plain"]
    rounds = _rounds(rd)
    fed, central = rounds[2]["evaluate"], rounds[2]["central"]
    assert fed["loss"] < 0.6 * rounds[0]["central"]["loss"], "the autoencoder learned to rebuild normal rows"
    assert central["auc"] > 0.85 and central["auc"] > rounds[0]["central"]["auc"] + 0.1, central

    model, meta = workspace.load_model(rd.model_file)
    assert meta["task"] == "anomaly" and meta["threshold"] == fed["threshold"] == central["threshold"]
    clients, test = federated(rd.read_config(), 3)
    y = np.concatenate([c.test.y for c in clients])
    errors = np.concatenate([reconstruction_errors(model, c.test.X) for c in clients])
    exact = np.quantile(errors[y == 0], BASE.anomaly_quantile, method="inverted_cdf")  # pooled validation rows
    assert exact <= fed["threshold"] <= exact * BIN * (1 + 1e-9), "one histogram bin above the pooled quantile"
    for key, value in _reference(y, errors, fed["threshold"]).items():
        assert fed[key] == pytest.approx(value, abs=1e-12), key
    assert abs(fed["auc"] - roc_auc_score(y, errors)) <= fed["auc-error-bound"] + 1e-12
    # the server's held-out rows, flagged with the threshold the clients' validation rows chose (not their own)
    test_errors, flags = detect(model, meta, test.X)
    for key, value in _reference(test.y, test_errors, meta["threshold"]).items():
        assert central[key] == pytest.approx(value, abs=1e-12), key
    assert np.array_equal(flags, test_errors > meta["threshold"])


@pytest.mark.slow
def test_ckks_anomaly_detection_equals_the_plaintext_federation_within_ckks_precision(runs, home: Path) -> None:
    from uaap.cli import main

    he, plain = _rounds(runs["he"])[2], _rounds(runs["plain"])[2]
    assert he["train"]["he-clients"] == 3 and he["central"] == {}
    assert he["evaluate"]["threshold"] == plain["evaluate"]["threshold"]
    for key in ("loss", "auc", "precision", "recall", "f1"):
        assert he["evaluate"][key] == pytest.approx(plain["evaluate"][key], rel=1e-6), key
    secret = home.resolve() / "keys" / runs["he"].run_id / crypto.SECRET_FILE
    assert main(["keys", "decrypt-model", str(runs["he"].run_id), "--secret-context", str(secret)]) == 0
    model, meta = workspace.load_model(runs["he"].model_file)
    ref, ref_meta = workspace.load_model(runs["plain"].model_file)
    assert meta["task"] == "anomaly" and meta["threshold"] == ref_meta["threshold"]
    drift = max(float(np.abs(a - b).max()) for a, b in zip(get_weights(model), get_weights(ref), strict=True))
    assert drift <= 1e-5, f"HE and plaintext global models differ by {drift:.3g}"


@pytest.mark.slow
def test_fedprox_keeps_its_proximal_term_in_the_reconstruction_objective(runs) -> None:
    prox, plain = _rounds(runs["fedprox"])[2], _rounds(runs["plain"])[2]
    start = _rounds(runs["plain"])[0]["central"]["loss"]
    assert prox["central"]["auc"] > 0.85 and prox["evaluate"]["loss"] < 0.75 * start, prox
    # mu > 0 holds each client near the round's global model: it rebuilds the rows more slowly than plain FedAvg
    assert prox["evaluate"]["loss"] > plain["evaluate"]["loss"], (prox["evaluate"], plain["evaluate"])


@pytest.mark.slow
def test_dp_sgd_anomaly_detection_learns_and_accounts_its_epsilon_within_the_target(runs) -> None:
    rounds = _rounds(runs["dp-local"])
    last = rounds[2]
    assert last["replies"] == 3 and not last["failed"]
    assert 0 < last["privacy"]["epsilon"] <= 8.0 + 1e-6  # the DP-SGD target held
    assert last["central"]["auc"] > rounds[0]["central"]["auc"] + 0.1, (rounds[0]["central"], last["central"])
    _, meta = workspace.load_model(runs["dp-local"].model_file)
    assert meta["threshold"] == last["evaluate"]["threshold"] < np.inf


@pytest.mark.slow
def test_the_autoencoder_exports_to_onnx_as_its_anomaly_score_and_nothing_else(runs, capsys) -> None:
    from edge import onnx_export
    from uaap.cli import main

    rd = runs["plain"]
    assert main(["export", rd.run_id, "--to", "onnx,tflite"]) == 0
    refusal = "tflite (not applicable): an anomaly detector (model 'autoencoder') exports to fp32 onnx only"
    assert refusal in capsys.readouterr().out
    manifest = json.loads((rd.path / "exports" / "onnx" / "manifest.json").read_text())
    model, meta = workspace.load_model(rd.model_file)
    assert manifest["output"]["name"] == "anomaly_score" and manifest["output"]["threshold"] == meta["threshold"]
    assert manifest["parity"]["passed"] and manifest["parity"]["flag_agreement"] == 1.0
    test = federated(rd.read_config(), 3)[1]
    scores = onnx_export.predict(rd.path / "exports" / "onnx" / onnx_export.FILE, test.X)[:, 0]
    reference = reconstruction_errors(model, test.X)
    assert np.abs(scores - reference).max() <= 1e-5 * meta["threshold"]
    assert np.array_equal(scores > meta["threshold"], reference > meta["threshold"])
