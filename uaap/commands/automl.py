"""``uaap automl`` and ``uaap compare``: search on one machine or cluster, runs side by side.

The federated search (``uaap tune-federated``) runs a Flower simulation per trial, so it lives on the floor
above and registers through the ``uaap.commands`` entry points (see :mod:`uaap.cli`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from uaap.errors import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``automl`` and ``compare`` commands."""
    _register_automl(sub)
    _register_compare(sub)


# ---- automl ------------------------------------------------------------------------------------


def _register_automl(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from uaap.automl.cv import CV_METHODS, METRICS
    from uaap.automl.families import CLASSIFICATION_FAMILIES, REGRESSION_FAMILIES
    from uaap.automl.search import SCHEDULERS, SEARCHES
    from uaap.commands.common import add_config_flags

    p = sub.add_parser("automl", help="search model families and hyperparameters on Ray Tune")
    add_config_flags(p, command="automl")  # data, seed and tracking settings from the run schema
    search = p.add_argument_group("search")
    search.add_argument("--search", choices=SEARCHES, default="tpe", help="tpe (Optuna, Bayesian), random or grid")
    search.add_argument("--scheduler", choices=SCHEDULERS, default="asha", help="early stopping (default asha)")
    search.add_argument("--time-budget", type=float, default=None, help="seconds of search (default 120)")
    search.add_argument("--trials", type=int, default=0, help="trial budget (0 = as many as the time allows)")
    search.add_argument("--cv", choices=CV_METHODS, default="stratified", help="cross-validation (default stratified)")
    search.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    search.add_argument(
        "--metric", choices=tuple(METRICS), default="", help="what to optimise (default accuracy; regression: r2)"
    )
    search.add_argument(
        "--families",
        default="",
        help=f"comma-separated model families (default {','.join(CLASSIFICATION_FAMILIES)}; regression: "
        f"{','.join(REGRESSION_FAMILIES)})",
    )
    search.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="JSON",
        help='a configuration to try first, e.g. \'{"family": "logreg", "logreg__C": 0.5}\' (repeatable)',
    )
    search.add_argument(
        "--no-warm-start",
        dest="warm_start",
        action="store_false",
        help="do not start from known-good candidates (incl. scikit-learn's defaults)",
    )
    search.add_argument("--concurrency", type=int, default=0, help="trials at once (default: the cluster's CPUs)")
    p.add_argument("--workers", type=int, default=0, help="Ray Train workers for a winning XGBoost model (0 = local)")
    p.add_argument("--report-every", type=int, default=10, help="XGBoost rounds between Ray Train reports")
    p.add_argument("--top", type=int, default=10, help="leaderboard rows to print (default 10)")
    p.add_argument("--ensembles", action="store_true",
                   help="also fit voting and stacking ensembles of the best families and score them beside them "
                   "on the held-out rows")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="print one line per trial instead of a progress bar")
    p.add_argument("--ray-address", default=None, help="attach to an existing Ray cluster (or set RAY_ADDRESS)")
    p.set_defaults(func=run_automl_command)


