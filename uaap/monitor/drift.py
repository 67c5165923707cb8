"""Drift between a run's training rows and new rows, from sketches that add up across parties.

**Sketches.** The reference is what the preprocessing pipeline already sums (:mod:`uaap.data.preprocess`): for
each numeric feature (a numeric column, or a date's parts) its count, sum, sum of squares, minimum and maximum
(the ``moments`` stage) and a histogram of :data:`BINS` fixed bins over the reference's [min, max] (the
``quantiles`` stage, asked with the merged range); for each categorical column its category counts. The
model's predictions are one more column (class labels: categorical; values: numeric). New rows give the same
statistics on the *reference's* bins, plus the count and sum of the values below and above its range
(:func:`current_statistics`). Every sketch is a sum over rows, so parties' sketches merge with
:func:`uaap.data.preprocess.merge` and the federated report equals the pooled one on the same bins
(``tests/uaap/test_monitor.py``); a central report is the same computation with one party.

**Statistics**, each from the two sketches of a feature (scipy where it has the test):

* PSI over the reference's deciles (fine bins grouped where the reference's cumulative share crosses k/10; the
  first and last groups open-ended, so they also take the new values below and above the reference's range;
  shares floored at :data:`PSI_FLOOR`);
* numeric: the two-sample Kolmogorov-Smirnov statistic on the bin edges (the largest gap between the two
  cumulative shares, at most the exact statistic and within one bin's mass of it) with its asymptotic p-value
  from ``scipy.stats.kstwo`` (what ``scipy.stats.ks_2samp(method="asymp")`` uses), and the Wasserstein distance
  (``scipy.stats.wasserstein_distance`` of the bin centres weighted by their counts; out-of-range mass at its
  mean), also in units of the reference's standard deviation;
* categorical: the chi-square test of the 2 x K table of counts (``scipy.stats.chi2_contingency``) and
  Cramér's V (``scipy.stats.contingency.association``).

**Flags** (:class:`Thresholds`): a feature drifts when its test is significant (p below ``pvalue``) *and* an
effect size crosses its threshold (PSI, KS statistic or normalised Wasserstein; PSI or Cramér's V): with
thousands of rows a test alone flags shifts too small to matter, an effect size alone flags noise in small
samples.

What a server learns from these sketches: per feature the counts, sums, extremes and histograms the
preprocessing fit already discloses, computed on the new rows as well, and the histogram of the model's outputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.data.preprocess import ColumnPlan, Preprocessor, Stats, label_text, local_statistics, merge
from uaap.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

BINS = 1024  # fixed histogram bins over the reference's range
PSI_GROUPS = 10  # PSI over the reference's deciles
PSI_FLOOR = 1e-4  # a share of zero would make PSI infinite
PREDICTION = "__prediction__"  # the model's output, monitored like a column


@dataclass(frozen=True)
class Thresholds:
    """When a feature counts as drifted (see the module's docstring); the defaults are the usual rules of thumb."""

    psi: float = 0.2  # "significant shift" in credit-risk practice (0.1 - 0.2: moderate)
    ks: float = 0.1  # largest gap between the cumulative shares
    wasserstein: float = 0.1  # in reference standard deviations
    cramers_v: float = 0.1  # a small association (Cohen)
    pvalue: float = 0.01  # the test must be significant at this level


# ---- the sketches -----------------------------------------------------------------------------------------------


def monitored_plan(pre: Preprocessor, task: str = "") -> list[ColumnPlan]:
    """The columns drift is measured on: the preprocessor's numeric, date and categorical columns (free text is
    not), and the model's predictions when ``task`` names the model's task."""
    plans = [ColumnPlan(p.name, p.kind) for p in pre.plan_ if p.kind in ("numeric", "datetime", "categorical")]
    if task:
        plans.append(ColumnPlan(PREDICTION, "categorical" if task == "classification" else "numeric"))
    return plans


def _request(
    plans: Sequence[ColumnPlan], stage: str, ranges: Mapping[str, Sequence[float]] | None = None
) -> dict[str, Any]:
    """A preprocessing stage's request over ``plans`` (counts always kept: one-hot encoding, :data:`BINS` bins)."""
    from uaap.data.preprocess import PreprocessOptions, _options_to

    request: dict[str, Any] = {
        "stage": stage,
        "options": _options_to(PreprocessOptions(encoding="onehot", bins=BINS)),
        "plan": [asdict(p) for p in plans],
        "columns": [p.name for p in plans],
        "target": None,
    }
    if ranges is not None:
        request["ranges"] = {k: list(v) for k, v in ranges.items()}
    return request


def with_predictions(frame: pd.DataFrame, predictions: np.ndarray | None) -> pd.DataFrame:
    """``frame`` with the model's predictions as the column :data:`PREDICTION` (class labels as text)."""
    if predictions is None:
        return frame
    values = np.asarray(predictions)
    column = [label_text(v) for v in values] if values.dtype == object else values.astype(np.float64)
    return frame.assign(**{PREDICTION: column})


def reference_ranges(frame: pd.DataFrame, plans: Sequence[ColumnPlan]) -> Stats:
    """Stage 1 of a reference sketch at one party: counts, sums, extremes and category counts of its rows."""
    out = local_statistics(frame, _request(plans, "moments"))
    out[":rows"] = np.array([float(len(frame))])
    return out


def ranges_of(stage1: Stats, plans: Sequence[ColumnPlan]) -> dict[str, tuple[float, float]]:
    """Each numeric feature's [min, max] from the merged stage-1 statistics (the bins' range)."""
    out = {}
    for plan in plans:
        for name in plan.numeric_names():
            low, high = float(stage1[f"{name}:min"][0]), float(stage1[f"{name}:max"][0])
            if not (math.isfinite(low) and math.isfinite(high)):
                raise DataError(f"feature {name!r} has no value in any reference row; it cannot be monitored")
            out[name] = (low, high)
    return out


def reference_histograms(
    frame: pd.DataFrame, plans: Sequence[ColumnPlan], ranges: Mapping[str, tuple[float, float]]
) -> Stats:
    """Stage 2 of a reference sketch at one party: each numeric feature's histogram over the merged range."""
    return local_statistics(frame, _request(plans, "quantiles", ranges))


def reference_sketch(parts: Sequence[pd.DataFrame], plans: Sequence[ColumnPlan]) -> dict[str, Any]:
    """The reference of parties whose tables are at hand (one table: a central reference): two rounds of sums."""
    stage1 = merge(check_sketch(reference_ranges(frame, plans), plans) for frame in parts)
    ranges = ranges_of(stage1, plans)
    stage2 = merge(check_sketch(reference_histograms(frame, plans, ranges), plans, ranges) for frame in parts)
    return {"plan": [asdict(p) for p in plans], "ranges": ranges, "stats": {**stage1, **stage2}}


def current_statistics(
    frame: pd.DataFrame, plans: Sequence[ColumnPlan], ranges: Mapping[str, tuple[float, float]]
) -> Stats:
    """One party's sketch of new rows on the reference's bins, with the mass outside its range."""
    from uaap.data.preprocess import _numeric_parts

    out = reference_ranges(frame, plans)
    out.update(reference_histograms(frame, plans, ranges))
    for name, x in _numeric_parts(frame, plans).items():
        low, high = ranges[name]
        x = x[~np.isnan(x)]
        below, above = x[x < low], x[x > high]
        out[f"{name}:outside"] = np.array([len(below), below.sum(), len(above), above.sum()], dtype=np.float64)
    return out


def check_sketch(answer: Any, plans: Sequence[ColumnPlan], ranges: Mapping[str, Sequence[float]] | None = None,
                 *, current: bool = False) -> Stats:  # fmt: skip
    """A party's sketch checked before it is summed, or a DataError saying what is wrong: stage 1 of a reference
    (``ranges`` None), stage 2 (histograms), or new rows (``current``: both, plus the mass outside the range).

    The names and lengths must be exactly what the stage asks for, counts whole and non-negative, sums finite
    (:func:`uaap.data.preprocess.check_statistics`), and a feature's histogram and outside counts must add up to
    its count of values, which may not exceed the party's rows."""
    from uaap.data.preprocess import check_statistics, expected_statistics

    if not isinstance(answer, Mapping):
        raise DataError(f"a drift sketch must map names to statistics, got {type(answer).__name__}")
    numeric = [n for p in plans for n in p.numeric_names()]
    parts: list[tuple[dict[str, Any], set[str]]] = []
    if ranges is None or current:
        request = _request(plans, "moments")
        parts.append((request, set(expected_statistics(request))))
    if ranges is not None:
        request = _request(plans, "quantiles", ranges)
        parts.append((request, set(expected_statistics(request))))
    own = {":rows"} if ranges is None or current else set()
    own |= {f"{n}:outside" for n in numeric} if current else set()
    wanted = set().union(own, *(keys for _, keys in parts))
    if set(map(str, answer)) != wanted:
        missing, extra = sorted(wanted - set(map(str, answer)))[:3], sorted(set(map(str, answer)) - wanted)[:3]
        raise DataError(f"the drift sketch lacks {missing} or carries unexpected {extra}")
    out: Stats = {}
    for request, keys in parts:
        out.update(check_statistics({k: answer[k] for k in keys}, request))
    for key in own:
        array = np.asarray(answer[key], dtype=np.float64).reshape(-1)
        counts = array[::2] if key.endswith(":outside") else array
        if array.shape != ((4,) if key.endswith(":outside") else (1,)) or not np.isfinite(array).all():
            raise DataError(f"statistic {key!r} must be {4 if key.endswith(':outside') else 1} finite numbers")
        if (counts < 0).any() or (counts != np.round(counts)).any():
            raise DataError(f"statistic {key!r} must hold whole non-negative counts")
        out[key] = array
    for name in numeric:
        held = float(out[f"{name}:n"][0]) if f"{name}:n" in out else None
        binned = float(out[f"{name}:hist"].sum()) if f"{name}:hist" in out else None
        outside = float(out[f"{name}:outside"][0] + out[f"{name}:outside"][2]) if current else 0.0
        if held is not None and binned is not None and held != binned + outside:
            raise DataError(f"feature {name!r}: {binned + outside:g} binned values for {held:g} values counted")
        if held is not None and held > float(out[":rows"][0]):
            raise DataError(f"feature {name!r} counts {held:g} values in {float(out[':rows'][0]):g} rows")
    return out


def check_columns(reference: Sequence[str], current: Sequence[str], ignore: Sequence[str] = ()) -> None:
    """Refuse new rows whose columns differ from the reference's (``ignore``: columns either may carry)."""
    ref, cur = set(reference) - set(ignore), set(current) - set(ignore)
    if ref != cur:
        missing, extra = sorted(ref - cur), sorted(cur - ref)
        parts = ([f"lack {', '.join(map(repr, missing))}"] if missing else []) + (
            [f"carry {', '.join(map(repr, extra))} the reference does not have"] if extra else []
        )
        raise DataError(
            f"the new rows {' and '.join(parts)}; the reference's columns are: {', '.join(sorted(ref))}. "
            "Monitor data with the columns the model was trained on (rename or drop the others)"
        )


# ---- the statistics ---------------------------------------------------------------------------------------------


def _psi(ref: np.ndarray, cur: np.ndarray) -> float:
    p = np.maximum(ref / max(ref.sum(), 1.0), PSI_FLOOR)
    q = np.maximum(cur / max(cur.sum(), 1.0), PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def decile_groups(ref_hist: np.ndarray, groups: int = PSI_GROUPS) -> np.ndarray:
    """Group index of each fine bin: a new group starts where the reference's cumulative share crosses k/groups."""
    share = np.cumsum(ref_hist) / max(float(ref_hist.sum()), 1.0)
    before = np.concatenate([[0.0], share[:-1]])  # the share below each bin
    out: np.ndarray = np.floor(np.minimum(before, 1.0 - 1e-12) * groups + 1e-9).astype(np.int64)
    return out


def numeric_drift(ref: Stats, cur: Stats, name: str, low: float, high: float) -> dict[str, float]:
    """PSI, Kolmogorov-Smirnov and Wasserstein of one numeric feature from its two sketches."""
    from scipy import stats as st

    r_hist = np.asarray(ref[f"{name}:hist"], dtype=np.float64)
    c_hist = np.asarray(cur[f"{name}:hist"], dtype=np.float64)
    below_n, below_sum, above_n, above_sum = (float(v) for v in cur[f"{name}:outside"])
    r = np.concatenate([[0.0], r_hist, [0.0]])
    c = np.concatenate([[below_n], c_hist, [above_n]])
    n_r, n_c = float(r.sum()), float(c.sum())
    if n_r == 0 or n_c == 0:
        raise DataError(f"feature {name!r} has no value in the {'reference' if n_r == 0 else 'new'} rows")
    group = decile_groups(r_hist)
    c_groups = np.bincount(group, weights=c_hist)
    c_groups[0] += below_n  # the outer deciles are open-ended, as PSI's bins usually are
    c_groups[-1] += above_n
    psi = _psi(np.bincount(group, weights=r_hist), c_groups)
    ks = float(np.max(np.abs(np.cumsum(r) / n_r - np.cumsum(c) / n_c)))
    pvalue = float(st.kstwo.sf(ks, round(n_r * n_c / (n_r + n_c))))
    width = (high - low) / len(r_hist) if high > low else 0.0
    centres = low + (np.arange(len(r_hist)) + 0.5) * width
    positions = np.concatenate(
        [[below_sum / below_n if below_n else low], centres, [above_sum / above_n if above_n else high]]
    )
    wasserstein = float(st.wasserstein_distance(positions, positions, r, c))
    count, total, squares = (float(v) for v in ref[f"{name}:n"])
    std = math.sqrt(max(squares / count - (total / count) ** 2, 0.0)) if count else 0.0
    cur_n = np.asarray(cur[f"{name}:n"], dtype=np.float64)
    return {
        "psi": psi,
        "ks": ks,
        "ks_pvalue": pvalue,
        "wasserstein": wasserstein,
        "wasserstein_std": wasserstein / std if std > 0 else (0.0 if wasserstein == 0 else math.inf),
        "reference_mean": total / count if count else math.nan,
        "current_mean": float(cur_n[1] / cur_n[0]) if cur_n[0] else math.nan,
        "bin_width": width,
    }


def categorical_drift(ref: Stats, cur: Stats, name: str) -> dict[str, Any]:
    """PSI, chi-square and Cramér's V of one categorical column from its two count maps."""
    from scipy import stats as st

    r_counts: Mapping[str, int] = ref.get(f"{name}:counts", {})
    c_counts: Mapping[str, int] = cur.get(f"{name}:counts", {})
    categories = sorted(set(r_counts) | set(c_counts))
    table = np.array([[r_counts.get(k, 0) for k in categories], [c_counts.get(k, 0) for k in categories]], float)
    if table[0].sum() == 0 or table[1].sum() == 0:
        raise DataError(f"column {name!r} has no value in the {'reference' if table[0].sum() == 0 else 'new'} rows")
    psi = _psi(table[0], table[1])
    if len(categories) < 2:
        chi2, pvalue, v = 0.0, 1.0, 0.0
    else:
        result = st.chi2_contingency(table)
        chi2, pvalue = float(result.statistic), float(result.pvalue)
        v = float(st.contingency.association(table.astype(np.int64), method="cramer"))
    new = [k for k in categories if r_counts.get(k, 0) == 0]
    return {"psi": psi, "chi2": chi2, "chi2_pvalue": pvalue, "cramers_v": v, "new_categories": new[:20]}


def drift_report(reference: Mapping[str, Any], current: Stats, thresholds: Thresholds | None = None) -> dict[str, Any]:
    """Per feature drift statistics and flags, and the prediction's, from a reference sketch and merged new stats."""
    t = thresholds or Thresholds()
    plans = [ColumnPlan(**p) for p in reference["plan"]]
    ref, ranges = reference["stats"], {k: tuple(v) for k, v in reference["ranges"].items()}
    features: dict[str, dict[str, Any]] = {}
    for plan in plans:
        if plan.kind == "categorical":
            row: dict[str, Any] = {"kind": "categorical", **categorical_drift(ref, current, plan.name)}
            row["drifted"] = row["chi2_pvalue"] < t.pvalue and (row["psi"] >= t.psi or row["cramers_v"] >= t.cramers_v)
            features[plan.name] = row
            continue
        for name in plan.numeric_names():
            low, high = ranges[name]
            row = {"kind": "numeric", **numeric_drift(ref, current, name, low, high)}
            row["drifted"] = row["ks_pvalue"] < t.pvalue and (
                row["psi"] >= t.psi or row["ks"] >= t.ks or row["wasserstein_std"] >= t.wasserstein
            )
            features[name] = row
    prediction = features.pop(PREDICTION, None)
    rows = float(current[":rows"][0])
    return {
        "thresholds": asdict(t),
        "reference_rows": int(ref[":rows"][0]),
        "current_rows": int(rows),
        "features": features,
        "drifted": [k for k, v in features.items() if v["drifted"]],
        "prediction": prediction,
        "prediction_drifted": bool(prediction and prediction["drifted"]),
    }


def federated_drift(
    reference_parts: Sequence[pd.DataFrame],
    current_parts: Sequence[pd.DataFrame],
    plans: Sequence[ColumnPlan],
    thresholds: Thresholds | None = None,
) -> dict[str, Any]:
    """Drift across parties: the reference in two rounds of sums, the new rows' sketches in one, summed."""
    reference = reference_sketch(reference_parts, plans)
    ranges = {k: tuple(v) for k, v in reference["ranges"].items()}
    answers = (current_statistics(frame, plans, ranges) for frame in current_parts)
    current = merge(check_sketch(answer, plans, ranges, current=True) for answer in answers)
    return drift_report(reference, current, thresholds)


def plot(report: Mapping[str, Any], path: Path, title: str) -> Path:
    """Per feature PSI and KS statistic / Cramér's V against their thresholds (drifted features in red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = dict(report["features"])
    if report.get("prediction"):
        rows["(prediction)"] = report["prediction"]
    names = list(rows)
    t = report["thresholds"]
    colours = ["tab:red" if rows[n]["drifted"] else "tab:blue" for n in names]
    y = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.35 * len(names) + 2.0), sharey=True)
    panels = (
        ("PSI (reference deciles)", [rows[n]["psi"] for n in names], t["psi"]),
        ("KS statistic / Cramér's V", [rows[n].get("ks", rows[n].get("cramers_v", 0.0)) for n in names], t["ks"]),
        ("Wasserstein / reference std", [rows[n].get("wasserstein_std", 0.0) for n in names], t["wasserstein"]),
    )
    for ax, (label, values, threshold) in zip(axes, panels, strict=True):
        ax.barh(y, values, color=colours)
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    drifted = ", ".join(report["drifted"]) or "none"
    fig.suptitle(f"{title}\ndrifted (red): {drifted}; prediction drifted: {report['prediction_drifted']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
