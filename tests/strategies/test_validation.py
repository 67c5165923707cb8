"""Reply validation (strategies.validation) with real Flower messages and FedAvg."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

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

    def eval_reply(node: int, acc: float, n: float) -> Message:
        content = RecordDict({"metrics": MetricRecord(eval_metrics(n, acc))})
        return reply_from(node, content, MessageType.EVALUATE)

    out = strategy.aggregate_evaluate(1, [eval_reply(1, 0.8, 10), eval_reply(2, math.nan, 10), eval_reply(3, 0.5, 0)])
    # node 2 (NaN accuracy) and node 3 (0 examples) are rejected: the mean is node 1's alone
    assert out is not None and out["accuracy"] == pytest.approx(0.8)
    assert [r["node"] for r in strategy.rejected] == [1, 2, 3]  # node 1's train reply, then the two evaluations
    assert "expected a finite number" in strategy.rejected[1]["reason"]


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
