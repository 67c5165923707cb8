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

Permutation importance from sums: a client also sends the sum over its rows of the model's loss on the true target
(a classifier's log-loss of the true class's probability, clipped as scikit-learn's ``log_loss`` clips; a
regression's squared error in the target's units) and, per raw input column and repeat, the sum of that loss with the
column's values permuted among this client's own rows (through the fitted preprocessor, as the central
:mod:`uaap.explain.importance` shuffles raw columns). The server's importance of a column is its summed permuted
losses over the repeats, divided by the repeats, minus the summed base loss, over the rows: the increase of the mean
loss when the column is permuted. What that equals:

* the base loss is exactly the pooled rows' mean loss (a sum over rows);
* the permuted loss is that of a permutation *within each client* (stratified by client), not across the pooled
  rows: it equals pooled permutation importance only in expectation, and only when the clients' rows are
  exchangeable (drawn from one distribution). Under non-IID clients a column that separates the clients (a region
  each client lives in) loses less when shuffled within a client than across all of them, so its federated
  importance is lower. It is not the number scikit-learn's ``permutation_importance`` gives on the pooled rows
  (different permutations, and a loss, not accuracy or R^2).

The permutations are seeded by the request's seed and the column's name (:func:`permutations`), never by which
client answers, so a client's sums do not depend on the process that computes them.
"""

from __future__ import annotations

import zlib
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
LOSS = "loss.sum"  # (1,): sum over rows of the model's loss on the true target
LOSS_PERMUTED = "loss.permuted"  # input columns x repeats: sum over rows of the loss, the column permuted in-client
MAX_EVALS = 0  # 0: shap's default budget, max(500, 2 x features + 1) evaluations a row
REPEATS = 5  # permutations of each column
MAX_REPEATS = 100  # at most: each permutation predicts every row of a client again
EPS = float(np.finfo(np.float64).eps)  # scikit-learn's log_loss clips probabilities to [eps, 1 - eps]
MAX_LOG_LOSS = float(-np.log(EPS))  # the largest clipped log-loss of one row (about 36.04)


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


def layout(model: RunModel, grids: Mapping[str, Sequence[Any]], repeats: int = REPEATS) -> dict[str, tuple[int, ...]]:
    """The arrays a client's explanation sums hold, by name, in the order they are encrypted."""
    from uaap.explain.shapley import feature_columns

    columns = len(dict.fromkeys(feature_columns(model.preprocessor)))
    k = len(output_names(model))
    shapes: dict[str, tuple[int, ...]] = {SHAP_ABS: (columns, k), SHAP_SUM: (columns, k), OUTPUT_SUM: (k,)}
    shapes.update({f"{PDP}{c}": (len(g), k) for c, g in grids.items()})
    shapes.update({LOSS: (1,), LOSS_PERMUTED: (len(model.preprocessor.input_columns), repeats)})
    return shapes


def check_permutations(repeats: int, seed: int) -> None:
    """Refuse permutation settings the clients would refuse (``client/audit.py``), before any client is asked."""
    from uaap.errors import ConfigError

    if not 1 <= repeats <= MAX_REPEATS:
        raise ConfigError(f"--repeats {repeats}: give 1 to {MAX_REPEATS} permutations of each column")
    if not 0 <= seed < 2**32:
        raise ConfigError(f"--seed {seed}: give a whole number in 0..{2**32 - 1}")


def loss_name(model: RunModel) -> str:
    """The loss the permutation importance is the increase of."""
    return "log-loss" if model.task == "classification" else "squared error"


def loss_unit(model: RunModel) -> float:
    """What a client divides a regression's squared errors by before it sums them: the target's variance (the plan's
    std, squared), so sums of a large-valued target stay within what one CKKS ciphertext holds (its values under
    2**18); :func:`permutation_report` multiplies the totals back. 1 for a classifier's log-loss."""
    target = model.preprocessor.target_
    return float(target.std) ** 2 if model.task != "classification" and target is not None else 1.0


