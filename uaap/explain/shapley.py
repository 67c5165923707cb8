"""SHAP values of a run's model, per raw input column (central).

The model sees the fitted preprocessor's outputs (one-hot categories, date parts, hashed text); SHAP explains it
there, with the explainer that fits the model: shap's ``TreeExplainer`` (exact, path-dependent) for tree
ensembles (random forests, XGBoost, LightGBM, CatBoost), else shap's ``PermutationExplainer`` (torch networks and
every other estimator) over an ``Independent`` masker of background rows. ``explainer="deep"`` asks for shap's
``DeepExplainer`` (DeepLIFT against the same background rows) for a feed-forward torch network (logreg, svm, mlp:
layers DeepLIFT has rules for), with the softmax (or the target's scaling) appended so it explains the same output:
one backward pass a batch instead of hundreds of model calls a row, its values additive to float32 precision, but
DeepLIFT's linearisation of each ReLU rather than Shapley values of the model; the permutation explainer stays the
default for networks because the federated explanations and the API's ``/explain`` use it.

Then each raw column's value is the sum of its outputs' values (``city=Paris`` + ``city=Lyon`` + ... -> ``city``;
``visit.month``, ``visit.month_sin`` ... -> ``visit``): SHAP values add up, so the column values still sum, with the
base value, to the model's output.

What is explained: a classifier's probability of one class (``--target-class``; the second of two by default)
for forests and networks, its log-odds for boosted trees (their raw output, where TreeExplainer is exact); a
regression's prediction in the target's units (forests and boosting) or the network's prediction in those units.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from uaap.data.preprocess import Preprocessor
    from uaap.monitor.runmodel import RunModel

TREE_FAMILIES = ("random_forest", "xgboost", "lightgbm", "catboost")
EXPLAINERS = ("auto", "tree", "deep", "permutation")  # auto: tree for tree families, else permutation
DEEP_LAYERS = ("Flatten", "Linear", "ReLU", "Dropout", "Identity")  # a network DeepExplainer explains layer by layer
BOOSTED = ("xgboost", "lightgbm", "catboost")
# How each booster's predict gives its raw output (log-odds), where TreeExplainer's values add up.
RAW_OUTPUT: dict[str, dict[str, Any]] = {
    "xgboost": {"output_margin": True},
    "lightgbm": {"raw_score": True},
    "catboost": {"prediction_type": "RawFormulaVal"},
}


def feature_columns(pre: Preprocessor) -> list[str]:
    """The raw column behind each of the preprocessor's outputs (in :meth:`get_feature_names_out` order); a
    polynomial product keeps its own name (``age*income``): it belongs to two columns."""
    from uaap.data.preprocess import CYCLES, PreprocessOptions

    o = pre.options or PreprocessOptions()
    out: list[str] = []
    for plan in pre.plan_:
        if plan.kind in ("numeric", "datetime"):
            for name in plan.numeric_names():
                out.append(plan.name)
                if plan.kind == "datetime" and name.rsplit(".", 1)[-1] in CYCLES:
                    out += [plan.name, plan.name]
        elif plan.kind == "categorical" and o.encoding == "onehot":
            out += [plan.name] * (len(plan.vocabulary) + 1)
        elif plan.kind == "categorical" and o.encoding == "ordinal":
            out.append(plan.name)
        else:
            out += [plan.name] * o.hash_buckets
    names = list(pre.feature_names_out_)
    out += names[len(out) :]  # polynomial products
    if len(out) != len(names):
        raise DataError(f"the preprocessor gives {len(names)} features but {len(out)} were mapped to columns")
    return out


def group_by_column(values: np.ndarray, columns: list[str]) -> tuple[list[str], np.ndarray]:
    """Per-feature values (rows x features) summed per raw column, columns in first-seen order."""
    order = list(dict.fromkeys(columns))
    index = np.array([order.index(c) for c in columns])
    grouped = np.zeros((values.shape[0], len(order)))
    np.add.at(grouped.T, index, values.T)
    return order, grouped


@dataclass(frozen=True)
class Shap:
    """SHAP values of some rows: per model feature and per raw column, with the base value and what they explain."""

    explainer: str  # tree | permutation
    output: str  # what the values add up to, in words
    features: list[str]
    values: np.ndarray  # rows x features
    base: float
    columns: list[str]
    grouped: np.ndarray  # rows x columns
    model_output: np.ndarray  # the explained output of each row
    X: np.ndarray  # the model's inputs
    note: str = ""

    @property
    def additivity_error(self) -> float:
        """max |sum of a row's values + base - the model's output| over the rows."""
        return float(np.max(np.abs(self.grouped.sum(axis=1) + self.base - self.model_output)))


def choose_class(model: RunModel, target_class: str = "") -> int:
    """Index of the class whose output is explained (the given one; else the second of two, the last of more)."""
    from uaap.data.preprocess import label_text

    classes = model.classes
    if not target_class:
        return len(classes) - 1 if len(classes) != 2 else 1
    text = label_text(target_class)
    if text not in classes:
        raise DataError(f"--target-class {target_class!r} is not one of the model's classes: {', '.join(classes)}")
    return classes.index(text)


def output_function(model: RunModel, k: int) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """The model's explained output on model inputs (rows x features) and its description."""
    if model.torch:
        from uaap.training import predict_proba, predict_values

        if model.task == "classification":
            return (lambda X: predict_proba(model.model, X.astype(np.float32))[:, k].astype(np.float64)), (
                f"P({model.classes[k]})"
            )
        mean, std = float(model.meta.get("target_mean", 0.0)), float(model.meta.get("target_std", 1.0))
        return (lambda X: predict_values(model.model, X.astype(np.float32), mean, std)), model.target
    if model.task == "classification":
        return (lambda X: np.asarray(model.model.predict_proba(X), dtype=np.float64)[:, k]), f"P({model.classes[k]})"
    return (lambda X: np.asarray(model.model.predict(X), dtype=np.float64).reshape(-1)), model.target


