"""Metrics from summed statistics: the same numbers for one table, for a federation, and pooled.

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

Regression sends ``num-examples`` (n), ``y-sum``, ``y2-sum`` (sums of the true targets and their squares,
shifted by the train split's target mean: :func:`regression_counts`), ``sq-error-sum`` (SSE) and
``abs-error-sum`` (SAE), all in the target's own units; MSE = SSE / n, RMSE, MAE =
SAE / n and R2 = 1 - SSE / SST with SST = y2-sum - y-sum^2 / n are computed once from the totals, so they equal
the pooled values up to float64 rounding (scikit-learn's ``r2_score`` is the reference in the tests).
:func:`metrics_from_counts` tells the two kinds apart by their keys.

What a server learns from these sums: each client's validation confusion matrix, hence its validation label
counts (regression: its validation rows' target mean and spread, and its model's error); the README's threat
model says so.
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
    MAE,
    MSE,
    NUM_EXAMPLES,
    PRECISION_MACRO,
    R2,
    RECALL_MACRO,
    RMSE,
    SAE,
    SCORE_HIST_NEG,
    SCORE_HIST_POS,
    SSE,
    Y2_SUM,
    Y_SUM,
)

# final test metrics a search can optimise: classification (accuracy, f1_macro, loss), regression (r2, rmse, mae, mse)
SEARCHABLE = (ACCURACY, F1_MACRO, LOSS, R2, RMSE, MAE, MSE)
HIGHER_IS_BETTER = (ACCURACY, F1_MACRO, R2)
AUC_BINS = 1000
AUC_ERROR = "auc-error-bound"
EPS = 1e-12
REGRESSION_KEYS = (NUM_EXAMPLES, Y_SUM, Y2_SUM, SSE, SAE)
# The number a person looks at first, per task (tables, plots, `uaap compare`): higher is better for both.
HEADLINE = {"classification": ACCURACY, "regression": R2}


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


def regression_counts(y: np.ndarray, pred: np.ndarray, center: float = 0.0) -> dict[str, Any]:
    """The summable statistics of predictions ``pred`` for true targets ``y`` (both in the target's units).

    ``y-sum`` and ``y2-sum`` are taken of ``y - center``: SST = y2-sum - y-sum^2 / n is the same for any
    ``center``, and one near the targets' mean (the train split's, which the federation shares) spares SST the
    float64 cancellation of raw sums when the mean is large against the spread. Every summand of a total must
    use the same ``center``.
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    if y.shape != pred.shape:
        raise ValueError(f"{len(pred)} predictions for {len(y)} targets")
    err = pred - y
    shifted = y - center
    return {
        NUM_EXAMPLES: len(y),
        Y_SUM: float(shifted.sum()),
        Y2_SUM: float(np.square(shifted).sum()),
        SSE: float(np.square(err).sum()),
        SAE: float(np.abs(err).sum()),
    }


def regression_from_counts(counts: Mapping[str, Any]) -> dict[str, float]:
    """Loss (= MSE), MSE, RMSE, MAE and R2 from summed :func:`regression_counts`.

    R2 is 1 - SSE / SST; when every target is the same (SST = 0) it is 1.0 for a perfect model and 0.0 otherwise,
    as scikit-learn's ``r2_score`` reports it.
    """
    n = float(counts[NUM_EXAMPLES])
    if n <= 0:
        raise ValueError(f"{NUM_EXAMPLES}={n:g}; expected at least one row")
    sse, sae = float(counts[SSE]), float(counts[SAE])
    y_sum, y2_sum = float(counts[Y_SUM]), float(counts[Y2_SUM])
    sst = max(y2_sum - y_sum * y_sum / n, 0.0)
    mse = sse / n
    tiny = EPS * max(y2_sum, 1.0)  # float64 rounding of a constant target's SST
    r2 = 1.0 - sse / sst if sst > tiny else (1.0 if sse <= tiny else 0.0)
    return {LOSS: mse, MSE: mse, RMSE: float(np.sqrt(mse)), MAE: sae / n, R2: float(r2)}


def regression_metrics(y: np.ndarray, pred: np.ndarray, center: float = 0.0) -> dict[str, float]:
    """MSE, RMSE, MAE and R2 of one table, through the same sums a federation adds up."""
    return regression_from_counts(regression_counts(y, pred, center))


def headline(metrics: Mapping[str, float]) -> tuple[str, float | None]:
    """The metric a person reads first in ``metrics``: accuracy (classification) or R2 (regression)."""
    name = R2 if R2 in metrics and ACCURACY not in metrics else ACCURACY
    value = metrics.get(name)
    return name, None if value is None else float(value)


def sum_counts(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Element-wise sum of several :func:`classification_counts` or :func:`regression_counts` (keys in every part)."""
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
    """Loss, accuracy, macro/weighted F1, macro precision and recall, and (two classes) ROC AUC from the sums.

    Regression sums (no confusion matrix, an ``sq-error-sum``) give :func:`regression_from_counts` instead.
    """
    if CONFUSION not in counts and SSE in counts:
        return regression_from_counts(counts)
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
