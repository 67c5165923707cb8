"""strategies.secure with real Flower messages and real Ray simulations.

The reference for every equality is Flower's own plaintext FedAvg/FedProx ``aggregate_train`` on the same
client updates.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict

from client.app import prepare_update
from strategies.base import build_strategy
from strategies.secure import SecureAggregation
from strategies.validation import ValidateReplies
from strategies.wrapper import find_layer, innermost, is_encrypted
from tests.flower_helpers import configure, train_metrics
from uaap import crypto
from uaap.config import RunConfig
from uaap.errors import ConfigError, KeyMaterialError
from uaap.models import build_model, from_record, get_weights, to_record
from uaap.protocol import HE_CHUNK_PREFIX, HE_FINGERPRINT, HE_WEIGHT
from uaap.workspace import RunDir


def _request(node_id: int) -> Message:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # replies need a task identity
    return Message(content=RecordDict(), dst_node_id=node_id, message_type=MessageType.TRAIN)


def _reply(node_id: int, arrays: ArrayRecord, metrics: dict[str, float]) -> Message:
    return Message(content=RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=_request(node_id))


def _dropped(node_id: int) -> Message:
    return Message(Error(code=0, reason="client disconnected"), reply_to=_request(node_id))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> crypto.KeyFiles:
    return crypto.generate_keys(tmp_path_factory.mktemp("he") / "fed")


@pytest.fixture(scope="module")
def updates() -> list[tuple[list[np.ndarray], int]]:
    """Five clients' trained-looking MLP weights (digits shapes) and example counts."""
    start = get_weights(build_model("mlp", 64, 10, seed=0))
    rng = np.random.default_rng(7)
    return [
        ([(w + rng.normal(0, 0.05, w.shape)).astype(np.float32) for w in start], n) for n in (120, 75, 301, 44, 199)
    ]


def _context(keys: crypto.KeyFiles) -> Context:
    return Context(1, 1, {"he-secret-context": str(keys.secret)}, RecordDict(), {})


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox"])
def test_he_aggregate_equals_flower_plaintext_aggregate_with_a_dropped_client(
    strategy: str, keys: crypto.KeyFiles, updates: list[tuple[list[np.ndarray], int]]
) -> None:
    cfg = RunConfig(strategy=strategy, secure_aggregation="ckks", he_public_context=str(keys.public), num_clients=6)
    plain_cfg = cfg.replace(secure_aggregation="none", he_public_context="")
    ctx = _context(keys)
    he_replies, plain_replies = [], []
    for node, (weights, n) in enumerate(updates, start=1):
        metrics = train_metrics(n, 0.1 * node)
        arrays, extra = prepare_update(cfg, weights, weights, n, ctx)  # the real client hook
        assert crypto.is_encrypted(arrays) and extra == {HE_WEIGHT: float(n)}
        he_replies.append(_reply(node, arrays, {**metrics, **extra}))
        plain, _ = prepare_update(plain_cfg, weights, weights, n, ctx)
        plain_replies.append(_reply(node, plain, metrics))
    he_replies.append(_dropped(99))
    plain_replies.append(_dropped(99))

    start = to_record(updates[0][0])
    reference = build_strategy(plain_cfg)  # reply validation around Flower's FedAvg / FedProx
    configure(reference, 1, start, [1, 2, 3, 4, 5, 99])
    ref_arrays, ref_metrics = reference.aggregate_train(1, plain_replies)
    stack = build_strategy(cfg)
    configure(stack, 1, start, [1, 2, 3, 4, 5, 99])
    secure = find_layer(stack, SecureAggregation)
    assert secure is not None and is_encrypted(stack)
    assert type(secure.strategy) is type(innermost(reference))
    enc_arrays, enc_metrics = stack.aggregate_train(1, he_replies)
    assert enc_arrays is not None and ref_arrays is not None and enc_metrics is not None and ref_metrics is not None
    assert crypto.is_encrypted(enc_arrays)
    assert crypto.total_weight(enc_arrays) == sum(n for _, n in updates)
    got = crypto.decrypt_global(enc_arrays, crypto.load_context(keys.secret))
    diff = max(float(np.abs(g.astype(np.float64) - r).max()) for g, r in zip(got, from_record(ref_arrays), strict=True))
    assert diff <= 1e-6, f"max abs difference {diff:.3g}"
    assert enc_metrics["train-loss"] == pytest.approx(ref_metrics["train-loss"], rel=1e-12)
    assert enc_metrics["he-clients"] == 5 and enc_metrics["he-rejected"] == 1
    assert [node for node, _ in secure.last_rejected] == [99]


