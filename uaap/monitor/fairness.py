"""Group fairness of a classifier from summed per-group confusion counts (fairlearn's definitions).

Each party sends, per group of the sensitive column, the K x K confusion matrix of its rows (rows: true class,
columns: predicted class) under the key ``group=<value>`` (:func:`fairness_counts`): counts that add up, never a
ratio. :func:`fairness_from_counts` computes from their sum (:func:`uaap.data.preprocess.merge`) each group's
accuracy, selection rate, true- and false-positive rate for one positive class, and the demographic-parity and
equalized-odds differences and ratios between groups, as fairlearn defines them (``MetricFrame`` with
``accuracy_score``, ``selection_rate``, ``true_positive_rate``, ``false_positive_rate``;
``demographic_parity_difference`` / ``_ratio``, ``equalized_odds_difference`` / ``_ratio`` with their defaults).
Every one is a ratio of whole counts, so the federated value equals fairlearn's on the pooled predictions
exactly (``tests/uaap/test_monitor.py``). A central audit is the same computation with one party.

What a server learns from the counts: per group, its row count, label counts and the model's confusion there.

Mitigation (:func:`mitigate`) is central: fairlearn's ``ThresholdOptimizer`` picks per-group thresholds on the
model's scores from rows where the sensitive column and labels are at hand; the before/after table is measured on
held-out rows. docs/monitoring.md says what a federated mitigation would need.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.data.preprocess import Stats, label_text, merge
from uaap.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from uaap.monitor.runmodel import RunModel

GROUP = "group="  # key prefix of one group's confusion counts
MISSING_GROUP = "(missing)"  # the group of rows whose sensitive value is empty
METRICS = ("accuracy", "selection_rate", "tpr", "fpr")
MAX_GROUPS = 200


def group_values(frame: pd.DataFrame, sensitive: str) -> np.ndarray:
    """The sensitive column's values as group names (text; empty cells form the group ``(missing)``)."""
    if sensitive not in frame.columns:
        raise DataError(
            f"sensitive column {sensitive!r} is not in the data; its columns are: {', '.join(map(str, frame.columns))}"
        )
    series = frame[sensitive]
    return np.asarray([MISSING_GROUP if v is None or v != v else label_text(v) for v in series], dtype=object)


def check_groups(groups: np.ndarray, sensitive: str) -> list[str]:
    """The distinct groups, sorted; refuses a column with one group (nothing to compare) or too many."""
    names = sorted(set(map(str, groups)))
    if len(names) < 2:
        raise DataError(
            f"sensitive column {sensitive!r} has a single group {names[0] if names else ''!r} in {len(groups)} rows; "
            "fairness compares at least two groups: pick a column with two or more values, or add rows of others"
        )
    if len(names) > MAX_GROUPS:
        raise DataError(
            f"sensitive column {sensitive!r} has {len(names)} groups, over {MAX_GROUPS}: it looks like an identifier "
            "or a number; bin it into a few groups first"
        )
    return names


def encode_labels(values: Sequence[Any] | np.ndarray, classes: Sequence[str], what: str) -> np.ndarray:
    """Labels as class indices (int64); a label outside ``classes`` is refused by name."""
    index = {c: i for i, c in enumerate(classes)}
    text = [label_text(v) for v in values]
    unknown = sorted({t for t in text if t not in index})
    if unknown:
        raise DataError(f"{what} holds {unknown[:5]}, which the model does not know; its classes: {', '.join(classes)}")
    return np.fromiter((index[t] for t in text), dtype=np.int64, count=len(text))


