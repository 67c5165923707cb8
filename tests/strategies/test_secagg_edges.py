"""SecAgg+'s server side at its edges: what the builder hands each layer, central DP's release, the stage transport
and the checks on what clients send (strategies/secagg.py; the protocol itself is in test_secagg.py).

The federations here are test_secagg.py's: Flower's FedAvg and the real client stage handlers over a loopback
grid. The transport test drives ``_send_and_receive`` with a grid whose nodes answer late or leave.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from strategies.base import build_strategy
from strategies.dp_accounting import PrivacyAccounting
from strategies.secagg import (
    DistributedNoise,
    SecAggPlus,
    _blobs,
    _envelopes,
    _ints,
    _rebuild,
    _send_and_receive,
    _shares,
    build_secagg_strategy,
    params_of,
)
from strategies.validation import ValidateReplies, evaluate_rules, train_rules
from strategies.wrapper import find_layer
from tests.flower_helpers import set_task_identity
from tests.strategies.test_secagg import CFG, COUNTS, FLOAT32, START, Loopback, _fedavg, _max_diff, _run, _updates
from uaap.config import RunConfig
from uaap.crypto import secagg
from uaap.errors import ConfigError
from uaap.models import flatten, from_record, to_record
from uaap.protocol import (
    CONFIG,
    METRICS,
    RUN_CONFIG,
    SECAGG,
    SECAGG_CIPHERTEXTS,
    SECAGG_DEAD,
    SECAGG_DESTINATIONS,
    SECAGG_NODES,
    SECAGG_SHARES,
    SECAGG_STAGE,
    STAGE_COLLECT,
    STAGE_UNMASK,
)


def test_the_builder_hands_every_setting_to_its_layer(uaap_home: Any) -> None:
    cfg = CFG.replace(
        run_id="built",
        dp_central=True,
        dp_local=True,
        dp_noise_multiplier=1.7,
        dp_central_clip_norm=2.5,
        fraction_train=0.6,
        dp_delta=3e-5,
        dp_accountant="prv",
        max_epsilon=9.5,
        max_num_examples=777,
        min_contributors=4,
        round_timeout=123.0,
    )
    stack = build_secagg_strategy(cfg, FedAvg(), 4, "regression")
    layer, noise, accounting = (find_layer(stack, t) for t in (SecAggPlus, DistributedNoise, PrivacyAccounting))
    assert isinstance(stack, ValidateReplies) and isinstance(layer, SecAggPlus)
    assert isinstance(noise, DistributedNoise) and isinstance(accounting, PrivacyAccounting)
    assert (layer.params, layer.timeout) == (params_of(cfg), 123.0)
    assert layer.min_survivors == layer.params.threshold  # central DP: any survivors above the threshold
    assert (noise.noise_multiplier, noise.clipping_norm, noise.sample_rate, noise.secagg) == (1.7, 2.5, 0.6, layer)
    assert (accounting.run_id, accounting.delta, accounting.mechanism, accounting.max_epsilon) == (
        "built",
        3e-5,
        "prv",
        9.5,
    )
    assert accounting.noise is noise and accounting.ledger is not None
    budget = accounting.ledger.budget("built")  # the run's budget row: both DP levels, its epsilon and delta
    assert budget is not None and (budget.levels, budget.max_epsilon, budget.delta) == ("user+example", 9.5, 3e-5)
    assert (stack.run_id, stack.central, stack.min_contributors, stack.n_classes, stack.task) == (
        "built",
        True,
        4,
        4,
        "regression",
    )
    assert stack.train_rules == train_rules(dp_local=True, secure=False, central=True, max_num_examples=777)
    assert stack.eval_rules == evaluate_rules(777, "regression")
    assert stack.check_arrays == layer.check_masked
    plain = build_secagg_strategy(CFG.replace(min_contributors=5), FedAvg(), 10, "classification")
    plain_layer = find_layer(plain, SecAggPlus)
    assert plain_layer is not None and plain_layer.min_survivors == 5  # without DP: min-contributors
    assert find_layer(plain, DistributedNoise) is None and find_layer(plain, PrivacyAccounting) is None


def _clipped(delta: np.ndarray, c: float) -> np.ndarray:
    return delta * min(1.0, c / float(np.linalg.norm(delta)))


def test_central_dp_releases_the_start_plus_the_clipped_sum_over_q_n(uaap_home: Any) -> None:
    # tiny noise and updates far above the clip norm: the release is w + sum_k clip(delta_k) / (q N), computed here
    cfg = CFG.replace(dp_central=True, dp_noise_multiplier=1e-3, dp_central_clip_norm=1.0, run_id="secagg-clip")
    updates = _updates(scale=0.05)  # norm ~4.7 each: clipped to 1
    arrays, metrics, stack = _run(cfg, Loopback(cfg, updates, die={5: STAGE_COLLECT}))
    noise = find_layer(stack, DistributedNoise)
    assert noise is not None and arrays is not None and metrics is not None
    start = flatten(START).astype(np.float64)
    clipped = sum(_clipped(flatten(updates[n]).astype(np.float64) - start, 1.0) for n in (1, 2, 3, 4))
    expected = start + clipped / 5.0
    residual = flatten(from_record(arrays)) - expected
    sigma = 1e-3 * math.sqrt(4 / 5)
    assert float(residual.std()) == pytest.approx(sigma / 5.0, rel=0.1)  # the survivors' noise, nothing else
    assert float(np.std(clipped / 5.0)) > 10 * sigma / 5.0  # a sum off by any update would break the std check
    assert metrics["dp-sampled"] == 4 and metrics["secagg-clients"] == 4


def test_central_dp_rounds_that_fail_release_nothing_and_keep_the_nominal_noise(uaap_home: Any) -> None:
    cfg = CFG.replace(dp_central=True, dp_noise_multiplier=2.0, run_id="secagg-fail")
    grid = Loopback(cfg, _updates(), die={3: STAGE_COLLECT, 4: STAGE_COLLECT, 5: STAGE_COLLECT})
    arrays, metrics, stack = _run(cfg, grid)  # 2 survivors, fewer than threshold 3: nothing to unmask
    noise = find_layer(stack, DistributedNoise)
    assert arrays is None and metrics is None and noise is not None
    assert noise.noise_multiplier == pytest.approx(2.0 * math.sqrt(2 / 5))  # what the survivors' shares carry
    fresh = find_layer(build_secagg_strategy(cfg, FedAvg(), 10, "classification"), DistributedNoise)
    assert fresh is not None and fresh.secagg.state is None  # no round configured: nothing was masked
    assert fresh.aggregate_train(1, []) == (None, None) and fresh.noise_multiplier == 2.0


def test_a_sum_survives_with_exactly_threshold_live_neighbours_and_exactly_min_contributors() -> None:
    updates = _updates()
    cfg = CFG.replace(min_contributors=3)
    arrays, _, stack = _run(cfg, Loopback(cfg, updates, die={4: STAGE_COLLECT, 5: STAGE_COLLECT}))
    layer = find_layer(stack, SecAggPlus)
    assert layer is not None and layer.params.threshold == 3 and layer.min_survivors == 3
    assert arrays is not None, "3 survivors, each with 3 live neighbours (itself included): enough"
    assert _max_diff(from_record(arrays), _fedavg(updates, [1, 2, 3])) <= params_of(cfg).step + FLOAT32


class SlowGrid:
    """Node 1 answers at once, node 2 after the transport's first liveness check (5 s), node 3 never: it is
    offline at that check."""

    def __init__(self) -> None:
        self.pulls = 0
        self.sent: dict[str, Message] = {}
        self.t0 = time.monotonic()

    def push_messages(self, messages: list[Message]) -> list[str]:
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{i}"
            self.sent[f"m{i}"] = msg
        return list(self.sent)

    def pull_messages(self, ids: Any) -> list[Message]:
        self.pulls += 1
        ready = {1} if self.pulls == 1 else {2} if time.monotonic() > self.t0 + 6.5 else set()
        return [
            Message(RecordDict(), reply_to=m)
            for i, m in self.sent.items()
            if i in ids and int(m.metadata.dst_node_id) in ready
        ]

    def get_node_ids(self) -> list[int]:
        return [1, 2]


def _reply_ids(replies: list[Message]) -> list[int]:
    return sorted(int(r.metadata.src_node_id) for r in replies)


def test_the_stage_transport_gathers_late_replies_and_stops_waiting_for_a_node_that_left() -> None:
    set_task_identity()
    grid = SlowGrid()
    messages = [
        Message(RecordDict({"c": ConfigRecord({"x": 1})}), dst_node_id=n, message_type="train") for n in (1, 2, 3)
    ]
    t0 = time.monotonic()
    replies = _send_and_receive(grid, messages, timeout=60.0)
    assert _reply_ids(replies) == [1, 2]  # node 2's reply came after the check that let node 3 go
    assert time.monotonic() - t0 < 30, "node 3 went offline: not waited for until the timeout"
    assert grid.pulls >= 4  # it kept pulling (short polls) until the liveness check dropped node 3
    assert _send_and_receive(grid, [], timeout=60.0) == []


def test_malformed_stage_fields_are_refused_with_what_was_expected() -> None:
    assert _ints([3, 1]) == [3, 1]
    for bad in ([1, True], (1, 2), [1.0], None):
        with pytest.raises(ValueError, match="^expected a list of node ids$"):
            _ints(bad)
    assert _blobs([b"a", b"x" * 8], 8) == [b"a", b"x" * 8]  # 1 to limit bytes, both ends included
    for bad in ([b""], [b"x" * 9], [b"ok", "str"], (b"a",)):
        with pytest.raises(ValueError, match="^expected a list of byte strings of 1 to 8 bytes$"):
            _blobs(bad, 8)
    request = {SECAGG_NODES: [1, 2], SECAGG_DEAD: [5]}
    good = ConfigRecord({SECAGG_NODES: [1, 2, 5], SECAGG_SHARES: [b"s" * 1024, b"t", b"u"]})
    assert _shares(good, request) == ([1, 2, 5], [b"s" * 1024, b"t", b"u"])
    with pytest.raises(ValueError, match="1 to 1024 bytes"):
        _shares(ConfigRecord({SECAGG_NODES: [1, 2, 5], SECAGG_SHARES: [b"s" * 1025, b"t", b"u"]}), request)
    with pytest.raises(ValueError, match="^expected equal lists of owners and shares$"):
        _shares(ConfigRecord({SECAGG_NODES: [1, 2, 5], SECAGG_SHARES: [b"t", b"u"]}), request)
    with pytest.raises(ValueError, match="^the shares are not for the nodes asked about$"):
        _shares(ConfigRecord({SECAGG_NODES: [1, 5, 2], SECAGG_SHARES: [b"s", b"t", b"u"]}), request)
    sealed = ConfigRecord({SECAGG_DESTINATIONS: [2, 3], SECAGG_CIPHERTEXTS: [b"e2", b"e3"]})
    assert _envelopes(1, sealed, {2, 3}) == {2: b"e2", 3: b"e3"}
    with pytest.raises(ValueError, match="^expected equal lists of destinations and envelopes$"):
        _envelopes(1, ConfigRecord({SECAGG_DESTINATIONS: [2, 3], SECAGG_CIPHERTEXTS: [b"e2"]}), {2, 3})
    with pytest.raises(ValueError, match=r"^envelopes for \[2, 4\]; expected one for each of \[2, 3\]$"):
        _envelopes(1, ConfigRecord({SECAGG_DESTINATIONS: [2, 4], SECAGG_CIPHERTEXTS: [b"e2", b"e4"]}), {2, 3})
    many = list(range(10, 20))
    with pytest.raises(ValueError, match=r"^envelopes for \[10, 11, 12, 13, 14, 15, 16, 17\]; expected one for each "
                       r"of \[20, 21, 22, 23, 24, 25, 26, 27\]$"):  # fmt: skip
        _envelopes(1, ConfigRecord({SECAGG_DESTINATIONS: many, SECAGG_CIPHERTEXTS: [b"e"] * 10}), set(range(20, 30)))


def test_a_secret_that_cannot_be_rebuilt_names_itself() -> None:
    shares = secagg.split(b"k" * 32, 3, 5)
    assert _rebuild(shares, 3, "x") == b"k" * 32
    with pytest.raises(ValueError, match="^node 7's mask seed has 2 shares, fewer than threshold=3$"):
        _rebuild(shares[:2], 3, "node 7's mask seed")
    with pytest.raises(ValueError, match="^node 7's masking key cannot be rebuilt from its shares \\(shares of one"):
        _rebuild([shares[0], shares[1][:-16], shares[2]], 3, "node 7's masking key")


def test_a_masked_reply_of_the_wrong_layout_is_refused_by_name() -> None:
    layer = SecAggPlus(FedAvg(), params_of(CFG))
    record = ArrayRecord({secagg.MASKED: Array(np.zeros(3, dtype=np.uint64))})
    with pytest.raises(ValueError, match="^no SecAgg\\+ round in flight$"):
        layer.check_masked(record)
    layer._current = to_record(START)
    size = sum(int(np.prod(a.shape)) for a in START) + 1
    layer.check_masked(ArrayRecord({secagg.MASKED: Array(np.zeros(size, dtype=np.uint64))}))
    with pytest.raises(
        ValueError, match=r"^a masked reply holds one array 'secagg-masked'; got \['a', 'b', 'c', 'd', 'e'\]$"
    ):
        layer.check_masked(ArrayRecord({k: Array(np.zeros(1)) for k in "abcdef"}))
    with pytest.raises(ValueError, match=rf"^masked vector is uint64 \(3,\); expected uint64 \({size},\)$"):
        layer.check_masked(record)


def test_a_strategy_secagg_cannot_compute_is_refused_with_the_reason() -> None:
    from flwr.serverapp.strategy import FedMedian

    with pytest.raises(ConfigError) as between:
        SecAggPlus(ValidateReplies(FedAvg()), secagg.Params())
    assert str(between.value) == (
        "SecAgg+ must wrap Flower's strategy directly; ValidateReplies between them would be bypassed"
    )
    with pytest.raises(ConfigError) as median:
        SecAggPlus(FedMedian(), secagg.Params())
    assert str(median.value) == (
        "SecAgg+ cannot run FedMedian: the server sees only the sum of the masked updates, which gives FedAvg's "
        "weighted mean and nothing else (robust aggregators need each update; server optimisers work on the mean "
        "but are not offered here). Use strategy 'fedavg' or 'fedprox', or secure-aggregation none"
    )


class Recording(Loopback):
    """The loopback grid, keeping every stage message it delivers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delivered: list[Message] = []

    def answer(self, msg: Message) -> Message:
        self.delivered.append(msg)
        return super().answer(msg)


