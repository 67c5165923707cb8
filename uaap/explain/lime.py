"""LIME for one row of a run's model, on the raw columns you know (central).

lime's ``LimeTabularExplainer`` perturbs a row's columns and fits a weighted linear model to the run's model around
it. It perturbs numbers, so the raw columns go to it as a matrix: numeric columns as they are (a missing number as
the column's median in the rows given), each categorical column as the code of its category (categories sorted,
``(missing)`` for an empty cell) with lime's categorical sampling; date and free-text columns cannot be perturbed
as numbers and stay at the explained row's value (said in the report). Each perturbed matrix row is decoded back to
raw values and goes through the run's fitted preprocessor into the model, so the weights are of raw columns.

A free-text column of the row is explained too, with lime's ``LimeTextExplainer``: words of that cell are removed
at random, every other column held at the row's value, and the weights are of words.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from uaap.monitor.reports import Written
    from uaap.monitor.runmodel import RunModel

MISSING = "(missing)"


@dataclass(frozen=True)
class Encoding:
    """How raw columns become the matrix lime perturbs, and back."""

    columns: list[str]  # the columns lime perturbs, in matrix order
    categories: dict[int, list[str]]  # matrix index of a categorical column -> its categories (code = position)
    fixed: list[str] = field(default_factory=list)  # date and text columns, held at the explained row's value
    medians: dict[str, float] = field(default_factory=dict)  # what a missing number becomes

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """The matrix of ``frame``'s rows."""
        import pandas as pd

        Z = np.zeros((len(frame), len(self.columns)))
        for j, c in enumerate(self.columns):
            if j in self.categories:
                index = {v: i for i, v in enumerate(self.categories[j])}
                Z[:, j] = [index.get(v, 0) for v in _categories(frame[c])]
            else:
                Z[:, j] = pd.to_numeric(frame[c], errors="coerce").fillna(self.medians[c]).to_numpy(dtype=np.float64)
        return Z

    def decode(self, Z: np.ndarray, row: pd.DataFrame) -> pd.DataFrame:
        """Raw rows of matrix ``Z``; the fixed columns take ``row``'s (one row) values."""
        import pandas as pd

        out: dict[str, Any] = {}
        for j, c in enumerate(self.columns):
            if j in self.categories:
                names = np.asarray(self.categories[j], dtype=object)
                codes = np.clip(np.rint(Z[:, j]).astype(int), 0, len(names) - 1)
                out[c] = [None if v == MISSING else v for v in names[codes]]
            else:
                out[c] = Z[:, j]
        for c in self.fixed:
            out[c] = [row[c].iloc[0]] * len(Z)
        return pd.DataFrame(out)


def _categories(series: pd.Series) -> list[str]:
    return [MISSING if v is None or (isinstance(v, float) and v != v) else str(v) for v in series.tolist()]


def encoding(model: RunModel, frame: pd.DataFrame) -> Encoding:
    """The :class:`Encoding` of the run's input columns over the rows of ``frame``."""
    import pandas as pd

    columns: list[str] = []
    categories: dict[int, list[str]] = {}
    fixed: list[str] = []
    medians: dict[str, float] = {}
    for plan in model.preprocessor.plan_:
        if plan.kind == "numeric":
            numbers = pd.to_numeric(frame[plan.name], errors="coerce")
            medians[plan.name] = float(numbers.median()) if numbers.notna().any() else 0.0
            columns.append(plan.name)
        elif plan.kind == "categorical":
            categories[len(columns)] = sorted(set(_categories(frame[plan.name])))
            columns.append(plan.name)
        else:  # datetime, text
            fixed.append(plan.name)
    if not columns:
        raise DataError("LIME perturbs numeric and categorical columns; this model reads none (only dates or text)")
    return Encoding(columns, categories, fixed, medians)


def predictor(model: RunModel, enc: Encoding, row: pd.DataFrame) -> Callable[[np.ndarray], np.ndarray]:
    """lime's ``predict_fn``: class probabilities (classification) or values of the matrix's rows."""
    if model.task == "classification":
        return lambda Z: model.predict_proba(enc.decode(Z, row))
    return lambda Z: np.asarray(model.predict(enc.decode(Z, row)), dtype=np.float64)