def fairness_counts(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, n_classes: int) -> Stats:
    """One party's statistics: per group, the K x K confusion counts (row-major; rows true, columns predicted)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    groups = np.asarray(groups, dtype=object)
    out: Stats = {}
    for name in sorted(set(map(str, groups))):
        mask = groups == name
        cells = y_true[mask] * n_classes + y_pred[mask]
        out[f"{GROUP}{name}"] = np.bincount(cells, minlength=n_classes * n_classes).astype(np.float64)
    return out


def check_fairness_counts(answer: Any, n_classes: int) -> Stats:
    """A party's per-group counts, or a DataError saying what is wrong (names, lengths, whole non-negative counts)."""
    if not isinstance(answer, Mapping) or not 0 < len(answer) <= MAX_GROUPS:
        raise DataError(f"fairness counts must map 1 to {MAX_GROUPS} groups to confusion counts")
    out: Stats = {}
    for key, value in answer.items():
        if not isinstance(key, str) or not key.startswith(GROUP):
            raise DataError(f"fairness counts carry {str(key)[:40]!r}; every key must start with {GROUP!r}")
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"fairness counts of {key!r} are not numbers") from exc
        if array.shape != (n_classes * n_classes,):
            raise DataError(f"fairness counts of {key!r} must be {n_classes**2} numbers (K x K, K={n_classes})")
        if not np.isfinite(array).all() or (array < 0).any() or (array != np.round(array)).any():
            raise DataError(f"fairness counts of {key!r} must be whole non-negative counts")
        out[key] = array
    return out


def _rates(confusion: np.ndarray, positive: int) -> dict[str, float]:
    n = float(confusion.sum())
    tp = float(confusion[positive, positive])
    fn = float(confusion[positive].sum()) - tp
    fp = float(confusion[:, positive].sum()) - tp
    tn = n - tp - fn - fp
    return {
        "count": n,
        "accuracy": float(np.trace(confusion)) / n if n else 0.0,
        "selection_rate": (tp + fp) / n if n else 0.0,
        "tpr": tp / (tp + fn) if tp + fn else 0.0,  # scikit-learn's zero_division default: 0
        "fpr": fp / (fp + tn) if fp + tn else 0.0,
    }


def _ratio(values: Sequence[float]) -> float:
    low, high = min(values), max(values)
    return low / high if high else float("nan")


def fairness_from_counts(stats: Stats, classes: Sequence[str], positive: str) -> dict[str, Any]:
    """Per-group and overall rates and the between-group differences and ratios, from summed counts."""
    if positive not in classes:
        raise DataError(f"positive class {positive!r} is not one of the model's classes: {', '.join(classes)}")
    k, p = len(classes), list(classes).index(positive)
    groups = sorted(key.removeprefix(GROUP) for key in stats if key.startswith(GROUP))
    matrices = {g: np.asarray(stats[f"{GROUP}{g}"], dtype=np.float64).reshape(k, k) for g in groups}
    rows = {g: _rates(m, p) for g, m in matrices.items()}
    overall = _rates(sum(matrices.values(), np.zeros((k, k))), p)
    sr = [rows[g]["selection_rate"] for g in groups]
    tpr = [rows[g]["tpr"] for g in groups]
    fpr = [rows[g]["fpr"] for g in groups]
    return {
        "classes": list(classes),
        "positive": positive,
        "groups": rows,
        "overall": overall,
        "demographic_parity_difference": max(sr) - min(sr),
        "demographic_parity_ratio": _ratio(sr),
        "equalized_odds_difference": max(max(tpr) - min(tpr), max(fpr) - min(fpr)),
        "equalized_odds_ratio": min(_ratio(tpr), _ratio(fpr)),
        "counts": {g: matrices[g].astype(int).tolist() for g in groups},
    }


def choose_positive(classes: Sequence[str], positive: str = "") -> str:
    """The positive class: the one given, else the second of two (``yes`` of no/yes, ``1`` of 0/1)."""
    if positive:
        text = label_text(positive)
        if text not in classes:
            raise DataError(f"--positive {positive!r} is not one of the model's classes: {', '.join(classes)}")
        return text
    if len(classes) != 2:
        raise DataError(
            f"the model has {len(classes)} classes ({', '.join(classes[:10])}); say which one is the favourable "
            "outcome with --positive CLASS (selection rate and TPR/FPR are of that class against the rest)"
        )
    return classes[1]


