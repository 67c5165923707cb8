"""AutoML on Ray Tune: Bayesian (Optuna TPE), random or grid search with ASHA early stopping.

One trial = one candidate (family + hyperparameters) cross-validated fold by fold on the training
split. Each fold reports the running mean of the metric, so ASHA (or its multi-bracket form,
asynchronous Hyperband) can stop a poor candidate after one or two folds. Every trial is a child
run in MLflow under one parent run, written by a callback in this (driver) process. The winner is
refitted on the whole training split, scored on the held-out test split beside scikit-learn's
default LogisticRegression and RandomForest (same folds, same test rows) and beside the default configuration of
every family searched (each of which is also a trial), and saved in the workspace in the format ``uaap train``
produces. A winner that a default beats on the held-out split is reported as such (:func:`verdict`).

Concurrency: one CPU per trial (estimators single-threaded, one torch thread), so as many trials
run at once as the Ray cluster has CPUs, unless ``concurrency`` says otherwise.

Length: over 500 lines because the search, its MLflow recorder, the baselines and the refit share one fold set,
one metric direction and one leaderboard; one module keeps that contract in one place.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uaap import workspace
from uaap.automl.cv import (
    CV_METHODS,
    Fold,
    check_metric,
    cross_validate,
    default_metric,
    iter_cv,
    make_folds,
    score,
)
from uaap.automl.families import (
    FAMILIES,
    aligned_proba,
    baseline_estimators,
    build_estimator,
    check_families,
    check_point,
    define_by_run,
    family_defaults,
    family_params,
    grid_points,
    task_families,
    warm_start_points,
)
from uaap.automl.results import AutoMLResult, write_leaderboard
from uaap.config import RunConfig
from uaap.data import BUNDLED, Split
from uaap.errors import ConfigError, DataError, UaapError

log = logging.getLogger("uaap.automl")

SEARCHES = ("tpe", "random", "grid")
SCHEDULERS = ("asha", "hyperband", "none")
ESTIMATOR_FILE = workspace.ESTIMATOR_FILE


@dataclass(frozen=True)
class AutoMLSettings:
    """How to search: algorithm, early stopping, cross-validation, budget and families."""

    search: str = "tpe"
    scheduler: str = "asha"
    cv: str = "stratified"
    folds: int = 5
    metric: str = ""  # empty: the task's (accuracy, or R2 for a regression target)
    families: tuple[str, ...] = ()  # empty: the task's (logreg or ridge, random_forest, xgboost, mlp)
    time_budget_s: float | None = 120.0
    num_trials: int = 0
    concurrency: int = 0
    workers: int = 0
    report_every: int = 10
    points: tuple[dict[str, Any], ...] = ()
    warm_start: bool = True
    ensembles: bool = False  # voting and stacking over the best families, scored beside them (uaap.automl.ensembles)

    def __post_init__(self) -> None:
        if self.search not in SEARCHES:
            raise ConfigError(f"search={self.search!r} is not supported; choose one of: {', '.join(SEARCHES)}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler={self.scheduler!r} is not supported; choose one of: {', '.join(SCHEDULERS)}")
        if self.cv not in CV_METHODS:
            raise ConfigError(f"cv={self.cv!r} is not supported; choose one of: {', '.join(CV_METHODS)}")
        if self.families:
            object.__setattr__(self, "families", check_families(self.families))
        if self.folds < 2:
            raise ConfigError(f"folds={self.folds}; cross-validation needs at least 2 folds")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ConfigError(f"time budget {self.time_budget_s} s must be positive (or None for a trial budget)")
        if self.num_trials < 0 or self.concurrency < 0 or self.workers < 0:
            raise ConfigError(
                f"trials={self.num_trials}, concurrency={self.concurrency} and workers={self.workers} "
                "must be >= 0 (0 = automatic)"
            )
        if self.search != "grid" and self.time_budget_s is None and self.num_trials == 0:
            raise ConfigError("give a time budget (--time-budget SECONDS) or a trial budget (--trials N), or both")
        points = tuple(check_point(p) for p in self.points)
        unknown = [p["family"] for p in points if self.families and p["family"] not in self.families]
        if unknown:
            raise ConfigError(
                f"a point uses family {unknown[0]!r}, which is not searched; add it to --families "
                f"({', '.join(self.families)})"
            )
        object.__setattr__(self, "points", points)

    def for_task(self, n_classes: int) -> AutoMLSettings:
        """These settings with the task's metric and families filled in (``n_classes`` 1: regression), checked."""
        import dataclasses

        regression = n_classes == 1
        metric = self.metric or default_metric(n_classes)
        check_metric(metric, n_classes)
        families = task_families(self.families, regression)
        settings = dataclasses.replace(self, metric=metric, families=families)
        unknown = [p["family"] for p in settings.points if p["family"] not in families]
        if unknown:
            raise ConfigError(
                f"a point uses family {unknown[0]!r}, which is not searched; add it to --families "
                f"({', '.join(families)})"
            )
        return settings