def test_every_stage_message_carries_the_run_config_and_central_dp_masks_its_poisson_sample(uaap_home: Any) -> None:
    cfg = CFG.replace(dp_central=True, dp_noise_multiplier=2.0, fraction_train=0.6, run_id="secagg-sample")
    for _ in range(20):  # a Poisson sample of 5 at q=0.6 that differs from FedAvg's own (3 nodes, drawn apart)
        grid = Recording(cfg, _updates())
        stack = build_strategy(cfg)
        messages = list(stack.configure_train(1, to_record(START), ConfigRecord({RUN_CONFIG: cfg.to_json()}), grid))
        layer = find_layer(stack, SecAggPlus)
        assert layer is not None and layer.dp_nodes is not None
        if messages and len(layer.dp_nodes) != 3:
            break
    else:
        pytest.fail("no Poisson sample of 3+ clients other than 3 in 20 draws")
    setup = sorted(int(m.metadata.dst_node_id) for m in grid.delivered if m.content[SECAGG][SECAGG_STAGE] == "setup")
    assert setup == sorted(layer.dp_nodes)  # the clients the accountant's q describes, not FedAvg's sample
    assert {str(m.content[CONFIG][RUN_CONFIG]) for m in grid.delivered} == {cfg.to_json()}
    noise = find_layer(stack, DistributedNoise)
    assert noise is not None
    replies = grid.pull_messages(grid.push_messages(messages))
    stack.aggregate_train(1, [r for r in replies if int(r.metadata.src_node_id) != max(layer.dp_nodes)])
    assert noise.noise_multiplier < 2.0  # the survivors' share of the noise
    list(stack.configure_train(2, to_record(START), ConfigRecord({RUN_CONFIG: cfg.to_json()}), grid))
    assert noise.noise_multiplier == 2.0  # a new round starts from the nominal multiplier


