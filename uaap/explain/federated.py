"""Federated explanations: each client explains the global model on its own rows and sends only sums.

Per raw column and per output (each class's probability, or a regression's value), a client sends the sum of
|SHAP| and the sum of SHAP over its rows, the sum of the model's outputs, and its row count; per gridded column
(:mod:`uaap.explain.pdp`) and grid value, the sum of the outputs with the column set to that value. The server
sums the clients' answers (in the clear, or as one CKKS ciphertext under secure aggregation) and divides the
totals once: mean |SHAP|, mean SHAP and the PDP are means over rows, so they equal what the pooled rows give.

What does not add up, and so is not federated: medians or quantiles of SHAP values (a beeswarm's spread), ICE
curves (one per row: they stay where the row is), one row's waterfall, SHAP interaction values' ordering, and a
ranking computed per client (ranks of sums are not sums of ranks: only the summed totals are ranked).

Everything that makes a SHAP value must be the same everywhere for the sums to be those of the pooled rows:

* the background is one row, the federation's typical row: the preprocessor's output for a row whose every
  column is missing (numeric columns take the imputed value the federated fit chose, e.g. the median from the
  summed histograms; categories take the fill category), known to every client through the plan;
* the explainer is shap's ``PermutationExplainer`` reseeded for each row, so a row's values do not depend on
  which client holds it or where it sits in that client's table.

SHAP values of the typical-row background are interventional: each row's values add up to its output minus the
output at the typical row (the base value).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from uaap.data.preprocess import Preprocessor, Stats
    from uaap.monitor.runmodel import RunModel

ROWS = ":rows"
SHAP_ABS = "shap.abs"  # columns x outputs: sum over rows of |SHAP|
SHAP_SUM = "shap.sum"  # columns x outputs: sum over rows of SHAP
OUTPUT_SUM = "output.sum"  # outputs: sum over rows of the model's outputs
PDP = "pdp."  # pdp.<column>: grid x outputs, sum over rows of the outputs with the column at each grid value
MAX_EVALS = 0  # 0: shap's default budget, max(500, 2 x features + 1) evaluations a row


def baseline(pre: Preprocessor) -> np.ndarray:
    """The background row (1 x model inputs): the preprocessor's output for a row whose columns are all missing."""
    import pandas as pd

    empty = pd.DataFrame({c: pd.Series([None], dtype=object) for c in pre.input_columns})
    row = np.asarray(pre.transform(empty), dtype=np.float64)
    if row.shape[0] != 1 or not np.isfinite(row).all():
        raise DataError(
            "the preprocessor gives no finite typical row (every column missing); it cannot be a background"
        )
    return row


def output_names(model: RunModel) -> list[str]:
    """The explained outputs: each class's probability, or the regression's value."""
    return [f"P({c})" for c in model.classes] if model.task == "classification" else [model.target]


