"""Reply validation of regression evaluation sums: real sums pass and add up, forged ones are rejected, never fatal."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import r2_score

from strategies.base import summed_metrics
from tests.flower_helpers import eval_metrics, reply_from
from uaap.metrics import regression_counts


def _validator(task: str = "regression", **kw: object):
    from flwr.serverapp.strategy import FedAvg

    from strategies.validation import ValidateReplies

    inner = FedAvg(min_available_nodes=1, evaluate_metrics_aggr_fn=summed_metrics)
    return ValidateReplies(inner, n_classes=1 if task == "regression" else 3, task=task, **kw)  # type: ignore[arg-type]


def _reply(node: int, metrics: dict) -> Message:
    return reply_from(node, RecordDict({"metrics": MetricRecord(metrics)}), MessageType.EVALUATE)


def _rows(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = 150 + 70 * rng.normal(size=n)
    return y, y + 40 * rng.normal(size=n)


def test_real_regression_sums_pass_and_give_the_pooled_r2_beside_forged_ones():
    parts = [_rows(s, n) for s, n in ((1, 30), (2, 1), (3, 45))]  # a one-row client is legitimate
    honest = [regression_counts(y, p, center=150.0) for y, p in parts]
    good = honest[0]
    forged = [
        good | {"sq-error-sum": -1.0},  # negative SSE
        good | {"abs-error-sum": -0.5},  # negative SAE
        good | {"y2-sum": math.inf},  # non-finite
        good | {"y2-sum": good["y-sum"] ** 2 / good["num-examples"] / 2},  # SST < 0: y2-sum too small for y-sum
        good | {"num-examples": 1},  # n mismatch: one row cannot have a spread
        good | {"num-examples": 2},  # n mismatch: SAE^2 > n * SSE, more rows behind these errors than claimed
        good | {"abs-error-sum": math.sqrt(good["sq-error-sum"]) / 2},  # SAE < sqrt(SSE): impossible errors
        good | {"num-examples": 2.5},  # not a whole number of rows
        good | {"confusion": [1, 0, 0, 1]},  # classification counts beside regression sums
        {k: v for k, v in good.items() if k != "y-sum"},  # a sum missing
        eval_metrics(10, 8),  # a classification reply in a regression run
        good | {"r2": 0.99},  # a ratio instead of (beside) the sums
    ]
    replies = [_reply(i + 1, c) for i, c in enumerate(honest)]
    replies += [_reply(10 + i, c) for i, c in enumerate(forged)]
    validator = _validator()
    out = validator.aggregate_evaluate(1, replies)
    reasons = {r["node"]: r["reason"] for r in validator.rejected}
    assert sorted(reasons) == [10 + i for i in range(len(forged))], reasons
    y = np.concatenate([y for y, _ in parts])
    pred = np.concatenate([p for _, p in parts])
    assert out is not None and out["num-examples"] == len(y)
    assert out["r2"] == pytest.approx(r2_score(y, pred), rel=1e-9)
    assert reasons[10] == "metric sq-error-sum=-1.0: expected a value in [0, inf]"
    assert reasons[11] == "metric abs-error-sum=-0.5: expected a value in [0, inf]"
    assert "expected a finite number" in reasons[12]
    assert "SST=" in reasons[13] and "SST=" in reasons[14]
    assert "sqrt(SSE) <= SAE <= sqrt(n * SSE)" in reasons[15] and "sqrt(SSE) <= SAE" in reasons[16]
    assert "whole number" in reasons[17]
    assert "unexpected ['confusion']" in reasons[18] and "missing ['y-sum']" in reasons[19]
    assert "missing" in reasons[20] and "unexpected ['r2']" in reasons[21]


def test_a_classification_run_rejects_regression_sums():
    validator = _validator(task="classification")
    y, p = _rows(4, 20)
    out = validator.aggregate_evaluate(1, [_reply(1, eval_metrics(10, 7)), _reply(2, regression_counts(y, p))])
    assert out is not None and out["accuracy"] == pytest.approx(0.7)
    assert [r["node"] for r in validator.rejected] == [2]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"sq-error-sum": -1e-3}, "sq-error-sum < 0"),
        ({"y-sum": math.nan}, "y-sum=nan: expected a finite number"),
        ({"num-examples": 0}, "num-examples=0: a regression reply needs at least one row"),
        ({"y2-sum": 0.0}, "give a target spread SST="),
    ],
)
def test_check_counts_refuses_forged_regression_sums_directly(change: dict, reason: str):
    from strategies.validation import InvalidReply, check_counts

    y, p = _rows(5, 12)
    counts = regression_counts(y, p)
    check_counts(counts, 1, "regression")  # the honest sums pass
    with pytest.raises(InvalidReply, match=reason.replace("(", r"\(").replace(")", r"\)")):
        check_counts(counts | change, 1, "regression")


def test_a_perfect_model_and_a_constant_target_are_accepted():
    from strategies.validation import check_counts

    y = np.full(7, 3.25)
    check_counts(regression_counts(y, y), 1, "regression")  # SSE = SAE = SST = 0
    check_counts(regression_counts(y, y + 1.0), 1, "regression")  # SAE^2 == n * SSE exactly
    z = np.linspace(0, 1, 9)
    check_counts(regression_counts(z, z + np.eye(9)[3]), 1, "regression")  # one error: SAE == sqrt(SSE)


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 300),
    offset=st.floats(-1e4, 1e4),
    spread=st.floats(1e-3, 1e4),
    error=st.floats(0.0, 10.0),
    center=st.sampled_from([0.0, 1.0]),
)
def test_sums_of_any_real_rows_are_accepted(seed, n, offset, spread, error, center):
    """No false alarm: whatever the targets' scale and the model's error, honest sums pass (centred or raw)."""
    from strategies.validation import check_counts

    rng = np.random.default_rng(seed)
    y = offset + spread * rng.normal(size=n)
    pred = y + error * spread * rng.normal(size=n)
    check_counts(regression_counts(y, pred, center=center * offset), 1, "regression")


def _forecast_reply_counts(seed: int, series: int) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """A forecasting client's evaluation sums: its one-step windows' regression sums and the horizon forecast's
    sums over ``series`` tails of 6 points, with the points, forecasts and each point's MASE scale."""
    from uaap.forecast.metrics import add_counts, forecast_counts

    rng = np.random.default_rng(seed)
    y, p = _rows(seed, 10)
    actual = 100 + 20 * rng.normal(size=(series, 6))
    forecast = actual + 5 * rng.normal(size=(series, 6))
    scales = rng.uniform(0.5, 3.0, size=series)
    fc = add_counts(forecast_counts(a, f, s) for a, f, s in zip(actual, forecast, scales, strict=True))
    return regression_counts(y, p) | fc, actual.ravel(), forecast.ravel(), np.repeat(scales, 6)


