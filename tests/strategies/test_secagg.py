"""SecAgg+ (strategies.secagg, client.secagg, uaap.crypto.secagg) in one process: the real server wrapper and the
real client stage handlers, wired through a loopback grid that delivers each message to its client at once.

The reference for every aggregate is Flower's own plaintext FedAvg (reply validation around it, as a run builds it)
on the same client updates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict

from client.app import prepare_update
from client.secagg import ProtocolError, answer_stage, collect, setup, share_keys, unmask
from strategies.base import build_strategy
from strategies.secagg import DistributedNoise, SecAggPlus, params_of
from strategies.validation import ValidateReplies
from strategies.wrapper import find_layer
from tests.flower_helpers import configure, set_task_identity, train_metrics
from uaap.config import RunConfig
from uaap.crypto import secagg
from uaap.errors import ConfigError
from uaap.models import build_model, flatten, from_record, get_weights, to_record
from uaap.protocol import (
    ARRAYS,
    CONFIG,
    METRICS,
    RUN_CONFIG,
    SECAGG,
    SECAGG_DEAD,
    SECAGG_NODES,
    SECAGG_ROUND,
    SECAGG_STAGE,
    STAGE_COLLECT,
    STAGE_UNMASK,
)

START = get_weights(build_model("mlp", 64, 10, seed=0))  # digits shapes: 8,970 parameters
COUNTS = {1: 120, 2: 75, 3: 301, 4: 44, 5: 199}


def _updates(scale: float = 0.05) -> dict[int, list[np.ndarray]]:
    rng = np.random.default_rng(7)
    return {n: [(w + rng.normal(0, scale, w.shape)).astype(np.float32) for w in START] for n in COUNTS}


class Loopback:
    """A grid whose clients answer at once: the real client stage handlers, each with its own Context.

    ``die``: node -> stage at which that client stops answering (its reply is a Flower error, as when its
    process dies). ``seen`` records every (node, stage) delivered; ``masked`` keeps each masked vector sent.
    """

    def __init__(
        self,
        cfg: RunConfig,
        updates: dict[int, list[np.ndarray]],
        die: dict[int, str] | None = None,
        tamper: dict[tuple[int, str], Callable[[Message], None]] | None = None,
    ):
        self.cfg, self.updates, self.die, self.tamper = cfg, updates, die or {}, tamper or {}
        self.contexts = {n: Context(1, n, {"partition-id": n - 1}, RecordDict(), {}) for n in updates}
        self.replies: dict[str, Message] = {}
        self.seen: list[tuple[int, str]] = []
        self.masked: dict[int, np.ndarray] = {}
        self.count = 0

    def get_node_ids(self) -> list[int]:
        set_task_identity()
        return sorted(self.updates)

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for msg in messages:
            self.count += 1
            mid = f"m{self.count}"
            msg.metadata.__dict__["_message_id"] = mid
            ids.append(mid)
            self.replies[mid] = self.answer(msg)
        return ids

    def pull_messages(self, ids: Any) -> list[Message]:
        return [self.replies.pop(i) for i in list(ids) if i in self.replies]

    def answer(self, msg: Message) -> Message:
        node = int(msg.metadata.dst_node_id)
        stage = str(msg.content.config_records[SECAGG][SECAGG_STAGE])
        self.seen.append((node, stage))
        if self.die.get(node) == stage:
            return Message(Error(code=0, reason="client died"), reply_to=msg)
        ctx = self.contexts[node]
        reply = answer_stage(self.cfg, msg, ctx)
        if reply is None:
            record, extra = prepare_update(self.cfg, self.updates[node], START, COUNTS[node], ctx)  # the real hook
            self.masked[node] = record[secagg.MASKED].numpy()
            metrics = MetricRecord(train_metrics(COUNTS[node], 0.1 * node, **extra))
            reply = Message(content=RecordDict({ARRAYS: record, METRICS: metrics}), reply_to=msg)
        if (node, stage) in self.tamper:  # a participant that lies at this stage
            self.tamper[(node, stage)](reply)
        return reply


def _run(cfg: RunConfig, grid: Loopback, server_round: int = 1) -> tuple[Any, Any, Any]:
    """One round of the stack ``build_strategy`` makes for ``cfg`` over ``grid``: (arrays, metrics, stack)."""
    stack = build_strategy(cfg)
    config = ConfigRecord({RUN_CONFIG: cfg.to_json()})
    messages = list(stack.configure_train(server_round, to_record(START), config, grid))
    ids = grid.push_messages(messages)
    replies = grid.pull_messages(ids)
    arrays, metrics = stack.aggregate_train(server_round, replies)
    return arrays, metrics, stack


def _fedavg(updates: dict[int, list[np.ndarray]], nodes: list[int]) -> list[np.ndarray]:
    """Flower's FedAvg (with UAAP's reply validation) on plaintext replies of ``nodes``."""
    from tests.flower_helpers import reply_from

    reference = build_strategy(RunConfig(num_clients=5))
    configure(reference, 1, to_record(START), nodes)
    replies = [
        reply_from(n, RecordDict({ARRAYS: to_record(updates[n]), METRICS: MetricRecord(train_metrics(COUNTS[n]))}))
        for n in nodes
    ]
    arrays, _ = reference.aggregate_train(1, replies)
    assert arrays is not None
    return from_record(arrays)


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x.astype(np.float64) - y).max()) for x, y in zip(a, b, strict=True))


CFG = RunConfig(num_clients=5, secure_aggregation="secagg+", min_contributors=2)
FLOAT32 = 2e-7  # the model's float32 rounding of values of size ~1


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox"])
def test_aggregate_equals_flower_fedavg_within_the_stated_bound_with_one_of_five_dropped_after_masking(
    strategy: str,
) -> None:
    cfg = CFG.replace(strategy=strategy)
    updates = _updates()
    grid = Loopback(cfg, updates, die={5: STAGE_COLLECT})  # node 5 shared its keys, then died
    arrays, metrics, stack = _run(cfg, grid)
    assert arrays is not None and metrics is not None
    layer = find_layer(stack, SecAggPlus)
    assert isinstance(stack, ValidateReplies) and layer is not None
    bound = params_of(cfg).step
    assert bound == pytest.approx(16 / 2**22) and metrics["secagg-error-bound"] == pytest.approx(bound)
    diff = _max_diff(from_record(arrays), _fedavg(updates, [1, 2, 3, 4]))
    assert diff <= bound + FLOAT32, f"max abs difference {diff:.3g} above the stated bound {bound:.3g}"
    assert diff > 0, "quantised: not bit-identical (the comparison can fail)"
    assert metrics["secagg-clients"] == 4 and metrics["secagg-dropped"] == 1
    assert metrics["secagg-total-weight"] == sum(COUNTS[n] for n in (1, 2, 3, 4))
    survivors = sum(COUNTS[n] for n in (1, 2, 3, 4))
    assert metrics["train-loss"] == pytest.approx(sum(0.1 * n * COUNTS[n] for n in (1, 2, 3, 4)) / survivors)
    unmasks = sorted(n for n, s in grid.seen if s == STAGE_UNMASK)
    assert unmasks == [1, 2, 3, 4], "the survivors gave the shares (node 5's key rebuilt from them)"


def test_without_dropouts_the_bound_holds_and_the_coarser_the_grid_the_larger_the_error() -> None:
    updates = _updates()
    reference = _fedavg(updates, [1, 2, 3, 4, 5])
    errors = {}
    for levels in (2**10, 2**22):
        cfg = CFG.replace(secagg_quantization_range=levels, secagg_clipping_range=1.0)
        arrays, _, _ = _run(cfg, Loopback(cfg, updates))
        assert arrays is not None
        errors[levels] = _max_diff(from_record(arrays), reference)
        assert errors[levels] <= 2.0 / levels + FLOAT32
    assert errors[2**10] > 100 * errors[2**22]


def test_a_masked_vector_is_uniform_over_the_ring_and_uncorrelated_with_the_update() -> None:
    # What the server sees of one client: its masked vector. Against the client's own quantised update the
    # Pearson correlation over coordinates is at the noise floor, and every byte of the words is uniform.
    updates = _updates(scale=0.5)
    grid = Loopback(CFG, updates)
    arrays, _, _ = _run(CFG, grid)
    assert arrays is not None
    masked = grid.masked[3]
    encoded, _ = secagg.encode(flatten(updates[3]) - flatten(START), COUNTS[3], params_of(CFG))
    n = masked.size
    assert n == sum(w.size for w in START) + 1 and masked.dtype == np.uint64
    r_encoded = float(np.corrcoef(masked.astype(np.float64), encoded.astype(np.float64))[0, 1])
    delta = flatten(updates[3]) - flatten(START)
    r_update = float(np.corrcoef(masked[:-1].astype(np.float64), delta)[0, 1])
    assert abs(r_encoded) < 4 / math.sqrt(n) and abs(r_update) < 4 / math.sqrt(n), (r_encoded, r_update)
    # the encoded update itself is strongly correlated with the update (the test could fail)
    assert float(np.corrcoef(encoded[:-1].astype(np.float64), delta)[0, 1]) > 0.99
    chi2 = []
    for byte in (0, 3, 7):  # low, middle and top byte of each word: 256 equally likely values
        counts = np.bincount(((masked >> np.uint64(8 * byte)) & np.uint64(255)).astype(np.int64), minlength=256)
        expected = n / 256
        chi2.append(float(((counts - expected) ** 2 / expected).sum()))
    assert max(chi2) < 255 + 6 * math.sqrt(2 * 255), chi2  # 255 degrees of freedom, ~6 sigma
    top = (encoded[:-1] >> np.uint64(56)).astype(np.int64)
    assert np.bincount(top, minlength=256).max() == n - 1, "unmasked, the top byte is constant: the test can fail"


def test_too_few_survivors_skip_the_round_before_any_share_is_asked_for() -> None:
    cfg = CFG.replace(min_contributors=4)
    grid = Loopback(cfg, _updates(), die={4: STAGE_COLLECT, 5: STAGE_COLLECT})
    arrays, metrics, _ = _run(cfg, grid)
    assert arrays is None and metrics is None
    assert not [s for _, s in grid.seen if s == STAGE_UNMASK], "nothing unmasked for a sum of too few clients"


def test_a_survivor_lost_in_the_unmask_stage_is_tolerated_up_to_the_threshold() -> None:
    updates = _updates()
    grid = Loopback(CFG, updates, die={5: STAGE_COLLECT, 2: STAGE_UNMASK})
    arrays, _, _ = _run(CFG, grid)
    assert arrays is not None, "3 of 4 survivors' shares >= threshold 3"
    assert _max_diff(from_record(arrays), _fedavg(updates, [1, 2, 3, 4])) <= params_of(CFG).step + FLOAT32
    grid = Loopback(CFG, updates, die={5: STAGE_COLLECT, 2: STAGE_UNMASK, 3: STAGE_UNMASK})
    assert _run(CFG, grid)[0] is None, "2 shares < threshold 3: the round fails, the model stays"


def test_a_larger_federation_uses_ring_neighbourhoods() -> None:
    counts = dict(COUNTS)
    try:
        rng = np.random.default_rng(3)
        updates = {n: [(w + rng.normal(0, 0.05, w.shape)).astype(np.float32) for w in START] for n in range(1, 10)}
        COUNTS.update({n: 10 * n for n in range(6, 10)})
        cfg = CFG.replace(num_clients=9)
        grid = Loopback(cfg, updates, die={7: STAGE_COLLECT})
        arrays, _, stack = _run(cfg, grid)
        layer = find_layer(stack, SecAggPlus)
        assert layer is not None and layer.state is not None
        assert {len(v) for v in layer.state.graph.values()} == {5}, "5 of 9: each client's ring neighbourhood"
        assert arrays is not None
        survivors = [n for n in range(1, 10) if n != 7]
        assert _max_diff(from_record(arrays), _fedavg(updates, survivors)) <= params_of(cfg).step + FLOAT32
    finally:
        COUNTS.clear()
        COUNTS.update(counts)


def test_central_dp_noise_is_added_by_the_clients_and_accounted_for_the_survivors(uaap_home: Any) -> None:
    cfg = CFG.replace(dp_central=True, dp_noise_multiplier=2.0, dp_central_clip_norm=1.0, run_id="secagg-dp")
    updates = _updates(scale=0.001)  # norms well below C: clipping leaves them as they are
    arrays, metrics, stack = _run(cfg, Loopback(cfg, updates, die={5: STAGE_COLLECT}))
    noise = find_layer(stack, DistributedNoise)
    assert noise is not None and arrays is not None and metrics is not None
    assert noise.denominator == 5.0  # q N = 1 x 5
    expected_sigma = 2.0 * math.sqrt(4 / 5)  # 4 of the 5 noise shares survived
    assert noise.noise_multiplier == pytest.approx(expected_sigma)
    clean = flatten(START) + sum(flatten(updates[n]) - flatten(START) for n in (1, 2, 3, 4)) / 5.0
    residual = flatten(from_record(arrays)) - clean
    observed = float(residual.std())
    assert observed == pytest.approx(expected_sigma * 1.0 / 5.0, rel=0.05), "noise of the survivors' shares"
    assert abs(float(residual.mean())) < 4 * observed / math.sqrt(residual.size)
    assert metrics["dp-noise-std"] == pytest.approx(expected_sigma / 5.0)
    report = stack.strategy.round_report(1)  # PrivacyAccounting: the round accounted with the smaller sigma
    assert report["noise_multiplier"] == pytest.approx(expected_sigma) and report["user_epsilon"] > 0


def test_the_server_leaves_out_a_client_whose_stage_reply_is_malformed_and_recovers_the_round() -> None:
    # Each lie is caught where it is told: a bad public key at setup and envelopes for the wrong neighbours at
    # share-keys leave that client out of the round; a masked vector of the wrong size is rejected by reply
    # validation (its masks are then removed as a dropped client's); shares for nodes not asked about are ignored.
    from flwr.app import Array, ArrayRecord

    def bad_key(reply: Message) -> None:
        reply.content.config_records[SECAGG]["secagg-pk1"] = b"not a key"

    copied: list[bytes] = []

    def copy_key(reply: Message) -> None:  # node 6 copies node 7's masking key: both are left out
        if not copied:
            copied.append(bytes(reply.content.config_records[SECAGG]["secagg-pk1"]))
        else:
            reply.content.config_records[SECAGG]["secagg-pk1"] = copied[0]

    def wrong_envelopes(reply: Message) -> None:
        record = reply.content.config_records[SECAGG]
        record["secagg-destinations"] = [99] + list(record["secagg-destinations"])[1:]

    def short_vector(reply: Message) -> None:
        reply.content[ARRAYS] = ArrayRecord({secagg.MASKED: Array(np.zeros(10, dtype=np.uint64))})

    def other_shares(reply: Message) -> None:
        reply.content.config_records[SECAGG][SECAGG_NODES] = [7] * len(
            reply.content.config_records[SECAGG][SECAGG_NODES]
        )

    tamper = {
        (1, "setup"): bad_key,
        (7, "setup"): copy_key,
        (6, "setup"): copy_key,
        (2, "share-keys"): wrong_envelopes,
        (3, STAGE_COLLECT): short_vector,
        (4, STAGE_UNMASK): other_shares,
    }
    updates = _updates()
    counts = dict(COUNTS)
    COUNTS.update({n: 10 * n for n in range(6, 14)})
    try:
        updates |= {n: [(w + 0.01 * n).astype(np.float32) for w in START] for n in range(6, 14)}
        cfg = CFG.replace(num_clients=13, secagg_num_shares=13, secagg_threshold=7)  # 7 honest answers needed
        grid = Loopback(cfg, updates, tamper=tamper)
        arrays, metrics, stack = _run(cfg, grid)
        assert arrays is not None and metrics is not None
        shared = sorted(n for n, s in grid.seen if s == "share-keys")
        assert shared == [2, 3, 4, 5, *range(8, 14)], "nodes 1 (a bad key), 6 and 7 (one key, twice) left at setup"
        assert sorted(n for n, s in grid.seen if s == STAGE_COLLECT) == [3, 4, 5, *range(8, 14)], "2 at share-keys"
        assert [r["node"] for r in stack.rejected] == [3] and "masked vector is uint64 (10,)" in stack.rejected[0][
            "reason"
        ]
        assert metrics["secagg-clients"] == 8 and metrics["secagg-dropped"] == 1
        survivors = [4, 5, *range(8, 14)]
        assert _max_diff(from_record(arrays), _fedavg(updates, survivors)) <= params_of(cfg).step + FLOAT32
    finally:
        COUNTS.clear()
        COUNTS.update(counts)


# ---- refusals ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"secagg_num_shares": 4}, "secagg-num-shares=4: expected an odd number >= 3"),
        ({"secagg_threshold": 2}, "secagg-threshold=2 with secagg-num-shares=5: expected a value in [3, 5]"),
        ({"secagg_threshold": 6}, "secagg-threshold=6 with secagg-num-shares=5: expected a value in [3, 5]"),
        ({"strategy": "krum"}, "strategy='krum' cannot run under secure-aggregation='secagg+'"),
        ({"strategy": "fedmedian"}, "robust aggregators"),
        ({"strategy": "fedadam"}, "Use strategy fedavg or fedprox"),
        ({"model": "random_forest", "strategy": "fedhist"}, "cannot run under secure-aggregation='secagg+'"),
        ({"straggler_fraction": 0.5, "strategy": "fedavg"}, "straggler-policy drop cannot run under"),
        ({"secagg_quantization_range": 2**31}, "expected a whole number in [2, 2^30]"),
        (
            {"num_clients": 100, "max_num_examples": 10**9, "secagg_quantization_range": 2**30},
            "lower secagg-quantization-range",
        ),
        ({"dp_central": True, "dp_central_clip_norm": 10.0}, "secagg-clipping-range=8 is below dp-central-clip-norm"),
    ],
)
def test_settings_that_cannot_work_are_refused_before_anything_starts(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        CFG.replace(**changes)
    assert message in str(err.value)


def test_the_wrapper_refuses_what_a_masked_sum_cannot_compute() -> None:
    from flwr.serverapp.strategy import FedAvg, FedMedian, FedProx

    for bad in (FedMedian(), ValidateReplies(FedAvg())):
        with pytest.raises(ConfigError, match="SecAgg"):
            SecAggPlus(bad, secagg.Params())
    for good in (FedAvg(), FedProx(proximal_mu=0.1)):
        assert not SecAggPlus(good, secagg.Params()).encrypted
    with pytest.raises(ConfigError, match="odd number"):
        SecAggPlus(FedAvg(), secagg.Params(num_shares=6, threshold=4))


# ---- what an honest client refuses ----------------------------------------------------------------------------
def _two_clients() -> tuple[dict[int, dict], secagg.Params]:
    params = secagg.Params(num_shares=3, threshold=2)
    states, public = {}, {}
    for node in (1, 2, 3):
        states[node], keys = setup(node, 1)
        public[node] = keys
    record = {
        "secagg-threshold": 2,
        SECAGG_NODES: [1, 2, 3],
        "secagg-pk1": [public[n]["secagg-pk1"] for n in (1, 2, 3)],
        "secagg-pk2": [public[n]["secagg-pk2"] for n in (1, 2, 3)],
    }
    sealed = {n: share_keys(states[n], record, 1, params) for n in (1, 2, 3)}
    for n in (1, 2, 3):
        srcs = [m for m in (1, 2, 3) if m != n]
        blobs = [sealed[m]["secagg-envelopes"][sealed[m]["secagg-destinations"].index(n)] for m in srcs]
        collect(states[n], {"secagg-sources": srcs, "secagg-envelopes": blobs, "secagg-noise-count": 3}, 1, params)
        states[n]["stage"] = "masked"
    return states, params


def test_an_honest_client_never_reveals_both_secrets_of_one_node_and_answers_once() -> None:
    states, _ = _two_clients()
    with pytest.raises(ProtocolError, match="both summed and dropped"):
        unmask(dict(states[1]), {SECAGG_NODES: [1, 2], SECAGG_DEAD: [2]}, 1)
    with pytest.raises(ProtocolError, match="calls it dropped"):
        unmask(dict(states[1]), {SECAGG_NODES: [2, 3], SECAGG_DEAD: [1]}, 1)
    with pytest.raises(ProtocolError, match="fewer than threshold"):
        unmask(dict(states[1]), {SECAGG_NODES: [1], SECAGG_DEAD: [2, 3]}, 1)
    state = states[1]
    out = unmask(state, {SECAGG_NODES: [1, 2], SECAGG_DEAD: [3]}, 1)
    assert out[SECAGG_NODES] == [1, 2, 3] and len(out["secagg-shares"]) == 3
    assert "sk1" not in state and "seed" not in state, "the round's secrets are wiped after answering"
    with pytest.raises(ProtocolError, match="out of order"):
        unmask(state, {SECAGG_NODES: [1, 2], SECAGG_DEAD: [3]}, 1)


def test_a_client_refuses_a_tampered_neighbourhood_or_envelope() -> None:
    params = secagg.Params(num_shares=3, threshold=2)
    state, keys = setup(1, 1)
    other, other_keys = setup(2, 1)
    record = {
        "secagg-threshold": 2,
        SECAGG_NODES: [1, 2],
        "secagg-pk1": [keys["secagg-pk1"], other_keys["secagg-pk1"]],
        "secagg-pk2": [other_keys["secagg-pk2"], other_keys["secagg-pk2"]],  # the server swapped this client's key
    }
    with pytest.raises(ProtocolError, match="other public keys for this client"):
        share_keys(dict(state), record, 1, params)
    record["secagg-pk2"] = [keys["secagg-pk2"], other_keys["secagg-pk2"]]
    with pytest.raises(ProtocolError, match="threshold 1"):
        share_keys(dict(state), {**record, "secagg-threshold": 1}, 1, params)
    with pytest.raises(ProtocolError, match="out of order"):
        share_keys(dict(state), record, 2, params)
    sealed = share_keys(dict(other), record, 1, params)
    blob = sealed["secagg-envelopes"][0]
    mine = dict(state)
    share_keys(mine, record, 1, params)
    with pytest.raises(ValueError, match="says it is from 2 to 1"):  # relabelled as from node 3
        collect(
            dict(mine) | {"nodes": [1, 2, 3], "pk2s": [*mine["pk2s"], mine["pk2s"][1]]},
            {"secagg-sources": [3], "secagg-envelopes": [blob], "secagg-noise-count": 3},
            1,
            params,
        )
    with pytest.raises(ConfigError, match="secure-aggregation='none'"):
        msg = _stage_message(1, {SECAGG_STAGE: "setup", SECAGG_ROUND: 1})
        answer_stage(RunConfig(), msg, Context(1, 1, {}, RecordDict(), {}))


def _stage_message(node: int, fields: dict[str, Any]) -> Message:
    from flwr.app import MessageType

    set_task_identity()
    content = RecordDict({SECAGG: ConfigRecord(fields), CONFIG: ConfigRecord({RUN_CONFIG: CFG.to_json()})})
    return Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN)


def test_the_server_rebuilds_a_dropped_clients_masks_only_from_its_advertised_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Shares that rebuild some other key (a lying neighbour) fail the round instead of corrupting the model.
    real: Callable[..., bytes] = secagg.public_of
    monkeypatch.setattr(secagg, "public_of", lambda pem: real(secagg.key_pair()[0]))
    grid = Loopback(CFG, _updates(), die={5: STAGE_COLLECT})
    assert _run(CFG, grid)[0] is None


def test_prg_is_deterministic_uniform_and_seeded_by_all_of_the_seed() -> None:
    a = secagg.prg(b"\x01" * 32, 100_000)
    assert np.array_equal(a, secagg.prg(b"\x01" * 32, 100_000)) and a.dtype == np.uint64
    b = secagg.prg(b"\x01" * 31 + b"\x02", 100_000)
    assert not np.array_equal(a, b), "the last seed byte matters (Flower's PRG folds seeds to 32 bits)"
    top = (a >> np.uint64(63)).astype(np.int64)
    assert abs(top.mean() - 0.5) < 0.01
    vec = np.arange(10, dtype=np.uint64)
    assert np.array_equal(secagg.apply_mask(secagg.apply_mask(vec, b"s" * 32, 1), b"s" * 32, -1), vec)