def open_counts(record: Any, hctx: Any, layout: Mapping[str, Sequence[int]], n_classes: int) -> Stats:
    """Per-group counts summed as one CKKS ciphertext, decrypted by a key holder (``hctx``: a secret context) and
    rounded to the whole counts they are (the sum carries noise of about 1e-9; more than 0.01 is refused)."""
    from uaap.models.summed import decrypt_totals

    values = decrypt_totals(record, hctx)
    if [tuple(v.shape) for v in values] != [tuple(s) for s in layout.values()]:
        raise DataError(f"the encrypted counts hold arrays {[v.shape for v in values]}, not {list(layout.values())}")
    out: Stats = {}
    for name, value in zip(layout, values, strict=True):
        whole = np.round(value)
        if value.size and float(np.abs(value - whole).max()) > 0.01:
            raise DataError(f"the decrypted counts of {name!r} are not whole (the ciphertext sum lost precision)")
        out[name] = whole + 0.0  # no -0.0
    return check_fairness_counts(out, n_classes)


@dataclass(frozen=True)
class Audit:
    """Labels, predictions and groups of the audited rows (class indices), with the model's classes."""

    y_true: np.ndarray
    y_pred: np.ndarray
    groups: np.ndarray
    classes: list[str]
    scores: np.ndarray  # class probabilities (mitigation thresholds them)


def audit_rows(model: RunModel, frame: pd.DataFrame, sensitive: str) -> Audit:
    """Predict ``frame``'s rows and read their labels and groups; refuses bad input before anything is written."""
    if model.task != "classification":
        raise DataError(
            f"run {model.run.run_id!r} is a {model.task} model; group fairness (selection rate, TPR, FPR) needs a "
            "classifier"
        )
    groups = group_values(frame, sensitive)
    check_groups(groups, sensitive)
    if model.target not in frame.columns:
        raise DataError(
            f"the data lacks the target column {model.target!r} the run was trained on (fairness compares "
            f"predictions with true labels); its columns are: {', '.join(map(str, frame.columns))}"
        )
    if frame[model.target].isna().any():
        raise DataError(f"target column {model.target!r} has {int(frame[model.target].isna().sum())} empty values")
    y_true = encode_labels(frame[model.target].to_numpy(), model.classes, f"target column {model.target!r}")
    scores = model.predict_proba(frame)
    return Audit(y_true, scores.argmax(axis=1), groups, model.classes, scores)


def report(audit: Audit, positive: str) -> dict[str, Any]:
    """The fairness report of one table (a federation with one party)."""
    stats = fairness_counts(audit.y_true, audit.y_pred, audit.groups, len(audit.classes))
    return fairness_from_counts(stats, audit.classes, positive)


def federated_report(parts: Sequence[Stats], classes: Sequence[str], positive: str) -> dict[str, Any]:
    """The fairness report of parties' checked counts, summed (what a federation's server computes)."""
    checked = [check_fairness_counts(part, len(classes)) for part in parts]
    return fairness_from_counts(merge(checked), classes, positive)


def mitigate(audit: Audit, positive: str, *, constraint: str = "demographic_parity", seed: int = 0) -> dict[str, Any]:
    """fairlearn's ThresholdOptimizer on the model's scores: fitted on half the rows, the before/after reports
    measured on the other half (binary classifiers only)."""
    from fairlearn.postprocessing import ThresholdOptimizer

    if len(audit.classes) != 2:
        raise DataError(f"mitigation thresholds a binary classifier; this model has {len(audit.classes)} classes")
    p = audit.classes.index(positive)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(audit.y_true))
    fit_rows, test_rows = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
    for rows, what in ((fit_rows, "fitting"), (test_rows, "held-out")):
        check_groups(audit.groups[rows], f"the {what} half of the sensitive column")
    y = (audit.y_true == p).astype(np.int64)
    scores = _scores_estimator(audit.scores[:, p])
    optimizer = ThresholdOptimizer(
        estimator=scores, constraints=constraint, prefit=True, predict_method="predict_proba"
    )
    # The rows travel as their positions: the scores are computed once, and fairlearn never sees raw columns.
    optimizer.fit(fit_rows[:, None], y[fit_rows], sensitive_features=audit.groups[fit_rows])
    after = np.asarray(
        optimizer.predict(test_rows[:, None], sensitive_features=audit.groups[test_rows], random_state=seed)
    )
    after_labels = np.where(after == 1, p, 1 - p)
    k = len(audit.classes)
    before_stats = fairness_counts(audit.y_true[test_rows], audit.y_pred[test_rows], audit.groups[test_rows], k)
    after_stats = fairness_counts(audit.y_true[test_rows], after_labels, audit.groups[test_rows], k)
    return {
        "method": f"fairlearn ThresholdOptimizer (constraints={constraint}, objective=accuracy_score)",
        "constraint": constraint,
        "fit_rows": len(fit_rows),
        "held_out_rows": len(test_rows),
        "before": fairness_from_counts(before_stats, audit.classes, positive),
        "after": fairness_from_counts(after_stats, audit.classes, positive),
    }