@dataclass
class TrialRecord:
    """What the driver saw of one trial (the leaderboard and MLflow are built from these)."""

    trial_id: str
    config: dict[str, Any]
    folds: list[dict[str, float]] = field(default_factory=list)
    status: str = "running"  # running | completed | stopped | error | budget
    error: str = ""
    started: float = 0.0
    ended: float = 0.0
    child: str | None = None

    @property
    def family(self) -> str:
        """The candidate's model family."""
        return str(self.config.get("family", "?"))

    @property
    def params(self) -> dict[str, Any]:
        """The family's parameters (prefix stripped)."""
        try:
            return family_params(self.config)[1]
        except ConfigError:
            return {k: v for k, v in self.config.items() if k != "family"}

    def fold_scores(self, metric: str) -> list[float]:
        """The target metric on each finished fold."""
        return [f[metric] for f in self.folds]


# ---- data ----------------------------------------------------------------------------------------


def load_data(cfg: RunConfig, cv: str) -> Split:
    """The training and held-out test parts, scaled as ``uaap train`` scales them.

    Time-series CV keeps row order: the test part is the last ``test_fraction`` of the rows.
    """
    from uaap.data import load_bundled, load_config_table, load_split, scale

    if cfg.dataset not in (*BUNDLED, "csv"):
        raise DataError(
            f"dataset={cfg.dataset!r} cannot be used by AutoML; choose one of: {', '.join(BUNDLED)} or --data FILE"
        )
    if cv != "timeseries":
        return load_split(cfg)
    data = load_config_table(cfg) if cfg.dataset == "csv" else load_bundled(cfg.dataset)
    n_test = max(1, int(math.ceil(len(data.y) * cfg.test_fraction)))
    idx = np.arange(len(data.y))
    return scale(Split(data.subset(idx[:-n_test]), data.subset(idx[-n_test:])), cfg.dataset)


# ---- the trial (runs in a Ray worker) ------------------------------------------------------------


def _trial(
    config: dict[str, Any],
    X: np.ndarray | None = None,
    y: np.ndarray | None = None,
    folds: list[Fold] | None = None,
    n_classes: int = 2,
    metric: str = "accuracy",
    seed: int = 0,
) -> None:
    """Cross-validate one candidate, reporting after every fold (ASHA's unit of resource)."""
    from ray import tune

    assert X is not None and y is not None and folds is not None
    warnings.filterwarnings("ignore")
    family, params = family_params(config.get("point", config))
    for r in iter_cv(
        lambda: build_estimator(family, params, n_classes=n_classes, seed=seed), X, y, folds, n_classes, metric
    ):
        tune.report(
            {
                "score": r.mean,
                "fold": r.fold,
                "fold_seconds": r.seconds,
                **{f"fold_{k}": v for k, v in r.metrics.items()},
            }
        )


# ---- the driver ------------------------------------------------------------------------------------


def inert_callback() -> Any:
    """A do-nothing Tune callback: what a recorder becomes when Tune pickles it."""
    from ray.tune import Callback

    return Callback()


