"""Fast DP-SGD for linear stacks (uaap.privacy.fastdp) against Opacus' own per-sample-gradient DP-SGD: the same
step on the same batch and generator state, the same trained weights and the same epsilon over a whole epoch."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from uaap.config import RunConfig
from uaap.data import load_split
from uaap.models import build_model
from uaap.privacy import fastdp
from uaap.privacy.dpsgd import DPSGD
from uaap.training import TrainConfig, local_train


def _opacus_step(model, X, y, sigma, clip, seed):
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    gsm = GradSampleModule(model)
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=sigma, max_grad_norm=clip,
                      expected_batch_size=16, generator=torch.Generator().manual_seed(seed))  # fmt: skip
    torch.nn.functional.cross_entropy(gsm(X), y).backward()
    assert opt.pre_step()
    return [p.grad.clone() for p in model.parameters()]


def _fast_step(model, X, y, sigma, clip, seed):
    stack = fastdp.LinearStack(model)
    opt = fastdp.FastDPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), stack, noise_multiplier=sigma,
                                 max_grad_norm=clip, expected_batch_size=16,
                                 generator=torch.Generator().manual_seed(seed))  # fmt: skip
    torch.nn.functional.cross_entropy(stack(X), y).backward()
    assert opt.pre_step()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(("family", "sigma", "clip", "rows"), [
    ("mlp", 0.0, 0.05, 16),  # every example clipped
    ("mlp", 0.0, 1e3, 16),  # none clipped: the plain summed gradient
    ("mlp", 1.3, 0.5, 16),  # noise drawn in Opacus' order from the same generator
    ("logreg", 1.0, 0.5, 11),
    ("mlp", 0.0, 0.05, 1),  # a batch of one row
    ("mlp", 1.0, 1.0, 0),  # an empty Poisson batch: noise only
    ("no-bias", 0.0, 0.05, 16),  # a linear layer without bias: its norm has no bias term
])  # fmt: skip
def test_a_fast_step_is_opacus_step(family, sigma, clip, rows):
    X, y = (
        load_split(RunConfig(dataset="digits")).train.X[:rows],
        load_split(RunConfig(dataset="digits")).train.y[:rows],
    )
    X, y = torch.from_numpy(X), torch.from_numpy(y)
    if family == "no-bias":
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    else:
        model = build_model(family, 64, 10, None, seed=1)
    assert fastdp.supports(model)
    theirs = _opacus_step(copy.deepcopy(model), X, y, sigma, clip, seed=7)
    ours = _fast_step(copy.deepcopy(model), X, y, sigma, clip, seed=7)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not fastdp.supports(build_model("cnn", 64, 10, (1, 8, 8)))  # convolutions keep Opacus' hooks


def test_an_epoch_of_fast_dp_sgd_trains_the_weights_and_spends_the_epsilon_opacus_does():
    data = load_split(RunConfig(dataset="digits")).train
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, momentum=0.9, proximal_mu=0.1)  # FedProx under DP too
    out = {}
    for fast in (True, False):
        model = build_model("mlp", data.n_features, data.n_classes, None, seed=3)
        engine = DPSGD(1.1, 1.0, generator=torch.Generator().manual_seed(11), fast=fast)
        result = local_train(model, data, cfg, privacy=engine)
        out[fast] = (np.concatenate([p.detach().numpy().ravel() for p in model.parameters()]), engine, result)
    (w_fast, e_fast, r_fast), (w_opacus, e_opacus, r_opacus) = out[True], out[False]
    assert r_fast.steps == r_opacus.steps == e_fast.round_steps == 90  # the same Poisson batches
    assert e_fast.sample_rate == e_opacus.sample_rate == pytest.approx(1 / 90)
    np.testing.assert_allclose(w_fast, w_opacus, rtol=1e-4, atol=1e-5)
    assert e_fast.epsilon(1e-5) == e_opacus.epsilon(1e-5) > 0


def test_tiny_gradients_are_clipped_with_opacus_exact_factor():
    """float64, per-example norms of a few 1e-6: the factor C / (norm + 1e-6) is checked to 1e-12 against per-example
    gradients computed one example at a time."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2).double(), torch.nn.ReLU(), torch.nn.Linear(2, 1).double())
    X = torch.rand(5, 3, dtype=torch.float64)
    y = (model(X) + 1e-6 * torch.arange(1, 6, dtype=torch.float64)[:, None]).detach()
    clip = 2e-6
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(5):
        model.zero_grad()
        torch.nn.functional.mse_loss(model(X[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        grads = [p.grad.clone() for p in model.parameters()]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        assert factor < 0.9  # clipping is active
        expected = [e + factor * g for e, g in zip(expected, grads, strict=True)]
    stack = fastdp.LinearStack(model)
    torch.nn.functional.mse_loss(stack(X), y).backward()  # batch mean, as training takes it
    for a, b in zip(stack.clipped_sum(clip), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-18)


def test_what_takes_the_fast_path_and_what_is_refused():
    nn = torch.nn
    assert fastdp.supports(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    assert not fastdp.supports(nn.Linear(4, 2))  # not a Sequential
    assert not fastdp.supports(nn.Sequential(nn.Flatten(), nn.ReLU()))  # no linear layer
    assert not fastdp.supports(nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.1), nn.Linear(3, 2)))  # not listed
    assert not fastdp.supports(nn.Sequential(nn.Linear(4, 3), nn.PReLU(), nn.Linear(3, 2)))  # has parameters
    assert not fastdp.supports(build_model("cnn", 64, 10, (1, 8, 8)))
    stack = fastdp.LinearStack(nn.Sequential(nn.Linear(4, 2)))
    with pytest.raises(ValueError, match=r"\(batch, features\) inputs"):
        stack(torch.zeros(2, 3, 4))
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    backwards = torch.optim.SGD(list(model.parameters())[::-1], lr=0.1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(8, 4)), batch_size=4)
    with pytest.raises(
        ValueError, match="^fast DP-SGD needs the optimizer over the model's parameters, in the model's order$"
    ):
        fastdp.make_private(model, backwards, loader, noise_multiplier=1.0, max_grad_norm=1.0,
                            generator=torch.Generator())  # fmt: skip


def test_dp_sgd_takes_the_fast_path_by_default_for_linear_stacks_only():
    from uaap.training import make_loader, make_optimizer

    data = load_split(RunConfig(dataset="digits")).train
    cfg = TrainConfig(epochs=1, batch_size=16)
    for family, fast in (("mlp", True), ("cnn", False)):
        model = build_model(family, data.n_features, data.n_classes, data.image_shape, seed=0)
        engine = DPSGD(1.0, 1.0)
        _, optimizer, loader = engine.make_private(model, make_optimizer(model, cfg), make_loader(data, 16, 0))
        assert isinstance(optimizer, fastdp.FastDPOptimizer) is fast, family
        assert engine.sample_rate == pytest.approx(1 / 90) and len(loader) == 90  # 1437 rows, batch 16