def _scores_estimator(positive_scores: np.ndarray) -> Any:
    """A fitted "estimator" for ThresholdOptimizer: row positions in, the model's precomputed scores out."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Scores(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
        def __init__(self, scores: np.ndarray | None = None) -> None:
            self.scores = scores

        def fit(self, X: Any, y: Any = None) -> Scores:
            self.fitted_ = True  # scikit-learn's check_is_fitted looks for a trailing underscore
            self.classes_ = np.array([0, 1])
            return self

        def predict_proba(self, X: Any) -> np.ndarray:
            rows = np.asarray(X, dtype=np.int64).reshape(len(X), -1)[:, 0]
            s = np.asarray(self.scores)[rows]
            return np.column_stack([1.0 - s, s])

        def predict(self, X: Any) -> np.ndarray:
            return (self.predict_proba(X)[:, 1] >= 0.5).astype(np.int64)

    return Scores(positive_scores).fit(None)


def table(result: Mapping[str, Any]) -> list[list[str]]:
    """The report as rows of text: one per group and one overall, then the differences and ratios."""
    rows = [["group", "count", *METRICS]]
    for name, r in [*result["groups"].items(), ("overall", result["overall"])]:
        rows.append([name, f"{int(r['count'])}", *(f"{r[m]:.4f}" for m in METRICS)])
    return rows


SUMMARY = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equalized_odds_difference",
    "equalized_odds_ratio",
)


def plot(result: Mapping[str, Any], path: Path, title: str, mitigated: Mapping[str, Any] | None = None) -> Path:
    """Bars of each group's accuracy, selection rate, TPR and FPR (and, mitigated, the after values hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(result["groups"])
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(METRICS) * max(1, len(groups)) / 3), 4.8))
    width = 0.8 / len(groups)
    x = np.arange(len(METRICS))
    colours = plt.get_cmap("tab10")
    for i, g in enumerate(groups):
        values = [result["groups"][g][m] for m in METRICS]
        ax.bar(x + i * width, values, width, label=f"{g} (n={int(result['groups'][g]['count'])})", color=colours(i))
        if mitigated is not None and g in mitigated["groups"]:
            after = [mitigated["groups"][g][m] for m in METRICS]
            ax.scatter(x + i * width, after, marker="_", s=300, color="black", zorder=3,
                       label="after ThresholdOptimizer" if i == 0 else None)  # fmt: skip
    ax.set_xticks(x + width * (len(groups) - 1) / 2, ["accuracy", "selection rate", "TPR", "FPR"])
    ax.set_ylim(0, 1.3)  # room for the legend and the summary above the bars
    ax.set_ylabel(f"rate (positive class {result['positive']!r})")
    ax.set_title(title, fontsize=10)
    text = (
        f"DP difference {result['demographic_parity_difference']:.3f}, ratio {result['demographic_parity_ratio']:.3f}"
        f"\nEO difference {result['equalized_odds_difference']:.3f}, ratio {result['equalized_odds_ratio']:.3f}"
    )
    if mitigated is not None:
        text = (
            "before: "
            + text.replace("\n", "\n        ")
            + (
                f"\nafter:  DP difference {mitigated['demographic_parity_difference']:.3f}, ratio "
                f"{mitigated['demographic_parity_ratio']:.3f}\n        EO difference "
                f"{mitigated['equalized_odds_difference']:.3f}, ratio {mitigated['equalized_odds_ratio']:.3f}"
            )
        )
    ax.text(0.01, 0.98, text, transform=ax.transAxes, va="top", fontsize=8, family="monospace")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plain(value: Any) -> Any:
    """``value`` as strict JSON: numpy numbers as Python's, NaN and infinities (an undefined ratio) as null."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(data: Mapping[str, Any], path: Path) -> Path:
    """Write ``data`` as strict JSON atomically (a failed command leaves no half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(plain(data), indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
