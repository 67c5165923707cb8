"""Example-level DP-SGD (uaap.privacy.dpsgd) inside uaap.training.local_train, with real Opacus."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from uaap.config import RunConfig
from uaap.data import Dataset
from uaap.errors import ConfigError
from uaap.models import build_model, get_weights
from uaap.privacy.accountant import epsilon_of
from uaap.privacy.dpsgd import DPSGD, client_engine, client_report, make_dp_compatible, plan
from uaap.training import TrainConfig, local_train

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning")


def _data(n: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    return Dataset("t", X, rng.integers(0, 3, n), 3, tuple(f"f{i}" for i in range(6)))


def _one_step(mu: float, noise: float) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """One DP-SGD step (plain SGD, lr 0.1) from a fixed model, with the same seeded noise and batch."""
    model = build_model("mlp", 6, 3, seed=1)
    w0 = [p.detach().clone() for p in model.parameters()]
    w_global = [p + 0.25 for p in w0]
    engine = DPSGD(noise, 0.5, generator=torch.Generator().manual_seed(11))
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.1, momentum=0.0, proximal_mu=mu, max_steps=1, seed=5)
    local_train(model, _data(64), cfg, global_params=w_global, privacy=engine)
    assert engine.round_steps == 1
    return w0, w_global, [p.detach().clone() for p in model.parameters()]


def test_fedprox_gradient_under_opacus_is_mu_times_distance_plus_dp_gradient():
    # Same seeded generator -> same Poisson batch and same noise, so the DP gradient g_dp is identical in
    # both runs: w_mu = w0 - lr (g_dp + mu (w0 - w_g)) and w_0 = w0 - lr g_dp, hence
    # (w_0 - w_mu) / lr = mu (w0 - w_g) exactly (up to float32 rounding).
    mu = 0.5
    w0, wg, with_prox = _one_step(mu, noise=0.7)
    _, _, without = _one_step(0.0, noise=0.7)
    for p0, g, a, b in zip(w0, wg, with_prox, without, strict=True):
        torch.testing.assert_close((b - a) / 0.1, mu * (p0 - g), rtol=1e-5, atol=1e-6)
    # the DP gradient is really noisy (not the plain gradient): another noise seed moves the weights
    _, _, other = _one_step(0.0, noise=0.7)
    assert all(torch.equal(a, b) for a, b in zip(without, other, strict=True))  # deterministic given the seed
    _, _, noiseless = _one_step(0.0, noise=0.0)
    assert max(float((a - b).abs().max()) for a, b in zip(without, noiseless, strict=True)) > 1e-3


def test_empty_poisson_batches_are_noise_only_steps():
    data = _data(3)  # batch size 1 -> q = 1/3: a batch is empty with probability (2/3)^3 ~ 0.3
    engine = DPSGD(1.0, 1.0, generator=torch.Generator().manual_seed(3))
    sizes: list[int] = []
    make_private = engine.make_private

    def counting(model, optimizer, loader):
        model, optimizer, loader = make_private(model, optimizer, loader)

        class Counting:
            def __len__(self):
                return len(loader)

            def __iter__(self):
                for xb, yb in loader:
                    sizes.append(len(yb))
                    yield xb, yb

        return model, optimizer, Counting()

    engine.make_private = counting  # type: ignore[method-assign]  # a spy on the real method
    model = build_model("logreg", 6, 3, seed=1)
    before = get_weights(model)
    result = local_train(model, data, TrainConfig(epochs=5, batch_size=1, lr=0.1, momentum=0.0), privacy=engine)
    assert sizes.count(0) >= 1, "the seed was chosen to draw empty batches"
    assert result.steps == 15 == len(sizes)  # every batch, empty or not, is an accounted DP step
    assert engine.accountant.history == [(1.0, 1 / 3, 15)]
    assert not all(np.array_equal(a, b) for a, b in zip(before, get_weights(model), strict=True))


def test_accountant_persists_across_rounds_and_restarts(uaap_home):
    cfg = RunConfig(num_rounds=3, local_epochs=1, batch_size=16, dp_local=True, dp_target_epsilon=4.0, run_id="r1")
    data = _data(64)
    store = RecordDict()
    eps = []
    for rnd in range(3):
        if rnd == 2:
            store = RecordDict()  # a restarted client process: context.state is gone, the file is not
        engine = client_engine(cfg, 64, store, "partition-0", generator=torch.Generator().manual_seed(rnd))
        model = build_model("mlp", 6, 3, seed=1)
        local_train(model, data, TrainConfig.from_run(cfg, seed=rnd), privacy=engine)
        report = client_report(cfg, store, "partition-0")
        eps.append(report["dp-epsilon"])
        assert report["dp-steps"] == 4 and report["dp-q"] == pytest.approx(0.25)
        assert report["dp-total-steps"] == 4 * (rnd + 1)
    p = plan(cfg, 64)
    assert report["dp-sigma"] == p.sigma  # noise fixed once for the planned steps of the whole run
    assert eps[0] < eps[1] < eps[2]
    assert eps[2] == pytest.approx(epsilon_of([(p.sigma, 0.25, 12)], 1e-5))
    assert eps[2] <= cfg.dp_target_epsilon  # the plan spends at most the target over num_rounds
    # a fresh PrivacyEngine without the stored history would have restarted at the first round's epsilon
    assert epsilon_of([(p.sigma, 0.25, 4)], 1e-5) == pytest.approx(eps[0])


def test_batchnorm_models_are_fixed_the_same_way_on_both_sides():
    def with_bn() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
        )

    engine = DPSGD(1.0, 1.0, generator=torch.Generator().manual_seed(0))
    raw = with_bn()
    with pytest.raises(ConfigError, match="make_dp_compatible") as err:
        local_train(raw, _data(32), TrainConfig(epochs=1, batch_size=8), privacy=engine)
    assert str(err.value).startswith("model is not DP-SGD compatible (") and str(err.value).endswith(
        "); build it through uaap.privacy.dpsgd.make_dp_compatible on both the server and the clients"
    )
    server, client = make_dp_compatible(with_bn()), make_dp_compatible(with_bn())
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in server.modules())
    assert [(k, v.shape) for k, v in server.state_dict().items()] == [
        (k, v.shape) for k, v in client.state_dict().items()
    ]
    local_train(client, _data(32), TrainConfig(epochs=1, batch_size=8), privacy=engine)
    assert engine.round_steps == 4
    plain = build_model("mlp", 6, 3)
    assert make_dp_compatible(plain) is plain  # registry models are already compatible


def test_prv_accountant_is_carried_the_same_way():
    engine = DPSGD(1.0, 1.0, mechanism="prv", history=[(1.0, 0.25, 4)], generator=torch.Generator().manual_seed(1))
    model = build_model("logreg", 6, 3, seed=1)
    local_train(model, _data(64), TrainConfig(epochs=1, batch_size=16, momentum=0.0), privacy=engine)
    assert engine._engine.accountant.mechanism() == "prv"
    assert engine.accountant.history == [(1.0, 0.25, 8)]
    assert engine.epsilon(1e-5) == pytest.approx(epsilon_of([(1.0, 0.25, 8)], 1e-5, "prv"))
    assert engine.epsilon(1e-5) < epsilon_of([(1.0, 0.25, 8)], 1e-5, "rdp")


def test_the_secret_generator_is_seeded_afresh_from_the_os_each_time():
    from uaap.privacy.dpsgd import secret_generator

    seeds = {secret_generator().initial_seed() for _ in range(5)}
    assert len(seeds) == 5 and all(0 <= s < 2**63 for s in seeds)


def test_the_plan_counts_poisson_batches_over_the_whole_run_with_the_runs_accountant(monkeypatch):
    # The noise search itself is Opacus' (checked against the target in the test above); here, what it is asked.
    from uaap.privacy import dpsgd

    asked = []
    monkeypatch.setattr(dpsgd, "noise_multiplier", lambda *args: asked.append(args) or 1.25)
    cfg = RunConfig(
        dp_local=True, batch_size=32, local_epochs=2, num_rounds=3, dp_target_epsilon=4.0, dp_accountant="prv"
    )
    # ceil(100 / 32) = 4 batches: each row sampled with q = 1/4, 2 x 4 steps a round, 3 rounds
    assert plan(cfg, 100) == dpsgd.DPSGDPlan(sigma=1.25, q=0.25, steps_per_round=8, planned_steps=24)
    assert asked == [(4.0, 1e-5, 0.25, 24, "prv")]
    # a single row is enough: one batch, sampled with q = 1
    assert plan(cfg, 1) == dpsgd.DPSGDPlan(sigma=1.25, q=1.0, steps_per_round=2, planned_steps=6)
    with pytest.raises(ConfigError) as err:
        plan(cfg, 0)
    assert str(err.value) == "a DP-SGD client needs at least one training example"


def test_the_clients_dpsgd_state_lives_in_context_state_and_once_a_round_in_its_file(uaap_home):
    import json

    from uaap.privacy.dpsgd import load_state, save_state

    cfg = RunConfig(dp_local=True, dp_accountant="prv", dp_clip_norm=0.7, run_id="r2")
    path = uaap_home / "clients" / "r2" / "partition-3" / "dpsgd.json"
    store = RecordDict()
    assert client_report(cfg, store, "partition-3") == {}, "nothing trained yet"
    past = {"version": 1, "sigma": 1.5, "clip": 0.7, "q": 0.25, "round_steps": 4, "mechanism": "prv",
            "history": [[1.5, 0.25, 4]]}  # fmt: skip
    save_state(cfg, store, "partition-3", past, to_disk=False)
    generator = torch.Generator().manual_seed(3)
    engine = client_engine(cfg, 64, store, "partition-3", generator=generator)  # round 2: noise from round 1
    assert engine.generator is generator and (engine.noise_multiplier, engine.max_grad_norm) == (1.5, 0.7)
    assert engine.accountant.mechanism == "prv" and engine.accountant.history == [(1.5, 0.25, 4)]
    fresh = {"version": 1, "sigma": 1.5, "clip": 0.7, "q": None, "round_steps": 0, "mechanism": "prv",
             "history": [[1.5, 0.25, 4]]}  # fmt: skip
    assert engine.state() == fresh and load_state(cfg, store, "partition-3") == fresh
    assert engine.on_step is not None
    engine.sample_rate, engine.round_steps = 0.25, 4  # four DP-SGD steps, as Opacus' hook records them
    engine.accountant.step(1.5, 0.25, 4)
    engine.on_step(engine)
    assert load_state(cfg, store, "partition-3") == fresh | {"q": 0.25, "round_steps": 4, "history": [[1.5, 0.25, 8]]}
    assert not path.exists(), "steps are kept in memory; the file is written once a round"
    report = client_report(cfg, store, "partition-3")
    assert report == {"dp-sigma": 1.5, "dp-q": 0.25, "dp-steps": 4, "dp-total-steps": 8,
                      "dp-epsilon": epsilon_of([(1.5, 0.25, 8)], 1e-5, "prv")}  # fmt: skip
    assert json.loads(path.read_text()) == load_state(cfg, store, "partition-3")
    assert client_report(cfg, RecordDict(), "partition-3") == report, "a restarted client reads its file"
    with pytest.raises(ConfigError) as err:
        client_engine(cfg.replace(dp_accountant="rdp"), 64, store, "partition-3")
    assert str(err.value) == (
        "this client's DP-SGD history was accounted with 'prv', the run now asks for dp-accountant='rdp'; "
        "resume with the original accountant"
    )


def test_dpsgd_refuses_negative_noise_and_a_clip_norm_that_is_not_positive_word_for_word():
    for noise, clip in ((-0.5, 1.0), (1.0, 0.0), (1.0, -1.0)):
        with pytest.raises(ConfigError) as err:
            DPSGD(noise, clip)
        assert str(err.value) == f"DP-SGD needs noise multiplier >= 0 and clip norm > 0; got {noise} and {clip}"
    assert DPSGD(0.0, 1e-9).noise_multiplier == 0.0


def test_sampling_and_noise_follow_the_engines_generator_never_torchs_global_seed():
    # Same secret generator: the same Poisson batches and noise whatever torch's global seed (Opacus is given it).
    # No generator: a fresh OS-seeded one, so re-seeding torch's global generator does not replay the noise.
    def train(generator: torch.Generator | None, global_seed: int) -> list[np.ndarray]:
        model = build_model("logreg", 6, 3, seed=1)
        engine = DPSGD(1.0, 0.5, generator=generator)
        cfg = TrainConfig(epochs=1, batch_size=16, momentum=0.0, seed=global_seed)  # local_train seeds torch with it
        local_train(model, _data(64), cfg, privacy=engine)
        return get_weights(model)

    same = [train(torch.Generator().manual_seed(7), seed) for seed in (0, 1)]
    assert all(np.array_equal(a, b) for a, b in zip(*same, strict=True))
    fresh = [train(None, 0) for _ in range(2)]
    assert not all(np.array_equal(a, b) for a, b in zip(*fresh, strict=True))
