"""Federated XGBoost's server side without a federation: the booster checks, Flower's bagging with several classes,
and a bad reply rejected and counted by the real strategy stack (strategies.boosting around Flower's FedXgb*)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedXgbBagging

from strategies import build_strategy
from strategies.boosting import ValidateBoosters, WholeRounds
from tests.flower_helpers import FakeGrid, reply_from, train_metrics
from uaap.config import RunConfig
from uaap.data import Dataset
from uaap.models import boosting
from uaap.protocol import ARRAYS, METRICS, REJECTED_REPLIES

RNG = np.random.default_rng(0)


def _data(n_classes: int, rows: int = 120, features: int = 6, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features)).astype(np.float32)
    y = (np.digitize(X[:, 0] + 0.3 * X[:, 1], np.linspace(-1, 1, n_classes - 1))).astype(np.int64)
    names = tuple(f"f{i}" for i in range(features))
    return Dataset("toy", X, y, n_classes, names)


def _settings(n_classes: int, **kw: Any) -> boosting.BoostSettings:
    return boosting.BoostSettings(n_features=6, n_classes=n_classes, max_depth=3, **kw)


def _margin(raw: bytes, settings: boosting.BoostSettings, X: np.ndarray) -> np.ndarray:
    booster = boosting.load(raw, settings)
    return booster.predict(xgb.DMatrix(X), output_margin=True).reshape(len(X), -1)


def _tamper(raw: bytes, change: Any) -> bytes:
    doc = json.loads(raw)
    change(doc, doc["learner"]["gradient_booster"]["model"])
    return json.dumps(doc).encode()


def test_a_booster_is_checked_against_the_run_and_the_round() -> None:
    settings = _settings(3)
    first, _ = boosting.local_boost(b"", _data(3), settings, new_only=False)
    whole, _ = boosting.local_boost(first, _data(3, seed=1), settings, new_only=False)
    boosting.check_booster(whole, settings, trees=6, prefix=boosting.trees_of(first))  # an honest cyclic reply

    def node(key: str, value: Any, at: int = 0) -> Any:  # node ``at`` of the first new tree (a split: 6 > 1 nodes)
        return lambda doc, model: model["trees"][3][key].__setitem__(at, value)

    def same_child(doc: dict, model: dict) -> None:
        model["trees"][3]["right_children"][0] = model["trees"][3]["left_children"][0]

    bad = {
        "objective": (lambda doc, model: doc["learner"]["objective"].__setitem__("name", "multi:softmax"), "objective"),
        "features": (
            lambda doc, model: doc["learner"]["learner_model_param"].__setitem__("num_feature", "7"),
            "num_feature=7",
        ),
        "intercept": (
            lambda doc, model: doc["learner"]["learner_model_param"].__setitem__("base_score", "[9E-1,5E-1,5E-1]"),
            "base_score",
        ),
        "history": (lambda doc, model: model["trees"][0]["base_weights"].__setitem__(0, 3.0), "first 3 trees differ"),
        "split feature": (node("split_indices", 99), "feature outside 0..5"),
        "nan": (node("base_weights", float("nan")), "NaN is not a number"),
        "self loop": (node("left_children", 0), "children must be nodes"),
        "shared child": (same_child, "reached twice; not a tree"),
        "classes": (lambda doc, model: model.__setitem__("tree_info", [0] * 6), "tree_info"),
    }
    for change, reason in bad.values():
        with pytest.raises(boosting.BoosterError, match=reason):
            boosting.check_booster(_tamper(whole, change), settings, trees=6, prefix=boosting.trees_of(first))
    with pytest.raises(boosting.BoosterError, match="6 trees; this round expects 3"):
        boosting.check_booster(whole, settings, trees=3)
    with pytest.raises(boosting.BoosterError, match="bytes; 1 trees of depth 3 need less"):
        boosting.check_booster(whole + b" " * settings.max_bytes(1), settings, trees=1)
    with pytest.raises(boosting.BoosterError, match="not an XGBoost JSON model"):
        boosting.check_booster(b"\x00garbage", settings, trees=3)


@pytest.mark.parametrize(("classes", "rounds", "base"), [(3, 1, 0.5), (2, 2, 0.0)])
def test_flowers_bagging_keeps_every_tree_of_a_round_only_with_whole_rounds(
    classes: int, rounds: int, base: float
) -> None:
    # Round 2 of a bagging federation: two clients each add their local rounds (one tree per class per round) to the
    # global booster. The aggregate's margin must be the global margin plus each client's added margin, class by
    # class. ``base``: the fixed intercept's margin (softprob takes 0.5 as a margin, logistic as a probability).
    settings = _settings(classes, local_rounds=rounds)
    per_client = classes * rounds if classes > 2 else rounds
    X = _data(classes, seed=9).X
    global_raw, _ = boosting.local_boost(b"", _data(classes, seed=0), settings, new_only=False)
    new = [boosting.local_boost(global_raw, _data(classes, seed=s), settings, new_only=True)[0] for s in (1, 2)]
    offset = np.full((len(X), 1 if classes == 2 else classes), base)  # counted once, in the global model
    expected = _margin(global_raw, settings, X) + sum(_margin(raw, settings, X) - offset for raw in new)

    def aggregate(strategy: Any) -> bytes:
        strategy.configure_train(2, boosting.to_record(global_raw), ConfigRecord({}), FakeGrid([1, 2]))
        replies = [reply_from(i + 1, _content(raw)) for i, raw in enumerate(new)]
        arrays, _ = strategy.aggregate_train(2, replies)
        return boosting.from_record(arrays)

    ours = aggregate(WholeRounds(FedXgbBagging(min_train_nodes=2, min_available_nodes=2), settings))
    np.testing.assert_allclose(_margin(ours, settings, X), expected, rtol=1e-5, atol=1e-5)
    boosting.check_booster(ours, settings, trees=3 * per_client)
    # Flower alone appends one tree per reply (filed under class 0): the rest of the clients' work is lost
    flower = aggregate(FedXgbBagging(min_train_nodes=2, min_available_nodes=2))
    assert boosting.count_trees(flower) == per_client + 2
    assert not np.allclose(_margin(flower, settings, X), expected, atol=1e-3)


def _content(raw: bytes, **metrics: float) -> RecordDict:
    return RecordDict({ARRAYS: boosting.to_record(raw), METRICS: MetricRecord(train_metrics(100, **metrics))})


def test_a_bad_booster_is_rejected_and_counted_never_fatal(uaap_home: Any) -> None:
    cfg = RunConfig(model="xgboost", num_clients=3, min_clients=3, min_contributors=2, xgb_max_depth=3, run_id="bad")
    strategy = build_strategy(cfg, num_nodes=3, n_classes=2, n_features=6)
    assert isinstance(strategy, ValidateBoosters)
    settings = _settings(2)
    start, _ = boosting.local_boost(b"", _data(2), settings, new_only=True)
    strategy.configure_train(2, boosting.to_record(start), ConfigRecord({}), FakeGrid([1, 2, 3]))
    good = [boosting.local_boost(start, _data(2, seed=s), settings, new_only=True)[0] for s in (1, 2)]
    deep = _settings(2, local_rounds=2)
    liar = boosting.local_boost(start, _data(2, seed=3), deep, new_only=True)[0]  # two trees where one is due
    replies = [reply_from(1, _content(good[0])), reply_from(2, _content(good[1])), reply_from(3, _content(liar))]
    arrays, metrics = strategy.aggregate_train(2, replies)
    assert metrics is not None and metrics[REJECTED_REPLIES] == 1
    assert boosting.count_trees(boosting.from_record(arrays)) == 3, "the global tree and the two honest clients'"
    assert [r["node"] for r in strategy.rejected] == [3] and "this round expects 1" in strategy.rejected[0]["reason"]
