"""Client-level central DP (strategies.dp_noise and .dp_accounting) with real Flower messages, FedAvg, TenSEAL."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from scipy import stats

from strategies import wrap_privacy
from strategies.dp_accounting import PrivacyAccounting
from strategies.dp_noise import CentralDPNoise, poisson_sample
from strategies.secure import SecureAggregation
from strategies.wrapper import is_encrypted
from tests.flower_helpers import reply_from
from uaap import crypto
from uaap.config import RunConfig
from uaap.errors import ConfigError
from uaap.models import flatten, from_record, to_record
from uaap.privacy.accountant import epsilon_of
from uaap.privacy.clip import clip_update, update_norm
from uaap.privacy.ledger import Ledger
from uaap.protocol import CLIENT_INFO, PARTITION_ID


def _start(n: int = 2000, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n // 50, 50)).astype(np.float32), rng.normal(size=(n % 50 or 50,)).astype(np.float32)]


def _reply(node: int, weights: list[np.ndarray], n: int, **metrics: float):
    content = RecordDict(
        {
            "arrays": to_record(weights),
            "metrics": MetricRecord({"num-examples": n, **metrics}),
            CLIENT_INFO: ConfigRecord({PARTITION_ID: node}),
        }
    )
    return reply_from(node, content)


def _cfg(**kw) -> RunConfig:
    base = {"dp_central": True, "dp_noise_multiplier": 1.0, "dp_central_clip_norm": 1.0, "fraction_train": 1.0}
    return RunConfig(**(base | kw))


def _dp(cfg: RunConfig, rng: np.random.Generator | None = None, inner=None) -> PrivacyAccounting:
    """The production stack for ``cfg`` (noise when dp-central, accounting) around ``inner`` (FedAvg)."""
    dp = wrap_privacy(cfg, inner if inner is not None else FedAvg(), rng=rng)
    assert isinstance(dp, PrivacyAccounting)
    return dp


def _start_round(dp: PrivacyAccounting, arrays, nodes: list[int]) -> None:
    """What configure_train does before sampling (only the noise layer needs the round's model)."""
    if dp.noise is not None:
        dp.noise.start_round(arrays, nodes)


def test_clip_update_bounds_the_flattened_delta():
    start = _start()
    rng = np.random.default_rng(1)
    big = [w + rng.normal(size=w.shape).astype(np.float32) for w in start]
    clipped = clip_update(big, start, 0.5)
    assert update_norm(clipped, start) == pytest.approx(0.5, rel=1e-5)
    d_big = flatten(big) - flatten(start)
    d_clip = flatten(clipped) - flatten(start)
    assert np.allclose(d_clip, d_big * (0.5 / np.linalg.norm(d_big)), atol=1e-6)  # same direction, all layers
    small = [w + 1e-4 for w in start]
    assert all(np.array_equal(a, b) for a, b in zip(clip_update(small, start, 0.5), small, strict=True))
    assert [w.dtype for w in clipped] == [np.float32, np.float32]


def test_central_noise_has_the_calibrated_standard_deviation(uaap_home):
    # Every client sends the start model (zero update): the new model is start + z / (q N) with
    # z ~ N(0, (sigma C)^2) per coordinate. With 20,000 coordinates the sample std is within 2% of the target
    # (its own relative std is 1/sqrt(2n) = 0.5%: 2% is 4 standard errors), and a KS test against the exact
    # normal law does not reject at 1e-3.
    sigma, clip, q, population = 1.3, 0.8, 0.5, 8
    cfg = _cfg(dp_noise_multiplier=sigma, dp_central_clip_norm=clip, fraction_train=q, run_id="noise")
    start = _start(20_000)
    dp = _dp(cfg, np.random.default_rng(123))
    _start_round(dp, to_record(start), list(range(1, population + 1)))
    replies = [_reply(i, start, 10) for i in (1, 2, 3)]
    arrays, metrics = dp.aggregate_train(1, replies)
    noise = flatten(from_record(arrays)) - flatten(start)
    expected_std = sigma * clip / (q * population)
    assert metrics["dp-noise-std"] == pytest.approx(expected_std)
    assert metrics["dp-sampled"] == 3
    assert np.std(noise) == pytest.approx(expected_std, rel=0.02)
    assert abs(np.mean(noise)) < 4 * expected_std / np.sqrt(noise.size)
    assert stats.kstest(noise, "norm", args=(0.0, expected_std)).pvalue > 1e-3


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")
def test_uniform_weights_and_fixed_denominator_under_central_dp(uaap_home):
    # Two clients with very different num-examples: the aggregate is start + (d1 + d2) / (q N), not the
    # num-examples-weighted FedAvg. Noise is negligible (sigma 1e-9) so the comparison is exact.
    cfg = _cfg(dp_noise_multiplier=1e-9, dp_central_clip_norm=10.0, run_id="uniform")
    start = _start()
    d1 = [np.full_like(w, 0.01) for w in start]
    d2 = [np.full_like(w, -0.03) for w in start]
    one = [s + d for s, d in zip(start, d1, strict=True)]
    two = [s + d for s, d in zip(start, d2, strict=True)]
    replies = [_reply(1, one, 1), _reply(2, two, 1000)]
    dp = _dp(cfg, np.random.default_rng(0))
    _start_round(dp, to_record(start), [1, 2])
    arrays, _ = dp.aggregate_train(1, replies)
    got = from_record(arrays)
    for s, g in zip(start, got, strict=True):
        np.testing.assert_allclose(g, s + (0.01 - 0.03) / 2, atol=1e-6)
    weighted = (1 * 0.01 + 1000 * -0.03) / 1001
    assert abs(float(got[0].ravel()[0] - start[0].ravel()[0]) - weighted) > 0.005  # FedAvg's weighting differs


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")
def test_server_reclips_an_oversized_update(uaap_home):
    cfg = _cfg(dp_noise_multiplier=1e-9, dp_central_clip_norm=0.5, run_id="reclip")
    start = _start()
    cheat = [w + 1.0 for w in start]  # norm sqrt(2000) >> 0.5: a client that did not clip
    dp = _dp(cfg, np.random.default_rng(0))
    _start_round(dp, to_record(start), [1])
    arrays, _ = dp.aggregate_train(1, [_reply(1, cheat, 5)])
    assert update_norm(from_record(arrays), start) == pytest.approx(0.5, rel=1e-4)


def test_poisson_sampling_is_independent_per_client():
    rng = np.random.default_rng(9)
    nodes = list(range(200))
    sizes = [len(poisson_sample(nodes, 0.1, rng)) for _ in range(400)]
    assert np.mean(sizes) == pytest.approx(20, abs=4 * np.sqrt(18 / 400))  # Binomial(200, 0.1): var 18
    assert np.var(sizes) == pytest.approx(18, rel=0.3)
    assert sorted(set(poisson_sample(nodes, 1.0, rng))) == nodes
    assert 0 in {len(poisson_sample(list(range(3)), 0.2, rng)) for _ in range(200)}  # empty samples happen


def test_empty_sample_releases_only_noise_and_is_accounted(uaap_home):
    cfg = _cfg(fraction_train=0.5, run_id="empty")
    start = _start()
    dp = _dp(cfg, np.random.default_rng(2))
    _start_round(dp, to_record(start), [1, 2, 3, 4])
    arrays, metrics = dp.aggregate_train(1, [])
    assert metrics["dp-sampled"] == 0
    moved = flatten(from_record(arrays)) - flatten(start)
    assert np.std(moved) == pytest.approx(1.0 / (0.5 * 4), rel=0.1)
    assert dp.user_epsilon() == pytest.approx(epsilon_of([(1.0, 0.5, 1)], 1e-5))
    assert [r.round for r in Ledger().releases("empty")] == [1]


LOCAL = (2.0, 0.05, 10)  # one DP-SGD client's (sigma, q, steps) per round


def _run_rounds(dp: PrivacyAccounting, start: list[np.ndarray], rounds: range) -> list[str | None]:
    stops = []
    for r in rounds:
        stops.append(dp.before_round(r))
        if stops[-1]:
            break
        _start_round(dp, to_record(start), [1, 2, 3, 4])
        dp.aggregate_train(r, [_reply(1, start, 3, **{"dp-sigma": LOCAL[0], "dp-q": LOCAL[1], "dp-steps": LOCAL[2]})])
    return stops


def test_budget_stop_fires_exactly_before_the_exceeding_round_and_resume_continues(uaap_home):
    eps = [epsilon_of([(1.0, 0.5, k)], 1e-5) for k in range(1, 8)]
    cfg = _cfg(fraction_train=0.5, max_epsilon=(eps[3] + eps[4]) / 2, run_id="budget", dp_local=True)
    start = _start()
    dp = _dp(cfg, np.random.default_rng(3))
    # the example-level budget of the one DP-SGD client is far from binding at these rounds
    stops = _run_rounds(dp, start, range(1, 8))
    assert stops[:4] == [None] * 4 and stops[4] is not None  # rounds 1-4 ran, round 5 would exceed
    assert "round 5" in stops[4] and f"{eps[4]:.4f}" in stops[4] and "max-epsilon" in stops[4]
    assert dp.user_epsilon() == pytest.approx(eps[3])
    ledger = Ledger()
    users = [r.epsilon for r in ledger.releases("budget", level="user")]
    assert users == pytest.approx(eps[:4]) and all(b > a for a, b in zip(users, users[1:], strict=False))
    clients = [r.epsilon for r in ledger.releases("budget", level="example")]
    assert clients[-1] == pytest.approx(epsilon_of([(2.0, 0.05, 40)], 1e-5))
    report = dp.round_report(4)
    assert report["epsilon"] == pytest.approx(eps[3]) and report["budget_used"] < 1.0
    assert report["example_epsilon_max"] == pytest.approx(clients[-1])

    # resume from a checkpoint taken after round 3 (round 4's ledger rows are replayed) with a larger budget
    dp.ledger_round = 3
    state = dp.state_dict()
    state["user"]["history"] = [[1.0, 0.5, 3]]
    state["clients"]["node-1"]["history"] = [[2.0, 0.05, 30]]
    resumed = _dp(cfg.replace(max_epsilon=eps[5] + 1e-9), np.random.default_rng(4))
    resumed.load_state_dict(state)
    assert [r.round for r in ledger.releases("budget", level="user")] == [1, 2, 3]
    stops = _run_rounds(resumed, start, range(4, 10))
    assert stops[:3] == [None] * 3 and "round 7" in stops[3]
    assert [r.epsilon for r in ledger.releases("budget", level="user")] == pytest.approx(eps[:6])


def test_local_only_accounting_stops_on_example_level_budget(uaap_home):
    one = epsilon_of([(2.0, 0.05, 10)], 1e-5)
    two = epsilon_of([(2.0, 0.05, 20)], 1e-5)
    cfg = RunConfig(dp_local=True, max_epsilon=(one + two) / 2, run_id="local")
    dp = _dp(cfg)
    assert not dp.central
    stops = _run_rounds(dp, _start(), range(1, 4))
    assert stops[0] is None and "node-1's example-level epsilon" in stops[1]
    assert "epsilon" in dp.round_report(1) and "user_epsilon" not in dp.round_report(1)


def test_central_dp_refuses_zero_noise():
    with pytest.raises(ConfigError, match="dp-noise-multiplier=0"):
        _dp(_cfg(dp_noise_multiplier=0.0))
    with pytest.raises(ConfigError, match="fraction-train=0"):
        CentralDPNoise(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0, sample_rate=0.0)


def test_he_central_dp_releases_the_plaintext_fixed_denominator_estimator(uaap_home, tmp_path):
    # Under CKKS the clients (client.app.prepare_update) send Enc(clip(w_k - w) / (q N)); the server adds the
    # encrypted sum, the global model and noise / (q N), with additions only. 4 clients online, q = 1, one of
    # them drops: the divisor stays q N = 4. The same seeded generator drives a plaintext CentralDP over the
    # same updates, so both paths must release the same model, round after round, and on an empty sample.
    from flwr.app import Context

    from client.app import prepare_update

    keys = crypto.generate_keys(tmp_path / "fed")
    secret = crypto.load_context(keys.secret)
    sigma, clip = 0.7, 1.0
    cfg = _cfg(dp_noise_multiplier=sigma, dp_central_clip_norm=clip, run_id="he", num_clients=4)
    he_cfg = cfg.replace(
        secure_aggregation="ckks", he_public_context=str(keys.public), he_secret_context=str(keys.secret)
    )
    he = _dp(he_cfg, np.random.default_rng(77), inner=SecureAggregation(FedAvg(), str(keys.public)))
    plain = _dp(cfg.replace(run_id="plain"), np.random.default_rng(77))
    assert is_encrypted(he) and he.noise is not None and plain.noise is not None  # the loop sees ciphertext
    node = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    rng = np.random.default_rng(5)
    he_global, plain_global = to_record(_start(3000)), to_record(_start(3000))
    for server_round, replying in ((1, 3), (2, 3), (3, 0)):
        _start_round(he, he_global, [1, 2, 3, 4])
        _start_round(plain, plain_global, [1, 2, 3, 4])
        assert he.noise.denominator == plain.noise.denominator == 4.0
        start = crypto.decrypt_global(he_global, secret) if crypto.is_encrypted(he_global) else from_record(he_global)
        np.testing.assert_allclose(flatten(start), flatten(from_record(plain_global)), atol=1e-5)
        he_replies, plain_replies = [], []
        for i in range(1, replying + 1):
            new = [w + rng.normal(0, 0.05, w.shape).astype(np.float32) for w in start]
            record, metrics = prepare_update(he_cfg, new, start, 50 * i, node, he.noise.denominator)
            metrics["num-examples"] = 50 * i  # client.app's train() adds it beside prepare_update's metrics
            he_replies.append(reply_from(i, RecordDict({"arrays": record, "metrics": MetricRecord(metrics)})))
            plain_replies.append(_reply(i, clip_update(new, start, clip), 50 * i))
        he_global, he_metrics = he.aggregate_train(server_round, he_replies)
        plain_global, _ = plain.aggregate_train(server_round, plain_replies)
        assert crypto.is_encrypted(he_global) and crypto.total_weight(he_global) == 1.0
        assert he_metrics["dp-sampled"] == replying
        assert he_metrics["dp-noise-std"] == pytest.approx(sigma * clip / 4)
        got = flatten(crypto.decrypt_global(he_global, secret))
        np.testing.assert_allclose(got, flatten(from_record(plain_global)), atol=1e-5)
    assert he.user_epsilon() == plain.user_epsilon() == pytest.approx(epsilon_of([(sigma, 1.0, 3)], 1e-5))


def test_he_central_dp_client_refuses_a_missing_denominator(tmp_path):
    from flwr.app import Context

    from client.app import prepare_update

    keys = crypto.generate_keys(tmp_path / "fed")
    cfg = _cfg(secure_aggregation="ckks", he_public_context=str(keys.public), he_secret_context=str(keys.secret))
    node = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    start = _start(100)
    with pytest.raises(ConfigError, match="dp-denominator"):
        prepare_update(cfg, start, start, 10, node, None)


def test_aggregated_metrics_report_the_largest_client_epsilon_not_averages(uaap_home):
    cfg = _cfg(dp_central=False, dp_local=True, run_id="local-metrics")
    start = _start()
    dp = _dp(cfg)
    _start_round(dp, to_record(start), [1, 2])
    small, large = {"dp-sigma": 2.0, "dp-q": 0.05, "dp-steps": 10}, {"dp-sigma": 1.0, "dp-q": 0.1, "dp-steps": 40}
    _, metrics = dp.aggregate_train(1, [_reply(1, start, 30, **small), _reply(2, start, 10, **large)])
    assert not {"dp-sigma", "dp-q", "dp-steps", "dp-epsilon"} & set(metrics.keys())
    assert metrics["dp-example-epsilon-max"] == pytest.approx(epsilon_of([(1.0, 0.1, 40)], 1e-5))
    assert metrics["dp-example-epsilon-max"] == max(r.epsilon for r in Ledger().releases("local-metrics"))


def test_a_client_under_a_new_node_id_keeps_its_epsilon_and_cannot_lower_it(uaap_home):
    # A resumed simulation draws new node ids; the client's own accountant (persisted on its side) reports
    # its total steps, so the first release under the new name is accounted with all of them. A client that
    # reports fewer total steps than the server saw cannot lower what the server recorded.
    cfg = RunConfig(dp_local=True, run_id="renamed")
    dp = _dp(cfg)
    start = _start()
    dp.aggregate_train(
        1, [_reply(5, start, 3, **{"dp-sigma": 2.0, "dp-q": 0.05, "dp-steps": 10, "dp-total-steps": 30})]
    )
    assert dp.example_epsilons()["node-5"] == pytest.approx(epsilon_of([(2.0, 0.05, 30)], 1e-5))
    dp.aggregate_train(2, [_reply(5, start, 3, **{"dp-sigma": 2.0, "dp-q": 0.05, "dp-steps": 10, "dp-total-steps": 1})])
    assert dp.example_epsilons()["node-5"] == pytest.approx(epsilon_of([(2.0, 0.05, 40)], 1e-5))
    assert [r.epsilon for r in Ledger().releases("renamed")] == pytest.approx(
        [epsilon_of([(2.0, 0.05, 30)], 1e-5), epsilon_of([(2.0, 0.05, 40)], 1e-5)]
    )


def test_a_round_that_lands_exactly_on_max_epsilon_runs_and_the_next_does_not(uaap_home):
    # The budget is "at most max-epsilon": a round whose epsilon equals it exactly still runs.
    eps = [epsilon_of([(1.0, 0.5, k)], 1e-5) for k in range(1, 7)]
    dp = _dp(_cfg(fraction_train=0.5, max_epsilon=eps[3], run_id="exact"), np.random.default_rng(3))
    stops = _run_rounds(dp, _start(), range(1, 7))
    assert stops[:4] == [None] * 4 and "round 5" in stops[4]
    assert dp.user_epsilon() == eps[3]
    assert dp.round_report(4)["budget_used"] == 1.0
    # the same at the example level (one DP-SGD client, no central noise)
    two = epsilon_of([LOCAL[:2] + (2 * LOCAL[2],)], 1e-5)
    local = _dp(RunConfig(dp_local=True, max_epsilon=two, run_id="exact-local"))
    stops = _run_rounds(local, _start(), range(1, 5))
    assert stops[:2] == [None, None] and "round 3" in stops[2] and "node-1's example-level epsilon" in stops[2]
    assert local.example_epsilons() == {"node-1": two}


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")
@pytest.mark.parametrize(("q", "online", "replying"), [(1.0, 5, 2), (0.5, 4, 1), (0.25, 8, 3)])
def test_the_denominator_is_q_times_the_clients_online_not_the_replies(uaap_home, q, online, replying):
    # Fixed-denominator estimator: w + sum(updates) / (q N), N counted when sampling, whoever replies.
    cfg = _cfg(dp_noise_multiplier=1e-9, dp_central_clip_norm=10.0, fraction_train=q, run_id=f"denominator-{q}")
    start = _start()
    deltas = [0.01 * (i + 1) for i in range(replying)]
    dp = _dp(cfg, np.random.default_rng(0))
    _start_round(dp, to_record(start), list(range(1, online + 1)))
    replies = [_reply(i + 1, [w + d for w in start], 10 * (i + 1)) for i, d in enumerate(deltas)]
    arrays, metrics = dp.aggregate_train(1, replies)
    expected = sum(deltas) / (q * online)
    for s, g in zip(start, from_record(arrays), strict=True):
        np.testing.assert_allclose(g - s, expected, atol=1e-6)
    assert metrics["dp-sampled"] == replying
    assert metrics["dp-noise-std"] == pytest.approx(1e-9 * 10.0 / (q * online))


def test_configure_train_poisson_samples_the_online_clients_and_sends_the_denominator():
    from flwr.app import MessageType

    from tests.flower_helpers import configure

    q, nodes = 0.3, [17, 3, 9, 42, 5, 11, 23, 8, 30, 14]
    noise = CentralDPNoise(
        FedAvg(min_available_nodes=2), noise_multiplier=1.0, clipping_norm=1.0, sample_rate=q,
        rng=np.random.default_rng(11),
    )  # fmt: skip
    start = to_record(_start(100))
    msgs = configure(noise, 1, start, nodes)
    expected = poisson_sample(sorted(nodes), q, np.random.default_rng(11))  # the same draws, independently
    assert 0 < len(expected) < len(nodes)
    assert [int(m.metadata.dst_node_id) for m in msgs] == expected
    assert noise.last_population == len(nodes) and noise.last_sampled == len(expected)
    for msg in msgs:
        assert msg.metadata.message_type == MessageType.TRAIN
        assert msg.content.config_records["config"]["dp-denominator"] == pytest.approx(q * len(nodes))
        got = from_record(msg.content.array_records["arrays"])
        assert all(np.array_equal(a, b) for a, b in zip(got, from_record(start), strict=True))
    nobody = CentralDPNoise(
        FedAvg(min_available_nodes=2), noise_multiplier=1.0, clipping_norm=1.0, sample_rate=1e-9,
        rng=np.random.default_rng(0),
    )  # fmt: skip
    assert configure(nobody, 1, start, nodes) == [] and nobody.last_population == len(nodes)


def test_central_dp_refuses_what_it_cannot_release(tmp_path):
    keys = crypto.generate_keys(tmp_path / "fed")
    secret = crypto.load_context(keys.secret)
    noise = CentralDPNoise(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0, sample_rate=1.0)
    with pytest.raises(ConfigError, match="before configure_train"):
        noise.aggregate_train(1, [])
    he = CentralDPNoise(
        SecureAggregation(FedAvg(), str(keys.public)), noise_multiplier=1.0, clipping_norm=1.0, sample_rate=1.0
    )
    # resuming a run whose encrypted global model was not made by this protocol (FedAvg's sum of weights 3)
    foreign = crypto.encrypt_weights(_start(100), 3.0, secret)
    he.start_round(foreign, [1, 2])
    with pytest.raises(ConfigError, match="total weight 3; central DP under HE keeps it at 1.*start a new run"):
        he.aggregate_train(2, [])
    with pytest.raises(ConfigError, match="must wrap SecureAggregation directly"):
        CentralDPNoise(_wrapped_secure(keys), noise_multiplier=1.0, clipping_norm=1.0, sample_rate=1.0)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ConfigError, match="dp-noise-multiplier"):
            CentralDPNoise(FedAvg(), noise_multiplier=bad, clipping_norm=1.0, sample_rate=1.0)
        with pytest.raises(ConfigError, match="dp-central-clip-norm"):
            CentralDPNoise(FedAvg(), noise_multiplier=1.0, clipping_norm=bad, sample_rate=1.0)
    with pytest.raises(
        ConfigError, match=r"fraction-train=1.5 is central DP's sampling rate q; it must be in \(0, 1\]"
    ):
        CentralDPNoise(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0, sample_rate=1.5)
    assert CentralDPNoise(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0, sample_rate=1.0).sample_rate == 1.0


