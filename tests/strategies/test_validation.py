"""Reply validation (strategies.validation) with real Flower messages and FedAvg."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from strategies.base import summed_metrics
from tests.flower_helpers import FakeGrid as _Grid
from tests.flower_helpers import eval_metrics, reply_from, train_metrics

SHAPES = {"w": (3, 2), "b": (2,)}


def _arrays(seed: int, shapes: dict[str, tuple[int, ...]] = SHAPES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def _train_reply(node: int, arrays: dict[str, np.ndarray], n: float) -> Message:
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return reply_from(node, RecordDict({"arrays": record, "metrics": MetricRecord(train_metrics(n))}))


def test_validation_rejects_malformed_and_matches_fedavg_of_the_rest(uaap_home):
    from flwr.serverapp.strategy import FedAvg

    from strategies.validation import ValidateReplies
    from uaap import workspace

    strategy = ValidateReplies(FedAvg(min_available_nodes=1, min_train_nodes=1), run_id="val-run")
    glob = ArrayRecord({k: Array(v) for k, v in _arrays(0).items()})
    msgs = list(strategy.configure_train(1, glob, ConfigRecord({}), _Grid([1, 2, 3, 4, 5, 6, 7])))
    assert len(msgs) == 7
    good = {1: (_arrays(1), 10.0), 2: (_arrays(2), 30.0)}
    nan = _arrays(3)
    nan["w"][0, 0] = np.nan
    inf = _arrays(4)
    inf["b"][1] = np.inf
    replies = [
        _train_reply(1, *good[1]),
        _train_reply(2, *good[2]),
        _train_reply(3, nan, 10.0),
        _train_reply(4, inf, 10.0),
        _train_reply(5, _arrays(5, {"w": (2, 3), "b": (2,)}), 10.0),  # transposed weight
        _train_reply(6, _arrays(6, {"w": (3, 2)}), 10.0),  # a layer missing
        _train_reply(7, _arrays(7), float("nan")),  # weight NaN
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    # independent reference: the num-examples weighted mean of the two good replies
    for name in SHAPES:
        expected = (good[1][0][name] * 10 + good[2][0][name] * 30) / 40
        np.testing.assert_allclose(arrays[name].numpy(), expected, rtol=1e-6)
    assert metrics["rejected-replies"] == 5
    reasons = {r["node"]: r["reason"] for r in strategy.rejected}
    assert sorted(reasons) == [3, 4, 5, 6, 7]
    assert "non-finite" in reasons[3] and "non-finite" in reasons[4]
    assert "shape" in reasons[5] and "missing ['b']" in reasons[6] and "num-examples" in reasons[7]
    logged = workspace.run_dir("val-run").events("rejected")
    assert sorted(e["node"] for e in logged) == [3, 4, 5, 6, 7]


def test_validation_all_bad_gives_no_model_and_evaluate_drops_nan_metrics(uaap_home):
    from flwr.serverapp.strategy import FedAvg

    from strategies.validation import ValidateReplies

    strategy = ValidateReplies(FedAvg(min_available_nodes=1, min_train_nodes=1))
    glob = ArrayRecord({k: Array(v) for k, v in _arrays(0).items()})
    list(strategy.configure_train(1, glob, ConfigRecord({}), _Grid([1])))
    bad = _arrays(1)
    bad["b"][:] = np.nan
    arrays, _ = strategy.aggregate_train(1, [_train_reply(1, bad, 5.0)])
    assert arrays is None  # the server loop keeps the old model and warns

    def eval_reply(node: int, metrics: dict) -> Message:
        return reply_from(node, RecordDict({"metrics": MetricRecord(metrics)}), MessageType.EVALUATE)

    replies = [
        eval_reply(1, eval_metrics(10, 8)),
        eval_reply(2, eval_metrics(10, 5, loss=math.nan)),  # NaN loss
        eval_reply(3, eval_metrics(0, 0)),  # no examples
        eval_reply(4, eval_metrics(10, 5) | {"confusion": [5, 5, 0, 0]}),  # 2 x 2 counts for a 3-class model
        eval_reply(5, eval_metrics(10, 5) | {"confusion": [5, 4, 0, 0, 0, 0, 0, 0, 0]}),  # 9 rows for 10 examples
        eval_reply(6, eval_metrics(10, 5) | {"score-hist-pos": [0], "score-hist-neg": [10]}),  # AUC sums, 3 classes
    ]
    validator = ValidateReplies(FedAvg(min_available_nodes=1, evaluate_metrics_aggr_fn=summed_metrics), n_classes=3)
    out = validator.aggregate_evaluate(1, replies)
    assert out is not None and out["accuracy"] == pytest.approx(0.8)  # node 1's alone
    reasons = {r["node"]: r["reason"] for r in validator.rejected}
    assert sorted(reasons) == [2, 3, 4, 5, 6]
    assert "expected a finite number" in reasons[2] and "num-examples=0" in reasons[3]
    assert "expected 3 x 3" in reasons[4] and "counts 9 rows" in reasons[5] and "two-class" in reasons[6]


def test_build_strategy_puts_validation_outermost_so_nothing_sees_a_rejected_reply():
    from flwr.serverapp.strategy import FedAvg, FedProx

    from strategies import build_strategy
    from strategies.dp_accounting import PrivacyAccounting
    from strategies.dp_noise import CentralDPNoise
    from strategies.validation import ValidateReplies
    from strategies.wrapper import layers
    from uaap.config import RunConfig

    plain = [type(x) for x in layers(build_strategy(RunConfig(num_clients=3, min_clients=2)))]
    assert plain == [ValidateReplies, FedProx]
    private = build_strategy(RunConfig(strategy="fedavg", dp_central=True, dp_local=True, run_id=""))
    assert [type(x) for x in layers(private)] == [ValidateReplies, PrivacyAccounting, CentralDPNoise, FedAvg]


# ---- each path of the schema, one reply at a time --------------------------------------------------------


def _validator(**kw):
    from flwr.serverapp.strategy import FedAvg

    from strategies.validation import ValidateReplies

    strategy = ValidateReplies(FedAvg(min_available_nodes=1, min_train_nodes=1), **kw)
    glob = ArrayRecord({k: Array(v) for k, v in _arrays(0).items()})
    list(strategy.configure_train(1, glob, ConfigRecord({}), _Grid([1, 2])))
    return strategy


def _reason(strategy, reply: Message) -> str | None:
    """Why ``strategy`` rejects ``reply`` on its own (None when accepted)."""
    before = len(strategy.rejected)
    strategy.aggregate_train(1, [reply])
    return strategy.rejected[-1]["reason"] if len(strategy.rejected) > before else None


def _array_as(declared: str, values: np.ndarray) -> Array:
    """An Array that declares ``declared`` but carries ``values``' own np.save bytes (a lying header)."""
    import io

    buf = io.BytesIO()
    np.save(buf, values, allow_pickle=False)
    return Array(dtype=declared, shape=tuple(values.shape), stype="numpy.ndarray", data=buf.getvalue())