def test_a_round_in_which_one_client_shared_its_keys_is_skipped() -> None:
    grid = Loopback(CFG, _updates(), die={n: "share-keys" for n in (2, 3, 4, 5)})
    arrays, metrics, _ = _run(CFG, grid)
    assert arrays is None and metrics is None
    assert not [s for _, s in grid.seen if s == STAGE_COLLECT]


def test_a_round_whose_every_unmask_answer_is_malformed_is_skipped() -> None:
    def no_shares(reply: Message) -> None:
        reply.content.config_records[SECAGG][SECAGG_SHARES] = []

    tamper = {(n, STAGE_UNMASK): no_shares for n in (1, 2, 3, 4)}
    arrays, metrics, _ = _run(CFG, Loopback(CFG, _updates(), die={5: STAGE_COLLECT}, tamper=tamper))
    assert arrays is None and metrics is None


def _masked_round(cfg: RunConfig = CFG) -> tuple[SecAggPlus, list[Message]]:
    grid = Loopback(cfg, _updates())
    stack = build_strategy(cfg)
    messages = list(stack.configure_train(1, to_record(START), ConfigRecord({RUN_CONFIG: cfg.to_json()}), grid))
    layer = find_layer(stack, SecAggPlus)
    assert layer is not None
    replies = grid.pull_messages(grid.push_messages(messages))
    return layer, sorted(replies, key=lambda m: m.metadata.src_node_id)