def _wrapped_secure(keys):
    from strategies.validation import ValidateReplies

    return ValidateReplies(SecureAggregation(FedAvg(), str(keys.public)))


def test_the_server_accounts_with_the_prv_accountant_when_asked(uaap_home):
    sigma, q = 1.1, 0.5
    dp = _dp(_cfg(dp_noise_multiplier=sigma, fraction_train=q, dp_accountant="prv", dp_local=True, run_id="prv"),
             np.random.default_rng(1))  # fmt: skip
    _run_rounds(dp, _start(), range(1, 4))
    prv, rdp = epsilon_of([(sigma, q, 3)], 1e-5, "prv"), epsilon_of([(sigma, q, 3)], 1e-5, "rdp")
    assert dp.user_epsilon() == pytest.approx(prv, rel=1e-9) and prv < rdp  # the tight accountant, not RDP's bound
    local = epsilon_of([(LOCAL[0], LOCAL[1], 3 * LOCAL[2])], 1e-5, "prv")
    assert dp.example_epsilons() == {"node-1": pytest.approx(local, rel=1e-9)}
    rows = Ledger().releases("prv")
    assert {r.accountant for r in rows} == {"prv"} and len(rows) == 6
    assert Ledger().budget("prv").accountant == "prv"
    with pytest.raises(ConfigError, match="dp-accountant='rdp'"):
        _dp(_cfg(run_id="prv")).load_state_dict(dp.state_dict())


