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

Anomaly detection (an autoencoder's reconstruction error per row, :func:`anomaly_counts`) sends ``num-examples``,
``error-sum`` and two histograms of the errors over :data:`ERROR_BINS` fixed bins of log10(error) (``error-hist-normal``
for rows labelled normal, ``error-hist-anomaly`` for anomalies). :func:`anomaly_from_counts` takes the threshold
from the summed normal histogram: the upper edge of the bin holding the ``q`` quantile (the ceil(q n)-th smallest
normal error), so the threshold is a bin edge, lies within one bin above the pooled quantile, and the flags
(error > threshold) of every row follow from the histograms exactly: precision, recall, F1 and accuracy of the flag
equal the pooled ones, ROC AUC of the error has the same half-bin bound as above.

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
    ERROR_HIST_ANOMALY,
    ERROR_HIST_NORMAL,
    ERROR_SUM,
    F1,
    F1_MACRO,
    F1_WEIGHTED,
    FORECAST_N,
    LOSS,
    LOSS_SUM,
    MAE,
    MSE,
    NUM_EXAMPLES,
    PRECISION,
    PRECISION_MACRO,
    R2,
    RECALL,
    RECALL_MACRO,
    RMSE,
    SAE,
    SCORE_HIST_NEG,
    SCORE_HIST_POS,
    SSE,
    THRESHOLD,
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
HEADLINE = {"classification": ACCURACY, "regression": R2, "anomaly": AUC}
# Anomaly scores (reconstruction errors) are binned over log10(error) in [ERROR_LOG_LOW, ERROR_LOG_HIGH]: 2000 bins of
# 0.005 decades (1.2% apart); errors outside land in the first or last bin.
ERROR_BINS = 2000
ERROR_LOG_LOW, ERROR_LOG_HIGH = -6.0, 4.0
DEFAULT_ANOMALY_QUANTILE = 0.95


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


def error_bins(errors: np.ndarray) -> np.ndarray:
    """The fixed bin (0..ERROR_BINS-1) of each reconstruction error: equal widths of log10(error)."""
    logs = np.log10(np.maximum(np.asarray(errors, dtype=np.float64), 1e-300))
    width = (ERROR_LOG_HIGH - ERROR_LOG_LOW) / ERROR_BINS
    return np.clip(np.floor((logs - ERROR_LOG_LOW) / width), 0, ERROR_BINS - 1).astype(np.int64)


def bin_upper_edge(index: int) -> float:
    """The error at the top of bin ``index`` (infinite for the last bin, which holds every larger error)."""
    if index >= ERROR_BINS - 1:
        return float("inf")
    return float(10.0 ** (ERROR_LOG_LOW + (index + 1) * (ERROR_LOG_HIGH - ERROR_LOG_LOW) / ERROR_BINS))


def anomaly_counts(y: np.ndarray, errors: np.ndarray) -> dict[str, Any]:
    """The summable statistics of reconstruction ``errors`` for anomaly labels ``y`` (1: anomaly, 0: normal)."""
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    errors = np.asarray(errors, dtype=np.float64).reshape(-1)
    if y.shape != errors.shape:
        raise ValueError(f"{len(errors)} reconstruction errors for {len(y)} labels")
    bins = error_bins(errors)
    return {
        NUM_EXAMPLES: len(y),
        ERROR_SUM: float(errors.sum()),
        ERROR_HIST_NORMAL: [int(v) for v in np.bincount(bins[y == 0], minlength=ERROR_BINS)],
        ERROR_HIST_ANOMALY: [int(v) for v in np.bincount(bins[y == 1], minlength=ERROR_BINS)],
    }


def threshold_bin(normal_hist: np.ndarray, quantile: float) -> int:
    """The bin holding the ``quantile`` of the normal rows' errors: that of the ceil(q n)-th smallest error."""
    n = int(np.asarray(normal_hist).sum())
    if n == 0:
        raise ValueError(
            "no validation row is labelled normal (0): the anomaly threshold is a quantile of normal rows' "
            "reconstruction errors; give the validation split normal rows"
        )
    rank = max(1, int(np.ceil(quantile * n - 1e-9)))
    return int(np.searchsorted(np.cumsum(normal_hist), rank, side="left"))


def anomaly_from_counts(
    counts: Mapping[str, Any], quantile: float = DEFAULT_ANOMALY_QUANTILE, threshold: float | None = None
) -> dict[str, float]:
    """Threshold, loss (mean reconstruction error), accuracy, precision, recall, F1 and ROC AUC of the anomaly flag.

    The threshold is ``threshold`` when given (a bin edge chosen on validation data, e.g. a saved model's), else
    chosen here from the normal rows' summed histogram at ``quantile``. A row is flagged when its error exceeds it.
    """
    n = float(counts[NUM_EXAMPLES])
    normal = np.asarray(counts[ERROR_HIST_NORMAL], dtype=np.float64)
    anomaly = np.asarray(counts[ERROR_HIST_ANOMALY], dtype=np.float64)
    if n <= 0 or len(normal) != ERROR_BINS or len(anomaly) != ERROR_BINS:
        raise ValueError(f"anomaly counts of {n:g} rows with {len(normal)}/{len(anomaly)} bins; expected {ERROR_BINS}")
    top = threshold_bin(normal, quantile) if threshold is None else threshold_top_bin(threshold)
    tp, fp = anomaly[top + 1 :].sum(), normal[top + 1 :].sum()
    fn, tn = anomaly.sum() - tp, normal.sum() - fp
    out = {
        THRESHOLD: bin_upper_edge(top) if threshold is None else float(threshold),
        LOSS: float(counts[ERROR_SUM]) / n,
        ACCURACY: float((tp + tn) / n),
        PRECISION: float(tp / (tp + fp)) if tp + fp > 0 else 0.0,
        RECALL: float(tp / (tp + fn)) if tp + fn > 0 else 0.0,
        F1: float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn > 0 else 0.0,
    }
    auc = histogram_auc(anomaly, normal)
    if auc is not None:
        out[AUC], out[AUC_ERROR] = auc
    return out


def threshold_top_bin(threshold: float) -> int:
    """The last bin whose upper edge is at or below ``threshold``: rows in higher bins exceed it."""
    edges = np.array([bin_upper_edge(i) for i in range(ERROR_BINS)])
    return int(np.searchsorted(edges, threshold * (1 + 1e-9), side="right")) - 1


def anomaly_flags(errors: np.ndarray, threshold: float) -> np.ndarray:
    """1 for each row whose score lies in a bin above ``threshold`` (the flags :func:`anomaly_from_counts` counts)."""
    return (error_bins(errors) > threshold_top_bin(threshold)).astype(np.int64)


def histogram_auc(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float] | None:
    """ROC AUC from score histograms of the positive and negative rows, and its bound (None without both kinds)."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    pairs = pos.sum() * neg.sum()
    if pairs <= 0:
        return None
    below = np.concatenate(([0.0], np.cumsum(neg)[:-1]))  # negatives in lower bins
    return float(((pos * below).sum() + 0.5 * (pos * neg).sum()) / pairs), float(0.5 * (pos * neg).sum() / pairs)


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


def metrics_from_counts(
    counts: Mapping[str, Any], *, anomaly_quantile: float = DEFAULT_ANOMALY_QUANTILE, threshold: float | None = None
) -> dict[str, float]:
    """Loss, accuracy, macro/weighted F1, macro precision and recall, and (two classes) ROC AUC from the sums.

    Regression sums (no confusion matrix, an ``sq-error-sum``) give :func:`regression_from_counts` instead (beside a
    forecasting run's horizon sums, also its ``forecast-mae``, ``-rmse``, ``-smape`` and ``-mase``:
    :mod:`uaap.forecast.metrics`), anomaly sums (error histograms) :func:`anomaly_from_counts` with
    ``anomaly_quantile`` or a given ``threshold``.
    """
    if CONFUSION not in counts and SSE in counts:
        out = regression_from_counts(counts)
        if FORECAST_N in counts:  # a forecasting run's horizon forecast beside its one-step windows
            from uaap.forecast.metrics import PREFIX
            from uaap.forecast.metrics import metrics_from_counts as forecast_metrics

            out |= {PREFIX + k: v for k, v in forecast_metrics({k: float(v) for k, v in counts.items()}).items()}
        return out
    if ERROR_HIST_NORMAL in counts:
        return anomaly_from_counts(counts, anomaly_quantile, threshold)
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
        auc = histogram_auc(counts[SCORE_HIST_POS], counts[SCORE_HIST_NEG])
        if auc is not None:
            out[AUC], out[AUC_ERROR] = auc
    return out
