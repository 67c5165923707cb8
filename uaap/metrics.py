"""Classification metrics from summed statistics: the same numbers for one table, for a federation, and pooled.

Averaging per-client ratios is wrong for most metrics: a client whose validation split holds two of ten
classes scores the other eight with F1 0, and the mean of such per-client macro-F1s says nothing about the
model (a 10-client non-IID digits run reported accuracy 0.965 beside macro-F1 0.695). So every client sends
sums that add up across clients, and the metrics are computed once from the total:

* ``confusion``: the K x K confusion matrix (rows: true class, columns: predicted), row-major, as counts;
* ``loss-sum``: the summed cross-entropy; ``num-examples``;
* for two classes, ``score-hist-pos`` / ``score-hist-neg``: histograms of P(class 1) over :data:`AUC_BINS` equal
  bins of [0, 1] for the positive and negative rows.

Accuracy, precision, recall and F1 (macro and weighted) are exact functions of the summed confusion matrix, so
the federated value equals the pooled one exactly. ROC AUC from the summed histograms counts a positive and a
negative in the same bin as half a concordant pair; :func:`metrics_from_counts` reports that bound as
``auc-error-bound`` (at most 0.5 x the share of positive-negative pairs that share a bin). Central evaluation
uses the same functions (:func:`uaap.training.classification_metrics`), so central and federated numbers are
comparable.

What a server learns from these sums: each client's validation confusion matrix, hence its validation label
counts; the README's threat model says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from uaap.protocol import (
    ACCURACY,
    AUC,
    CONFUSION,
    F1_MACRO,
    F1_WEIGHTED,
    LOSS,
    LOSS_SUM,
    NUM_EXAMPLES,
    PRECISION_MACRO,
    RECALL_MACRO,
    SCORE_HIST_NEG,
    SCORE_HIST_POS,
)

AUC_BINS = 1000
AUC_ERROR = "auc-error-bound"
EPS = 1e-12


def classification_counts(y: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """The summable statistics of predictions ``proba`` (rows of class probabilities) for labels ``y``."""
    y = np.asarray(y, dtype=np.int64)
    k = int(proba.shape[1])
    pred = proba.argmax(axis=1)
    confusion = np.bincount(y * k + pred, minlength=k * k)
    counts: dict[str, Any] = {
        NUM_EXAMPLES: len(y),
        LOSS_SUM: float(-np.log(proba[np.arange(len(y)), y] + EPS).sum()),
        CONFUSION: [int(v) for v in confusion],
    }
    if k == 2:
        score = np.clip(proba[:, 1], 0.0, 1.0)
        edges = np.linspace(0.0, 1.0, AUC_BINS + 1)
        counts[SCORE_HIST_POS] = [int(v) for v in np.histogram(score[y == 1], bins=edges)[0]]
        counts[SCORE_HIST_NEG] = [int(v) for v in np.histogram(score[y == 0], bins=edges)[0]]
    return counts


def sum_counts(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Element-wise sum of several :func:`classification_counts` (keys present in every part)."""
    parts = list(parts)
    if not parts:
        raise ValueError("no counts to sum")
    keys = set.intersection(*(set(p) for p in parts))
    out: dict[str, Any] = {}
    for key in keys:
        values = [p[key] for p in parts]
        if isinstance(values[0], list | tuple | np.ndarray):
            out[key] = [int(v) for v in np.sum([np.asarray(v, dtype=np.int64) for v in values], axis=0)]
        else:
            out[key] = sum(values)
    return out


def metrics_from_counts(counts: Mapping[str, Any]) -> dict[str, float]:
    """Loss, accuracy, macro/weighted F1, macro precision and recall, and (two classes) ROC AUC from the sums."""
    n = float(counts[NUM_EXAMPLES])
    confusion = np.asarray(counts[CONFUSION], dtype=np.float64)
    k = int(round(np.sqrt(confusion.size)))
    if k * k != confusion.size or n <= 0:
        raise ValueError(f"confusion has {confusion.size} entries for {n:g} examples; expected a square, non-empty one")
    matrix = confusion.reshape(k, k)
    tp = np.diag(matrix)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(k), where=(support + predicted) > 0)
    out = {
        LOSS: float(counts[LOSS_SUM]) / n,
        ACCURACY: float(tp.sum() / n),
        F1_MACRO: float(f1.mean()),  # every class counts, as scikit-learn's labels=range(K), zero_division=0
        F1_WEIGHTED: float((f1 * support).sum() / support.sum()),
        PRECISION_MACRO: float(precision.mean()),
        RECALL_MACRO: float(recall.mean()),
    }
    if SCORE_HIST_POS in counts and SCORE_HIST_NEG in counts:
        pos = np.asarray(counts[SCORE_HIST_POS], dtype=np.float64)
        neg = np.asarray(counts[SCORE_HIST_NEG], dtype=np.float64)
        pairs = pos.sum() * neg.sum()
        if pairs > 0:
            below = np.concatenate(([0.0], np.cumsum(neg)[:-1]))  # negatives in lower bins
            out[AUC] = float(((pos * below).sum() + 0.5 * (pos * neg).sum()) / pairs)
            out[AUC_ERROR] = float(0.5 * (pos * neg).sum() / pairs)
    return out