# ---- central DP, mutant by mutant ------------------------------------------------------------------------


def test_central_dp_refusals_word_for_word():
    def refused(**kw) -> str:
        args = {"noise_multiplier": 1.0, "clipping_norm": 1.0, "sample_rate": 1.0} | kw
        with pytest.raises(ConfigError) as err:
            CentralDPNoise(FedAvg(), **args)
        return str(err.value)

    assert refused(noise_multiplier=0.0) == (
        "dp-noise-multiplier=0.0 gives no client-level guarantee under dp-central; use a value > 0 (e.g. 1.0) "
        "or turn dp-central off"
    )
    assert refused(clipping_norm=0.0) == "dp-central-clip-norm=0.0 must be a positive finite number (e.g. 1.0)"
    noise = CentralDPNoise(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0, sample_rate=0.5)
    assert (noise.last_population, noise.last_sampled, noise.denominator) == (0, 0, 0.5)
    with pytest.raises(ConfigError) as err:
        noise.aggregate_train(1, [])
    assert str(err.value) == "aggregate_train was called before configure_train: the round's start model is unknown"


def test_the_plaintext_release_skips_bad_replies_and_keeps_the_inner_metrics(uaap_home):
    from flwr.app import Error, Message, MessageType

    from tests.flower_helpers import set_task_identity

    cfg = _cfg(dp_noise_multiplier=1e-9, dp_central_clip_norm=10.0, run_id="skips")
    start = _start()
    dp = _dp(cfg, np.random.default_rng(0))
    _start_round(dp, to_record(start), [1, 2, 3, 4, 5])
    set_task_identity()
    lost = Message(
        Error(code=0, reason="gone"), reply_to=Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
    )
    nan = [w.copy() for w in start]
    nan[0][0, 0] = np.nan
    two = _reply(3, start, 10)
    two.content["more"] = to_record(start)
    replies = [
        lost,
        _reply(2, nan, 10, **{"train-loss": 9.0}),
        two,
        _reply(4, [w[:1] for w in start], 10),  # another shape
        _reply(5, [w + 0.01 for w in start], 10, **{"train-loss": 0.25}),
        _reply(6, [w - 0.03 for w in start], 990, **{"train-loss": 0.75}),
    ]
    arrays, metrics = dp.aggregate_train(1, replies)
    assert metrics["dp-sampled"] == 2
    assert metrics["train-loss"] == pytest.approx(0.5), "the inner FedAvg's metrics, over the kept replies, uniformly"
    for s, g in zip(start, from_record(arrays), strict=True):
        np.testing.assert_allclose(g - s, (0.01 - 0.03) / 5, atol=1e-6)


