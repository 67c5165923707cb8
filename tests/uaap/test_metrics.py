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