def _content(arrays: dict[str, Array], metrics: dict | None = None, **records) -> RecordDict:
    return RecordDict(
        {"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics or train_metrics(10.0)), **records}
    )


def test_arrays_of_the_wrong_dtype_are_rejected_whatever_their_header_says():
    strategy = _validator()
    good = {k: Array(v) for k, v in _arrays(1).items()}
    as_int = {**good, "w": Array(np.ones((3, 2), dtype=np.int32))}
    reason = _reason(strategy, reply_from(1, _content(as_int)))
    assert reason == "array 'w' has dtype 'int32'; expected floating point"
    lying = {**good, "w": _array_as("float32", np.ones((3, 2), dtype=np.int32))}  # says float32, decodes to int32
    assert _reason(strategy, reply_from(1, _content(lying))) == (
        "array 'w' decodes to int32 (3, 2); expected float (3, 2)"
    )
    assert _reason(strategy, reply_from(1, _content({**good, "b": Array(np.ones(2, dtype=np.float16))}))) is None


def test_undecodable_oversized_and_extra_arrays_are_rejected():
    strategy = _validator()
    good = {k: Array(v) for k, v in _arrays(1).items()}
    garbage = {**good, "b": Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=b"\x93NUMPY garbage")}
    assert _reason(strategy, reply_from(1, _content(garbage))).startswith("array 'b' does not decode (")
    big = np.zeros(200, dtype=np.float64)
    padded = {**good, "b": Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=big.tobytes())}
    assert _reason(strategy, reply_from(1, _content(padded))) == (
        "array 'b' carries 1600 bytes, more than its shape (2,) needs"
    )
    extra = {**good, "extra": Array(np.ones(2, dtype=np.float32))}
    assert _reason(strategy, reply_from(1, _content(extra))) == (
        "array names differ from the global model (missing [], unexpected ['extra'])"
    )
    reordered = {"b": good["b"], "w": good["w"]}
    assert "array names differ" in _reason(strategy, reply_from(1, _content(reordered)))
    assert strategy.rejected and all(r["node"] == 1 and r["phase"] == "train" for r in strategy.rejected)


