"""Which raw columns a run's model relies on: permutation importance and, for tree models, gain importance (central).

* **Permutation importance** (scikit-learn's ``permutation_importance``): the drop of the model's score (accuracy for
  a classifier, R^2 for a regression) when one raw column's values are shuffled across the rows, ``--repeats``
  times. The shuffled rows go through the run's fitted preprocessor, so a column's one-hot categories, date parts
  or hashed words move together. Needs the target column in the data.
* **Gain importance**: a tree ensemble's own importances of its model inputs (scikit-learn forests: mean impurity
  decrease; XGBoost and LightGBM: total gain; CatBoost: its default PredictionValuesChange), summed into the raw
  column each input comes from and shown as shares of the total. Other families have none (said in the report).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator

from uaap.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from uaap.monitor.reports import Written
    from uaap.monitor.runmodel import RunModel


class RawModel(BaseEstimator):  # type: ignore[misc]  # scikit-learn is untyped
    """A run's model on raw rows as a fitted scikit-learn estimator (what ``permutation_importance`` scores)."""

    def __init__(self, model: RunModel) -> None:
        self.model = model
        self.classes_ = np.asarray(model.classes, dtype=object)

    def fit(self, X: Any, y: Any = None) -> RawModel:
        """Already fitted: returns itself (scikit-learn's scorers ask that an estimator can fit)."""
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Class labels as text, or values in the target's units."""
        return self.model.predict(X)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Class probabilities."""
        return self.model.predict_proba(X)


def labels(model: RunModel, frame: pd.DataFrame) -> np.ndarray:
    """The target column of ``frame`` as the model predicts it (class labels as text, or numbers)."""
    import pandas as pd

    from uaap.data.preprocess import label_text

    target = model.target
    if target not in frame.columns:
        raise DataError(
            f"permutation importance compares predictions with the target: --data has no column {target!r} "
            f"(it has {', '.join(map(str, frame.columns))}); give rows with their labels"
        )
    y = frame[target]
    if y.isna().any():
        raise DataError(f"column {target!r} has {int(y.isna().sum())} empty cells; permutation importance needs labels")
    if model.task == "classification":
        return np.asarray(y.map(label_text), dtype=object)
    return np.asarray(pd.to_numeric(y, errors="raise"), dtype=np.float64)


def scoring(model: RunModel) -> str:
    """The score permutation importance drops: accuracy, or R^2 for a regression."""
    return "accuracy" if model.task == "classification" else "r2"


@dataclass(frozen=True)
class Importances:
    """Permutation importances (mean and std of the score drop per raw column) and gain shares."""

    score: str
    baseline: float
    mean: dict[str, float]
    std: dict[str, float]
    gain: dict[str, float]
    note: str


def permutation(
    model: RunModel, frame: pd.DataFrame, *, repeats: int = 5, seed: int = 0
) -> tuple[float, dict[str, float], dict[str, float]]:
    """Baseline score and each raw input column's mean and std score drop (scikit-learn's permutation_importance)."""
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import get_scorer

    y = labels(model, frame)
    X = frame[model.preprocessor.input_columns].reset_index(drop=True)
    est = RawModel(model)
    result = permutation_importance(est, X, y, scoring=scoring(model), n_repeats=repeats, random_state=seed)
    baseline = float(get_scorer(scoring(model))(est, X, y))
    names = list(X.columns)
    mean = {c: float(v) for c, v in zip(names, result.importances_mean, strict=True)}
    std = {c: float(v) for c, v in zip(names, result.importances_std, strict=True)}
    return baseline, mean, std


def gain(model: RunModel) -> tuple[dict[str, float], str]:
    """A tree model's importances summed per raw column, as shares of their total; ({}, why) for other models."""
    from uaap.explain.shapley import TREE_FAMILIES, feature_columns, group_by_column

    family = str(model.meta.get("family", ""))
    est = model.model
    raw: np.ndarray | None = None
    if not model.torch and family in TREE_FAMILIES:
        if family == "lightgbm":
            raw = np.asarray(est.booster_.feature_importance(importance_type="gain"), dtype=np.float64)
        elif family == "xgboost":
            booster = est.get_booster()
            scores = booster.get_score(importance_type="total_gain")
            names = booster.feature_names or [f"f{i}" for i in range(est.n_features_in_)]
            raw = np.array([float(scores.get(n, 0.0)) for n in names])
        else:
            raw = np.asarray(getattr(est, "feature_importances_", None), dtype=np.float64)
    if raw is None or raw.ndim != 1 or not np.isfinite(raw).all():
        name = family or str(model.meta.get("model", "")) or "this model's"
        return {}, f"gain importance is a tree model's; family {name!r} has none"
    columns, grouped = group_by_column(raw[None, :], feature_columns(model.preprocessor))
    total = float(grouped.sum())
    shares = grouped[0] / total if total > 0 else grouped[0]
    return {c: float(v) for c, v in zip(columns, shares, strict=True)}, ""