def row_losses(model: RunModel, frame: pd.DataFrame, y: np.ndarray) -> np.ndarray:
    """Each row's loss on its true target ``y`` (:func:`uaap.explain.importance.labels`): the log-loss of the true
    class's probability clipped to [eps, 1 - eps] as scikit-learn's ``log_loss`` does, or the squared error over the
    target's variance (:func:`loss_unit`). The model runs in float64 (:func:`uaap.explain.pdp.outputs`): a row's
    loss must not depend on the batch it was predicted in."""
    from uaap.explain.pdp import outputs

    out = outputs(model, frame)
    if model.task != "classification":
        return np.asarray((out[:, 0] - np.asarray(y, dtype=np.float64)) ** 2 / loss_unit(model), dtype=np.float64)
    index = {c: i for i, c in enumerate(model.classes)}
    unknown = sorted({str(v) for v in y if v not in index})
    if unknown:
        raise DataError(f"labels {unknown[:5]} are not among the model's classes {model.classes}")
    true = out[np.arange(len(out)), np.array([index[v] for v in y], dtype=np.int64)]
    return np.asarray(-np.log(np.clip(true, EPS, 1 - EPS)), dtype=np.float64)


def permutations(seed: int, column: str, rows: int, repeats: int) -> list[np.ndarray]:
    """The ``repeats`` row orders ``column``'s values take among ``rows`` rows: NumPy's default generator seeded with
    (``seed`` mod 2**32, the CRC-32 of the column's UTF-8 name), one ``permutation(rows)`` a repeat. Nothing of the
    client enters the seed: the same request gives the same orders in whichever process answers it."""
    rng = np.random.default_rng([seed % 2**32, zlib.crc32(column.encode("utf-8"))])
    return [rng.permutation(rows) for _ in range(repeats)]


def loss_sums(
    model: RunModel, frame: pd.DataFrame, *, seed: int = 0, repeats: int = REPEATS
) -> tuple[np.ndarray, np.ndarray]:
    """The sum of the loss over ``frame``'s rows (1,) and, per raw input column and repeat, the sum with the column's
    values permuted among these rows (columns x repeats). Needs the target column (central importance's
    :func:`~uaap.explain.importance.labels`)."""
    from uaap.explain.importance import labels
    from uaap.explain.shapley import _threads

    y = labels(model, frame)
    columns = list(model.preprocessor.input_columns)
    X = frame[columns].reset_index(drop=True)
    permuted = np.zeros((len(columns), repeats))
    with _threads(model.torch):
        base = np.array([row_losses(model, X, y).sum()]) if len(X) else np.zeros(1)
        if not len(X):
            return base, permuted
        shuffled = X.copy()  # one copy: the raw column moves (through the preprocessor, its one-hots together)
        for i, column in enumerate(columns):
            for r, order in enumerate(permutations(seed, column, len(X), repeats)):
                shuffled[column] = X[column].iloc[order].reset_index(drop=True)
                permuted[i, r] = row_losses(model, shuffled, y).sum()
            shuffled[column] = X[column]  # back in place before the next column moves
    return base, permuted


def explain_sums(
    model: RunModel,
    frame: pd.DataFrame,
    grids: Mapping[str, Sequence[Any]],
    *,
    seed: int = 0,
    max_evals: int = MAX_EVALS,
    repeats: int = REPEATS,
) -> Stats:
    """One client's answer: sums of |SHAP|, SHAP and outputs over its rows, the PDP sums on ``grids``, the base and
    permuted loss sums (:func:`loss_sums`), its rows."""
    from uaap.explain.pdp import ice

    base, permuted = loss_sums(model, frame, seed=seed, repeats=repeats)  # the labels first: refused before SHAP runs
    _, values, _, out = shap_values(model, frame, seed=seed, max_evals=max_evals)
    stats: Stats = {
        SHAP_ABS: np.abs(values).sum(axis=0),
        SHAP_SUM: values.sum(axis=0),
        OUTPUT_SUM: out.sum(axis=0),
        ROWS: np.array([float(len(frame))]),
    }
    for column, grid in grids.items():
        stats[f"{PDP}{column}"] = ice(model, frame, column, list(grid)).sum(axis=0)
    stats.update({LOSS: base, LOSS_PERMUTED: permuted})
    return stats


