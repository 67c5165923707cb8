"""Partial dependence and ICE curves of a run's model on raw columns (through its fitted preprocessor).

For a column and a grid of its values, each row's ICE curve is the model's output with that column set to each
grid value and every other column as the row has it; the partial dependence (PDP) is the mean of the rows'
curves. A numeric column's grid is evenly spaced over [min, max] of the rows; a categorical column's grid is the
categories the preprocessor kept (its vocabulary). Dates and free text are not gridded.

The PDP is a mean of per-row values, so it federates: each client sums its rows' curves per grid point and
counts its rows, the server divides the totals once (:mod:`uaap.explain.federated`); with the grid from the
federation's merged extremes, the federated PDP equals this one on the pooled rows. ICE curves are per row: they
stay on the client that holds the row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from uaap.data.preprocess import ColumnPlan, Preprocessor
    from uaap.monitor.reports import Written
    from uaap.monitor.runmodel import RunModel

GRID_POINTS = 20  # grid values of a numeric column
ICE_DRAWN = 50  # ICE lines a plot draws (and the JSON keeps)


def gridded_columns(pre: Preprocessor) -> list[ColumnPlan]:
    """The columns a PDP can grid: numeric ones and categorical ones with a vocabulary (one-hot or ordinal)."""
    return [p for p in pre.plan_ if p.kind == "numeric" or (p.kind == "categorical" and p.vocabulary)]


def column_plan(pre: Preprocessor, column: str) -> ColumnPlan:
    """The plan of ``column``, or a DataError naming the columns a PDP can use."""
    plans = {p.name: p for p in gridded_columns(pre)}
    if column not in plans:
        raise DataError(
            f"--pdp {column!r}: partial dependence grids a numeric or categorical column of the run's table; "
            f"choose one of: {', '.join(plans) or '(none)'} (dates and free text are not gridded)"
        )
    return plans[column]


def grid_of(
    plan: ColumnPlan, low: float = float("nan"), high: float = float("nan"), points: int = GRID_POINTS
) -> list[Any]:
    """The grid of a column: ``points`` values evenly over [low, high] (numeric) or its kept categories."""
    if plan.kind == "categorical":
        return list(plan.vocabulary)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise DataError(f"column {plan.name!r} has no value in the rows; it has no partial dependence")
    return [float(v) for v in np.linspace(low, high, points)] if high > low else [float(low)]


def model_outputs(model: RunModel) -> Callable[[np.ndarray], np.ndarray]:
    """The model's outputs on model inputs (rows x features -> rows x outputs: class probabilities or the value).

    A torch network runs in float64 (a copy): in float32 a row's output moved by ~1e-7 with the batch it was in,
    and a federated sum must not depend on how the rows are split between clients.
    """
    if model.torch:
        import copy

        import torch

        net = copy.deepcopy(model.model).double().eval()

        def run(X: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = net(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float64)))
            return np.asarray(out.numpy(), dtype=np.float64)

        if model.task == "classification":
            return lambda X: np.asarray(torch.softmax(torch.from_numpy(run(X)), dim=1).numpy(), dtype=np.float64)
        mean, std = float(model.meta.get("target_mean", 0.0)), float(model.meta.get("target_std", 1.0))
        return lambda X: run(X).reshape(-1, 1) * std + mean
    if model.task == "classification":
        return lambda X: np.asarray(model.model.predict_proba(X), dtype=np.float64)
    return lambda X: np.asarray(model.model.predict(X), dtype=np.float64).reshape(-1, 1)


def outputs(model: RunModel, frame: pd.DataFrame) -> np.ndarray:
    """The model's outputs on raw rows (through its preprocessor): rows x classes, or rows x 1 for a regression."""
    return model_outputs(model)(np.asarray(model.preprocessor.transform(frame), dtype=np.float64))


def ice(model: RunModel, frame: pd.DataFrame, column: str, grid: list[Any]) -> np.ndarray:
    """Each row's curve: the model's outputs with ``column`` set to each grid value (rows x grid x outputs)."""
    if not len(frame):
        return np.zeros((0, len(grid), max(1, len(model.classes)) if model.task == "classification" else 1))
    stacked = frame.loc[frame.index.repeat(len(grid))].reset_index(drop=True)
    numeric = all(isinstance(v, float) for v in grid)
    stacked[column] = np.tile(np.asarray(grid, dtype=np.float64 if numeric else object), len(frame))
    values = outputs(model, stacked)
    return values.reshape(len(frame), len(grid), values.shape[1])