def test_replies_with_other_records_are_rejected():
    from uaap.protocol import CLIENT_INFO, PARTITION_ID

    strategy = _validator()
    good = {k: Array(v) for k, v in _arrays(1).items()}
    two = _content(good)
    two["more"] = ArrayRecord(good)
    assert _reason(strategy, reply_from(1, two)) == "array records ['arrays', 'more']; expected ['arrays']"
    metrics = _content(good)
    metrics["other"] = MetricRecord({"x": 1.0})
    assert _reason(strategy, reply_from(1, metrics)) == "metric records ['metrics', 'other']; expected ['metrics']"
    config = _content(good, cfg=ConfigRecord({"x": 1}))
    assert _reason(strategy, reply_from(1, config)) == "config records ['cfg']; expected at most ['client-info']"
    label = {CLIENT_INFO: ConfigRecord({PARTITION_ID: 3, "claim": "admin"})}
    assert _reason(strategy, reply_from(1, _content(good, **label))) == (
        "client-info carries ['claim', 'partition-id']; expected at most ['partition-id']"
    )
    for bad in (True, "3", 2.5):
        reply = reply_from(1, _content(good, **{CLIENT_INFO: ConfigRecord({PARTITION_ID: bad})}))
        assert _reason(strategy, reply) == f"client-info partition-id={bad!r}: expected a whole number"
    fine = reply_from(1, _content(good, **{CLIENT_INFO: ConfigRecord({PARTITION_ID: 3})}))
    assert _reason(strategy, fine) is None
    no_arrays = RecordDict({"metrics": MetricRecord(train_metrics(10.0))})
    assert _reason(strategy, reply_from(1, no_arrays)) == "array records []; expected ['arrays']"


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"num-examples": 2.5}, "metric num-examples=2.5: expected a whole number"),
        ({"num-examples": 0}, "metric num-examples=0: expected a value in [1, 50]"),
        ({"num-examples": 51}, "metric num-examples=51: expected a value in [1, 50]"),
        ({"num-examples": 50}, None),
        ({"num-examples": 1}, None),
        ({"train-loss": -0.1}, "metric train-loss=-0.1: expected a value in [0, inf]"),
        ({"train-loss": 0.0}, None),
        ({"steps": 10**9 + 1}, "metric steps=1000000001: expected a value in [0, 1e+09]"),
        ({"straggler": 2}, "metric straggler=2: expected a value in [0, 1]"),
        ({"straggler": 1}, None),
        ({"train-loss": float("inf")}, "metric train-loss=inf: expected a finite number"),
        ({"he-weight": 1.0}, "metrics missing [], unexpected ['he-weight']"),
    ],
)
def test_each_training_metric_has_its_type_and_range(metrics, reason):
    strategy = _validator(max_num_examples=50)
    good = {k: Array(v) for k, v in _arrays(1).items()}
    reply = reply_from(1, _content(good, {**train_metrics(10.0), **metrics}))
    assert _reason(strategy, reply) == reason


