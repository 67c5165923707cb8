"""Metrics from summed counts (uaap.metrics) equal scikit-learn's on the pooled rows, for any split into clients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_score, recall_score, roc_auc_score

from uaap.metrics import AUC_ERROR, classification_counts, metrics_from_counts, sum_counts


def _predictions(seed: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]  # informative but imperfect
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


def _reference(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    k = proba.shape[1]
    pred, labels = proba.argmax(axis=1), np.arange(k)
    return {
        "accuracy": accuracy_score(y, pred),
        "f1_macro": f1_score(y, pred, average="macro", labels=labels, zero_division=0),
        "f1_weighted": f1_score(y, pred, average="weighted", labels=labels, zero_division=0),
        "precision_macro": precision_score(y, pred, average="macro", labels=labels, zero_division=0),
        "recall_macro": recall_score(y, pred, average="macro", labels=labels, zero_division=0),
        "loss": log_loss(y, proba, labels=labels),
    }


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 6), clients=st.integers(1, 8))
def test_summed_counts_give_the_pooled_metrics_for_any_non_iid_split(seed: int, k: int, clients: int) -> None:
    y, proba = _predictions(seed, 300, k)
    order = np.argsort(y, kind="stable")  # sorted by label, then cut: each client holds one or two classes
    parts = np.array_split(order, clients)
    total = sum_counts(classification_counts(y[p], proba[p]) for p in parts if len(p))
    got = metrics_from_counts(total)
    for name, value in _reference(y, proba).items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name


def test_the_mean_of_per_client_f1_is_what_this_replaces() -> None:
    y, proba = _predictions(7, 1000, 10)
    parts = np.array_split(np.argsort(y, kind="stable"), 10)  # one class per client
    pooled = f1_score(y, proba.argmax(1), average="macro", labels=np.arange(10), zero_division=0)
    summed = metrics_from_counts(sum_counts(classification_counts(y[p], proba[p]) for p in parts))["f1_macro"]
    mean = np.mean([metrics_from_counts(classification_counts(y[p], proba[p]))["f1_macro"] for p in parts])
    assert summed == pytest.approx(pooled, abs=1e-12) and mean < pooled - 0.3


def test_auc_from_summed_histograms_is_within_its_stated_bound() -> None:
    y, proba = _predictions(3, 2000, 2)
    parts = np.array_split(np.arange(len(y)), 4)
    got = metrics_from_counts(sum_counts(classification_counts(y[p], proba[p]) for p in parts))
    exact = roc_auc_score(y, proba[:, 1])
    assert abs(got["auc"] - exact) <= got[AUC_ERROR] + 1e-12 and got[AUC_ERROR] < 0.01


# ---- regression -------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 400),
    cuts=st.lists(st.floats(0.0, 1.0), max_size=8),
    offset=st.floats(-1e3, 1e3),
    spread=st.floats(1e-2, 1e3),
)
def test_summed_regression_sums_give_the_pooled_metrics_for_any_split_of_rows(
    seed: int, n: int, cuts: list[float], offset: float, spread: float
) -> None:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    from uaap.metrics import regression_counts

    rng = np.random.default_rng(seed)
    y = offset + spread * rng.normal(size=n)
    pred = y + spread * rng.normal(0, 0.5, n) + rng.choice([0.0, spread], n)  # imperfect, sometimes biased
    order = np.argsort(y, kind="stable")  # sorted by target, then cut anywhere: each client holds a range
    bounds = sorted({int(c * n) for c in cuts} - {0, n})
    parts = [p for p in np.split(order, bounds) if len(p)]
    center = offset  # the shared train-split mean in a federation: any value near the targets' mean
    got = metrics_from_counts(sum_counts(regression_counts(y[p], pred[p], center) for p in parts))
    assert got["mse"] == pytest.approx(mean_squared_error(y, pred), rel=1e-9)
    assert got["loss"] == got["mse"]
    assert got["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, pred)), rel=1e-9)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, pred), rel=1e-9)
    assert got["r2"] == pytest.approx(r2_score(y, pred), rel=1e-9, abs=1e-9)
    raw = metrics_from_counts(sum_counts(regression_counts(y[p], pred[p]) for p in parts))  # center 0: same SST,
    assert raw["r2"] == pytest.approx(got["r2"], rel=1e-6 * (1 + (offset / spread) ** 2))  # up to cancellation


def test_regression_r2_is_sklearns_for_a_constant_target_and_a_perfect_model() -> None:
    from sklearn.metrics import r2_score

    from uaap.metrics import regression_metrics

    y = np.full(5, 3.0)
    assert regression_metrics(y, y)["r2"] == r2_score(y, y) == 1.0
    assert regression_metrics(y, y + 1)["r2"] == r2_score(y, y + 1) == 0.0
    assert regression_metrics(np.arange(4.0), np.arange(4.0))["mse"] == 0.0


def test_the_mean_of_per_client_r2_is_not_the_pooled_r2() -> None:
    from sklearn.metrics import r2_score

    from uaap.metrics import regression_counts

    rng = np.random.default_rng(0)
    y = rng.normal(size=1000)
    pred = y + rng.normal(0, 0.3, 1000)
    parts = np.array_split(np.argsort(y), 10)  # each client sees a narrow range: its own SST is tiny
    summed = metrics_from_counts(sum_counts(regression_counts(y[p], pred[p]) for p in parts))["r2"]
    mean = np.mean([metrics_from_counts(regression_counts(y[p], pred[p]))["r2"] for p in parts])
    assert summed == pytest.approx(r2_score(y, pred), abs=1e-9) and mean < summed - 0.5


def test_headline_metric_is_accuracy_or_r2() -> None:
    from uaap.metrics import headline

    assert headline({"accuracy": 0.9, "loss": 0.2}) == ("accuracy", 0.9)
    assert headline({"r2": 0.4, "mse": 3.0}) == ("r2", 0.4)
    assert headline({}) == ("accuracy", None)
