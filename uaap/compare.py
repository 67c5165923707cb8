"""The model comparator: runs side by side from MLflow (central, federated, DP levels, AutoML winners).

Every UAAP run is one top-level MLflow run tagged ``uaap.run_id`` and ``uaap.kind``; searches add
child runs (one per trial), which are left out here. Central runs, federated runs with server-side
evaluation and AutoML winners score on the same held-out test split of their dataset
(``uaap.data.load_split`` with the run's seed and test fraction), so their final ``accuracy`` is comparable; the
table says when seeds or test fractions differ. An encrypted federated run has no server-side evaluation (the
server never holds the plaintext model): its value is the clients' validation accuracy, and the table's
"measured on" column says so.

Regression runs have no accuracy: unless a metric is asked for, each run is compared on its task's headline
(accuracy, or R2 for a regression target: :data:`uaap.metrics.HEADLINE`), the column is named for what it holds
(``accuracy``, ``r2``, or ``accuracy | r2`` with each value prefixed when the tasks mix), and regression runs also
show their RMSE in the target's units. Lower-is-better metrics (``rmse``, ``mae``, ``mse``, ``loss``, ``mase``,
``smape``) sort ascending.

Forecasting runs (``--task forecast``: ``uaap train``'s horizon forecast, a federation's final round (its clients'
counts summed), ``uaap automl``'s winning forecaster) are compared on their MASE, and the table adds their MAE,
sMAPE (%) and MASE columns, each from the counts summed over every series' held-out tail
(:mod:`uaap.forecast.metrics`). Text runs (a column read with ``--text-columns hashing``
or ``tfidf``) are classification runs: their label says how the text was read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uaap.errors import WorkspaceError

TEST = "test split"
VALIDATION = "clients' validation"
RUN_TAG = "uaap.run_id"
KIND_TAG = "uaap.kind"
PARENT_TAG = "mlflow.parentRunId"
LOWER_IS_BETTER = ("loss", "rmse", "mae", "mse", "mase", "smape")
FORECAST = ("mae", "smape", "mase")  # a forecasting run's columns, from its horizon forecast's summed counts


@dataclass(frozen=True)
class RunRow:
    """One run as the comparator shows it."""

    run_id: str
    mlflow_id: str
    kind: str
    label: str
    dataset: str
    model: str
    privacy: str
    value: float | None
    epsilon: float | None
    steps: int
    seconds: float | None
    status: str
    split: str
    curve: list[tuple[int, float]] = field(default_factory=list)
    measured_on: str = TEST  # what ``value`` was measured on: TEST or VALIDATION
    metric: str = "accuracy"  # what ``value`` is (the asked metric, or the run's task's headline)
    rmse: float | None = None  # a regression run's final RMSE, in the target's units
    forecast: dict[str, float] = field(default_factory=dict)  # a forecasting run's MAE, sMAPE and MASE (FORECAST)
    ensembles: dict[str, float] = field(default_factory=dict)  # an AutoML run's ensemble_* metrics (--ensembles)


def _final_key(kind: str, metric: str) -> list[str]:
    """Metric keys holding a run's final held-out test value, by kind (first present wins)."""
    if kind == "automl":
        return [f"test_{metric}"]
    if kind == "tune-federated":
        return ["best_score"]
    return [f"central_{metric}", f"fed_{metric}"]


def _privacy(params: dict[str, str]) -> str:
    parts = []
    if params.get("dp-local", "False") == "True":
        parts.append(f"DP-SGD eps<={float(params.get('dp-target-epsilon', 'nan')):g}")
    if params.get("dp-central", "False") == "True":
        parts.append(f"central DP z={float(params.get('dp-noise-multiplier', 'nan')):g}")
    if params.get("secure-aggregation", "none") not in ("none", ""):
        parts.append(f"HE {params['secure-aggregation']}")
    return ", ".join(parts) or "none"


def _label(kind: str, run_id: str, params: dict[str, str], tags: dict[str, str], privacy: str) -> str:
    if kind == "automl":
        return f"AutoML winner: {tags.get('uaap.best_family', params.get('best_family', '?'))}"
    if kind == "tune-federated":
        return f"federated search best ({params.get('tuned', '')})"
    model = params.get("model", "?")
    if kind == "federated":
        text = f"federated {params.get('strategy', '')} {model}, {params.get('num-clients', '?')} clients"
    else:
        text = f"central {model}"
    if params.get("text-columns") in ("hashing", "tfidf"):
        text += f", text {params['text-columns']}"
    return text + ("" if privacy == "none" else f" [{privacy}]")