def test_a_rule_refuses_bools_and_non_numbers_flower_would_not_even_carry():
    from strategies.validation import InvalidReply, Rule

    rule = Rule(whole=True, low=1, high=50)
    for value in (True, "3", None, [3]):
        with pytest.raises(InvalidReply, match=r"expected a finite number$"):
            rule.check("num-examples", value)
    rule.check("num-examples", 3)
    rule.check("num-examples", 3.0)


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({}, "metrics missing ['dp-epsilon', 'dp-q', 'dp-sigma', 'dp-steps', 'dp-total-steps'], unexpected []"),
        ({"dp-sigma": 0.0}, "metric dp-sigma=0.0: expected a value in (0, 1e+06]"),
        ({"dp-sigma": 1e-9}, None),
        ({"dp-q": 0.0}, "metric dp-q=0.0: expected a value in (0, 1]"),
        ({"dp-q": 1.0}, None),
        ({"dp-q": 1.5}, "metric dp-q=1.5: expected a value in (0, 1]"),
        ({"dp-steps": 0}, "metric dp-steps=0: expected a value in [1, 1e+09]"),
        ({"dp-total-steps": 0}, "metric dp-total-steps=0: expected a value in [1, 1e+09]"),
        ({"dp-epsilon": -1.0}, "metric dp-epsilon=-1.0: expected a value in [0, inf]"),
    ],
)
def test_dp_sgd_release_metrics_are_required_and_ranged_under_local_dp(metrics, reason):
    strategy = _validator(dp_local=True)
    release = {"dp-sigma": 1.0, "dp-q": 0.1, "dp-steps": 5, "dp-total-steps": 5, "dp-epsilon": 0.5}
    good = {k: Array(v) for k, v in _arrays(1).items()}
    sent = {**train_metrics(10.0), **(release if metrics else {}), **metrics}
    assert _reason(strategy, reply_from(1, _content(good, sent))) == reason


def test_too_few_contributors_withhold_the_aggregate_except_under_central_dp(uaap_home):
    good = {k: Array(v) for k, v in _arrays(1).items()}
    for central, released in ((False, False), (True, True)):
        strategy = _validator(min_contributors=2, central=central)
        arrays, metrics = strategy.aggregate_train(1, [reply_from(1, _content(good))])
        assert (arrays is not None) is released
        assert metrics is not None and metrics["rejected-replies"] == 0
    strategy = _validator(min_contributors=2)
    arrays, _ = strategy.aggregate_train(1, [reply_from(1, _content(good)), reply_from(2, _content(good))])
    assert arrays is not None and np.allclose(arrays["w"].numpy(), _arrays(1)["w"])


def test_evaluation_sums_counts_and_refuses_ratios_and_arrays():
    from flwr.serverapp.strategy import FedAvg

    from strategies.validation import ValidateReplies
    from uaap.metrics import AUC_BINS

    strategy = ValidateReplies(FedAvg(min_available_nodes=1, evaluate_metrics_aggr_fn=summed_metrics), n_classes=2)

    def reply(node: int, metrics: dict) -> Message:
        return reply_from(node, RecordDict({"metrics": MetricRecord(metrics)}), "evaluate")

    # two clients, each with only one class on its validation split: node 1 holds 10 negatives (8 right),
    # node 2 holds 10 positives (6 right); scores in bins 100 (negatives) and 700 or 200 (positives)
    neg = eval_metrics(10, 8, classes=2)
    neg["score-hist-neg"] = [0] * AUC_BINS
    neg["score-hist-neg"][100] = 10
    pos = {"num-examples": 10, "loss-sum": 5.0, "confusion": [0, 0, 4, 6]}
    pos["score-hist-neg"] = [0] * AUC_BINS
    pos["score-hist-pos"] = [0] * AUC_BINS
    pos["score-hist-pos"][700], pos["score-hist-pos"][50] = 6, 4
    out = strategy.aggregate_evaluate(1, [reply(1, neg), reply(2, pos)])
    assert out is not None and out["accuracy"] == pytest.approx(14 / 20)
    # pooled by hand: precision 8/12 and 6/8, recall 8/10 and 6/10 -> F1 8/11 and 2/3
    assert out["f1_macro"] == pytest.approx((8 / 11 + 2 / 3) / 2)
    assert out["auc"] == pytest.approx(0.6) and out["num-examples"] == 20  # 6 of 10 positives score above all
    ratio = reply(3, eval_metrics(10, 5, classes=2) | {"auc": 0.9})  # a ratio beside the counts
    assert strategy.aggregate_evaluate(1, [ratio]) is None
    assert strategy.rejected[-1]["reason"] == "metrics missing [], unexpected ['auc']"
    with_arrays = RecordDict({"metrics": MetricRecord(eval_metrics(10, 5, classes=2)), "arrays": ArrayRecord()})
    assert strategy.aggregate_evaluate(1, [reply_from(4, with_arrays, "evaluate")]) is None
    assert strategy.rejected[-1] == {
        "round": 1,
        "phase": "evaluate",
        "node": 4,
        "reason": "array records ['arrays']; expected []",
    }