def explain(
    model: RunModel,
    frame: pd.DataFrame,
    *,
    target_class: str = "",
    background: pd.DataFrame | None = None,
    background_rows: int = 100,
    max_evals: int = 0,
    seed: int = 0,
    explainer_name: str = "auto",
) -> Shap:
    """SHAP values of ``frame``'s rows for ``model`` (see the module's docstring for the explainer it picks, or
    ``explainer_name``: tree, deep or permutation)."""
    import shap

    check_explainer(model, explainer_name)
    pre = model.preprocessor
    X = pre.transform(frame).astype(np.float64)
    features = list(pre.feature_names_out_)
    columns = feature_columns(pre)
    k = choose_class(model, target_class) if model.task == "classification" else 0
    family = str(model.meta.get("family", ""))
    note = ""
    explainer: Any = None
    if explainer_name == "deep":
        background_X, note = _background(pre, background, X, background_rows, np.random.default_rng(seed))
        values, base, model_output, output = _deep(model, X, background_X, k)
        order, grouped = group_by_column(values, columns)
        return Shap("deep", output, features, values, base, order, grouped, model_output, X, note)
    if not model.torch and family in TREE_FAMILIES and explainer_name != "permutation":
        try:
            explainer = shap.TreeExplainer(model.model)
        except Exception as exc:  # a tree model shap does not read: the permutation explainer still can
            note = f"shap's TreeExplainer cannot read this {family} model ({type(exc).__name__}): permutation used"
    if explainer is not None:
        raw = np.asarray(explainer.shap_values(X))
        expected = np.atleast_1d(np.asarray(explainer.expected_value, dtype=np.float64))
        if raw.ndim == 3:  # rows x features x outputs
            values, base = raw[:, :, k], float(expected[k])
        else:  # one output: a regression, or a binary booster's log-odds of class 1
            values, base = raw, float(expected[0])
            if model.task == "classification" and k == 0:  # log-odds of class 0 are those of class 1, negated
                values, base = -values, -base
        if family in BOOSTED and model.task == "classification":
            output = f"log-odds of {model.classes[k]!r}"
            margin = np.asarray(model.model.predict(X, **RAW_OUTPUT[family]), dtype=np.float64)
            margin = margin[:, k] if margin.ndim == 2 else (margin if k == 1 else -margin)
            model_output = margin
        else:
            f, output = output_function(model, k)
            model_output = f(X)
        kind = "tree"
    else:
        f, output = output_function(model, k)
        rows, drawn = _background(pre, background, X, background_rows, np.random.default_rng(seed))
        note = f"{note}; {drawn}" if note and drawn else note or drawn
        masker = shap.maskers.Independent(rows, max_samples=len(rows))
        explainer = shap.PermutationExplainer(f, masker, seed=seed)
        evals = max_evals or max(500, 2 * X.shape[1] + 1)
        with _threads(model.torch):  # many small batches: torch's default threads wait on a busy machine
            result = explainer(X, max_evals=evals, silent=True)
            model_output = f(X)
        values = np.asarray(result.values, dtype=np.float64)
        base = float(np.asarray(result.base_values, dtype=np.float64).reshape(-1)[0])
        kind = "permutation"
        if not model.torch and family not in TREE_FAMILIES and explainer_name == "auto":
            note = (note + "; " if note else "") + f"family {family!r} has no tree explainer: permutation used"
    order, grouped = group_by_column(values, columns)
    return Shap(kind, output, features, values, base, order, grouped, model_output, X, note)


