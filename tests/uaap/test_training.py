"""The shared local training loop: FedProx term, stragglers, metrics, FedAvg aggregation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from client.app import straggler_steps
from tests.flower_helpers import configure, reply_from, train_metrics
from uaap.config import RunConfig
from uaap.data import client_data
from uaap.models import MODELS, build_model, from_record, get_weights, set_weights, to_record
from uaap.training import TrainConfig, add_proximal_gradient, classification_metrics, local_train


@pytest.fixture(scope="module")
def client0():
    return client_data(RunConfig(num_clients=5), 0, 5).train


def test_proximal_gradient_is_mu_times_distance_to_global() -> None:
    model = build_model("mlp", 64, 10, seed=0)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    add_proximal_gradient(model, start, mu=0.3)
    for p, g in zip(model.parameters(), start, strict=True):
        torch.testing.assert_close(p.grad, 0.3 * (p.detach() - g), rtol=0, atol=0)
    # ...and it is the autograd gradient of mu/2 * ||w - w_global||^2 (squared norm, not the norm).
    model.zero_grad()
    loss = 0.15 * sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), start, strict=True))
    loss.backward()
    autograd = [p.grad.clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    add_proximal_gradient(model, start, mu=0.3)
    for p, ref in zip(model.parameters(), autograd, strict=True):
        torch.testing.assert_close(p.grad, ref)


def test_fedprox_with_mu_zero_is_bit_identical_to_fedavg(client0) -> None:
    def train(mu: float, strategy: str) -> list[np.ndarray]:
        model = build_model("mlp", 64, 10, seed=1)
        cfg = TrainConfig.from_run(RunConfig(strategy=strategy, proximal_mu=mu), seed=5)
        start = [p.detach().clone() for p in model.parameters()]
        local_train(model, client0, cfg, global_params=start)
        return get_weights(model)

    fedavg, fedprox0, fedprox = train(0.0, "fedavg"), train(0.0, "fedprox"), train(1.0, "fedprox")
    assert all(np.array_equal(a, b) for a, b in zip(fedavg, fedprox0, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(fedavg, fedprox, strict=True)), "mu>0 must change training"


def test_fedprox_keeps_weights_closer_to_the_global_model(client0) -> None:
    def drift(mu: float) -> float:
        model = build_model("mlp", 64, 10, seed=1)
        start = [p.detach().clone() for p in model.parameters()]
        local_train(model, client0, TrainConfig(epochs=3, lr=0.1, proximal_mu=mu, seed=2), global_params=start)
        return float(sum(((p.detach() - g) ** 2).sum() for p, g in zip(model.parameters(), start, strict=True)))

    assert drift(1.0) < 0.7 * drift(0.0)


def test_straggler_does_partial_work(client0) -> None:
    cfg = RunConfig(straggler_fraction=1.0)
    steps = straggler_steps(cfg, server_round=1, pid=0, full_steps=40)
    assert steps is not None and 1 <= steps < 40
    assert straggler_steps(RunConfig(straggler_fraction=0.0), 1, 0, 40) is None
    model = build_model("logreg", 64, 10)
    result = local_train(model, client0, TrainConfig(epochs=5, max_steps=steps))
    assert result.steps == steps
    rate = np.mean(
        [
            straggler_steps(RunConfig(straggler_fraction=0.3), r, p, 40) is not None
            for r in range(1, 30)
            for p in range(20)
        ]
    )
    assert rate == pytest.approx(0.3, abs=0.06)


def test_fedavg_aggregate_matches_numpy_weighted_mean() -> None:
    rng = np.random.default_rng(0)
    shapes = [(4, 3), (3,)]
    updates = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(3)]
    counts = [10, 30, 60]
    replies = [
        reply_from(i + 1, RecordDict({"arrays": to_record(w), "metrics": MetricRecord(train_metrics(n))}))
        for i, (w, n) in enumerate(zip(updates, counts, strict=True))
    ]
    from strategies import build_strategy

    strategy = build_strategy(RunConfig(strategy="fedavg"))
    configure(strategy, 1, to_record(updates[0]), [1, 2, 3])
    arrays, _ = strategy.aggregate_train(1, replies)
    assert isinstance(arrays, ArrayRecord)
    expected = [sum(w[i] * n for w, n in zip(updates, counts, strict=True)) / sum(counts) for i in range(2)]
    for got, ref in zip(from_record(arrays), expected, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_metrics_against_sklearn_definitions() -> None:
    y = np.array([0, 1, 1, 0])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = classification_metrics(y, proba)
    assert m["accuracy"] == 0.5
    assert m["auc"] == pytest.approx(0.75)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.3])))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registry_model_round_trips_through_flower_records(name: str) -> None:
    model = build_model(name, 64, 10, image_shape=(1, 8, 8), seed=3)
    weights = get_weights(model)
    clone = build_model(name, 64, 10, image_shape=(1, 8, 8), seed=99)
    set_weights(clone, from_record(to_record(weights)))
    x = torch.rand(5, 64)
    torch.testing.assert_close(model(x), clone(x), rtol=0, atol=0)
    assert build_model(name, 64, 10, image_shape=(1, 8, 8), seed=3).state_dict().keys() == model.state_dict().keys()