# ---- exact bounds and messages (each kills a mutant the tests above let through) --------------------------


@pytest.mark.parametrize("key", ["steps", "straggler", "dp-steps", "dp-total-steps"])
def test_counters_must_be_whole_numbers(key):
    strategy = _validator(dp_local=True)
    release = {"dp-sigma": 1.0, "dp-q": 0.1, "dp-steps": 5, "dp-total-steps": 5, "dp-epsilon": 0.5}
    good = {k: Array(v) for k, v in _arrays(1).items()}
    base = {**train_metrics(10.0), **release}
    assert _reason(strategy, reply_from(1, _content(good, {**base, key: 0.5}))) == (
        f"metric {key}=0.5: expected a whole number"
    )
    assert _reason(strategy, reply_from(1, _content(good, {**base, key: 1}))) is None
    assert _reason(strategy, reply_from(1, _content(good, {**base, "dp-sigma": 1e6}))) is None
    assert _reason(strategy, reply_from(1, _content(good, {**base, "dp-sigma": 1.000001e6}))) is not None


def test_the_defaults_log_nothing_release_one_reply_and_cap_num_examples(uaap_home):
    from flwr.serverapp.strategy import FedAvg

    from strategies.validation import ValidateReplies

    good = {k: Array(v) for k, v in _arrays(1).items()}
    glob = ArrayRecord({k: Array(v) for k, v in _arrays(0).items()})
    plain = ValidateReplies(FedAvg(min_available_nodes=1, min_train_nodes=1))
    list(plain.configure_train(1, glob, ConfigRecord({}), _Grid([1, 2])))
    arrays, _ = plain.aggregate_train(1, [reply_from(1, _content(good, train_metrics(100_000)))])
    assert arrays is not None, "one contributor is enough by default, and 100000 examples are allowed"
    assert _reason(plain, reply_from(1, _content(good, train_metrics(100_001)))) == (
        "metric num-examples=100001: expected a value in [1, 100000]"
    )
    assert not uaap_home.exists(), "without a run id no rejection is written anywhere"
    two = ValidateReplies(FedAvg(min_available_nodes=1, min_train_nodes=1), min_contributors=2)
    list(two.configure_train(1, glob, ConfigRecord({}), _Grid([1, 2])))
    assert two.aggregate_train(1, [reply_from(1, _content(good))])[0] is None, "not central DP by default"


def test_array_size_bound_and_non_finite_count_are_exact():
    from flwr.serverapp.strategy import FedAvg

    from strategies.validation import ValidateReplies

    shapes = {"s": (1,), "v": (2,)}
    strategy = ValidateReplies(FedAvg(min_available_nodes=1, min_train_nodes=1))
    glob = ArrayRecord({k: Array(np.zeros(s, dtype=np.float64)) for k, s in shapes.items()})
    list(strategy.configure_train(1, glob, ConfigRecord({}), _Grid([1, 2])))
    exact = {k: Array(np.ones(s, dtype=np.float64)) for k, s in shapes.items()}  # 128-byte header + 8 per value
    assert [len(a.data) for a in exact.values()] == [136, 144]
    assert _reason(strategy, reply_from(1, _content(exact))) is None, "float64 at exactly the bound is accepted"
    for name, size in (("s", 137), ("v", 145)):
        padded = dict(exact)
        padded[name] = Array(dtype="float64", shape=shapes[name], stype="numpy.ndarray", data=b"\0" * size)
        assert _reason(strategy, reply_from(1, _content(padded))) == (
            f"array {name!r} carries {size} bytes, more than its shape {shapes[name]} needs"
        )
    nan = {"s": Array(np.ones(1)), "v": Array(np.array([np.nan, np.inf]))}
    assert _reason(strategy, reply_from(1, _content(nan))) == "array 'v' has 2 non-finite values (NaN/Inf)"
    one = {"s": Array(np.ones(1)), "v": Array(np.array([1.0, np.nan]))}
    assert _reason(strategy, reply_from(1, _content(one))) == "array 'v' has 1 non-finite values (NaN/Inf)"


