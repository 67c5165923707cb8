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
    ("mlp", 1.0, 1.0, 0),  # an empty Poisson batch: noise only
])  # fmt: skip
def test_a_fast_step_is_opacus_step(family, sigma, clip, rows):
    X, y = (
        load_split(RunConfig(dataset="digits")).train.X[:rows],
        load_split(RunConfig(dataset="digits")).train.y[:rows],
    )
    X, y = torch.from_numpy(X), torch.from_numpy(y)
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
    np.testing.assert_allclose(w_fast, w_opacus, rtol=1e-4, atol=1e-5)
    assert e_fast.epsilon(1e-5) == e_opacus.epsilon(1e-5) > 0
