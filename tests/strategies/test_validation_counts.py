"""Reply validation of evaluation counts at their edges: anomaly error histograms, regression and forecast sums.

Real counts come from the library's own count functions (``uaap.metrics``, ``uaap.forecast.metrics``) and pass,
also at the exact bounds a real reply can reach (an error sum at its bins' floor or ceiling, a sMAPE sum of 2n, a
one-row regression); forged counts one float beyond a bound are rejected, with the reason the server logs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Message, MessageType, MetricRecord, RecordDict

from strategies.base import summed_metrics
from tests.flower_helpers import eval_metrics, reply_from
from uaap.forecast.metrics import forecast_counts
from uaap.metrics import ERROR_BINS, anomaly_counts, bin_upper_edge, metrics_from_counts, regression_counts

TOL = 1e-9  # strategies.validation.SUM_TOLERANCE, the relative slack of every sum identity
NORMS = "sqrt(SSE) <= SAE <= sqrt(n * SSE)"


def _validator(task: str | None, **kw: object):
    from flwr.serverapp.strategy import FedAvg

    from strategies.validation import ValidateReplies

    inner = FedAvg(min_available_nodes=1, evaluate_metrics_aggr_fn=summed_metrics)
    if task is None:  # the default task
        return ValidateReplies(inner, **kw)  # type: ignore[arg-type]
    return ValidateReplies(inner, task=task, **kw)  # type: ignore[arg-type]


def _reply(node: int, metrics: dict) -> Message:
    return reply_from(node, RecordDict({"metrics": MetricRecord(metrics)}), MessageType.EVALUATE)


def _check(metrics: dict, task: str) -> None:
    from strategies.validation import check_counts

    check_counts(metrics, None, task)


def _rejects(metrics: dict, task: str, reason: str) -> None:
    """``metrics`` are rejected with exactly ``reason`` (an InvalidReply, not any other exception)."""
    from strategies.validation import InvalidReply

    with pytest.raises(InvalidReply) as info:
        _check(metrics, task)
    assert str(info.value) == reason


def _ulps(x: float, count: int = 64) -> list[float]:
    """``x`` and the floats up to ``count`` steps either side of it, in increasing order."""
    below, above = [x], [x]
    for _ in range(count):
        below.append(math.nextafter(below[-1], -math.inf))
        above.append(math.nextafter(above[-1], math.inf))
    return below[:0:-1] + above


def _first(candidates: list[float], holds: Callable[[float], bool]) -> float:
    found = [v for v in candidates if holds(v)]
    assert found, "no float meets the edge exactly"
    return found[0]


# ---- anomaly detection -------------------------------------------------------------------------------------------
def _anomaly_rows(seed: int, n: int, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels (about a fifth anomalies, at least one of each) and errors log-uniform in [10^low, 10^high]."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(np.int64)
    y[:2] = [0, 1]
    return y, 10.0 ** rng.uniform(low, high, size=n)


def _hist(bins: dict[int, int]) -> list[int]:
    out = [0] * ERROR_BINS
    for i, count in bins.items():
        out[i] = count
    return out


def _anomaly(normal: dict[int, int], anomaly: dict[int, int], total: float) -> dict:
    """Anomaly counts whose rows lie in the given bins (bin -> rows), with error sum ``total``."""
    n = sum(normal.values()) + sum(anomaly.values())
    return {
        "num-examples": n,
        "error-sum": total,
        "error-hist-normal": _hist(normal),
        "error-hist-anomaly": _hist(anomaly),
    }


def _bounds(normal: dict[int, int], anomaly: dict[int, int]) -> tuple[float, float]:
    """The least and the greatest error sum of rows in these bins (none in the last one), summed bin by bin."""
    rows = {i: normal.get(i, 0) + anomaly.get(i, 0) for i in sorted({*normal, *anomaly})}
    floor = sum(count * (bin_upper_edge(i - 1) if i else 0.0) for i, count in rows.items())
    return floor, sum(count * bin_upper_edge(i) for i, count in rows.items())


def _outside(total: float, floor: float, ceiling: float) -> str:
    return f"error-sum={total:g} is outside [{floor:g}, {ceiling:g}], what rows in the histograms' bins sum to"


def test_real_anomaly_counts_pass_and_give_the_pooled_metrics_beside_forged_ones():
    parts = [
        _anomaly_rows(1, 40, 0.0, 3.0),  # errors of 1 to 1000: neither the first bin nor the open last one
        _anomaly_rows(2, 30, -3.0, 5.0),  # some errors above 10^4: the last bin, which has no top
        (np.array([0, 0, 1]), np.zeros(3)),  # a perfect reconstruction: error sum 0, every row in the first bin
        _anomaly_rows(3, 20, -4.0, -1.0),  # small errors: the sum is below 1
    ]
    honest = [anomaly_counts(y, e) for y, e in parts]
    good = honest[0]
    assert honest[2]["error-sum"] == 0.0 and honest[3]["error-sum"] < 1.0
    assert good["error-hist-anomaly"][-1] + good["error-hist-normal"][-1] == 0 and honest[1]["error-hist-normal"][-1]
    long_key = "k" * 50
    extras = {f"extra-{i:02d}": 1.0 for i in range(11)}
    forged = [
        {k: v for k, v in good.items() if k != "error-hist-anomaly"},  # a histogram missing
        eval_metrics(10, 8),  # a classification reply in an anomaly run
        {k: v for k, v in good.items() if k != "error-sum"} | {"auc": 0.9},  # a ratio instead of the error sum
        good | {long_key: 1.0},  # an unexpected key is named by its first 40 characters
        good | extras,  # at most 10 unexpected keys are named
        good | {"error-sum": -1.0},  # a negative sum
        good | {"num-examples": 100_001},  # more rows than any client holds
        good | {"error-hist-normal": [-1] + good["error-hist-normal"][1:]},  # a negative count
        good | {"num-examples": good["num-examples"] + 1},  # the histograms count fewer rows
        good | {"error-sum": 2000.0 * good["num-examples"]},  # errors above their bins' upper edges
    ]
    validator = _validator("anomaly")
    replies = [_reply(i + 1, c) for i, c in enumerate(honest)]
    replies += [_reply(10 + i, c) for i, c in enumerate(forged)]
    out = validator.aggregate_evaluate(1, replies)
    reasons = {r["node"]: r["reason"] for r in validator.rejected}
    assert sorted(reasons) == [10 + i for i in range(len(forged))], reasons
    assert reasons[10] == "metrics missing ['error-hist-anomaly'], unexpected []"
    assert (
        reasons[11]
        == "metrics missing ['error-hist-anomaly', 'error-hist-normal'], unexpected ['confusion', 'loss-sum']"
    )
    assert reasons[12] == "metrics missing [], unexpected ['auc']"  # the histograms' check, before the scalars'
    assert reasons[13] == f"metrics missing [], unexpected ['{'k' * 40}']"
    assert reasons[14] == f"metrics missing [], unexpected {[f'extra-{i:02d}' for i in range(10)]}"
    assert reasons[15] == "metric error-sum=-1.0: expected a value in [0, inf]"
    assert reasons[16] == "metric num-examples=100001: expected a value in [1, 100000]"
    assert reasons[17] == "metric error-hist-normal: every entry must be a whole number >= 0"
    n = good["num-examples"]
    assert reasons[18] == f"error histograms count {n} rows; num-examples says {n + 1}"
    assert reasons[19].startswith(f"error-sum={2000.0 * n:g} is outside [")
    y = np.concatenate([y for y, _ in parts])
    errors = np.concatenate([e for _, e in parts])
    pooled = metrics_from_counts(anomaly_counts(y, errors))
    assert out is not None and out["num-examples"] == len(y)
    assert {k: out[k] for k in pooled} == pytest.approx(pooled, rel=1e-12)


def test_anomaly_counts_pass_check_counts_and_anomaly_rules_are_its_own():
    from strategies.validation import Rule, evaluate_rules

    for seed, (low, high) in enumerate([(0.0, 3.0), (-3.0, 5.0), (-8.0, -5.0), (2.0, 6.0)]):
        _check(anomaly_counts(*_anomaly_rows(seed, 25, low, high)), "anomaly")
    assert evaluate_rules(500, "anomaly") == {
        "num-examples": Rule(whole=True, low=1, high=500),
        "error-sum": Rule(low=0.0),
    }


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"num-examples": 2.5}, "num-examples=2.5: expected a whole number"),
        ({"num-examples": "7"}, "num-examples='7': expected a finite number"),
        ({"error-sum": math.nan}, "error-sum=nan: expected a finite number"),
        ({"error-sum": None}, "error-sum=None: expected a finite number"),
        ({"error-hist-normal": "0" * ERROR_BINS}, "metric error-hist-normal: expected a list of counts"),
        ({"error-hist-anomaly": None}, "metric error-hist-anomaly: expected a list of counts"),
        (
            {"error-hist-normal": [0.0] * ERROR_BINS},
            "metric error-hist-normal: every entry must be a whole number >= 0",
        ),
        (
            {"error-hist-anomaly": [True] + [0] * 1999},
            "metric error-hist-anomaly: every entry must be a whole number >= 0",
        ),
        (
            {"error-hist-anomaly": [-1] + [0] * 1999},
            "metric error-hist-anomaly: every entry must be a whole number >= 0",
        ),
        ({"error-sum": -0.5}, "error-sum=-0.5: squared errors cannot sum below 0"),
    ],
)
def test_check_counts_refuses_forged_anomaly_counts_with_the_reason(change: dict, reason: str):
    normal, anomaly = {1000: 2, 1200: 1}, {1500: 3}
    counts = _anomaly(normal, anomaly, sum(_bounds(normal, anomaly)) / 2)
    _check(counts, "anomaly")
    _rejects(counts | change, "anomaly", reason)


def test_histograms_must_have_exactly_the_fixed_bins_and_count_the_rows():
    counts = _anomaly({1000: 2}, {1500: 3}, sum(_bounds({1000: 2}, {1500: 3})) / 2)
    short = counts | {"error-hist-normal": counts["error-hist-normal"][1:]}  # a zero bin left out: same rows
    _rejects(short, "anomaly", f"error histograms have {ERROR_BINS - 1}/{ERROR_BINS} bins; expected {ERROR_BINS}")
    long = counts | {"error-hist-anomaly": [*counts["error-hist-anomaly"], 0]}
    _rejects(long, "anomaly", f"error histograms have {ERROR_BINS}/{ERROR_BINS + 1} bins; expected {ERROR_BINS}")
    _rejects(counts | {"num-examples": 4}, "anomaly", "error histograms count 5 rows; num-examples says 4")
    _rejects(counts | {"num-examples": 6}, "anomaly", "error histograms count 5 rows; num-examples says 6")


@pytest.mark.parametrize(("normal", "anomaly"), [({1000: 2}, {1000: 1}), ({}, {1500: 3}), ({1: 3}, {})])
def test_an_error_sum_at_its_bins_floor_and_ceiling_is_accepted_and_one_float_beyond_is_not(normal, anomaly):
    (index,) = {*normal, *anomaly}
    rows = sum(normal.values()) + sum(anomaly.values())
    floor, ceiling = rows * bin_upper_edge(index - 1), rows * bin_upper_edge(index)
    for total in (floor, floor * (1 - TOL), (floor + ceiling) / 2, ceiling, ceiling * (1 + TOL)):
        _check(_anomaly(normal, anomaly, total), "anomaly")
    for total in (math.nextafter(floor * (1 - TOL), 0.0), math.nextafter(ceiling * (1 + TOL), math.inf)):
        _rejects(_anomaly(normal, anomaly, total), "anomaly", _outside(total, floor, ceiling))


def test_both_histograms_add_to_the_bounds():
    floor = 1 * bin_upper_edge(9) + 2 * bin_upper_edge(1499)
    ceiling = 1 * bin_upper_edge(10) + 2 * bin_upper_edge(1500)
    for total in (floor, ceiling):
        _check(_anomaly({10: 1}, {1500: 2}, total), "anomaly")
    for total in (math.nextafter(floor * (1 - TOL), 0.0), math.nextafter(ceiling * (1 + TOL), math.inf)):
        _rejects(_anomaly({10: 1}, {1500: 2}, total), "anomaly", _outside(total, floor, ceiling))


def test_the_first_bin_holds_errors_down_to_zero_and_the_last_has_no_top():
    top = bin_upper_edge(0)
    for total in (0.0, 3 * top):  # three perfect reconstructions; three errors at the first bin's top
        _check(_anomaly({0: 2}, {0: 1}, total), "anomaly")
    _rejects(_anomaly({0: 2}, {0: 1}, 4 * top), "anomaly", _outside(4 * top, 0.0, 3 * top))
    last = ERROR_BINS - 1
    floor = 2 * bin_upper_edge(last - 1)
    assert math.isinf(bin_upper_edge(last))
    for normal, anomaly in (({last: 1}, {last: 1}), ({last: 2}, {}), ({}, {last: 2})):
        for total in (floor, 1e12, 1e300):
            _check(_anomaly(normal, anomaly, total), "anomaly")
        below = math.nextafter(floor * (1 - TOL), 0.0)
        _rejects(_anomaly(normal, anomaly, below), "anomaly", _outside(below, floor, math.inf))
    floor = bin_upper_edge(last - 2) + bin_upper_edge(0)
    ceiling = bin_upper_edge(last - 1) + bin_upper_edge(1)  # the row of the next-to-last bin has a top
    _check(_anomaly({last - 1: 1}, {1: 1}, ceiling), "anomaly")
    _rejects(_anomaly({last - 1: 1}, {1: 1}, 2 * ceiling), "anomaly", _outside(2 * ceiling, floor, ceiling))


def test_missing_or_unexpected_anomaly_metrics_are_named():
    counts = anomaly_counts(*_anomaly_rows(7, 20, -2.0, 2.0))
    validator = _validator("anomaly")
    forged = [
        {k: v for k, v in counts.items() if k != "error-hist-normal"},
        {k: v for k, v in counts.items() if not k.startswith("error-hist")},
        counts | {"confusion": [1, 2, 3, 4]},
        {k: v for k, v in counts.items() if k != "num-examples"},
    ]
    validator.aggregate_evaluate(1, [_reply(1, counts)] + [_reply(10 + i, c) for i, c in enumerate(forged)])
    reasons = [r["reason"] for r in validator.rejected]
    assert reasons == [
        "metrics missing ['error-hist-normal'], unexpected []",
        "metrics missing ['error-hist-anomaly', 'error-hist-normal'], unexpected []",
        "metrics missing [], unexpected ['confusion']",
        "metrics missing ['num-examples'], unexpected []",
    ]


def test_the_default_task_is_classification():
    validator = _validator(None, n_classes=3)
    assert validator.task == "classification"
    anomaly = anomaly_counts(*_anomaly_rows(8, 10, -2.0, 2.0))
    out = validator.aggregate_evaluate(1, [_reply(1, eval_metrics(10, 7)), _reply(2, anomaly)])
    assert out is not None and out["accuracy"] == pytest.approx(0.7)
    assert [r["reason"] for r in validator.rejected] == [
        "metrics missing ['confusion'], unexpected ['error-hist-anomaly', 'error-hist-normal', 'error-sum']"
    ]


# ---- regression ----------------------------------------------------------------------------------------------
def _sums(n: float, y_sum: float, y2_sum: float, sse: float, sae: float) -> dict:
    return {"num-examples": n, "y-sum": y_sum, "y2-sum": y2_sum, "sq-error-sum": sse, "abs-error-sum": sae}


def _spread(y_sum: float, y2_sum: float, n: int) -> str:
    sst = y2_sum - y_sum * y_sum / n
    return (
        f"y-sum={y_sum:g} and y2-sum={y2_sum:g} over {n} rows give a target spread SST={sst:g}; real rows give "
        "SST >= 0 (and 0 for one row)"
    )


def _norms(sae_key: str, sae: float, sse_key: str, sse: float, n: int) -> str:
    return f"{sae_key}={sae:g} and {sse_key}={sse:g} over {n} rows are inconsistent: real errors give {NORMS}"


def test_targets_at_the_centre_and_a_single_row_are_accepted_by_a_regression_run():
    centre = 0.25
    parts = [
        (np.full(5, centre), np.full(5, centre) + [0.1, -0.2, 0.0, 0.05, 0.3]),  # y-sum = y2-sum = 0
        (np.array([centre]), np.array([0.5])),  # one row at the centre
        (np.array([0.3]), np.array([0.2])),  # one row off it
        (np.array([0.2, 0.35, 0.3]), np.array([0.25, 0.3, 0.1])),  # y2-sum far below 1
    ]
    honest = [regression_counts(y, p, center=centre) for y, p in parts]
    assert honest[0]["y-sum"] == honest[0]["y2-sum"] == honest[1]["y2-sum"] == 0.0 and honest[3]["y2-sum"] < 0.1
    for counts in honest:
        _check(counts, "regression")
    validator = _validator("regression")
    out = validator.aggregate_evaluate(1, [_reply(i + 1, c) for i, c in enumerate(honest)])
    assert validator.rejected == []
    assert out is not None and out["num-examples"] == 10
    errors = np.concatenate([p - y for y, p in parts])
    assert out["mae"] == pytest.approx(np.abs(errors).mean(), rel=1e-12)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"num-examples": 2.5}, "num-examples=2.5: expected a whole number"),
        (
            {"y2-sum": -1.0, "sq-error-sum": -1.0},
            "y2-sum, sq-error-sum < 0: sums of squares and absolute values cannot be negative",
        ),
        (
            {"y2-sum": -1.0, "sq-error-sum": -1.0, "abs-error-sum": -2.0},
            "y2-sum, sq-error-sum, abs-error-sum < 0: sums of squares and absolute values cannot be negative",
        ),
        ({"abs-error-sum": 2.0}, _norms("abs-error-sum", 2.0, "sq-error-sum", 1.0, 3)),  # SAE^2 = 4 > n * SSE = 3
        ({"abs-error-sum": 0.5}, _norms("abs-error-sum", 0.5, "sq-error-sum", 1.0, 3)),  # SAE = 0.5 < sqrt(SSE) = 1
    ],
)
def test_check_counts_refuses_forged_regression_sums_with_the_reason(change: dict, reason: str):
    counts = _sums(3, 0.0, 1.0, 1.0, 1.5)
    _check(counts, "regression")
    _rejects(counts | change, "regression", reason)


def test_small_errors_get_no_absolute_slack():
    """Both norm bounds are relative: errors far below 1 that no rows could give are rejected like large ones."""
    _rejects(_sums(1, 0.0, 0.0, 0.125, 0.5), "regression", _norms("abs-error-sum", 0.5, "sq-error-sum", 0.125, 1))
    _rejects(_sums(100, 0.0, 1.0, 0.25, 0.1), "regression", _norms("abs-error-sum", 0.1, "sq-error-sum", 0.25, 100))
    _check(_sums(1, 0.0, 0.0, 0.25, 0.5), "regression")  # one error of 0.5


def test_one_row_has_no_spread_within_the_tolerance_only():
    _rejects(_sums(1, 0.1, 0.01 + 1e-9, 0.0, 0.0), "regression", _spread(0.1, 0.01 + 1e-9, 1))
    y_sum = 3.0
    edge = _first(_ulps(9.0 * (1 + TOL), 4096)[::-1], lambda y2: abs(y2 - y_sum * y_sum) <= TOL * y2)
    _check(_sums(1, y_sum, edge, 0.0, 0.0), "regression")
    above = math.nextafter(edge, math.inf)
    _rejects(_sums(1, y_sum, above, 0.0, 0.0), "regression", _spread(y_sum, above, 1))


def test_a_negative_spread_is_accepted_within_the_tolerance_only():
    y_sum, n = 3.0, 2
    edge = _first(_ulps(4.5 / (1 + TOL), 4096), lambda y2: y2 - y_sum * y_sum / n >= -TOL * y2)
    _check(_sums(n, y_sum, edge, 1.0, 1.0), "regression")
    below = math.nextafter(edge, 0.0)
    _rejects(_sums(n, y_sum, below, 1.0, 1.0), "regression", _spread(y_sum, below, n))


# ---- forecasting and the norm bounds of both ------------------------------------------------------------------
def _forecast(actual: np.ndarray, forecast: np.ndarray) -> dict:
    """A forecasting run's evaluation sums: a one-step regression's beside the horizon forecast's."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=8)
    counts = regression_counts(y, y + 0.3 * rng.normal(size=8)) | forecast_counts(actual, forecast, 2.0)
    _check(counts, "forecast")
    return counts