def check_explain_sums(answer: Any, shapes: Mapping[str, tuple[int, ...]], *, classification: bool) -> Stats:
    """A client's sums checked before they are summed, or a DataError saying what is wrong: exactly the arrays
    ``shapes`` names with those shapes, finite, a whole row count, |sum of SHAP| <= sum of |SHAP|, loss sums that
    are not negative, and for a classifier outputs that are probabilities summed over at most that many rows and
    log-losses of at most :data:`MAX_LOG_LOSS` a row."""
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
    for key in (LOSS, LOSS_PERMUTED):
        if key in out and (out[key] < 0).any():
            raise DataError(f"explanation sums {key!r}: a sum of losses is negative")
        if key in out and classification and (out[key] > MAX_LOG_LOSS * rows * (1 + 1e-12)).any():
            raise DataError(
                f"explanation sums {key!r}: log-losses summed over {rows:g} rows exceed {MAX_LOG_LOSS:.2f} a row"
            )
    if classification:
        for key, array in out.items():
            if key in (ROWS, SHAP_ABS, SHAP_SUM, LOSS, LOSS_PERMUTED):
                continue
            if ((array < -1e-9) | (array > rows + 1e-9)).any():
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
    if LOSS in total and LOSS_PERMUTED in total:
        report.update(permutation_report(total, model))
    return report


def permutation_report(total: Stats, model: RunModel) -> dict[str, Any]:
    """Permutation importance from summed losses: per raw column, (summed permuted loss / repeats - summed base
    loss) / rows, the increase of the mean loss when the column is permuted within each client; its std over the
    repeats (each repeat's summed permuted loss is one client-stratified permutation of the pooled rows)."""
    rows = float(total[ROWS][0])
    columns = list(model.preprocessor.input_columns)
    unit = loss_unit(model)  # back to the target's units
    permuted = np.asarray(total[LOSS_PERMUTED], dtype=np.float64) * unit
    base = float(total[LOSS][0]) * unit
    per_repeat = (permuted - base) / rows  # columns x repeats
    mean, std = per_repeat.mean(axis=1), per_repeat.std(axis=1)
    order = sorted(range(len(columns)), key=lambda i: -mean[i])
    return {
        "loss": loss_name(model),
        "base_loss": base / rows,
        "repeats": int(permuted.shape[1]),
        "permutation_importance": {columns[i]: float(mean[i]) for i in order},
        "permutation_importance_std": {columns[i]: float(std[i]) for i in order},
        "importance_ranking": [columns[i] for i in order],
        "permutation_note": (
            "increase of the mean loss when a column is permuted among each client's own rows (a permutation "
            "stratified by client): the base loss is the pooled rows' exactly; the importance equals the pooled "
            "rows' permutation importance only in expectation, when the clients' rows are exchangeable"
        ),
    }


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


def plot_importance(report: Mapping[str, Any], path: Path, title: str) -> Path:
    """Permutation importance per raw column (federated loss sums), largest on top, with its std over the repeats."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["permutation_importance"])[::-1]
    values = [report["permutation_importance"][n] for n in names]
    spread = [report["permutation_importance_std"][n] for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.8))
    ax.barh(names, values, xerr=spread, color="tab:orange")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(
        f"increase of mean {report['loss']} when permuted within each client (mean and std of {report['repeats']})"
    )
    ax.set_title(f"{title}\npermutation importance (base {report['loss']} {report['base_loss']:.4f})", fontsize=9)
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
