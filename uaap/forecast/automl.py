"""``uaap automl --task forecast``: the per-series models ranked by expanding-window cross-validation.

Each series' history (its held-out tail of ``horizon`` points left out) is cut into ``folds`` expanding windows
(:func:`folds`): fold k trains on the first ``end_k`` points and is scored on the next ``horizon``, and ``end_k`` grows
by one horizon from fold to fold, the last validation window ending where the held-out tail begins. No fold trains on a
point at or after its validation window, and no fold sees the held-out tail. Every candidate (``--families``, default
the run's ``forecast-models``) forecasts every fold of every series; its counts are summed over series and folds
(:mod:`uaap.forecast.metrics`) and the lowest cross-validated MASE wins. The winner, and every other candidate for
comparison, then forecasts each held-out tail from the whole history: the test metrics. Seasonal naive is the
baseline. The run folder holds ``leaderboard.csv`` and ``forecaster.json`` (the winner and the settings it forecasts
with); MLflow holds the metrics (``test_mase``, ``test_mae``, ``test_smape``, ``test_rmse``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap import workspace
from uaap.config import RunConfig
from uaap.errors import ConfigError
from uaap.forecast.metrics import add_counts, expanding_folds, forecast_counts, mase_scale, metrics_from_counts
from uaap.forecast.models import STATISTICAL, statistical
from uaap.forecast.series import Series, load

if TYPE_CHECKING:
    from uaap.automl.results import AutoMLResult
    from uaap.automl.search import AutoMLSettings

METRIC = "mase"


def folds(length: int, horizon: int, n_folds: int, min_train: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_folds`` expanding-window (train, validation) index pairs over ``length`` points: fold k trains on
    ``[0, end_k)`` and validates on ``[end_k, end_k + horizon)``; the last validation window ends at ``length``."""
    return [
        (np.arange(end), np.arange(end, end + horizon)) for end in expanding_folds(length, horizon, n_folds, min_train)
    ]


def candidates(cfg: RunConfig, settings: AutoMLSettings) -> tuple[str, ...]:
    """The per-series models to rank: ``--families``, else the run's ``forecast-models``; others are refused."""
    names = settings.families or tuple(m.strip() for m in cfg.forecast_models.split(",") if m.strip())
    wrong = [n for n in names if n not in STATISTICAL]
    if wrong or not names:
        raise ConfigError(
            f"--task forecast searches the per-series forecasters, not {wrong[0] if wrong else 'nothing'!r}: choose "
            f"--families from {', '.join(STATISTICAL)} (the networks lstm and gru train with uaap train or simulate)"
        )
    return names