def test_a_repeated_or_malformed_masked_vector_counts_once_or_not_at_all() -> None:
    layer, replies = _masked_round()
    short = RecordDict({"arrays": ArrayRecord({secagg.MASKED: Array(np.zeros(3, dtype=np.uint64))})})
    request = Message(RecordDict(), dst_node_id=int(replies[0].metadata.src_node_id), message_type="train")
    bad = Message(short, reply_to=request)
    sums, weight, good = layer.unmasked_sum(1, [bad, *replies, replies[1]])  # node 1's malformed copy comes first
    assert sums is not None and [int(m.metadata.src_node_id) for m in good] == [1, 2, 3, 4, 5]
    assert weight == sum(COUNTS.values())


def test_the_round_metrics_use_the_inner_strategys_own_aggregation(uaap_home: Any) -> None:
    def largest(records: list[Any], weighting: str) -> MetricRecord:
        return MetricRecord({"train-loss": max(float(r[METRICS]["train-loss"]) for r in records)})

    cfg = CFG
    stack = build_secagg_strategy(cfg, FedAvg(train_metrics_aggr_fn=largest), 10, "classification")
    grid = Loopback(cfg, _updates())
    messages = list(stack.configure_train(1, to_record(START), ConfigRecord({RUN_CONFIG: cfg.to_json()}), grid))
    arrays, metrics = stack.aggregate_train(1, grid.pull_messages(grid.push_messages(messages)))
    assert arrays is not None and metrics is not None
    assert metrics["train-loss"] == pytest.approx(0.5) and metrics["secagg-dropped"] == 0  # node 5's 0.1 x 5


