"""The registry's weight families that no other test federates under CKKS with DP-SGD (logreg, the CNN): each runs
through the real ClientApp (tests.LocalGrid), its epsilon equals an independent accountant's, and the key holder's
decrypted model learned (its test loss fell below the initial model's: one private round's accuracy is noise-bound)."""

from __future__ import annotations

from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from server.federation import run_federation
from tests.flower_helpers import LocalGrid
from uaap import crypto, workspace
from uaap.config import RunConfig
from uaap.data import federated
from uaap.models import build_model
from uaap.privacy.dpsgd import plan
from uaap.training import evaluate

BASE = RunConfig(
    dataset="digits", partition="iid", num_clients=2, min_clients=2, num_rounds=1, local_epochs=2, batch_size=32,
    strategy="fedavg", secure_aggregation="ckks", dp_local=True, dp_target_epsilon=8.0, optimizer="adam",
    learning_rate=0.01, seed=2, experiment="tests-weight-families",
)  # fmt: skip


@pytest.fixture(scope="module")
def home(module_home: Path) -> Path:
    return module_home


@pytest.mark.slow
@pytest.mark.parametrize("model", ["logreg", "cnn"])
def test_the_family_federates_under_ckks_with_dp_sgd(home: Path, model: str) -> None:
    from uaap.cli import main

    cfg = crypto.ensure_simulation_keys(BASE.replace(model=model, run_id=f"family-{model}"))
    rd = run_federation(LocalGrid(2), cfg, num_partitions=2)
    last = [e for e in rd.events("round") if e["round"] == 1][-1]
    assert last["train"]["he-clients"] == 2 and not last["failed"]
    clients, test = federated(cfg, 2)
    expected = []
    for c in clients:  # each client's plan, accounted by Opacus' own accountant
        p = plan(cfg, len(c.train.y))
        acc = RDPAccountant()
        acc.history = [(p.sigma, p.q, p.steps_per_round)]
        expected.append(acc.get_epsilon(cfg.dp_delta))
    assert last["privacy"]["example_epsilon_max"] == pytest.approx(max(expected), rel=1e-6)
    assert max(expected) <= cfg.dp_target_epsilon
    assert main(["keys", "decrypt-model", rd.run_id, "--secret-context", cfg.he_secret_context]) == 0
    net, meta = workspace.load_model(rd.model_file)
    assert meta["model"] == model
    start = build_model(model, test.n_features, test.n_classes, test.image_shape, seed=cfg.seed)  # round 1's model
    after, before = evaluate(net, test), evaluate(start, test)
    assert after["loss"] < before["loss"], f"{model}: test loss {before['loss']:.3f} -> {after['loss']:.3f}"