def _recorder(
    records: dict[str, TrialRecord],
    tracker: Any,
    metric: str,
    n_folds: int,
    on_trial: Callable[[TrialRecord], None] | None,
) -> Any:
    """A Tune callback (driver process) that records every trial and mirrors it into MLflow."""
    from ray.tune import Callback

    def record(trial: Any) -> TrialRecord:
        rec = records.get(trial.trial_id)
        if rec is None:
            config = dict(trial.config)
            rec = records[trial.trial_id] = TrialRecord(trial.trial_id, dict(config.get("point", config)))
        return rec

    class Recorder(Callback):
        def __reduce__(self) -> tuple[Any, tuple[()]]:
            # Tune pickles its callbacks with the experiment state; this one holds live objects
            # (MLflow client, progress display) that neither pickle nor mean anything after a restore.
            return (inert_callback, ())

        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            rec = record(trial)
            rec.started = time.time()
            rec.child = tracker.start_child(
                f"{tracker.run_id}/{trial.trial_id}",
                {"family": rec.family, **rec.params},
                tags={"uaap.family": rec.family, "uaap.trial_id": trial.trial_id},
            )

        def on_trial_result(
            self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            rec = record(trial)
            fold = {k[len("fold_") :]: float(v) for k, v in result.items() if k.startswith("fold_")}
            rec.folds.append(fold)
            tracker.log_child(rec.child, {"cv_score": result["score"], **fold}, step=int(result["fold"]))

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            rec = record(trial)
            rec.status = "completed" if len(rec.folds) >= n_folds else "stopped"
            self._finish(rec, "FINISHED")

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            rec = record(trial)
            rec.status = "error"
            err = None
            try:  # Tune writes the error next to the trial's local staging folder before this callback
                if trial.error_file and Path(trial.error_file).is_file():
                    err = Path(trial.error_file).read_text(encoding="utf-8", errors="replace")
            except OSError:  # the error text is a courtesy; the status is what matters
                err = None
            rec.error = _short_error(err)
            self._finish(rec, "FAILED")

        def _finish(self, rec: TrialRecord, status: str) -> None:
            rec.ended = time.time()
            scores = rec.fold_scores(metric)
            if scores:
                tracker.log_child(rec.child, {"cv_mean": float(np.mean(scores))}, step=len(scores))
            tracker.finish_child(rec.child, status, {"uaap.status": rec.status, "uaap.error": rec.error})
            if on_trial is not None:
                on_trial(rec)

    return Recorder()


def _short_error(err: Any) -> str:
    if err is None:
        return "failed (no error details)"
    text = str(err).strip().splitlines()
    # Ray wraps the trial's exception; keep its last meaningful line (the original message).
    lines = [line for line in text if line.strip() and not line.startswith(("Traceback", "  "))]
    return (lines[-1] if lines else type(err).__name__)[:300]


def run_automl(
    cfg: RunConfig,
    settings: AutoMLSettings | None = None,
    *,
    ray_address: str | None = None,
    on_trial: Callable[[TrialRecord], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> AutoMLResult:
    """Search, rank, refit and save the best model for ``cfg``'s dataset (or CSV + target).

    ``cfg`` supplies the data (``dataset``, ``data_path``, ``target``, ``test_fraction``), ``seed``,
    ``experiment`` and optionally ``run_id``. Ray is started (or attached to ``ray_address`` /
    ``RAY_ADDRESS``) and shut down afterwards only if this call started it.
    """
    stage = on_stage or (lambda text: None)
    if cfg.task == "forecast":  # per-series forecasters on expanding-window folds (uaap.forecast.automl)
        from uaap.forecast.automl import search_forecasters

        return search_forecasters(cfg, settings or AutoMLSettings(), on_stage=stage)
    split = load_data(cfg, (settings or AutoMLSettings()).cv)
    train, test = split.train, split.test
    n_classes = train.n_classes
    settings = (settings or AutoMLSettings()).for_task(n_classes)
    mode = check_metric(settings.metric, n_classes)
    folds = make_folds(train.y, settings.cv, settings.folds, cfg.seed)
    rd = workspace.run_dir(cfg.run_id or workspace.new_run_id("automl"))
    cfg = cfg.replace(run_id=rd.run_id)
    rd.write_config(cfg)
    (rd.path / "automl.json").write_text(json.dumps(asdict(settings), indent=2, default=str) + "\n")

    from uaap.automl.tracking import SearchTracker

    tracker = SearchTracker(cfg.experiment, rd.run_id, kind="automl", child_kind="automl-trial")
    tracker.parent.log_params(
        {
            "dataset": cfg.dataset,
            "data-path": cfg.data_path,
            "target": cfg.target,
            "seed": cfg.seed,
            "test-fraction": cfg.test_fraction,
            **{k: v for k, v in asdict(settings).items() if k != "points"},
            "points": len(settings.points),
        }
    )
    import ray

    from uaap.cluster import connect

    started = False
    try:
        linear = "LinearRegression" if train.regression else "LogisticRegression"
        stage(f"baselines: default {linear} and RandomForest on the same folds")
        baselines = _baselines(train, test, folds, settings.metric, cfg.seed)
        for name, b in baselines.items():
            key = name.split()[-1].lower()
            tracker.parent.log_metrics({f"baseline_{key}_cv": b["cv"], f"baseline_{key}_test": b["test"]}, step=0)
        stage("starting Ray" if not ray_address else f"attaching to Ray at {ray_address}")
        started = connect(ray_address)
        records, seconds = _search(cfg, settings, train, folds, mode, tracker, on_trial, stage)
        board = leaderboard(records, settings.metric, mode, settings.folds)
        write_leaderboard(rd, board)
        done = [r for r in board if r["status"] == "completed"]
        if not done:
            errors = sum(r["status"] == "error" for r in board)
            raise UaapError(
                f"no trial finished all {settings.folds} folds within the budget ({len(board)} started, {errors} "
                "failed; see the leaderboard): raise --time-budget or --trials, or use fewer folds"
            )
        best = done[0]
        stage(f"refitting the best candidate ({best['family']}) on the whole training split")
        estimator = _refit(best, train, test, settings, cfg, rd, ray_address, tracker)
        test_metrics = score(settings.metric, test.y, aligned_proba(estimator, test.X, n_classes))
        stage("scoring each family's default configuration on the held-out split")
        defaults = _defaults_on_test(settings, train, test, cfg.seed, board)
        for family, d in defaults.items():
            tracker.parent.log_metrics({f"default_{family}_test": d["test"]}, step=0)
        model_path = _save(rd, estimator, best, cfg, train)
        ensembles = None
        if settings.ensembles:  # on the same held-out rows as the winner and the defaults
            from uaap.automl.ensembles import best_per_family, ensemble_metrics, ensemble_scores

            stage("voting and stacking over the best families")
            ensembles = ensemble_scores(best_per_family(board), train, test, settings.metric, seed=cfg.seed,
                                        folds=settings.folds)  # fmt: skip
            tracker.parent.log_metrics(ensemble_metrics(ensembles), step=0)
            rd.log_event("ensembles", **ensembles)
    except BaseException:
        tracker.parent.set_tags({"uaap.status": "failed"})
        tracker.parent.finish("FAILED")
        rd.log_event("end", status="failed")
        raise
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    summary = {
        "best_cv_score": best["score"],
        "best_cv_std": best["std"],
        **{f"test_{k}": v for k, v in test_metrics.items()},
        "trials": len(board),
        "trials_completed": len(done),
        "trials_stopped": sum(r["status"] in ("stopped", "budget") for r in board),
        "trials_failed": sum(r["status"] == "error" for r in board),
        "search_seconds": seconds,
    }
    tracker.parent.log_metrics(summary, step=len(board))
    tracker.parent.log_params({f"best_{k}": v for k, v in best["params"].items()} | {"best_family": best["family"]})
    tracker.parent.log_artifact(str(rd.path / "leaderboard.csv"))
    tracker.parent.log_artifact(str(model_path))
    tracker.parent.set_tags({"uaap.status": "completed", "uaap.best_family": best["family"]})
    tracker.parent.finish()
    rd.log_event(
        "end",
        status="completed",
        central=test_metrics,
        best={k: best[k] for k in ("trial", "family", "params", "score", "std")},
        baselines=baselines,
        defaults=defaults,
        metric=settings.metric,
    )
    return AutoMLResult(
        rd,
        board,
        best,
        baselines,
        test_metrics,
        model_path,
        settings.metric,
        mode,
        seconds,
        len(board),
        summary["trials_failed"],
        defaults,
        ensembles,
    )


def _defaults_on_test(
    settings: AutoMLSettings, train: Any, test: Any, seed: int, board: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each family's default configuration fitted on the training split and scored on the held-out split."""
    out: dict[str, dict[str, Any]] = {}
    for point in family_defaults(settings.families, train.n_features, train.regression):
        family, params = family_params(point)
        as_trial = next((r for r in board if r["family"] == family and r["params"] == params), None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a default may stop at its max_iter: that is the default
            fitted = build_estimator(family, params, n_classes=train.n_classes, seed=seed).fit(train.X, train.y)
        test_score = score(settings.metric, test.y, aligned_proba(fitted, test.X, train.n_classes))[settings.metric]
        cv = as_trial["score"] if as_trial is not None and as_trial["status"] == "completed" else None
        out[family] = {"params": params, "cv": cv, "test": float(test_score)}
    return out


def verdict(result: AutoMLResult) -> str | None:
    """A warning when a default configuration beats the search's winner on the held-out split."""
    won = result.test_metrics[result.metric]
    sign = 1.0 if result.mode == "max" else -1.0
    rivals = {f"the {family} default": d["test"] for family, d in result.defaults.items()}
    rivals |= {f"scikit-learn's {name}": b["test"] for name, b in result.baselines.items()}
    if not rivals:
        return None
    name = max(rivals, key=lambda k: sign * rivals[k])
    if sign * rivals[name] <= sign * won:
        return None
    best = result.best
    text = (
        f"the search's winner ({best['family']}, CV {best['score']:.4f} \u00b1 {best['std']:.4f}) scores {won:.4f} on "
        f"the held-out split, below {name} ({rivals[name]:.4f}): a CV lead within the folds' spread is noise, "
        "not an improvement."
    )
    family = name.split()[1] if name.startswith("the ") else ""
    if family in result.defaults:
        text += f" That default is what `--families {family} --no-warm-start --trials 1` trains;"
    return text + " or search with more folds (--folds) or more data"


def _baselines(train: Any, test: Any, folds: list[Fold], metric: str, seed: int) -> dict[str, dict[str, Any]]:
    out = {}
    from sklearn.base import clone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # default LogisticRegression may stop at max_iter=100: that is the default
        for name, est in baseline_estimators(seed, regression=train.regression).items():
            scores = cross_validate(functools.partial(clone, est), train.X, train.y, folds, train.n_classes, metric)
            fitted = clone(est).fit(train.X, train.y)
            test_metrics = score(metric, test.y, aligned_proba(fitted, test.X, train.n_classes))
            out[name] = {
                "cv": float(np.mean(scores)),
                "cv_std": float(np.std(scores)),
                "folds": scores,
                "test": test_metrics[metric],
            }
    return out


def _search(
    cfg: RunConfig,
    settings: AutoMLSettings,
    train: Any,
    folds: list[Fold],
    mode: str,
    tracker: Any,
    on_trial: Callable[[TrialRecord], None] | None,
    stage: Callable[[str], None],
) -> tuple[dict[str, TrialRecord], float]:
    from ray import tune

    from uaap.cluster import cluster_cpus

    records: dict[str, TrialRecord] = {}
    concurrency = settings.concurrency or cluster_cpus()
    points = list(settings.points)
    # each family's default configuration is always a trial; warm starting adds a few more known-good points
    starts = family_defaults(settings.families, train.n_features, train.regression)
    if settings.warm_start and settings.search != "grid":
        starts = warm_start_points(settings.families, train.n_features, train.regression)
    points += [p for p in starts if p not in points]
    search_alg, param_space, num_samples = _search_algorithm(settings, cfg.seed, mode, points)
    scheduler = _scheduler(settings, mode)
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            X=train.X,
            y=train.y,
            folds=folds,
            n_classes=train.n_classes,
            metric=settings.metric,
            seed=cfg.seed,
        ),
        {"cpu": 1},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=concurrency,
            time_budget_s=settings.time_budget_s,
            reuse_actors=True,
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            name="search",
            storage_path=str((workspace.run_dir(cfg.run_id).path / "tune").resolve()),
            verbose=0,
            callbacks=[_recorder(records, tracker, settings.metric, settings.folds, on_trial)],
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )
    budget = f"{settings.time_budget_s:g} s" if settings.time_budget_s else f"{settings.num_trials} trials"
    stage(f"searching ({settings.search}, {settings.scheduler}, {concurrency} at a time, budget {budget})")
    t0 = time.perf_counter()
    # Tune logs a failed trial's traceback at ERROR (e.g. an MLP diverging at a sampled learning rate); the recorder
    # already reports each failure with its error in the leaderboard and the summary, so Tune's copy stays silent
    quiet = logging.getLogger("ray.tune")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        tuner.fit()
    finally:
        quiet.setLevel(level)
    seconds = time.perf_counter() - t0
    for rec in records.values():  # trials still running when the budget ran out
        if rec.status == "running":
            rec.status = "budget"
            rec.ended = rec.ended or time.time()
            tracker.finish_child(rec.child, "KILLED", {"uaap.status": "budget"})
    return records, seconds


def _search_algorithm(
    settings: AutoMLSettings, seed: int, mode: str, points: list[dict[str, Any]]
) -> tuple[Any, dict[str, Any], int]:
    from ray import tune

    num_samples = settings.num_trials or -1
    if settings.search == "grid":
        points = points + [g for g in grid_points(settings.families) if g not in points]
        if settings.num_trials:
            points = points[: settings.num_trials]
        return None, {"point": tune.grid_search(points)}, 1
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if settings.search == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate/group TPE is flagged experimental
            sampler: Any = optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=8
            )
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    for point in points:
        _check_optuna_point(point)
    # Conditional (define-by-run) space: metric and mode must go to OptunaSearch itself (FIELD-NOTES).
    search = OptunaSearch(
        space=define_by_run(settings.families),
        metric="score",
        mode=mode,
        sampler=sampler,
        points_to_evaluate=[dict(p) for p in points] or None,
    )
    return search, {}, num_samples


def _check_optuna_point(point: dict[str, Any]) -> None:
    """Optuna refuses (and would crash the search on) a starting point it cannot represent: say so up front."""
    import optuna

    family, params = family_params(point)
    for p in FAMILIES[family].params:
        if p.name not in params:
            continue
        value = params[p.name]
        if p.kind == "float":
            dist: Any = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)
        elif p.kind == "int":
            dist = optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log)
        else:
            dist = optuna.distributions.CategoricalDistribution(list(p.choices))
        try:
            dist.to_internal_repr(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"starting point {family}__{p.name}={value!r} cannot be given to the {p.kind} search dimension "
                f"[{p.low:g}, {p.high:g}]{' (log scale)' if p.log else ''}: {exc}; fix the value or use --search grid"
            ) from exc