def shap_values(
    model: RunModel, frame: pd.DataFrame, *, seed: int = 0, max_evals: int = MAX_EVALS
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Per raw column SHAP values of ``frame``'s rows against the typical row, each row explained on its own.

    Returns the columns, the values (rows x columns x outputs), the base value (outputs) and the model's outputs
    (rows x outputs).
    """
    import shap

    from uaap.explain.pdp import model_outputs
    from uaap.explain.shapley import _threads, feature_columns, group_by_column

    pre = model.preprocessor
    X = np.asarray(pre.transform(frame), dtype=np.float64)
    f = model_outputs(model)
    background = baseline(pre)
    base = f(background)[0]
    features = feature_columns(pre)
    raw = np.zeros((len(X), X.shape[1], len(base)))
    evals = max_evals or max(500, 2 * X.shape[1] + 1)
    explainer = shap.PermutationExplainer(f, shap.maskers.Independent(background, max_samples=1), seed=seed)
    with _threads(model.torch):
        for i in range(len(X)):
            np.random.seed(seed)  # noqa: NPY002  # shap's PermutationExplainer shuffles with NumPy's global RNG
            result = explainer(X[i : i + 1], max_evals=evals, silent=True)
            raw[i] = np.asarray(result.values, dtype=np.float64).reshape(X.shape[1], len(base))
        out = f(X) if len(X) else np.zeros((0, len(base)))
    columns = list(dict.fromkeys(features))
    values = np.zeros((len(X), len(columns), len(base)))
    for k in range(len(base)):  # one model input's values summed into its raw column
        _, values[:, :, k] = group_by_column(raw[:, :, k], features)
    return columns, values, base, out


def layout(model: RunModel, grids: Mapping[str, Sequence[Any]]) -> dict[str, tuple[int, ...]]:
    """The arrays a client's explanation sums hold, by name, in the order they are encrypted."""
    from uaap.explain.shapley import feature_columns

    columns = len(dict.fromkeys(feature_columns(model.preprocessor)))
    k = len(output_names(model))
    shapes: dict[str, tuple[int, ...]] = {SHAP_ABS: (columns, k), SHAP_SUM: (columns, k), OUTPUT_SUM: (k,)}
    shapes.update({f"{PDP}{c}": (len(g), k) for c, g in grids.items()})
    return shapes


def explain_sums(
    model: RunModel,
    frame: pd.DataFrame,
    grids: Mapping[str, Sequence[Any]],
    *,
    seed: int = 0,
    max_evals: int = MAX_EVALS,
) -> Stats:
    """One client's answer: sums of |SHAP|, SHAP and outputs over its rows, the PDP sums on ``grids``, its rows."""
    from uaap.explain.pdp import ice

    _, values, _, out = shap_values(model, frame, seed=seed, max_evals=max_evals)
    stats: Stats = {
        SHAP_ABS: np.abs(values).sum(axis=0),
        SHAP_SUM: values.sum(axis=0),
        OUTPUT_SUM: out.sum(axis=0),
        ROWS: np.array([float(len(frame))]),
    }
    for column, grid in grids.items():
        stats[f"{PDP}{column}"] = ice(model, frame, column, list(grid)).sum(axis=0)
    return stats


def check_explain_sums(answer: Any, shapes: Mapping[str, tuple[int, ...]], *, classification: bool) -> Stats:
    """A client's sums checked before they are summed, or a DataError saying what is wrong: exactly the arrays
    ``shapes`` names with those shapes, finite, a whole row count, |sum of SHAP| <= sum of |SHAP|, and for a
    classifier outputs that are probabilities summed over at most that many rows."""
    if not isinstance(answer, Mapping) or set(answer) != {*shapes, ROWS}:
        got = sorted(map(str, answer)) if isinstance(answer, Mapping) else type(answer).__name__
        raise DataError(f"explanation sums must hold exactly {sorted({*shapes, ROWS})}; got {got}")
    out: Stats = {}
    for key, shape in {**shapes, ROWS: (1,)}.items():
        try:
            array = np.asarray(answer[key], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"explanation sums {key!r} are not numbers") from exc
        if array.shape != shape or not np.isfinite(array).all():
            raise DataError(f"explanation sums {key!r} must be {shape} finite numbers; got shape {array.shape}")
        out[key] = array
    rows = float(out[ROWS][0])
    if rows < 0 or rows != round(rows):
        raise DataError(f"the row count {rows!r} must be a whole non-negative number")
    if (np.abs(out[SHAP_SUM]) > out[SHAP_ABS] + 1e-9 * max(1.0, rows)).any():
        raise DataError("a |sum of SHAP values| exceeds the sum of their absolute values")
    if classification:
        for key, array in out.items():
            if key != ROWS and key not in (SHAP_ABS, SHAP_SUM) and ((array < -1e-9) | (array > rows + 1e-9)).any():
                raise DataError(
                    f"explanation sums {key!r}: probabilities summed over {rows:g} rows leave [0, {rows:g}]"
                )
    return out


def explain_report(
    total: Stats,
    model: RunModel,
    grids: Mapping[str, Sequence[Any]],
    k: int,
) -> dict[str, Any]:
    """The federation's explanation from summed totals (divided once): per column mean |SHAP| and mean SHAP of
    output ``k`` (and per output), the base value, the mean output and each gridded column's PDP."""
    from uaap.explain.shapley import feature_columns

    rows = float(total[ROWS][0])
    if rows < 1:
        raise DataError("no client explained a row; the federation's clients hold no usable rows")
    columns = list(dict.fromkeys(feature_columns(model.preprocessor)))
    names = output_names(model)
    mean_abs = total[SHAP_ABS] / rows
    mean = total[SHAP_SUM] / rows
    order = sorted(range(len(columns)), key=lambda i: -mean_abs[i, k])
    report: dict[str, Any] = {
        "explainer": "permutation (one typical-row background, reseeded per row)",
        "output": names[k],
        "outputs": names,
        "rows": int(round(rows)),
        "mean_output": dict(zip(names, (total[OUTPUT_SUM] / rows).tolist(), strict=True)),
        "mean_abs_shap": {columns[i]: float(mean_abs[i, k]) for i in order},
        "mean_shap": {columns[i]: float(mean[i, k]) for i in order},
        "mean_shap_by_output": {names[j]: {columns[i]: float(mean[i, j]) for i in order} for j in range(len(names))},
        "ranking": [columns[i] for i in order],
        "pdp": {
            c: {"grid": list(g), "output": names[k], "pdp": (total[f"{PDP}{c}"][:, k] / rows).tolist()}
            for c, g in grids.items()
        },
    }
    # each row's values add up to its output minus the base value, so the base is the mean output minus the
    # summed mean SHAP: the server needs no model for it (under CKKS it has none)
    report["base_value"] = float(total[OUTPUT_SUM][k] / rows - mean[:, k].sum())
    return report


def open_sums(record: Any, hctx: Any, shapes: Mapping[str, tuple[int, ...]]) -> Stats:
    """The totals an encrypted sum holds, by name (key holders only: ``hctx`` is a secret CKKS context)."""
    from uaap.models.summed import decrypt_totals

    values = decrypt_totals(record, hctx)
    if [tuple(v.shape) for v in values] != [tuple(s) for s in shapes.values()]:
        raise DataError(f"the encrypted sums hold arrays {[v.shape for v in values]}, not {list(shapes.values())}")
    return dict(zip(shapes, values, strict=True))


def plot_bar(report: Mapping[str, Any], path: Path, title: str) -> Path:
    """Mean |SHAP| per column (federated totals), largest on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["mean_abs_shap"])[::-1]
    values = [report["mean_abs_shap"][n] for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.5))
    ax.barh(names, values, color="tab:blue")
    ax.set_xlabel(f"mean |SHAP| ({report['output']}), from the clients' summed sums")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pdp(report: Mapping[str, Any], path: Path, title: str) -> Path:
    """Each gridded column's federated PDP in its own panel (ICE curves stay on the clients)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = list(report["pdp"].items())
    cols = min(3, len(items))
    rows = (len(items) + cols - 1) // cols
    # one y scale for all panels: a flat PDP must look flat beside a steep one
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False, sharey=True)
    for ax, (column, pdp) in zip(axes.flat, items, strict=False):
        grid = pdp["grid"]
        numeric = all(isinstance(v, float) for v in grid)
        xs = np.asarray(grid, dtype=np.float64) if numeric else np.arange(len(grid), dtype=np.float64)
        ax.plot(xs, pdp["pdp"], color="tab:red", marker=None if numeric else "o")
        if not numeric:
            ax.set_xticks(xs, [str(v) for v in grid], rotation=30, ha="right", fontsize=7)
        ax.set_xlabel(column)
        ax.set_ylabel(pdp["output"], fontsize=8)
    for ax in list(axes.flat)[len(items) :]:
        ax.set_visible(False)
    fig.suptitle(f"{title}\npartial dependence (ICE curves stay on the clients)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