def test_mismatched_key_and_garbage_clients_are_left_out(
    keys: crypto.KeyFiles, updates: list[tuple[list[np.ndarray], int]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flwr.app import Array

    cfg = RunConfig(secure_aggregation="ckks", he_public_context=str(keys.public))
    plain_cfg = cfg.replace(secure_aggregation="none", he_public_context="")
    other = crypto.generate_keys(tmp_path / "other")
    good = updates[:3]
    he_replies, plain_replies = [], []
    start = to_record(updates[0][0])
    for node, (weights, n) in enumerate(good, start=1):
        arrays, extra = prepare_update(cfg, weights, weights, n, _context(keys))
        he_replies.append(_reply(node, arrays, train_metrics(n, **extra)))
        plain_replies.append(
            _reply(node, prepare_update(plain_cfg, weights, weights, n, _context(keys))[0], train_metrics(n))
        )
    weights, n = updates[3]
    foreign, extra = prepare_update(cfg, weights, weights, n, _context(other))  # another federation's key
    he_replies.insert(1, _reply(7, foreign, train_metrics(n, **extra)))
    garbage = ArrayRecord({k: v for k, v in foreign.items()})
    garbage[f"{HE_CHUNK_PREFIX}0000"] = Array(np.arange(1000, dtype=np.uint8))
    garbage[HE_FINGERPRINT] = he_replies[0].content["arrays"][HE_FINGERPRINT]
    he_replies.append(_reply(8, garbage, train_metrics(n, **extra)))
    plain_stack = build_strategy(plain_cfg)
    configure(plain_stack, 1, start, [1, 2, 3])
    he_replies.append(_reply(9, plain_stack.aggregate_train(1, plain_replies)[0], train_metrics(5, **{HE_WEIGHT: 5.0})))

    stack = build_strategy(cfg)
    assert isinstance(stack, ValidateReplies)
    configure(stack, 2, start, [1, 2, 3, 7, 8, 9])
    with caplog.at_level("ERROR", logger="uaap.validation"):
        enc, _ = stack.aggregate_train(2, he_replies)
    reasons = {r["node"]: r["reason"] for r in stack.rejected}
    assert sorted(reasons) == [7, 8, 9]
    fed = crypto.load_context(keys.public).short
    assert fed in reasons[7] and other.fingerprint[:16] in reasons[7], "the error names both fingerprints"
    assert reasons[7].startswith("KeyMaterialError("), "an error other than a malformed reply is shown with its type"
    assert other.fingerprint[:16] in caplog.text
    assert enc is not None and crypto.total_weight(enc) == sum(n for _, n in good)
    reference = build_strategy(plain_cfg)
    configure(reference, 2, start, [1, 2, 3])
    ref, _ = reference.aggregate_train(2, plain_replies)
    got = crypto.decrypt_global(enc, crypto.load_context(keys.secret))
    assert max(float(np.abs(g - r).max()) for g, r in zip(got, from_record(ref), strict=True)) <= 1e-6
    assert stack.aggregate_train(3, he_replies[1:2]) == (None, None), "only bad replies: model unchanged"


def test_server_refuses_secret_context_and_missing_keys(keys: crypto.KeyFiles, tmp_path: Path) -> None:
    from flwr.serverapp.strategy import FedAvg

    with pytest.raises(KeyMaterialError, match="carries a secret key"):
        build_strategy(RunConfig(secure_aggregation="ckks", he_public_context=str(keys.secret)))
    with pytest.raises(KeyMaterialError, match="secret key"):
        SecureAggregation(FedAvg(), crypto.load_context(keys.secret))
    with pytest.raises(ConfigError, match="uaap keys init"):
        build_strategy(RunConfig(secure_aggregation="ckks"))
    with pytest.raises(ConfigError, match="does not exist"):
        build_strategy(RunConfig(secure_aggregation="ckks", he_public_context=str(tmp_path / "nope.ckks")))


def test_server_refuses_aggregators_a_ciphertext_sum_cannot_compute(keys: crypto.KeyFiles) -> None:
    # A ciphertext sum is FedAvg's weighted mean: wrapping FedMedian, Krum or a server optimiser would
    # silently turn it into FedAvg. Each is refused at start-up, naming the strategy and the way out.
    from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedMedian, FedProx, FedYogi, Krum

    from strategies.dp_noise import CentralDPNoise
    from strategies.validation import ValidateReplies

    public = crypto.load_context(keys.public)
    for inner in (FedMedian(), Krum(), FedAdam(), FedYogi(), FedAvgM()):
        with pytest.raises(ConfigError, match=f"cannot run {type(inner).__name__}.*'fedavg' or 'fedprox'"):
            SecureAggregation(ValidateReplies(inner), public)
    noise = CentralDPNoise(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0, sample_rate=1.0)
    with pytest.raises(ConfigError, match="CentralDPNoise under it would be bypassed"):
        SecureAggregation(noise, public)
    for ok in (FedAvg(), FedProx(proximal_mu=0.1), ValidateReplies(FedProx())):
        assert SecureAggregation(ok, public).encrypted


# ---- real simulations -------------------------------------------------------------------------------------

SIM = RunConfig(num_clients=4, num_rounds=2, local_epochs=1, seed=5, experiment="tests-he")


@pytest.fixture(scope="module")
def sim_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("he-sim")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UAAP_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield home


@pytest.fixture(scope="module")
def runs(sim_home: Path) -> dict[str, RunDir]:
    """An HE run stopped after round 1 and resumed to round 2, and the same federation in plaintext."""
    from simulations.runner import simulate

    first = simulate(SIM.replace(secure_aggregation="ckks", num_rounds=1))
    he = simulate(first.read_config().replace(num_rounds=2))  # resumes from the encrypted round-1 checkpoint
    plain = simulate(SIM)
    return {"he": he, "plain": plain}


def _last_round(rd: RunDir) -> dict:
    return [e for e in rd.events("round") if e["round"] > 0][-1]


@pytest.mark.slow
def test_resumed_he_simulation_matches_plaintext_accuracy_and_model(runs: dict[str, RunDir], sim_home: Path) -> None:
    from uaap import workspace
    from uaap.cli import main

    he, plain = runs["he"], runs["plain"]
    starts = he.events("start")
    assert [s["resumed"] for s in starts] == [False, True] and starts[-1]["round"] == 2
    he_last, plain_last = _last_round(he), _last_round(plain)
    assert he_last["round"] == plain_last["round"] == 2
    assert he_last["train"]["he-clients"] == 4 and he_last["replies"] == 4 and he_last["failures"] == 0
    assert he_last["central"] == {}, "no central evaluation on ciphertext"
    assert abs(he_last["evaluate"]["accuracy"] - plain_last["evaluate"]["accuracy"]) <= 0.01
    assert not he.model_file.exists(), "the server saves no plaintext model under HE"
    ckpt = he.latest_checkpoint()
    keydir = sim_home.resolve() / "keys" / he.run_id
    assert ckpt is not None and ckpt.round == 2
    assert bytes(ckpt.arrays[HE_FINGERPRINT]).decode() == (keydir / crypto.FINGERPRINT_FILE).read_text().strip()
    assert os.stat(keydir / crypto.SECRET_FILE).st_mode & 0o777 == 0o600

    run_id = str(he.run_id)
    assert main(["keys", "decrypt-model", run_id, "--secret-context", str(keydir / crypto.SECRET_FILE)]) == 0
    model, meta = workspace.load_model(he.model_file)
    assert meta["decrypted_from_round"] == 2 and meta["he_fingerprint"]
    with np.load(plain.model_file) as npz:
        ref = [npz[k] for k in sorted(npz.files) if k.startswith("w")]
    drift = max(float(np.abs(g - r).max()) for g, r in zip(get_weights(model), ref, strict=True))
    assert drift <= 1e-5, f"the resumed HE run and the plaintext run drifted apart by {drift:.3g}"


# ---- checks on each reply, with and without reply validation around the sum ------------------------------


def _encrypted_replies(keys: crypto.KeyFiles, updates, cfg: RunConfig) -> list[tuple[ArrayRecord, dict[str, float]]]:
    out = []
    for weights, n in updates:
        arrays, extra = prepare_update(cfg, weights, weights, n, _context(keys))
        out.append((arrays, {**train_metrics(n), **extra}))
    return out


def test_secure_aggregation_alone_leaves_out_a_reply_whose_he_weight_metric_lies(
    keys: crypto.KeyFiles, updates: list[tuple[list[np.ndarray], int]]
) -> None:
    # Without reply validation around it, SecureAggregation itself refuses a reply whose he-weight metric
    # differs from the weight its ciphertext carries (a client claiming more weight than it encrypted).
    from flwr.serverapp.strategy import FedAvg

    cfg = RunConfig(secure_aggregation="ckks", he_public_context=str(keys.public))
    (a, ma), (b, mb), (c, mc) = _encrypted_replies(keys, updates[:3], cfg)
    secure = SecureAggregation(FedAvg(), crypto.server_context(keys.public))
    configure(secure, 1, to_record(updates[0][0]), [1, 2, 3, 4])
    two_records = RecordDict({"arrays": c, "more": c, "metrics": MetricRecord(mc)})
    replies = [
        _reply(1, a, ma),
        _reply(2, b, {**mb, HE_WEIGHT: mb[HE_WEIGHT] * 10}),
        Message(content=two_records, reply_to=_request(3)),
        _reply(4, c, mc),
    ]
    total, metrics = secure.aggregate_train(1, replies)
    assert total is not None and metrics is not None
    assert [node for node, _ in secure.last_rejected] == [2, 3]
    assert "disagrees with its record's" in secure.last_rejected[0][1]
    assert secure.last_rejected[1][1] == "reply carries 2 ArrayRecords; expected exactly one"
    assert crypto.total_weight(total) == updates[0][1] + updates[2][1]
    assert metrics["he-clients"] == 2 and metrics["he-rejected"] == 2
    assert metrics["he-total-weight"] == updates[0][1] + updates[2][1] and HE_WEIGHT not in metrics
    got = crypto.decrypt_global(total, crypto.load_context(keys.secret))
    ref = [(wa * updates[0][1] + wc * updates[2][1]) / (updates[0][1] + updates[2][1]) for wa, wc in
           zip(updates[0][0], updates[2][0], strict=True)]  # fmt: skip
    assert max(float(np.abs(g - r).max()) for g, r in zip(got, ref, strict=True)) <= 1e-6


def test_reply_validation_checks_ciphertext_replies_before_the_sum_sees_them(
    keys: crypto.KeyFiles, updates: list[tuple[list[np.ndarray], int]], uaap_home: Path
) -> None:
    cfg = RunConfig(secure_aggregation="ckks", he_public_context=str(keys.public), run_id="he-val", min_contributors=1)
    (a, ma), (b, mb) = _encrypted_replies(keys, updates[:2], cfg)
    plain = to_record(updates[2][0])
    stack = build_strategy(cfg)
    assert isinstance(stack, ValidateReplies) and stack.he_context is not None
    secure = find_layer(stack, SecureAggregation)
    assert secure is not None
    configure(stack, 1, to_record(updates[0][0]), [1, 2, 3, 4, 5, 6])
    no_weight = {k: v for k, v in mb.items() if k != HE_WEIGHT}
    other_model = crypto.encrypt_weights([np.ones(7, np.float32)], 5.0, crypto.load_context(keys.secret))
    replies = [
        _reply(1, a, ma),
        _reply(2, b, {**mb, HE_WEIGHT: mb[HE_WEIGHT] + 1}),
        _reply(3, b, no_weight),
        _reply(4, plain, {**train_metrics(5), HE_WEIGHT: 5.0}),
        _reply(5, b, {**mb, HE_WEIGHT: 0.0}),
        _reply(6, b, {**mb, "num-examples": 10**9}),
        _reply(7, b, {**mb, HE_WEIGHT: mb[HE_WEIGHT] * (1 + 1e-10)}),  # within float noise? no: 1e-12 is the bar
        _reply(8, other_model, {**train_metrics(5), HE_WEIGHT: 5.0}),
    ]
    total, metrics = stack.aggregate_train(1, replies)
    reasons = {r["node"]: r["reason"] for r in stack.rejected}
    assert reasons == {
        2: f"metric he-weight={mb[HE_WEIGHT] + 1} differs from its record's {mb[HE_WEIGHT]}",
        3: "metrics missing ['he-weight'], unexpected []",
        4: "the record holds plaintext arrays, not UAAP ciphertext (is secure-aggregation on?)",
        5: "metric he-weight=0.0: expected a value in (0, 100000]",
        6: "metric num-examples=1000000000: expected a value in [1, 100000]",
        7: f"metric he-weight={mb[HE_WEIGHT] * (1 + 1e-10)} differs from its record's {mb[HE_WEIGHT]}",
        8: f"record encrypts tensors of shapes [(7,)]; this model's are {[w.shape for w in updates[0][0]]}",
    }
    assert secure.last_rejected == [], "the sum never saw a rejected reply"
    assert total is not None and metrics is not None and metrics["rejected-replies"] == 7
    assert crypto.total_weight(total) == updates[0][1] and metrics["he-clients"] == 1

    central = ValidateReplies(
        SecureAggregation(innermost(stack), secure.context), central=True, he_context=secure.context
    )
    configure(central, 1, to_record(updates[0][0]), [1, 2])
    central.aggregate_train(1, [_reply(1, a, ma)])
    assert central.rejected[-1]["reason"] == f"metric he-weight={ma[HE_WEIGHT]}: expected a value in [1, 1]"


def test_a_plaintext_server_rejects_ciphertext_replies_and_a_ciphertext_model(
    keys: crypto.KeyFiles, updates: list[tuple[list[np.ndarray], int]]
) -> None:
    cfg = RunConfig(secure_aggregation="ckks", he_public_context=str(keys.public))
    (a, ma), (b, mb) = _encrypted_replies(keys, updates[:2], cfg)
    plain_stack = build_strategy(RunConfig())
    configure(plain_stack, 1, to_record(updates[0][0]), [1, 2])
    assert plain_stack.aggregate_train(1, [_reply(1, a, train_metrics(updates[0][1]))]) == (None, None)
    assert plain_stack.rejected[-1]["reason"].startswith("array names differ from the global model")
    configure(plain_stack, 2, a, [1, 2])  # a ciphertext global model on a server without HE
    plain_stack.aggregate_train(2, [_reply(1, to_record(updates[1][0]), train_metrics(updates[1][1]))])
    assert plain_stack.rejected[-1]["reason"] == (
        "the global model is ciphertext but this server runs without secure aggregation"
    )


def test_secure_aggregation_checks_shapes_error_replies_and_records_on_its_own(
    keys: crypto.KeyFiles, updates: list[tuple[list[np.ndarray], int]]
) -> None:
    from flwr.serverapp.strategy import FedAvg

    cfg = RunConfig(secure_aggregation="ckks", he_public_context=str(keys.public))
    (a, ma), (b, mb) = _encrypted_replies(keys, updates[:2], cfg)
    secret = crypto.load_context(keys.secret)
    other = crypto.encrypt_weights([np.ones(7, np.float32)], 5.0, secret)
    calls: list[int] = []

    def aggr(records, weighting):  # a custom metrics aggregation of the inner FedAvg is used
        calls.append(len(records))
        return MetricRecord({"custom": float(len(records))})

    secure = SecureAggregation(FedAvg(train_metrics_aggr_fn=aggr), crypto.server_context(keys.public))
    assert secure.last_rejected == [] and secure.shapes is None
    configure(secure, 2, a, [1, 2, 3, 4, 5, 6, 7])  # a ciphertext global model: shapes from its header
    assert secure.shapes == [tuple(w.shape) for w in updates[0][0]]
    two_metrics = RecordDict({"arrays": b, "metrics": MetricRecord(mb), "again": MetricRecord(mb)})
    long_reason = "x" * 300
    replies = [
        _dropped(1),
        Message(Error(code=0, reason=long_reason), reply_to=_request(2)),
        Message(Error(code=0, reason=""), reply_to=_request(3)),
        _reply(4, other, {**train_metrics(5), HE_WEIGHT: 5.0}),  # the only reply of another model
        Message(content=two_metrics, reply_to=_request(5)),
        _reply(6, a, {k: v for k, v in ma.items() if k != HE_WEIGHT}),  # no he-weight metric: the record's counts
        _reply(7, b, mb),
    ]
    total, metrics = secure.aggregate_train(2, replies)
    assert secure.last_rejected == [
        (1, "client error: client disconnected"),
        (2, "client error: " + long_reason[:200]),
        (3, "client error: "),
        (4, f"record encrypts tensors of shapes [(7,)]; this model's are {secure.shapes}"),
        (5, "reply carries 2 MetricRecords; expected exactly one"),
    ]
    assert total is not None and crypto.total_weight(total) == updates[0][1] + updates[1][1]
    assert metrics is not None and metrics["custom"] == 2.0 and calls == [2]


def test_refusals_say_what_to_do_word_for_word(keys: crypto.KeyFiles, tmp_path: Path) -> None:
    from flwr.serverapp.strategy import FedAvg, FedMedian

    with pytest.raises(ConfigError) as err:
        SecureAggregation(FedMedian(), crypto.load_context(keys.public))
    assert str(err.value) == (
        "secure aggregation cannot run FedMedian: a ciphertext sum computes FedAvg's weighted mean and nothing else "
        "(robust aggregators need plaintext values; server optimisers such as FedAdam need products and square roots "
        "the add-only CKKS chain cannot do, and the server holds no key). Use strategy 'fedavg' or 'fedprox', or turn "
        "secure aggregation off"
    )
    from strategies.dp_noise import CentralDPNoise

    noise = CentralDPNoise(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0, sample_rate=1.0)
    twice = CentralDPNoise(noise, noise_multiplier=1.0, clipping_norm=1.0, sample_rate=1.0)
    with pytest.raises(ConfigError) as err:
        SecureAggregation(twice, crypto.load_context(keys.public))
    assert str(err.value) == (
        "secure aggregation sums ciphertexts directly, so the wrapper(s) CentralDPNoise, CentralDPNoise under it "
        "would be bypassed; wrap them outside SecureAggregation instead"
    )
    with pytest.raises(ConfigError) as err:
        build_strategy(RunConfig(secure_aggregation="ckks"))
    assert str(err.value) == (
        "secure-aggregation='ckks' needs he-public-context (the server's public CKKS context): run "
        "`uaap keys init --out DIR` and pass --he-public-context DIR/public.ckks"
    )
    missing = str(tmp_path / "nope.ckks")
    with pytest.raises(ConfigError) as err:
        build_strategy(RunConfig(secure_aggregation="ckks", he_public_context=missing))
    assert str(err.value) == (
        f"he-public-context={missing!r} does not exist: run `uaap keys init --out DIR` and pass "
        "--he-public-context DIR/public.ckks"
    )


def test_round_one_takes_the_shapes_from_the_plaintext_global_model(
    keys: crypto.KeyFiles, updates: list[tuple[list[np.ndarray], int]]
) -> None:
    from flwr.serverapp.strategy import FedAvg

    secure = SecureAggregation(FedAvg(), crypto.server_context(keys.public))
    configure(secure, 1, to_record(updates[0][0]), [1, 2])
    assert secure.shapes == [tuple(w.shape) for w in updates[0][0]]
    other = crypto.encrypt_weights([np.ones(7, np.float32)], 5.0, crypto.load_context(keys.secret))
    assert secure.aggregate_train(1, [_reply(1, other, {**train_metrics(5), HE_WEIGHT: 5.0})]) == (None, None)
    assert "record encrypts tensors of shapes [(7,)]" in secure.last_rejected[0][1]