def test_a_smape_sum_of_two_per_point_is_accepted_and_above_it_is_not():
    actual = np.array([3.0, -1.5, 20.0, 0.25, 7.0])
    counts = _forecast(actual, np.zeros(5))  # a zero forecast: every sMAPE term is exactly 2
    assert counts["forecast-smape-sum"] == 10.0
    _check(counts | {"forecast-smape-sum": 10.0 * (1 + TOL)}, "forecast")
    over = math.nextafter(10.0 * (1 + TOL), math.inf)
    reason = f"forecast-smape-sum={over:g} over 5 points: each point's sMAPE term is at most 2"
    _rejects(counts | {"forecast-smape-sum": over}, "forecast", reason)
    validator = _validator("forecast")
    validator.aggregate_evaluate(1, [_reply(1, counts)])
    assert validator.rejected == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"forecast-n": 2.5}, "forecast-n=2.5: expected a whole number"),
        ({"forecast-abs-error-sum": math.nan}, "forecast-abs-error-sum=nan: expected a finite number"),
        ({"forecast-sq-error-sum": math.inf}, "forecast-sq-error-sum=inf: expected a finite number"),
        ({"forecast-smape-sum": "2"}, "forecast-smape-sum='2': expected a finite number"),
        (
            {"forecast-n": 1, "forecast-abs-error-sum": 0.5, "forecast-sq-error-sum": 0.125},
            _norms("forecast-abs-error-sum", 0.5, "forecast-sq-error-sum", 0.125, 1),
        ),
        (
            {"forecast-abs-error-sum": 0.1, "forecast-sq-error-sum": 0.25},
            _norms("forecast-abs-error-sum", 0.1, "forecast-sq-error-sum", 0.25, 4),
        ),
    ],
)
def test_check_counts_refuses_forged_forecast_sums_with_the_reason(change: dict, reason: str):
    counts = _forecast(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.5, 4.0]))
    _rejects(counts | change, "forecast", reason)


