"""Federated regression end to end in this process (the real ClientApp through tests.LocalGrid): plain FedAvg,
CKKS secure aggregation, DP-SGD and central DP on diabetes, 3 clients, 2 rounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import r2_score

from server.federation import run_federation
from tests.flower_helpers import LocalGrid
from uaap import crypto, workspace
from uaap.config import RunConfig
from uaap.data import federated
from uaap.models import get_weights
from uaap.training import predict

BASE = RunConfig(
    dataset="diabetes",
    partition="iid",
    num_clients=3,
    min_clients=3,
    num_rounds=2,
    local_epochs=3,
    learning_rate=0.01,
    batch_size=16,
    strategy="fedavg",
    seed=1,
    experiment="tests-regression",
)
RUNS = {
    "plain": BASE,
    "he": BASE.replace(secure_aggregation="ckks"),
    "fedprox": BASE.replace(strategy="fedprox", proximal_mu=0.1),
    "dp-local": BASE.replace(dp_local=True, dp_target_epsilon=8.0),
    "dp-central": BASE.replace(dp_central=True, dp_noise_multiplier=0.5, central_eval=True),
}


@pytest.fixture(scope="module")
def home(module_home: Path) -> Path:
    return module_home


@pytest.fixture(scope="module")
def runs(home: Path) -> dict[str, workspace.RunDir]:
    out = {}
    for name, cfg in RUNS.items():
        cfg = crypto.ensure_simulation_keys(cfg.replace(run_id=f"reg-{name}"))
        out[name] = run_federation(LocalGrid(3), cfg, num_partitions=3)
    return out


def _last(rd: workspace.RunDir) -> dict:
    return [e for e in rd.events("round") if e["round"] > 0][-1]


@pytest.mark.slow
def test_plain_federated_regression_learns_and_its_summed_r2_is_the_pooled_r2(runs: dict) -> None:
    rd = runs["plain"]
    rounds = {e["round"]: e for e in rd.events("round")}
    central = [rounds[r]["central"]["r2"] for r in (0, 1, 2)]
    assert central[2] > 0.4 and central[2] > central[0] + 0.4, f"test R2 per round: {central}"
    assert set(rounds[2]["evaluate"]) >= {"mse", "rmse", "mae", "r2", "loss"}
    assert "accuracy" not in rounds[2]["evaluate"]

    model, meta = workspace.load_model(rd.model_file)
    assert meta["task"] == "regression" and meta["n_classes"] == 1 and 100 < meta["target_mean"] < 200
    clients, test = federated(rd.read_config(), 3)
    assert rounds[2]["central"]["r2"] == pytest.approx(r2_score(test.y, predict(model, test)), rel=1e-9)
    # the server's federated R2 comes from the clients' summed sums: it is the R2 of their validation rows pooled
    y = np.concatenate([c.test.y for c in clients])
    pooled = r2_score(y, np.concatenate([predict(model, c.test) for c in clients]))
    assert rounds[2]["evaluate"]["r2"] == pytest.approx(pooled, rel=1e-9)
    assert rounds[2]["evaluate"]["rmse"] == pytest.approx(np.sqrt(rounds[2]["evaluate"]["mse"]))


@pytest.mark.slow
def test_ckks_regression_equals_the_plaintext_federation_within_ckks_precision(runs: dict, home: Path) -> None:
    from uaap.cli import main

    he, plain = runs["he"], runs["plain"]
    he_last, plain_last = _last(he), _last(plain)
    assert he_last["train"]["he-clients"] == 3 and he_last["central"] == {}
    for key in ("r2", "mse", "mae"):
        assert he_last["evaluate"][key] == pytest.approx(plain_last["evaluate"][key], rel=1e-6), key
    secret = home.resolve() / "keys" / he.run_id / crypto.SECRET_FILE
    assert main(["keys", "decrypt-model", str(he.run_id), "--secret-context", str(secret)]) == 0
    model, meta = workspace.load_model(he.model_file)
    assert meta["task"] == "regression"
    ref, _ = workspace.load_model(plain.model_file)
    drift = max(float(np.abs(a - b).max()) for a, b in zip(get_weights(model), get_weights(ref), strict=True))
    assert drift <= 1e-5, f"HE and plaintext global models differ by {drift:.3g}"


@pytest.mark.slow
def test_fedprox_regression_learns_with_its_proximal_term_in_the_local_objective(runs: dict) -> None:
    prox, plain = _last(runs["fedprox"]), _last(runs["plain"])
    assert prox["central"]["r2"] > 0.4
    assert prox["central"]["r2"] != plain["central"]["r2"], "mu > 0 changed the local objective"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dp-local", "dp-central"])
def test_both_dp_levels_train_a_regression_model_and_account_epsilon(runs: dict, name: str) -> None:
    last = _last(runs[name])
    assert last["replies"] == 3 and not last["failed"]
    assert 0 < last["privacy"]["epsilon"] < 50
    assert np.isfinite(last["evaluate"]["r2"]) and np.isfinite(last["central"]["mse"])
    if name == "dp-local":
        assert last["privacy"]["epsilon"] <= 8.0 + 1e-6  # the DP-SGD target held