def importances(model: RunModel, frame: pd.DataFrame, *, repeats: int = 5, seed: int = 0) -> Importances:
    """Permutation importance on ``frame`` and the model's gain importance."""
    baseline, mean, std = permutation(model, frame, repeats=repeats, seed=seed)
    shares, note = gain(model)
    return Importances(scoring(model), baseline, mean, std, shares, note)


def explain_importance(
    run_id: str,
    data: str,
    *,
    repeats: int = 5,
    max_rows: int = 500,
    seed: int = 0,
    trust_pickle: bool = False,
) -> Written:
    """``uaap explain RUN --method importance``: ``importance.json`` and ``importance.png`` in the run folder's
    ``explain/``, logged to MLflow."""
    from uaap.explain.report import EXPLAIN_DIR
    from uaap.monitor.fairness import write_json
    from uaap.monitor.reports import Written, publish, read_table, safe_name
    from uaap.monitor.runmodel import load_run_model

    if repeats < 1:
        raise DataError(f"--repeats {repeats}: give at least 1 shuffle per column")
    model = load_run_model(run_id, trust_pickle=trust_pickle)
    frame = read_table(data)
    labels(model, frame)  # the target is there: refused before anything runs
    note = ""
    if len(frame) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(frame), max_rows, replace=False))
        note = f"{max_rows} of {len(frame)} rows drawn at random (--max-rows)"
        frame = frame.iloc[keep].reset_index(drop=True)
    result = importances(model, frame, repeats=repeats, seed=seed)
    ranking = sorted(result.mean, key=lambda c: -result.mean[c])
    report: dict[str, Any] = {
        "run_id": run_id,
        "data": data,
        "rows": len(frame),
        "score": result.score,
        "baseline": result.baseline,
        "repeats": repeats,
        "permutation_mean": result.mean,
        "permutation_std": result.std,
        "ranking": ranking,
        "gain": result.gain,
        "note": "; ".join(n for n in (note, result.note) if n),
    }
    folder = model.run.path / EXPLAIN_DIR
    title = f"run {run_id} on {Path(data).name} ({len(frame)} rows)"
    outputs: dict[Path, Any] = {folder / "importance.json": lambda p: write_json(report, p)}
    outputs[folder / "importance.png"] = lambda p: _plot(result, ranking, title, repeats, p)
    metrics = {f"importance.{safe_name(c)}.permutation": v for c, v in result.mean.items()}
    metrics |= {f"importance.{safe_name(c)}.gain": v for c, v in result.gain.items()}
    event = {"data": data, "method": "importance", "score": result.score, "ranking": ranking[:10]}
    return Written(report, publish(model, outputs, metrics, "explain", event))


def _plot(result: Importances, ranking: list[str], title: str, repeats: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if result.gain else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, max(3.0, 0.35 * len(ranking) + 1.5)), squeeze=False)
    order = ranking[::-1]
    ax = axes[0][0]
    ax.barh(order, [result.mean[c] for c in order], xerr=[result.std[c] for c in order], color="tab:blue")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"drop of {result.score} when shuffled (mean and std of {repeats})")
    ax.set_title(f"permutation importance (baseline {result.score} {result.baseline:.4f})", fontsize=9)
    if result.gain:
        ax = axes[0][1]
        ax.barh(order, [result.gain.get(c, 0.0) for c in order], color="tab:green")
        ax.set_xlabel("share of the model's gain")
        ax.set_title("gain importance (the trees' own)", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