def test_long_lists_in_messages_are_cut_at_ten_names_of_forty_characters_and_500_in_all(uaap_home):
    strategy = _validator(run_id="cut")
    good = {k: Array(v) for k, v in _arrays(1).items()}
    short = [f"n{i:02d}" for i in range(12)]
    extra_arrays = {**good, **{n: Array(np.ones(1, dtype=np.float32)) for n in short}}
    assert _reason(strategy, reply_from(1, _content(extra_arrays))) == (
        f"array names differ from the global model (missing [], unexpected {short[:10]})"
    )
    extra_metrics = {**train_metrics(10.0), **dict.fromkeys(short, 1.0)}
    assert _reason(strategy, reply_from(1, _content(good, extra_metrics))) == (
        f"metrics missing [], unexpected {short[:10]}"
    )
    long = "x" * 60
    assert _reason(strategy, reply_from(1, _content({**good, long: Array(np.ones(1, np.float32))}))) == (
        f"array names differ from the global model (missing [], unexpected {[long[:40]]})"
    )
    assert _reason(strategy, reply_from(1, _content(good, {**train_metrics(10.0), long: 1.0}))) == (
        f"metrics missing [], unexpected {[long[:40]]}"
    )
    many = [f"{i:02d}" + "y" * 48 for i in range(12)]  # a message longer than 500 characters is cut there
    full = f"array names differ from the global model (missing [], unexpected {[n[:40] for n in many[:10]]})"
    assert len(full) > 500
    padded = {**good, **{n: Array(np.ones(1, dtype=np.float32)) for n in many}}
    assert _reason(strategy, reply_from(1, _content(padded))) == full[:500]
    from uaap import workspace

    assert workspace.run_dir("cut").events("rejected")[-1]["reason"] == full[:500]
    missing = {"num-examples": 10.0}
    assert _reason(strategy, reply_from(1, _content(good, missing))) == (
        "metrics missing ['steps', 'straggler', 'train-loss'], unexpected []"
    )
    both = {**train_metrics(10.0), "odd": 1.0}
    del both["steps"]
    assert _reason(strategy, reply_from(1, _content(good, both))) == "metrics missing ['steps'], unexpected ['odd']"
    for extra, shown in ((dict.fromkeys(short, 1.0), short[:10]), ({long: 1.0}, [long[:40]])):
        evaluation = RecordDict({"metrics": MetricRecord({**eval_metrics(10, 8), **extra})})
        strategy.aggregate_evaluate(1, [reply_from(2, evaluation, "evaluate")])
        assert strategy.rejected[-1]["reason"] == f"metrics missing [], unexpected {shown}"
    no_counts = {k: v for k, v in eval_metrics(10, 8).items() if k != "confusion"}
    strategy.aggregate_evaluate(1, [reply_from(2, RecordDict({"metrics": MetricRecord(no_counts)}), "evaluate")])
    assert strategy.rejected[-1]["reason"] == "metrics missing ['confusion'], unexpected []"


def test_an_empty_client_info_is_accepted_and_lost_replies_do_not_hide_later_ones():
    from flwr.app import Error

    from uaap.protocol import CLIENT_INFO

    strategy = _validator()
    good = {k: Array(v) for k, v in _arrays(1).items()}
    assert _reason(strategy, reply_from(1, _content(good, **{CLIENT_INFO: ConfigRecord({})}))) is None
    request = Message(content=RecordDict(), dst_node_id=2, message_type=MessageType.TRAIN)
    lost = Message(Error(code=0, reason="gone"), reply_to=request)
    arrays, metrics = strategy.aggregate_train(1, [lost, reply_from(1, _content(good))])
    assert arrays is not None and np.allclose(arrays["w"].numpy(), _arrays(1)["w"])
    assert metrics["rejected-replies"] == 0