def _scheduler(settings: AutoMLSettings, mode: str) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if settings.scheduler == "none":
        return FIFOScheduler()
    # Folds are the resource: rungs after 1, 2, 4 folds (reduction factor 2). "hyperband" is ASHA with
    # several brackets (asynchronous Hyperband): synchronous HyperBand pauses trials, which a function
    # trainable without checkpoints cannot resume.
    return ASHAScheduler(
        time_attr="training_iteration",
        metric="score",
        mode=mode,
        max_t=settings.folds,
        grace_period=1,
        reduction_factor=2,
        brackets=3 if settings.scheduler == "hyperband" else 1,
    )


def leaderboard(records: dict[str, TrialRecord], metric: str, mode: str, n_folds: int) -> list[dict[str, Any]]:
    """Rows ranked: finished trials by mean CV score, then early-stopped, budget-stopped and failed ones."""
    order = {"completed": 0, "stopped": 1, "budget": 2, "running": 2, "error": 3}
    sign = -1.0 if mode == "max" else 1.0
    rows = []
    for rec in records.values():
        scores = rec.fold_scores(metric)
        rows.append(
            {
                "trial": rec.trial_id,
                "family": rec.family,
                "params": rec.params,
                "score": float(np.mean(scores)) if scores else float("nan"),
                "std": float(np.std(scores)) if scores else float("nan"),
                "folds": len(scores),
                "status": rec.status,
                "error": rec.error,
                "seconds": round(max(0.0, (rec.ended or time.time()) - rec.started), 2) if rec.started else 0.0,
                "started": rec.started,
                "ended": rec.ended,
            }
        )

    def key(row: dict[str, Any]) -> tuple[int, float, float]:
        value = math.inf if math.isnan(row["score"]) else sign * row["score"]
        return (order.get(row["status"], 4), value, row["started"])

    rows.sort(key=key)
    for i, row in enumerate(rows, 1):
        row["rank"] = i
    return rows