@dataclass(frozen=True)
class Lime:
    """One row's LIME explanation."""

    output: str
    weights: list[tuple[str, float]]  # (lime's condition on a raw column, weight), by |weight|
    intercept: float
    local_prediction: float
    model_prediction: float
    score: float  # R^2 of lime's weighted linear fit
    note: str
    figure: Any  # lime's pyplot figure
    text: dict[str, Any] = field(default_factory=dict)  # a text column's word weights, when the row has text


def explain_row(
    model: RunModel,
    frame: pd.DataFrame,
    row: int,
    *,
    target_class: str = "",
    background_rows: int = 500,
    num_samples: int = 2000,
    seed: int = 0,
) -> Lime:
    """LIME weights of ``frame``'s row ``row`` (the other rows give lime its sampling statistics)."""
    from lime.lime_tabular import LimeTabularExplainer  # type: ignore[import-untyped]

    from uaap.explain.shapley import check_row, choose_class

    check_row(row, len(frame))
    one = frame.iloc[[row]].reset_index(drop=True)
    classification = model.task == "classification"
    k = choose_class(model, target_class) if classification else 0
    try:
        enc = encoding(model, frame)
    except DataError:  # only dates and text: lime's text explainer alone, if the row has text
        text = _text(model, one, k, num_samples, seed)
        if not text:
            raise
        return _text_only(model, one, k, text)
    notes = [f"held at the row's value (LIME cannot perturb them): {', '.join(enc.fixed)}"] if enc.fixed else []
    background = frame
    if len(frame) > background_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(frame), background_rows, replace=False))
        background = frame.iloc[keep]
        notes.append(
            f"LIME's statistics from {background_rows} of {len(frame)} rows drawn at random (--background-rows)"
        )
    explainer = LimeTabularExplainer(
        enc.encode(background),
        mode="classification" if classification else "regression",
        feature_names=enc.columns,
        categorical_features=sorted(enc.categories),
        categorical_names=dict(enc.categories),
        class_names=model.classes if classification else None,
        discretize_continuous=True,
        random_state=seed,
    )
    predict = predictor(model, enc, one)
    x = enc.encode(one)[0]
    exp = explainer.explain_instance(
        x, predict, labels=(k,) if classification else (0,), num_features=len(enc.columns), num_samples=num_samples
    )
    label = k if classification else 1  # lime keeps a regression's weights under label 1
    output = f"P({model.classes[k]})" if classification else model.target
    prediction = np.asarray(predict(x[None, :]), dtype=np.float64).reshape(-1)
    local = float(np.asarray(exp.local_pred).reshape(-1)[0])
    text = _text(model, one, k, num_samples, seed)
    return Lime(
        output,
        [(str(c), float(w)) for c, w in exp.as_list(label=label)],
        float(exp.intercept[label]),
        local,
        float(prediction[k] if classification else prediction[0]),
        float(exp.score),
        "; ".join(notes),
        exp.as_pyplot_figure(label=label),
        text,
    )