def test_a_dropped_client_whose_whole_neighbourhood_dropped_skips_the_round_cleanly() -> None:
    # 9 clients, ring neighbourhoods of 5: node 1 and its 4 neighbours drop after sharing keys. Its neighbours keep
    # only 2 live neighbours each (below threshold 3): their masks cannot be removed, so the round is skipped; node 1
    # (checked first) has no share anywhere, which must be reported as such, not crash the round
    counts = dict(COUNTS)
    try:
        COUNTS.update({n: 10 * n for n in range(6, 10)})
        rng = np.random.default_rng(5)
        updates = {n: [(w + rng.normal(0, 0.05, w.shape)).astype(np.float32) for w in START] for n in range(1, 10)}
        cfg = CFG.replace(num_clients=9)
        grid = Loopback(cfg, updates)
        stack = build_strategy(cfg)
        messages = list(stack.configure_train(1, to_record(START), ConfigRecord({RUN_CONFIG: cfg.to_json()}), grid))
        layer = find_layer(stack, SecAggPlus)
        assert layer is not None and layer.state is not None and len(layer.state.graph[1]) == 5
        grid.die = {n: STAGE_COLLECT for n in layer.state.graph[1]}
        arrays, metrics = stack.aggregate_train(1, grid.pull_messages(grid.push_messages(messages)))
        assert arrays is None and metrics is None
        assert sorted(n for n, s in grid.seen if s == STAGE_UNMASK) == sorted(set(range(1, 10)) - grid.die.keys())
    finally:
        COUNTS.clear()
        COUNTS.update(counts)


def test_the_summary_names_the_protocols_settings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="uaap"):
        SecAggPlus(FedAvg(), params_of(CFG)).summary()
    assert "SecAgg+ (num-shares 5, threshold 3, clipping range 8, 4194304 levels: error <= 3.81e-06)" in caplog.text


def test_a_masked_vector_with_a_padded_header_is_refused() -> None:
    layer = SecAggPlus(FedAvg(), params_of(CFG))
    layer._current = to_record(START)
    size = sum(int(np.prod(a.shape)) for a in START) + 1
    exact = Array(np.zeros(size, dtype=np.uint64))
    assert len(exact.data) == 128 + 8 * size  # numpy's header, then the words: what the bound allows
    padded = Array(dtype="uint64", shape=(size,), stype=exact.stype, data=exact.data + b"\x00")
    with pytest.raises(ValueError, match="expected uint64"):
        layer.check_masked(ArrayRecord({secagg.MASKED: padded}))