def _refit(
    best: dict[str, Any],
    train: Any,
    test: Any,
    settings: AutoMLSettings,
    cfg: RunConfig,
    rd: workspace.RunDir,
    ray_address: str | None,
    tracker: Any,
) -> Any:
    if best["family"] == "xgboost" and settings.workers > 0:
        from uaap.xgb_ray import train_xgboost_on_ray

        result = train_xgboost_on_ray(
            Split(train, test),
            best["params"],
            workers=settings.workers,
            report_every=settings.report_every,
            seed=cfg.seed,
            address=ray_address,
            storage_path=rd.path / "raytrain",
            on_round=lambda r, m: tracker.parent.log_metrics({f"xgb_{k}": v for k, v in m.items()}, step=r),
        )
        return result.estimator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_estimator(best["family"], best["params"], n_classes=train.n_classes, seed=cfg.seed).fit(
            train.X, train.y
        )


def _save(rd: workspace.RunDir, estimator: Any, best: dict[str, Any], cfg: RunConfig, train: Any) -> Path:
    meta = {
        "family": best["family"],
        "params": best["params"],
        "n_features": train.n_features,
        "n_classes": train.n_classes,
        "feature_names": list(train.feature_names),
        "dataset": cfg.dataset,
        "data_path": cfg.data_path,
        "target": cfg.target,
        "run_id": rd.run_id,
        "task": train.task,
    }
    if best["family"] == "mlp" and train.regression:  # saved like `uaap train` saves a regression model
        meta |= {"target_mean": estimator.target_mean_, "target_std": estimator.target_std_}
    if best["family"] in ("mlp", "svm"):  # a registry network: saved as `uaap train` saves it
        return workspace.save_model(
            rd.model_file,
            estimator.model,
            estimator.weights(),
            n_features=train.n_features,
            n_classes=train.n_classes,
            image_shape=train.image_shape,
            extra={k: v for k, v in meta.items() if k not in ("n_features", "n_classes")},
        )
    return workspace.save_estimator(rd.path / ESTIMATOR_FILE, estimator, meta)