def _text_only(model: RunModel, row: pd.DataFrame, k: int, text: dict[str, Any]) -> Lime:
    """A row of a model that reads only free text (and dates): its words' weights, said so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classification = model.task == "classification"
    output = f"P({model.classes[k]})" if classification else model.target
    values = model.predict_proba(row)[0, k] if classification else np.asarray(model.predict(row)).reshape(-1)[0]
    words = [(f"word {w!r} in {text['column']}", float(v)) for w, v in text["weights"]]
    fig, ax = plt.subplots()
    ax.barh([w for w, _ in words][::-1], [v for _, v in words][::-1],
            color=["green" if v > 0 else "red" for _, v in words][::-1])  # fmt: skip
    note = "no numeric or categorical column to perturb: lime's text explainer only (LimeTextExplainer)"
    return Lime(output, [], float("nan"), float("nan"), float(values), float("nan"), note, fig, text)


def _text(model: RunModel, row: pd.DataFrame, label: int, num_samples: int, seed: int) -> dict[str, Any]:
    """lime's text explainer on the row's first non-empty free-text column (its words), {} when it has none."""
    from lime.lime_text import LimeTextExplainer  # type: ignore[import-untyped]

    texts = [p.name for p in model.preprocessor.plan_ if p.kind == "text"]
    column = next((c for c in texts if isinstance(row[c].iloc[0], str) and row[c].iloc[0].strip()), "")
    if not column:
        return {}
    classification = model.task == "classification"

    def predict(docs: list[str]) -> np.ndarray:
        frame = row.loc[[0] * len(docs)].reset_index(drop=True)
        frame[column] = [d if re.search(r"\w", d) else None for d in docs]  # every word removed: a missing text
        if classification:
            return model.predict_proba(frame)
        values = np.asarray(model.predict(frame), dtype=np.float64)
        return np.column_stack([values, values])  # lime's text explainer wants one column per "class"

    explainer = LimeTextExplainer(class_names=model.classes or None, random_state=seed)
    exp = explainer.explain_instance(
        str(row[column].iloc[0]), predict, labels=(label,), num_features=10, num_samples=min(num_samples, 1000)
    )
    return {"column": column, "weights": [(str(w), float(v)) for w, v in exp.as_list(label=label)]}


def explain_lime(
    run_id: str,
    data: str,
    *,
    row: int = 0,
    target_class: str = "",
    max_rows: int = 500,
    background_rows: int = 500,
    num_samples: int = 2000,
    seed: int = 0,
    trust_pickle: bool = False,
) -> Written:
    """``uaap explain RUN --method lime``: one row's LIME weights, ``lime.json`` and ``lime-row-N.png`` in the run
    folder's ``explain/``, logged to MLflow."""
    from uaap.explain.report import EXPLAIN_DIR
    from uaap.explain.shapley import check_row
    from uaap.monitor.fairness import write_json
    from uaap.monitor.reports import publish, read_table
    from uaap.monitor.runmodel import load_run_model

    model = load_run_model(run_id, trust_pickle=trust_pickle)
    frame = read_table(data)
    model.preprocessor.transform(frame.head(1))  # columns the model needs: refused by name before lime runs
    check_row(row, len(frame))
    note, position = "", row
    if len(frame) > max_rows:  # the explained row stays: the draw is of the others
        others = np.delete(np.arange(len(frame)), row)
        keep = np.sort(np.append(np.random.default_rng(seed).choice(others, max_rows - 1, replace=False), row))
        note = f"{max_rows} of {len(frame)} rows drawn at random (--max-rows), row {row} among them"
        position = int(np.searchsorted(keep, row))
        frame = frame.iloc[keep].reset_index(drop=True)
    shown = row
    result = explain_row(
        model, frame, position, target_class=target_class, background_rows=background_rows, num_samples=num_samples,
        seed=seed,
    )  # fmt: skip
    report: dict[str, Any] = {
        "run_id": run_id,
        "data": data,
        "row": shown,
        "output": result.output,
        "model_prediction": result.model_prediction,
        "local_prediction": _finite(result.local_prediction),  # None: the text explainer only
        "intercept": _finite(result.intercept),
        "score": _finite(result.score),
        "weights": [{"condition": c, "weight": w} for c, w in result.weights],
        "text": result.text,
        "note": "; ".join(n for n in (note, result.note) if n),
    }
    folder = model.run.path / EXPLAIN_DIR

    def figure(path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = result.figure
        fit = (f"LIME's local fit {result.local_prediction:.4f} (R^2 {result.score:.2f})" if result.weights
               else f"the words of {result.text['column']} (LimeTextExplainer)")  # fmt: skip
        fig.suptitle(f"run {run_id}, row {shown} of {Path(data).name}: LIME weights of {result.output}\n"
                     f"model {result.model_prediction:.4f}, {fit}", fontsize=9)  # fmt: skip
        fig.set_size_inches(9, max(3.0, 0.4 * len(result.weights or result.text.get("weights", [])) + 1.5))
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return path

    outputs: dict[Path, Any] = {folder / "lime.json": lambda p: write_json(report, p)}
    outputs[folder / f"lime-row-{shown}.png"] = figure
    metrics = {f"lime.row{shown}.{k}": v for k in ("score", "local_prediction") if (v := report[k]) is not None}
    event = {"data": data, "method": "lime", "row": shown, "output": result.output}
    return _written(report, publish(model, outputs, metrics, "explain", event))


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def _written(report: dict[str, Any], files: list[Path]) -> Written:
    from uaap.monitor.reports import Written

    return Written(report, files)