def _cv_counts(
    name: str, every: list[Series], cfg: RunConfig, n_folds: int
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Per fold, ``name``'s counts summed over the series; and the same over all folds."""
    forecaster = statistical(name, cfg.seasonal_period)
    per_fold: list[list[dict[str, float]]] = [[] for _ in range(n_folds)]
    for s in every:
        history = s.history(cfg.horizon)
        for k, (train, valid) in enumerate(folds(len(history), cfg.horizon, n_folds, 2 * cfg.seasonal_period + 1)):
            past = history[train]
            predicted = forecaster(past, cfg.horizon).mean
            per_fold[k].append(forecast_counts(history[valid], predicted, mase_scale(past, cfg.seasonal_period)))
    summed = [add_counts(parts) for parts in per_fold]
    return summed, add_counts(summed)


def _test_metrics(name: str, every: list[Series], cfg: RunConfig) -> dict[str, float]:
    """``name``'s forecast of every held-out tail from the whole history, scored from summed counts."""
    forecaster = statistical(name, cfg.seasonal_period)
    parts = []
    for s in every:
        history = s.history(cfg.horizon)
        scale = mase_scale(history, cfg.seasonal_period)
        parts.append(forecast_counts(s.tail(cfg.horizon), forecaster(history, cfg.horizon).mean, scale))
    return metrics_from_counts(add_counts(parts))


def search_forecasters(
    cfg: RunConfig, settings: AutoMLSettings, on_stage: Callable[[str], None] | None = None
) -> AutoMLResult:
    """Rank the per-series forecasters by expanding-window CV MASE, score them on the held-out tails, save the
    winner; the result has the shape ``uaap automl`` prints (:class:`uaap.automl.results.AutoMLResult`)."""
    from uaap.automl.results import AutoMLResult, write_leaderboard
    from uaap.tracking import Tracker

    stage = on_stage or (lambda text: None)
    if cfg.task != "forecast":
        raise ConfigError(f"task={cfg.task!r}: the forecast search needs --task forecast")
    names = candidates(cfg, settings)
    every = load(cfg)
    shortest = min(len(s.history(cfg.horizon)) for s in every)
    expanding_folds(shortest, cfg.horizon, settings.folds, 2 * cfg.seasonal_period + 1)  # refuse a short one now
    rd = workspace.run_dir(cfg.run_id or workspace.new_run_id("automl"))
    cfg = cfg.replace(run_id=rd.run_id)
    rd.write_config(cfg)
    tracker = Tracker(cfg.experiment, rd.run_id, kind="automl")
    tracker.log_params(
        {"dataset": cfg.dataset, "data-path": cfg.data_path, "target": cfg.target, "task": "forecast",
         "horizon": cfg.horizon, "seasonal-period": cfg.seasonal_period, "cv": "expanding-window",
         "folds": settings.folds, "families": ",".join(names), "series": len(every)}
    )  # fmt: skip
    t0 = time.time()
    board: list[dict[str, Any]] = []
    try:
        for i, name in enumerate(names, 1):
            stage(f"{name}: {settings.folds} expanding-window folds x {len(every)} series")
            started = time.time()
            per_fold, total = _cv_counts(name, every, cfg, settings.folds)
            scores = [metrics_from_counts(c)[METRIC] for c in per_fold]
            board.append(
                {"trial": f"{i:03d}", "family": name, "params": {}, "score": metrics_from_counts(total)[METRIC],
                 "std": float(np.std(scores)), "folds": settings.folds, "status": "completed", "error": "",
                 "seconds": round(time.time() - started, 2), "started": started, "ended": time.time(),
                 "cv": metrics_from_counts(total)}
            )  # fmt: skip
        board.sort(key=lambda r: r["score"])
        for rank, row in enumerate(board, 1):
            row["rank"] = rank
        write_leaderboard(rd, board)
        best = board[0]
        stage(f"scoring each forecaster on the held-out {cfg.horizon} points of every series")
        tests = {row["family"]: _test_metrics(row["family"], every, cfg) for row in board}
        naive_cv = metrics_from_counts(_cv_counts("seasonal_naive", every, cfg, settings.folds)[1])[METRIC]
        naive_test = tests.get("seasonal_naive") or _test_metrics("seasonal_naive", every, cfg)
        model_path = rd.path / "forecaster.json"
        model_path.write_text(
            json.dumps({"model": best["family"], "horizon": cfg.horizon, "seasonal_period": cfg.seasonal_period,
                        "cv_mase": best["score"], "test": tests[best["family"]]}, indent=2) + "\n"
        )  # fmt: skip
    except BaseException:
        tracker.finish("FAILED")
        rd.log_event("end", status="failed")
        raise
    test_metrics = tests[best["family"]]
    tracker.log_metrics(
        {"best_cv_score": best["score"], **{f"test_{k}": v for k, v in test_metrics.items()},
         **{f"cv_{row['family']}_mase": row["score"] for row in board}, "trials": len(board)}, step=len(board)
    )  # fmt: skip
    tracker.log_params({"best_family": best["family"]})
    tracker.log_artifact(str(rd.path / "leaderboard.csv"))
    tracker.log_artifact(str(model_path))
    tracker.set_tags({"uaap.status": "completed", "uaap.best_family": best["family"]})
    tracker.finish()
    baselines = {"seasonal naive": {"cv": naive_cv, "cv_std": float("nan"), "test": naive_test[METRIC],
                                   "folds": list(range(settings.folds))}}  # fmt: skip
    rd.log_event("end", status="completed", central=test_metrics, best={k: best[k] for k in ("family", "score")})
    return AutoMLResult(
        rd, board, best, baselines, test_metrics, model_path, METRIC, "min", time.time() - t0, len(board), 0,
        {row["family"]: {"test": tests[row["family"]][METRIC]} for row in board[1:]},
    )  # fmt: skip