def _with_norms(task: str, n: int, sse: float, sae: float) -> dict:
    if task == "regression":
        return _sums(n, 0.0, 1.0, sse, sae)
    base = _forecast(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.5, 4.0]))
    return base | {"forecast-n": n, "forecast-sq-error-sum": sse, "forecast-abs-error-sum": sae}


@pytest.mark.parametrize(
    ("task", "keys"),
    [
        ("regression", ("abs-error-sum", "sq-error-sum")),
        ("forecast", ("forecast-abs-error-sum", "forecast-sq-error-sum")),
    ],
)
def test_the_norm_bounds_hold_to_the_last_float_of_their_tolerance(task: str, keys: tuple[str, str]):
    n, sse = 4, 2.0
    top = n * sse * (1 + TOL)
    sae = _first(_ulps(math.sqrt(top)), lambda v: v * v == top)  # SAE^2 == n * SSE at the tolerance's end
    _check(_with_norms(task, n, sse, sae), task)
    over = math.nextafter(sae, math.inf)
    _rejects(_with_norms(task, n, sse, over), task, _norms(keys[0], over, keys[1], sse, n))
    sae = 1.5
    root = sae * (1 + TOL)
    sse = _first(_ulps(root * root), lambda v: math.sqrt(v) == root)  # sqrt(SSE) == SAE at the tolerance's end
    _check(_with_norms(task, 2, sse, sae), task)
    over = _first(_ulps(sse, 8)[9:], lambda v: math.sqrt(v) > root)
    _rejects(_with_norms(task, 2, over, sae), task, _norms(keys[0], sae, keys[1], over, 2))