def leaderboard_table(result: AutoMLResult, top: int = 10) -> Any:
    """A rich table: the top candidates, then the two default baselines on the same folds."""
    from rich.table import Table

    table = Table(title=f"AutoML leaderboard {result.run_dir.run_id} ({result.metric}, {result.mode})")
    for col in ("rank", "family", f"CV {result.metric}", "std", "folds", "status", "seconds", "parameters"):
        table.add_column(col, justify="left" if col in ("family", "status", "parameters") else "right")

    def fmt(value: float) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"

    for row in result.leaderboard[:top]:
        params = ", ".join(f"{k}={_short(v)}" for k, v in row["params"].items())
        status = row["status"] if row["status"] != "error" else f"error: {row['error'][:60]}"
        table.add_row(
            str(row["rank"]),
            row["family"],
            fmt(row["score"]),
            fmt(row["std"]),
            str(row["folds"]),
            status,
            f"{row['seconds']:.1f}",
            params,
        )
    for name, b in result.baselines.items():
        table.add_row("-", name, fmt(b["cv"]), fmt(b["cv_std"]), str(len(b["folds"])), "baseline", "", "defaults")
    hidden = len(result.leaderboard) - min(top, len(result.leaderboard))
    table.caption = (
        f"{result.trials} trials in {result.search_seconds:.0f} s ({result.errors} failed"
        + (f", {hidden} more rows in leaderboard.csv" if hidden else "")
        + ")"
    )
    return table


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
