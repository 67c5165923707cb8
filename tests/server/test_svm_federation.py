"""The linear SVM family: the hinge loss it trains on, and its federation in the clear, under CKKS and with
DP-SGD (the real ClientApp through tests.LocalGrid; breast_cancer, 3 clients, 2 rounds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.svm import LinearSVC

from server.federation import run_federation
from tests.flower_helpers import LocalGrid
from uaap import crypto, workspace
from uaap.config import RunConfig
from uaap.data import Dataset, federated, load_split
from uaap.models import build_model, get_weights
from uaap.models.nets import SVM_WEIGHT_DECAY
from uaap.training import TrainConfig, local_train, predict_proba

BASE = RunConfig(
    dataset="breast_cancer",
    model="svm",
    partition="iid",
    num_clients=3,
    min_clients=3,
    num_rounds=2,
    local_epochs=2,
    learning_rate=0.05,
    batch_size=16,
    strategy="fedavg",
    seed=3,
    experiment="tests-svm",
)
RUNS = {"plain": BASE, "he": BASE.replace(secure_aggregation="ckks"), "dp": BASE.replace(dp_local=True)}


def test_one_svm_step_is_the_hinge_gradient_plus_its_l2_margin_term():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 5)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    model = build_model("svm", 5, 3, seed=2)
    W, b = (t.detach().numpy().astype(np.float64) for t in model[1].parameters())
    local_train(model, Dataset("t", X, y, 3, tuple("abcde")), TrainConfig(batch_size=8, lr=0.1, momentum=0.0))
    # Weston-Watkins hinge, by hand: mean over rows of sum_{j != y} max(0, 1 - s_y + s_j) / n_classes
    scores = X @ W.T + b
    gW, gb = np.zeros_like(W), np.zeros_like(b)
    for x, label, s in zip(X.astype(np.float64), y, scores, strict=True):
        for j in range(3):
            if j != label and 1 - s[label] + s[j] > 0:
                gW[j] += x
                gW[label] -= x
                gb[j] += 1
                gb[label] -= 1
    gW, gb = gW / (8 * 3), gb / (8 * 3)
    new_W, new_b = (t.detach().numpy() for t in model[1].parameters())
    np.testing.assert_allclose(new_W, W - 0.1 * (gW + SVM_WEIGHT_DECAY * W), atol=1e-6)
    np.testing.assert_allclose(new_b, b - 0.1 * (gb + SVM_WEIGHT_DECAY * b), atol=1e-6)


@pytest.fixture(scope="module")
def runs(module_home: Path) -> dict[str, workspace.RunDir]:
    out = {}
    for name, cfg in RUNS.items():
        cfg = crypto.ensure_simulation_keys(cfg.replace(run_id=f"svm-{name}"))
        out[name] = run_federation(LocalGrid(3), cfg, num_partitions=3)
    return out


def _last(rd: workspace.RunDir) -> dict:
    return [e for e in rd.events("round") if e["round"] > 0][-1]


@pytest.mark.slow
def test_the_federated_svm_is_as_good_as_scikit_learns_linear_svc_on_the_pooled_rows(runs: dict) -> None:
    rd = runs["plain"]
    model, meta = workspace.load_model(rd.model_file)
    assert meta["model"] == "svm"
    _, test = federated(rd.read_config(), 3)
    ours = float((predict_proba(model, test.X).argmax(1) == test.y).mean())
    split = load_split(rd.read_config())  # the pooled training rows, standardised the same way
    ref = LinearSVC(C=1.0).fit(split.train.X, split.train.y)
    theirs = float((ref.predict(test.X) == test.y).mean())
    assert ours >= theirs - 0.03, f"federated SVM {ours:.3f} vs LinearSVC {theirs:.3f}"
    assert _last(rd)["evaluate"]["accuracy"] > 0.9, _last(rd)["evaluate"]
    print(f"federated SVM {ours:.3f}, LinearSVC {theirs:.3f}")


@pytest.mark.slow
def test_the_svm_under_ckks_is_the_plaintext_svm_and_under_dp_sgd_it_accounts_its_epsilon(runs: dict) -> None:
    from uaap.cli import main

    he, plain = runs["he"], runs["plain"]
    assert _last(he)["train"]["he-clients"] == 3
    assert _last(he)["evaluate"]["accuracy"] == pytest.approx(_last(plain)["evaluate"]["accuracy"], abs=1e-9)
    secret = he.read_config().he_secret_context
    assert main(["keys", "decrypt-model", str(he.run_id), "--secret-context", secret]) == 0
    model, _ = workspace.load_model(he.model_file)
    ref, _ = workspace.load_model(plain.model_file)
    drift = max(float(np.abs(a - b).max()) for a, b in zip(get_weights(model), get_weights(ref), strict=True))
    assert drift <= 1e-5, f"HE and plaintext SVMs differ by {drift:.3g}"
    dp = _last(runs["dp"])
    assert dp["replies"] == 3 and 0 < dp["privacy"]["epsilon"] <= RUNS["dp"].dp_target_epsilon + 1e-6
    assert dp["evaluate"]["accuracy"] > 0.6