def test_forecast_sums_pass_add_up_to_the_pooled_horizon_metrics_and_forged_ones_are_rejected():
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    parts = [_forecast_reply_counts(seed, k) for seed, k in ((1, 2), (2, 1), (3, 3))]
    good = parts[0][0]
    forged = [
        good | {"forecast-smape-sum": 2 * good["forecast-n"] + 1},  # a point's sMAPE term is at most 2
        good | {"forecast-abs-error-sum": math.sqrt(good["forecast-sq-error-sum"]) / 2},  # SAE < sqrt(SSE)
        good | {"forecast-n": 1},  # SAE^2 > n * SSE: more points behind these errors than claimed
        good | {"forecast-scaled-error-sum": -1.0},  # negative
        good | {"forecast-n": 0},  # no point scored
        {k: v for k, v in good.items() if k != "forecast-smape-sum"},  # a sum missing
        regression_counts(*_rows(9, 10)),  # a reply without the horizon's sums
    ]
    validator = _validator(task="forecast")
    replies = [_reply(i + 1, c) for i, (c, *_) in enumerate(parts)]
    replies += [_reply(10 + i, c) for i, c in enumerate(forged)]
    out = validator.aggregate_evaluate(1, replies)
    reasons = {r["node"]: r["reason"] for r in validator.rejected}
    assert sorted(reasons) == [10 + i for i in range(len(forged))], reasons
    assert "each point's sMAPE term is at most 2" in reasons[10]
    assert "sqrt(SSE) <= SAE <= sqrt(n * SSE)" in reasons[11] and "sqrt(SSE) <= SAE" in reasons[12]
    assert reasons[13] == "metric forecast-scaled-error-sum=-1.0: expected a value in [0, inf]"
    assert "forecast-n=0" in reasons[14]
    assert "missing ['forecast-smape-sum']" in reasons[15] and "missing" in reasons[16]
    actual, forecast, scale = (np.concatenate([p[i] for p in parts]) for i in (1, 2, 3))
    err = np.abs(actual - forecast)
    assert out is not None
    assert out["forecast-mae"] == pytest.approx(mean_absolute_error(actual, forecast), rel=1e-12)
    assert out["forecast-rmse"] == pytest.approx(math.sqrt(mean_squared_error(actual, forecast)), rel=1e-12)
    assert out["forecast-smape"] == pytest.approx(100 * np.mean(2 * err / (actual + forecast)), rel=1e-12)
    assert out["forecast-mase"] == pytest.approx(np.mean(err / scale), rel=1e-12)
    assert "r2" in out  # the one-step windows' metrics stay beside them


def test_a_regression_run_rejects_forecast_sums():
    validator = _validator()
    counts, *_ = _forecast_reply_counts(4, 2)
    validator.aggregate_evaluate(1, [_reply(1, counts)])
    assert "unexpected ['forecast-abs-error-sum'" in validator.rejected[0]["reason"]