def collect_runs(
    run_ids: Sequence[str] = (),
    *,
    experiment: str | None = None,
    kinds: Sequence[str] = (),
    dataset: str | None = None,
    metric: str = "",
    limit: int = 50,
) -> list[RunRow]:
    """Top-level UAAP runs from MLflow (newest first), filtered by id, experiment, kind and dataset.

    ``metric`` empty: each run's task's headline (accuracy, or R2 for regression)."""
    import mlflow

    from uaap.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri())
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise WorkspaceError(
                f"MLflow experiment {experiment!r} does not exist at {tracking_uri()}; "
                f"experiments: {', '.join(names) or 'none yet'}"
            )
        exp_ids = [exp.experiment_id]
    else:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
    if not exp_ids:
        return []
    runs = client.search_runs(exp_ids, max_results=5000, order_by=["attributes.start_time DESC"])
    wanted = set(run_ids)
    rows: list[RunRow] = []
    for run in runs:
        tags = dict(run.data.tags)
        if PARENT_TAG in tags or RUN_TAG not in tags:
            continue
        run_id, kind = tags[RUN_TAG], tags.get(KIND_TAG, "?")
        params = dict(run.data.params)
        if wanted and run_id not in wanted:
            continue
        if kinds and kind not in kinds:
            continue
        if dataset and params.get("dataset") != dataset:
            continue
        rows.append(_row(client, run, run_id, kind, params, tags, metric))
        if len(rows) >= limit:
            break
    missing = wanted - {r.run_id for r in rows}
    if missing:
        raise WorkspaceError(
            f"run(s) {', '.join(sorted(missing))} not found in MLflow at {tracking_uri()}; list them with `uaap runs`"
        )
    return rows