def run_automl_command(args: argparse.Namespace) -> int:
    """Search, print the leaderboard beside the default baselines, save the best model."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from uaap.automl.cv import METRICS
    from uaap.automl.search import AutoMLSettings, leaderboard_table, run_automl, verdict
    from uaap.commands.common import config_from_args

    console = _console()
    cfg = config_from_args(args)
    time_budget = args.time_budget if args.time_budget is not None else (None if args.trials else 120.0)
    settings = AutoMLSettings(
        search=args.search,
        scheduler=args.scheduler,
        cv=args.cv,
        folds=args.folds,
        metric=args.metric,
        families=tuple(f for f in args.families.split(",") if f.strip()),
        time_budget_s=time_budget,
        num_trials=args.trials,
        concurrency=args.concurrency,
        workers=args.workers,
        report_every=args.report_every,
        points=tuple(_json_point(p) for p in args.point),
        warm_start=args.warm_start,
        ensembles=args.ensembles,
    )
    state: dict[str, Any] = {"done": 0, "errors": 0, "best": None}
    # A search runs hundreds of trials: a progress bar with the best so far, one line per trial under --verbose.
    progress = Progress(
        TextColumn("[bold]trials"),
        BarColumn(),
        TextColumn("{task.completed} done, {task.fields[errors]} failed, best CV {task.fields[best]}"),
        TimeElapsedColumn(),
        console=console,
        disable=args.verbose,
        transient=True,
    )
    task = progress.add_task("search", total=None, errors=0, best="-")

    def on_trial(rec: Any) -> None:
        state["done"] += 1
        state["errors"] += rec.status == "error"
        metric = settings.metric or ("r2" if rec.folds and "r2" in rec.folds[0] else "accuracy")
        scores = rec.fold_scores(metric)
        value = f"{sum(scores) / len(scores):.4f}" if scores else "-"
        if rec.status == "completed" and scores:
            mean = sum(scores) / len(scores)
            better = max if METRICS[metric] == "max" else min
            state["best"] = mean if state["best"] is None else better(state["best"], mean)
        if args.verbose:
            extra = f" ({rec.error[:80]})" if rec.error else ""
            console.print(
                f"  trial {state['done']:>3} {rec.family:<13} {rec.status:<9} folds {len(scores)} {value}{extra}"
            )
        best = "-" if state["best"] is None else f"{state['best']:.4f}"
        progress.update(task, completed=state["done"], errors=state["errors"], best=best)

    with progress:
        result = run_automl(
            cfg,
            settings,
            ray_address=args.ray_address,
            on_trial=on_trial,
            on_stage=lambda s: console.print(f"[bold]{s}"),
        )
    console.print(leaderboard_table(result, top=args.top))
    best = result.best
    console.print(
        f"best: {best['family']} CV {result.metric} {best['score']:.4f} ± {best['std']:.4f}; "
        + "; ".join(f"{n} {b['cv']:.4f}" for n, b in result.baselines.items())
        + " (same folds)"
    )
    console.print(
        f"held-out test: best ({best['family']}) {result.test_metrics[result.metric]:.4f}; family defaults: "
        + ", ".join(f"{family} {d['test']:.4f}" for family, d in result.defaults.items())
        + "; "
        + "; ".join(f"{n} {b['test']:.4f}" for n, b in result.baselines.items())
    )
    if result.ensembles is not None:
        from uaap.automl.ensembles import ensemble_table

        console.print(ensemble_table(result.ensembles))
    if warning := verdict(result):
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(
        f"model: {result.model_path}\nleaderboard: {result.run_dir.path / 'leaderboard.csv'}\n"
        f"MLflow experiment: {cfg.experiment} (parent run {result.run_dir.run_id}, one child run per trial)"
    )
    return 0


def _json_point(text: str) -> dict[str, Any]:
    try:
        point = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f'--point {text!r} is not valid JSON ({exc.msg}); e.g. \'{{"family": "logreg"}}\'') from exc
    if not isinstance(point, dict):
        raise ConfigError(f"--point {text!r} must be a JSON object with a 'family' key")
    return point


def _console() -> Any:
    from rich.console import Console

    # Leaderboards are wide: do not fold them to 80 columns when the output is a file or a pipe.
    return Console() if sys.stdout.isatty() else Console(width=160)


# ---- compare ------------------------------------------------------------------------------------


def _register_compare(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("compare", help="compare runs side by side from MLflow: table and plot")
    p.add_argument("runs", nargs="*", help="UAAP run ids to compare (default: every top-level run)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: all experiments)")
    p.add_argument("--kind", default="", help="only these kinds, e.g. central,federated,automl,tune-federated")
    p.add_argument("--dataset", default=None, help="only runs on this dataset")
    p.add_argument(
        "--metric",
        default="",
        help="final metric to compare (default each run's: accuracy, or r2 for regression; the table says where "
        "measured)",
    )
    p.add_argument("--out", default=None, help="PNG path (default: <workspace>/compare.png)")
    p.add_argument("--limit", type=int, default=50, help="at most this many runs, newest first (default 50)")
    p.set_defaults(func=run_compare_command)


def run_compare_command(args: argparse.Namespace) -> int:
    """Print the comparison table and write the plot."""
    from pathlib import Path

    from uaap.compare import collect_runs, compare_plot, compare_table, ensemble_gain_table, family_rows, family_table

    console = _console()
    kinds = tuple(k.strip() for k in args.kind.split(",") if k.strip())
    rows = collect_runs(
        run_ids=tuple(args.runs),
        experiment=args.experiment,
        kinds=kinds,
        dataset=args.dataset,
        metric=args.metric,
        limit=args.limit,
    )
    console.print(compare_table(rows, args.metric))
    if any(r["federated - central"] is not None for r in family_rows(rows)):
        console.print(family_table(rows))
    if (gains := ensemble_gain_table(rows)) is not None:
        console.print(gains)
    out = compare_plot(rows, Path(args.out) if args.out else None, metric=args.metric)
    console.print(f"plot: {out}")
    return 0