def test_configure_train_needs_a_message_to_forward_and_sends_the_inner_one():
    from flwr.app import ConfigRecord

    from strategies.wrapper import StrategyWrapper
    from tests.flower_helpers import FakeGrid, configure

    class Silent(StrategyWrapper):
        def configure_train(self, server_round, arrays, config, grid):
            return []

    silent = CentralDPNoise(Silent(FedAvg()), noise_multiplier=1.0, clipping_norm=1.0, sample_rate=1.0)
    with pytest.raises(ConfigError) as err:
        configure(silent, 1, to_record(_start(100)), [1, 2])
    assert str(err.value) == "the inner strategy built no training message; central DP needs one to forward"
    one = CentralDPNoise(
        FedAvg(fraction_train=0.5, min_train_nodes=1, min_available_nodes=1), noise_multiplier=1e-9,
        clipping_norm=1.0, sample_rate=1.0, rng=np.random.default_rng(0),
    )  # fmt: skip
    start = _start(100)
    msgs = list(one.configure_train(1, to_record(start), ConfigRecord({"lr": 0.1}), FakeGrid([1, 2])))
    assert [int(m.metadata.dst_node_id) for m in msgs] == [1, 2] and msgs[0].content.config_records["config"][
        "lr"
    ] == 0.1
    arrays, _ = one.aggregate_train(1, [])  # the round's start model was kept by configure_train
    np.testing.assert_allclose(flatten(from_record(arrays)), flatten(start), atol=1e-6)