@dataclass(frozen=True)
class Dependence:
    """One column's ICE curves and PDP for the explained output (class ``k``, or the regression's value)."""

    column: str
    grid: list[Any]
    output: str
    curves: np.ndarray  # rows x grid
    pdp: np.ndarray  # grid

    def numbers(self, drawn: int = ICE_DRAWN) -> dict[str, Any]:
        """What the JSON keeps: the grid, the PDP and at most ``drawn`` rows' curves."""
        return {
            "grid": self.grid,
            "output": self.output,
            "pdp": [float(v) for v in self.pdp],
            "rows": int(len(self.curves)),
            "ice": [[float(v) for v in row] for row in self.curves[:drawn]],
        }


def dependence(model: RunModel, frame: pd.DataFrame, column: str, *, k: int, points: int = GRID_POINTS) -> Dependence:
    """The PDP and ICE curves of ``column`` on ``frame``'s rows, for class ``k``'s probability (or the value)."""
    plan = column_plan(model.preprocessor, column)
    if plan.kind == "numeric":
        x = np.asarray(frame[column], dtype=np.float64) if column in frame else np.array([])
        x = x[np.isfinite(x)]
        grid = grid_of(plan, float(x.min()) if x.size else np.nan, float(x.max()) if x.size else np.nan, points)
    else:
        grid = grid_of(plan)
    curves = ice(model, frame, column, grid)[:, :, k]
    output = f"P({model.classes[k]})" if model.task == "classification" else model.target
    return Dependence(column, grid, output, curves, curves.mean(axis=0))


def plot(dep: Dependence, path: Path, title: str, drawn: int = ICE_DRAWN) -> Path:
    """ICE curves (thin grey, at most ``drawn`` rows) under the PDP (thick), one figure per column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = all(isinstance(v, float) for v in dep.grid)
    xs = np.asarray(dep.grid, dtype=np.float64) if numeric else np.arange(len(dep.grid), dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in dep.curves[:drawn]:
        ax.plot(xs, row, color="0.6", linewidth=0.7, alpha=0.6, marker=None if numeric else ".")
    ax.plot(xs, dep.pdp, color="tab:red", linewidth=2.5, marker="o" if not numeric else None, label="PDP (mean)")
    ax.plot([], [], color="0.6", linewidth=0.7, label=f"ICE ({min(drawn, len(dep.curves))} of {len(dep.curves)} rows)")
    if not numeric:
        ax.set_xticks(xs, [str(v) for v in dep.grid], rotation=30, ha="right")
    ax.set_xlabel(dep.column)
    ax.set_ylabel(dep.output)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def check_request(run_id: str, columns: list[str], points: int, *, trust_pickle: bool = False) -> None:
    """Refuse bad ``--pdp`` columns or ``--grid-points`` before anything runs."""
    from uaap.errors import ConfigError
    from uaap.monitor.runmodel import load_run_model

    if points < 2:
        raise ConfigError(f"--grid-points {points}: give at least 2")
    pre = load_run_model(run_id, trust_pickle=trust_pickle).preprocessor
    for column in columns:
        column_plan(pre, column)


def explain_pdp(
    run_id: str,
    data: str,
    columns: list[str],
    *,
    target_class: str = "",
    points: int = GRID_POINTS,
    max_rows: int = 500,
    seed: int = 0,
    trust_pickle: bool = False,
) -> Written:
    """PDP and ICE curves of ``columns`` on ``data``'s rows (at most ``max_rows``, drawn as ``uaap explain`` draws
    them): ``pdp.json`` and ``pdp-COLUMN.png`` in the run folder's ``explain/``, logged to MLflow."""
    from uaap.explain.report import EXPLAIN_DIR
    from uaap.explain.shapley import choose_class
    from uaap.monitor.fairness import write_json
    from uaap.monitor.reports import Written, publish, read_table, safe_name
    from uaap.monitor.runmodel import load_run_model

    model = load_run_model(run_id, trust_pickle=trust_pickle)
    frame = read_table(data)
    if len(frame) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(frame), max_rows, replace=False))
        frame = frame.iloc[keep].reset_index(drop=True)
    k = choose_class(model, target_class) if model.task == "classification" else 0
    found = {c: dependence(model, frame, c, k=k, points=points) for c in dict.fromkeys(columns)}
    report = {"run_id": run_id, "data": data, "pdp": {c: d.numbers() for c, d in found.items()}}
    folder = model.run.path / EXPLAIN_DIR
    outputs: dict[Path, Any] = {folder / "pdp.json": lambda p: write_json(report, p)}
    for column, dep in found.items():
        title = f"run {run_id} on {Path(data).name}: partial dependence of {column} ({len(frame)} rows)"
        outputs[folder / f"pdp-{safe_name(column)}.png"] = lambda p, d=dep, t=title: plot(d, p, t)
    metrics = {f"pdp.{safe_name(c)}.range": float(d.pdp.max() - d.pdp.min()) for c, d in found.items()}
    files = publish(model, outputs, metrics, "pdp", {"data": data, "columns": list(found)})
    return Written(report, files)