def check_explainer(model: RunModel, name: str) -> None:
    """Refuse an explainer the model cannot have, naming the ones it can."""
    family = str(model.meta.get("family", ""))
    fits = ["auto", "permutation"]
    if not model.torch and family in TREE_FAMILIES:
        fits.insert(1, "tree")
    if model.torch and deep_explainable(model.model):
        fits.insert(1, "deep")
    if name not in EXPLAINERS:
        raise DataError(f"--explainer {name!r} is not one of {', '.join(EXPLAINERS)}")
    if name not in fits:
        raise DataError(
            f"--explainer {name}: this {family or 'model'} model is explained by {', '.join(fits)} (tree: tree "
            f"families; deep: feed-forward torch networks of {', '.join(DEEP_LAYERS)} layers)"
        )


def deep_explainable(net: Any) -> bool:
    """Whether ``net`` is a torch ``Sequential`` of layers DeepLIFT has rules for (:data:`DEEP_LAYERS`)."""
    layers = list(net.children()) if type(net).__name__ == "Sequential" else []
    return bool(layers) and all(type(layer).__name__ in DEEP_LAYERS for layer in layers)


def _background(
    pre: Preprocessor, background: pd.DataFrame | None, X: np.ndarray, most: int, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    """The background rows as model inputs (``background``'s, else the explained rows), at most ``most`` of them
    drawn at random, and a note when they were drawn."""
    rows = pre.transform(background).astype(np.float64) if background is not None else X
    if len(rows) <= most:
        return rows, ""
    drawn = f"background: {most} of {len(rows)} rows drawn at random (--background-rows)"
    return rows[np.sort(rng.choice(len(rows), most, replace=False))], drawn


def deep_network(model: RunModel) -> Any:
    """The run's network with its explained output appended: the class probabilities (softmax), or a regression's
    value in the target's units (an affine layer of the saved mean and scale)."""
    import torch
    from torch import nn

    net = model.model.eval()
    if model.task == "classification":
        return nn.Sequential(net, nn.Softmax(dim=1)).eval()
    scale = nn.Linear(1, 1)
    with torch.no_grad():
        scale.weight.fill_(float(model.meta.get("target_std", 1.0)))
        scale.bias.fill_(float(model.meta.get("target_mean", 0.0)))
    return nn.Sequential(net, scale).eval()


def _deep(model: RunModel, X: np.ndarray, background: np.ndarray, k: int) -> tuple[np.ndarray, float, np.ndarray, str]:
    """DeepExplainer's values (rows x features) of output ``k``, its base value, the model's output and its name."""
    import shap
    import torch

    f, output = output_function(model, k)
    net = deep_network(model)
    with _threads(True):
        explainer = shap.DeepExplainer(net, torch.from_numpy(background.astype(np.float32)))
        raw = explainer.shap_values(torch.from_numpy(X.astype(np.float32)), check_additivity=False)
        model_output = f(X)
    values = np.asarray(raw, dtype=np.float64)
    values = values[:, :, k] if values.ndim == 3 else values
    base = float(np.atleast_1d(np.asarray(explainer.expected_value, dtype=np.float64))[k])
    return values, base, model_output, output


def _threads(torch: bool) -> AbstractContextManager[Any]:
    """torch's threads sized to the CPUs this process may use (:mod:`uaap.threads`); nothing for other models."""
    if not torch:
        return nullcontext()
    from uaap.threads import torch_threads

    return torch_threads()


def summary(result: Shap, frame: pd.DataFrame, row: int) -> dict[str, Any]:
    """The numbers of a report: per column mean |SHAP| and mean SHAP, the base value and one row's values."""
    mean_abs = np.abs(result.grouped).mean(axis=0)
    ranked = [result.columns[i] for i in np.argsort(-mean_abs, kind="stable")]
    return {
        "explainer": result.explainer,
        "output": result.output,
        "rows": int(result.grouped.shape[0]),
        "base_value": result.base,
        "additivity_error": result.additivity_error,
        "note": result.note,
        "mean_abs_shap": {c: float(v) for c, v in zip(result.columns, mean_abs, strict=True)},
        "mean_shap": {c: float(v) for c, v in zip(result.columns, result.grouped.mean(axis=0), strict=True)},
        "ranking": ranked,
        "row": {
            "index": row,
            "output": float(result.model_output[row]),
            "values": {c: float(v) for c, v in zip(result.columns, result.grouped[row], strict=True)},
            "data": {c: _shown(frame[c].iloc[row]) for c in result.columns if c in frame.columns},
        },
    }


def _shown(value: Any) -> Any:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def plots(result: Shap, frame: pd.DataFrame, row: int, folder: Path, title: str) -> dict[str, Callable[[Path], Any]]:
    """Writers of the beeswarm (summary), bar and waterfall (row ``row``) plots, by file name."""
    import pandas as pd

    numeric = np.full(result.grouped.shape, np.nan)
    shown = np.empty(result.grouped.shape, dtype=object)
    for j, c in enumerate(result.columns):
        if c in frame.columns:
            numbers = pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64)
            numeric[:, j] = numbers
            shown[:, j] = [
                "missing" if t != t or t is None else (f"{n:.4g}" if n == n else str(t))
                for t, n in zip(frame[c].to_numpy(), numbers, strict=True)
            ]
    import warnings

    import shap

    explanation = shap.Explanation(
        values=result.grouped, base_values=np.full(len(result.grouped), result.base), data=numeric,
        display_data=shown, feature_names=result.columns,
    )  # fmt: skip

    def draw(kind: str) -> Callable[[Path], Any]:
        def write(path: Path) -> Path:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            plt.close("all")
            if kind == "summary":
                with warnings.catch_warnings():  # a categorical column has no numeric value to colour by: grey
                    warnings.simplefilter("ignore", RuntimeWarning)
                    shap.plots.beeswarm(explanation, max_display=15, show=False)
            elif kind == "bar":
                shap.plots.bar(explanation, max_display=15, show=False)
            elif kind == "dependence":  # the most important column with numbers: its SHAP value against its value
                j = result.columns.index(dependent)  # numbers on the axis, not the display texts
                column = shap.Explanation(values=result.grouped[:, j], base_values=np.full(len(result.grouped),
                                          result.base), data=numeric[:, j], feature_names=dependent)  # fmt: skip
                shap.plots.scatter(column, show=False, **zoom)
            elif kind == "force":
                shap.plots.force(
                    result.base, result.grouped[row], features=shown[row], feature_names=result.columns,
                    matplotlib=True, show=False, text_rotation=20,
                )  # fmt: skip
            else:
                shap.plots.waterfall(explanation[row], max_display=15, show=False)
            fig = plt.gcf()
            label = {"summary": "SHAP values per row", "bar": "mean |SHAP|", "waterfall": f"row {row}",
                     "dependence": f"SHAP of {dependent} against its value{outside}",
                     "force": f"row {row}"}[kind]  # fmt: skip
            fig.suptitle(f"{title}\n{label}: {result.output} ({result.explainer} explainer)", fontsize=9)
            fig.set_size_inches(max(fig.get_size_inches()[0], 8.0), fig.get_size_inches()[1] + 0.6)
            fig.tight_layout()
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            return path

        return write

    mean_abs = np.abs(result.grouped).mean(axis=0)
    numbered = [j for j in np.argsort(-mean_abs, kind="stable") if np.isfinite(numeric[:, j]).any()]
    dependent = result.columns[numbered[0]] if numbered else ""
    zoom, outside = _zoom(numeric[:, numbered[0]]) if numbered else ({}, "")
    kinds = ("summary", "bar", "waterfall", "force", *(("dependence",) if dependent else ()))
    return {f"shap-{kind}.png": draw(kind) for kind in kinds}


def _zoom(values: np.ndarray) -> tuple[dict[str, float], str]:
    """The dependence plot's x range when a few far values would squeeze the rest into a sliver: the 1st to 99th
    percentile, padded, and the words that say how many rows lie outside it (none: the whole range, no words)."""
    finite = values[np.isfinite(values)]
    if len(finite) < 20:
        return {}, ""
    low, high = (float(v) for v in np.percentile(finite, [1, 99]))
    if high <= low or float(finite.max() - finite.min()) <= 3 * (high - low):
        return {}, ""
    pad = 0.05 * (high - low)
    outside = int(((finite < low - pad) | (finite > high + pad)).sum())
    return {"xmin": low - pad, "xmax": high + pad}, f" ({outside} far values outside the 1st-99th percentile shown)"


def check_row(row: int, rows: int) -> int:
    """A valid row index for the waterfall plot."""
    if not 0 <= row < rows:
        raise DataError(f"--row {row} is outside the {rows} rows explained (0..{rows - 1})")
    return row