def test_an_empty_first_round_under_he_releases_the_public_start_plus_noise_in_the_clear(uaap_home, tmp_path):
    keys = crypto.generate_keys(tmp_path / "fed")
    sigma, q, nodes = 0.8, 0.5, [1, 2, 3, 4]
    noise = CentralDPNoise(
        SecureAggregation(FedAvg(), str(keys.public)), noise_multiplier=sigma, clipping_norm=1.0, sample_rate=q,
        rng=np.random.default_rng(5),
    )  # fmt: skip
    start = _start(300)
    noise.start_round(to_record(start), nodes)
    arrays, metrics = noise.aggregate_train(1, [])
    assert not crypto.is_encrypted(arrays) and metrics["dp-sampled"] == 0
    rng = np.random.default_rng(5)
    rng.random(len(nodes))  # the Poisson draws
    expected = flatten(start) + rng.normal(0.0, sigma, flatten(start).size) / (q * len(nodes))
    np.testing.assert_allclose(flatten(from_record(arrays)), expected, rtol=1e-6, atol=1e-6)
    assert [a.shape for a in from_record(arrays)] == [w.shape for w in start]


def test_the_he_release_carries_the_sums_metrics_and_refuses_a_foreign_model_word_for_word(uaap_home, tmp_path):
    from flwr.app import Context

    from client.app import prepare_update

    keys = crypto.generate_keys(tmp_path / "fed")
    cfg = _cfg(secure_aggregation="ckks", he_public_context=str(keys.public), he_secret_context=str(keys.secret))
    noise = CentralDPNoise(
        SecureAggregation(FedAvg(), str(keys.public)), noise_multiplier=1.0, clipping_norm=1.0, sample_rate=1.0,
        rng=np.random.default_rng(1),
    )  # fmt: skip
    start = _start(300)
    noise.start_round(to_record(start), [1, 2])
    node = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    record, extra = prepare_update(cfg, start, start, 10, node, noise.denominator)
    reply = reply_from(1, RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": 10, **extra})}))
    _, metrics = noise.aggregate_train(1, [reply])
    assert metrics["he-clients"] == 1 and metrics["he-total-weight"] == 1.0 and metrics["dp-sampled"] == 1
    noise.start_round(crypto.encrypt_weights(start, 3.0, crypto.load_context(keys.secret)), [1, 2])
    with pytest.raises(ConfigError) as err:
        noise.aggregate_train(2, [])
    assert str(err.value) == (
        "the encrypted global model has total weight 3; central DP under HE keeps it at 1 (it was not made by this "
        "protocol): start a new run instead of resuming this one"
    )
    with pytest.raises(ConfigError) as err:
        from strategies.validation import ValidateReplies

        CentralDPNoise(ValidateReplies(SecureAggregation(FedAvg(), str(keys.public))), noise_multiplier=1.0,
                       clipping_norm=1.0, sample_rate=1.0)  # fmt: skip
    assert str(err.value) == "central DP under secure aggregation must wrap SecureAggregation directly"


def test_round_report_and_stop_messages_exactly(uaap_home):
    sigma, q = 1.0, 0.5
    eps = [epsilon_of([(sigma, q, k)], 1e-5) for k in (1, 2)]
    local = [epsilon_of([LOCAL[:2] + (k * LOCAL[2],)], 1e-5) for k in (1, 2)]
    dp = _dp(
        _cfg(fraction_train=q, dp_local=True, max_epsilon=eps[1] - 1e-9, run_id="report"), np.random.default_rng(0)
    )
    stops = _run_rounds(dp, _start(), range(1, 3))
    assert stops == [None, stops[1]] and stops[1] == (
        f"privacy budget: round 2 would raise the user-level epsilon from {eps[0]:.4f} to {eps[1]:.4f}, above "
        f"max-epsilon={eps[1] - 1e-9:g} (delta=1e-05, rdp); stopped with epsilon {eps[0]:.4f} spent. Raise "
        "max-epsilon, add noise or sample fewer clients to train further"
    )
    assert dp.round_report(1) == {
        "delta": 1e-5,
        "user_epsilon": eps[0],
        "noise_multiplier": sigma,
        "sample_rate": q,
        "sampled": dp.noise.last_sampled,
        "example_epsilon_max": local[0],
        "epsilon": eps[0],
        "budget_used": eps[0] / (eps[1] - 1e-9),
    }
    small = _dp(_cfg(fraction_train=q, max_epsilon=0.5, run_id="small"), np.random.default_rng(0))
    assert small.round_report(0) == {
        "delta": 1e-5, "user_epsilon": 0.0, "noise_multiplier": sigma, "sample_rate": q, "sampled": 0,
        "epsilon": 0.0, "budget_used": 0.0,
    }  # fmt: skip
    unlimited = _dp(RunConfig(dp_local=True, run_id="unlimited"))
    _run_rounds(unlimited, _start(), range(1, 2))
    assert unlimited.user_epsilon() is None
    assert unlimited.round_report(1) == {"delta": 1e-5, "example_epsilon_max": local[0], "epsilon": local[0]}
    limited = _dp(RunConfig(dp_local=True, max_epsilon=(local[0] + local[1]) / 2, run_id="limited"))
    stops = _run_rounds(limited, _start(), range(1, 3))
    assert stops[1] == (
        f"privacy budget: round 2 would raise node-1's example-level epsilon from {local[0]:.4f} to {local[1]:.4f}, "
        f"above max-epsilon={(local[0] + local[1]) / 2:g} (delta=1e-05, rdp); stopped before it. Raise max-epsilon "
        "or lower dp-target-epsilon to train further"
    )


def test_accounting_state_round_trips_and_an_empty_state_loads_as_a_fresh_start(uaap_home):
    cfg = _cfg(fraction_train=0.5, dp_local=True, run_id="state")
    dp = _dp(cfg, np.random.default_rng(0))
    _run_rounds(dp, _start(), range(1, 4))
    state = json.loads(json.dumps(dp.state_dict()))
    assert state["ledger_round"] == 3 and set(state) == {"user", "clients", "client_round", "ledger_round"}
    again = _dp(cfg, np.random.default_rng(1))
    again.load_state_dict(state)
    assert again.state_dict() == state
    assert again.example_epsilons() == dp.example_epsilons() and again.user_epsilon() == dp.user_epsilon()
    assert again.client_round == {"node-1": LOCAL}
    fresh = _dp(cfg.replace(run_id="state-fresh"), np.random.default_rng(1))
    fresh.load_state_dict({})
    assert fresh.state_dict() == {
        "user": {"mechanism": "rdp", "history": []}, "clients": {}, "client_round": {}, "ledger_round": 0,
    }  # fmt: skip
    assert [r.round for r in Ledger().releases("state")] == [1, 1, 2, 2, 3, 3], "loading elsewhere drops nothing here"


def test_accounting_defaults_levels_and_the_ledger_it_is_given(uaap_home, tmp_path):
    from strategies.dp_accounting import PrivacyAccounting

    bare = PrivacyAccounting(FedAvg(), run_id="", delta=1e-5)
    assert (bare.mechanism, bare.max_epsilon, bare.ledger, bare.state_dict()["ledger_round"]) == ("rdp", 0.0, None, 0)
    assert not uaap_home.exists(), "no run id: no ledger is opened"
    elsewhere = Ledger(f"sqlite:///{tmp_path / 'other.db'}")
    silent = PrivacyAccounting(FedAvg(), run_id="", delta=1e-5, ledger=elsewhere, dp_local=True)
    silent.aggregate_train(1, [_reply(1, _start(), 3, **{"dp-sigma": 2.0, "dp-q": 0.05, "dp-steps": 10})])
    assert elsewhere.releases() == [], "releases of a run without an id are accounted, not recorded"
    for run_id, kw, levels in (
        ("levels-both", {"dp_local": True}, "user+example"),
        ("levels-user", {}, "user"),
    ):
        PrivacyAccounting(CentralDPNoise(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0, sample_rate=1.0),
                          run_id=run_id, delta=1e-5, ledger=elsewhere, **kw)  # fmt: skip
        assert elsewhere.budget(run_id).levels == levels
    PrivacyAccounting(FedAvg(), run_id="levels-example", delta=1e-5, ledger=elsewhere, dp_local=True)
    PrivacyAccounting(FedAvg(), run_id="levels-none", delta=1e-5, ledger=elsewhere)
    assert elsewhere.budget("levels-example").levels == "example" and elsewhere.budget("levels-none").levels == "none"
    assert Ledger().runs() == [], "the given ledger, not the workspace's"


def test_local_releases_one_step_lost_replies_extra_records_and_the_largest_round(uaap_home):
    from flwr.app import Error, Message, MessageType

    from strategies.wrapper import StrategyWrapper
    from tests.flower_helpers import set_task_identity

    class Accepting(StrategyWrapper):  # FedAvg would refuse a reply with several MetricRecords
        def aggregate_train(self, server_round, replies):
            return None, None

    dp = _dp(RunConfig(dp_local=True, run_id="releases"), inner=Accepting(FedAvg()))
    set_task_identity()
    lost = Message(
        Error(code=0, reason="gone"), reply_to=Message(RecordDict(), dst_node_id=9, message_type=MessageType.TRAIN)
    )
    several = _reply(2, _start(), 3)  # records without a release, with a zero-step one, and with a release
    several.content["zero"] = MetricRecord({"dp-sigma": 2.0, "dp-q": 0.05, "dp-steps": 0})
    several.content["one"] = MetricRecord({"dp-sigma": 2.0, "dp-q": 0.05, "dp-steps": 1})
    dp.aggregate_train(1, [lost, several, _reply(1, _start(), 3, **{"dp-sigma": 2.0, "dp-q": 0.05, "dp-steps": 20})])
    dp.aggregate_train(2, [_reply(1, _start(), 3, **{"dp-sigma": 2.0, "dp-q": 0.05, "dp-steps": 10})])
    rows = Ledger().releases("releases")
    assert [(r.round, r.client, r.steps) for r in rows] == [(1, "node-2", 1), (1, "node-1", 20), (2, "node-1", 10)]
    assert dp.client_round == {"node-2": (2.0, 0.05, 1), "node-1": (2.0, 0.05, 20)}, "the largest round so far"
    assert dp.example_epsilons()["node-1"] == pytest.approx(epsilon_of([(2.0, 0.05, 30)], 1e-5))
    central = _dp(_cfg(run_id="central-steps"), np.random.default_rng(0))
    _start_round(central, to_record(_start()), [1])
    central.aggregate_train(1, [_reply(1, _start(), 3)])
    assert [(r.client, r.steps) for r in Ledger().releases("central-steps")] == [("*", 1)]