def _row(
    client: Any, run: Any, run_id: str, kind: str, params: dict[str, str], tags: dict[str, str], metric: str
) -> RunRow:
    metrics = dict(run.data.metrics)
    value, curve_key = None, None
    regression = any(k in metrics for k in _final_key(kind, "r2")) and not any(
        k in metrics for k in _final_key(kind, "accuracy")
    )
    forecast = _forecast_metrics(kind, metrics)
    metric = metric or ("mase" if forecast else "r2" if regression else "accuracy")
    horizon = _final_key(kind, f"forecast-{metric}") if forecast and kind != "automl" else []
    for key in horizon + _final_key(kind, metric):  # a forecast's horizon metric, else its one-step windows' one
        if key in metrics:
            value, curve_key = float(metrics[key]), key
            break
    rmse = next((float(metrics[k]) for k in _final_key(kind, "rmse") if k in metrics), None) if regression else None
    if forecast:  # the horizon forecast's, in the series' units (not the one-step windows', which are scaled)
        rmse = forecast.pop("rmse", None)
    curve: list[tuple[int, float]] = []
    if curve_key is not None and kind in ("central", "federated"):
        history = client.get_metric_history(run.info.run_id, curve_key)
        by_step = {int(m.step): float(m.value) for m in history}
        curve = sorted(by_step.items())
    epsilon = next((float(v) for k, v in metrics.items() if k.endswith("epsilon")), None)
    seconds = (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None
    privacy = _privacy(params)
    return RunRow(
        run_id=run_id,
        mlflow_id=run.info.run_id,
        kind=kind,
        label=_label(kind, run_id, params, tags, privacy),
        dataset=params.get("dataset", "?"),
        model=params.get("model", params.get("best_family", tags.get("uaap.best_family", "-"))),
        privacy=privacy,
        value=value,
        epsilon=epsilon,
        steps=max((s for s, _ in curve), default=0),
        seconds=seconds,
        status=tags.get("uaap.status", run.info.status.lower()),
        split=f"seed {params.get('seed', '?')}, test {params.get('test-fraction', '?')}",
        curve=curve,
        # a forecast is always scored on every series' held-out tail, in a federation by the clients that hold them
        measured_on=VALIDATION if curve_key and curve_key.startswith("fed_") and not forecast else TEST,
        metric=metric,
        rmse=rmse,
        forecast=forecast,
        ensembles={k: float(v) for k, v in metrics.items() if k.startswith("ensemble_")},
    )


def _forecast_metrics(kind: str, metrics: dict[str, float]) -> dict[str, float]:
    """A forecasting run's MAE, sMAPE and MASE (``uaap train``: central_forecast-*, a federation: fed_forecast-*, the
    final round's; AutoML: test_*), else empty."""
    prefixes = ["test_"] if kind == "automl" else ["central_forecast-", "fed_forecast-"]
    for prefix in prefixes:
        if f"{prefix}mase" in metrics:
            return {k: float(metrics[f"{prefix}{k}"]) for k in (*FORECAST, "rmse") if f"{prefix}{k}" in metrics}
    return {}


def metric_name(rows: Sequence[RunRow], metric: str = "") -> str:
    """What the value column holds: ``metric``, or the rows' metrics (``accuracy``, ``r2``, ``accuracy | r2``)."""
    return metric or " | ".join(sorted({r.metric for r in rows})) or "accuracy"


def compare_table(rows: Sequence[RunRow], metric: str = "") -> Any:
    """A rich table, best first within each dataset."""
    from rich.table import Table

    name = metric_name(rows, metric)
    mixed = " | " in name
    with_rmse = any(r.rmse is not None for r in rows) and name != "rmse"
    forecasts = ("MAE", "sMAPE %", "MASE") if any(r.forecast for r in rows) else ()
    table = Table(title=f"runs compared on their final {name}")
    columns = ("run", "kind", "dataset", "what", "privacy", name, *(("rmse",) if with_rmse else ()), *forecasts,
               "measured on")  # fmt: skip
    for col in (*columns, "epsilon", "rounds/epochs", "seconds", "split"):
        table.add_column(
            col,
            justify="right" if col in (name, "rmse", *forecasts, "epsilon", "rounds/epochs", "seconds") else "left",
            no_wrap=col == "run",
        )
    for row in sort_rows(rows):
        value = "-" if row.value is None else (f"{row.metric} " if mixed else "") + f"{row.value:.4f}"
        rmse = ("-" if row.rmse is None else f"{row.rmse:.4g}",) if with_rmse else ()
        fc = tuple("-" if k not in row.forecast else f"{row.forecast[k]:.4g}" for k in FORECAST) if forecasts else ()
        table.add_row(
            row.run_id,
            row.kind,
            row.dataset,
            row.label,
            row.privacy,
            value,
            *rmse,
            *fc,
            "-" if row.value is None else row.measured_on,
            "-" if row.epsilon is None else f"{row.epsilon:.3f}",
            str(row.steps or "-"),
            "-" if row.seconds is None else f"{row.seconds:.0f}",
            row.split,
        )
    notes = []
    splits = {(r.dataset, r.split) for r in rows}
    if len(splits) > len({r.dataset for r in rows}):
        notes.append("some runs on one dataset used different seeds/test fractions (different test rows)")
    if any(r.measured_on == VALIDATION and r.value is not None for r in rows):
        notes.append(
            "clients' validation: an encrypted run's server never holds its model; a key holder tests it on the "
            "test split after `uaap keys decrypt-model`"
        )
    if notes:
        table.caption = "note: " + "; ".join(notes)
    return table


def family_rows(rows: Sequence[RunRow]) -> list[dict[str, Any]]:
    """Central against federated for the same family and data: per (dataset, model, metric), each kind's best final
    value on the test split, and federated minus central (a run measured on the clients' validation rows is left
    out: its rows are not the central run's)."""
    best: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in rows:
        if r.value is None or r.measured_on != TEST:
            continue
        lower = r.metric in LOWER_IS_BETTER
        kinds = best.setdefault((r.dataset, r.model, r.metric), {})
        if r.kind not in kinds or (r.value < kinds[r.kind] if lower else r.value > kinds[r.kind]):
            kinds[r.kind] = r.value
    out = []
    for (dataset, model, metric), kinds in sorted(best.items()):
        central, fed = kinds.get("central"), kinds.get("federated")
        gap = None if central is None or fed is None else fed - central
        out.append({"dataset": dataset, "family": model, "metric": metric, "central": central, "federated": fed,
                    "automl": kinds.get("automl"), "federated - central": gap})  # fmt: skip
    return out


def family_table(rows: Sequence[RunRow]) -> Any:
    """A rich table of :func:`family_rows`: each family's central and federated result side by side."""
    from rich.table import Table

    table = Table(title="central vs federated, per family and data set (best run of each kind, test split)")
    cols = ("dataset", "family", "metric", "central", "federated", "automl", "federated - central")
    for col in cols:
        table.add_column(col, justify="left" if col in cols[:3] else "right")
    for row in family_rows(rows):
        table.add_row(*(f"{v:+.4f}" if k == cols[-1] and v is not None else "-" if v is None else
                        f"{v:.4f}" if isinstance(v, float) else str(v) for k, v in row.items()))  # fmt: skip
    return table


def ensemble_gain_table(rows: Sequence[RunRow]) -> Any:
    """A rich table of the AutoML runs that fitted ensembles (``uaap automl --ensembles``): the best single family,
    voting and stacking on the same held-out rows, and each ensemble's gain over that family; None without any."""
    from rich.table import Table

    runs = [r for r in rows if "ensemble_best_single_test" in r.ensembles]
    if not runs:
        return None
    table = Table(title="AutoML ensembles against their best single family (same held-out rows)")
    cols = ("run", "dataset", "best single", "voting", "stacking", "voting gain", "stacking gain")
    for col in cols:
        table.add_column(col, justify="left" if col in cols[:2] else "right")
    for r in runs:
        e = r.ensembles
        table.add_row(r.run_id, r.dataset, f"{e['ensemble_best_single_test']:.4f}",
                      f"{e['ensemble_voting_test']:.4f}", f"{e['ensemble_stacking_test']:.4f}",
                      f"{e['ensemble_voting_gain']:+.4f}", f"{e['ensemble_stacking_gain']:+.4f}")  # fmt: skip
    return table


def sort_rows(rows: Sequence[RunRow]) -> list[RunRow]:
    """Grouped by dataset, best value first (runs without a value last; lower first for an error or a loss)."""

    def key(r: RunRow) -> tuple[str, bool, float]:
        sign = 1.0 if r.metric in LOWER_IS_BETTER else -1.0
        return (r.dataset, r.value is None, sign * (r.value or 0.0))

    return sorted(rows, key=key)


def compare_plot(rows: Sequence[RunRow], out: Path | None = None, metric: str = "") -> Path:
    """PNG: final test metric per run (bars, coloured by kind) and per-round/epoch curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from uaap import workspace

    metric = metric_name(rows, metric)
    out = out or workspace.home() / "compare.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    ordered = sort_rows(rows)
    colors = {"central": "#4c72b0", "federated": "#55a868", "automl": "#c44e52", "tune-federated": "#8172b2"}
    fig, (bars, curves) = plt.subplots(
        1, 2, figsize=(13, max(3.5, 0.45 * len(ordered) + 1.5)), dpi=110, gridspec_kw={"width_ratios": [1.1, 1]}
    )
    values = [r.value if r.value is not None else math.nan for r in ordered]
    names = [
        f"{r.label} ({r.dataset}, {r.run_id[-4:]}{', validation' if r.measured_on == VALIDATION else ''})"
        for r in ordered
    ]
    ypos = list(range(len(ordered)))[::-1]
    bars.barh(ypos, [0 if math.isnan(v) else v for v in values], color=[colors.get(r.kind, "grey") for r in ordered])
    for y, v in zip(ypos, values, strict=True):
        bars.text(0.01 if math.isnan(v) else v, y, " n/a" if math.isnan(v) else f" {v:.3f}", va="center", fontsize=8)
    bars.set_yticks(ypos, names, fontsize=8)
    finite = [v for v in values if not math.isnan(v)]
    if metric in LOWER_IS_BETTER:  # errors and losses have no upper bound
        bars.set_xlim(0, max(finite or [1]) * 1.15)
    else:  # accuracy and R2 reach 1; R2 can be negative
        bars.set_xlim(min([0.0, *finite]) * 1.1, 1.08)
    bars.set_xlabel(f"final {metric} (test split; clients' validation where the name says so)")
    bars.set_title("final result per run")
    for kind, color in colors.items():
        if any(r.kind == kind for r in ordered):
            bars.bar(0, 0, color=color, label=kind)
    bars.legend(fontsize=8, loc="lower right")
    drawn = False
    for r in ordered:
        if r.curve:
            xs, ys = zip(*r.curve, strict=True)
            curves.plot(xs, ys, marker="." if len(xs) < 40 else None, label=f"{r.label} ({r.run_id[-4:]})")
            drawn = True
    curves.set_xlabel("round (federated) / epoch (central)")
    curves.set_ylabel(metric)
    curves.set_title("learning curves")
    curves.grid(alpha=0.3)
    if drawn:
        curves.legend(fontsize=7, loc="lower right")
    else:
        curves.text(0.5, 0.5, "no per-round history", ha="center", va="center", transform=curves.transAxes)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