@pytest.mark.parametrize(
    ("counts", "reason"),
    [
        ({"num-examples": 2.5}, "metric num-examples=2.5: expected a whole number"),
        ({"num-examples": 0}, "metric num-examples=0: expected a value in [1, 50]"),
        ({"num-examples": 51}, "metric num-examples=51: expected a value in [1, 50]"),
        ({"confusion": [10, 0, 0, 0, 0, 0, 0, 0, -1]}, "metric confusion: every entry must be a whole number >= 0"),
        ({"confusion": [10.0] + [0.0] * 8}, "metric confusion: every entry must be a whole number >= 0"),
        ({"confusion": 10}, "metric confusion: expected a list of counts"),
        ({"confusion": [10, 0, 0]}, "confusion has 3 entries; expected a square of at least 2 x 2"),
        ({"confusion": [10]}, "confusion has 1 entries; expected a square of at least 2 x 2"),
        ({"confusion": [9, 0, 0, 0, 0, 0, 0, 0, 0]}, "confusion counts 9 rows; num-examples says 10"),
    ],
)
def test_evaluation_counts_have_their_types_and_shapes(counts, reason):
    strategy = _validator(max_num_examples=50)
    reply = reply_from(1, RecordDict({"metrics": MetricRecord({**eval_metrics(10, 8), **counts})}), "evaluate")
    strategy.aggregate_evaluate(1, [reply])
    assert strategy.rejected[-1]["reason"] == reason


def test_two_class_histograms_must_count_the_confusion_rows():
    strategy = _validator()
    base = eval_metrics(10, 7, classes=2)  # 7 negatives predicted right, 3 wrong; no positives

    def reason(**changes: object) -> str | None:
        before = len(strategy.rejected)
        reply = reply_from(1, RecordDict({"metrics": MetricRecord({**base, **changes})}), "evaluate")
        strategy.aggregate_evaluate(1, [reply])
        return strategy.rejected[-1]["reason"] if len(strategy.rejected) > before else None

    assert reason() is None
    short = [0] * 999
    assert reason(**{"score-hist-pos": short}) == "score histograms have 999/1000 bins; expected 1000"
    assert reason(**{"score-hist-neg": short}) == "score histograms have 1000/999 bins; expected 1000"
    moved = [9] + [0] * 999
    assert reason(**{"score-hist-neg": moved}) == (
        "score histograms do not count the rows the confusion matrix counts per class"
    )
    assert reason(**{"score-hist-pos": [1] + [0] * 999}) == (
        "score histograms do not count the rows the confusion matrix counts per class"
    )
    floats = [0.0] * 1000
    assert reason(**{"score-hist-pos": floats}) == "metric score-hist-pos: every entry must be a whole number >= 0"
    assert reason(**{"score-hist-neg": floats}) == "metric score-hist-neg: every entry must be a whole number >= 0"
    fixed = _validator(n_classes=3)
    reply = reply_from(1, RecordDict({"metrics": MetricRecord(base)}), "evaluate")
    fixed.aggregate_evaluate(1, [reply])
    assert fixed.rejected[-1]["reason"] == "confusion has 4 entries; expected 3 x 3"


def test_count_lists_are_capped_at_a_million_entries_and_two_class_histograms_are_required():
    strategy = _validator()

    def reason(**changes: object) -> str | None:
        before = len(strategy.rejected)
        reply = reply_from(1, RecordDict({"metrics": MetricRecord({**eval_metrics(10, 8), **changes})}), "evaluate")
        strategy.aggregate_evaluate(1, [reply])
        return strategy.rejected[-1]["reason"] if len(strategy.rejected) > before else None

    square = [10] + [0] * ((1 << 20) - 1)  # 1024 x 1024, exactly at the cap
    assert reason(confusion=square) is None
    assert reason(confusion=[*square, 0]) == "metric confusion: expected a list of counts"
    two = eval_metrics(10, 8, classes=2)
    no_hist = {k: v for k, v in two.items() if not k.startswith("score-hist")}
    reply = reply_from(1, RecordDict({"metrics": MetricRecord(no_hist)}), "evaluate")
    strategy.aggregate_evaluate(1, [reply])
    assert strategy.rejected[-1]["reason"] == "two classes need score-hist-pos and score-hist-neg (the AUC's sums)"
    three = {**eval_metrics(10, 8), "score-hist-pos": [0] * 1000}
    strategy.aggregate_evaluate(1, [reply_from(1, RecordDict({"metrics": MetricRecord(three)}), "evaluate")])
    assert strategy.rejected[-1]["reason"] == "['score-hist-pos'] belong to two-class tasks; this one has 3 classes"
