"""Centralised training with the same model registry and training loop the clients use.

In-process by default; ``workers > 0`` runs data-parallel on Ray Train (see :mod:`uaap.raytrain`).
Metrics land in MLflow beside the federated runs so central and federated can be compared.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from uaap import workspace
from uaap.config import RunConfig
from uaap.data import Dataset, Split, estimator_meta, load_split, local_split, normal_rows, target_meta
from uaap.errors import ConfigError
from uaap.models import build_model, family, get_weights, set_weights
from uaap.protocol import THRESHOLD
from uaap.threads import torch_threads
from uaap.training import TrainConfig, evaluate, local_train

log = logging.getLogger("uaap.train")


@dataclass(frozen=True)
class CentralResult:
    """Where the run lives and its final test metrics."""

    run_dir: workspace.RunDir
    metrics: dict[str, float]


def train_central(
    cfg: RunConfig,
    *,
    epochs: int = 30,
    workers: int = 0,
    ray_address: str | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> CentralResult:
    """Train ``cfg.model`` on the pooled training split; evaluate on the held-out test split."""
    if workers < 0:
        raise ConfigError(f"workers={workers} must be 0 (in-process) or a positive number of Ray Train workers")
    if epochs < 1:
        raise ConfigError(f"epochs={epochs} must be at least 1")
    cfg.check_family("central")
    if cfg.dataset == "synthetic":
        raise ConfigError(
            "dataset='synthetic' is generated per client; central training needs a bundled table (digits, "
            "breast_cancer, wine, diabetes, friedman) or your own (--data FILE --target COLUMN)"
        )
    split = load_split(cfg)
    rd = workspace.run_dir(cfg.run_id or workspace.new_run_id("central"))
    cfg = cfg.replace(run_id=rd.run_id)
    rd.write_config(cfg)
    from uaap.tracking import Tracker

    tracker = Tracker(cfg.experiment, rd.run_id, kind="central")
    tracker.log_params({**cfg.to_flower(), "epochs": epochs, "workers": workers})

    def report(epoch: int, metrics: dict[str, float]) -> None:
        rd.log_event("epoch", epoch=epoch, central=metrics)
        tracker.log_metrics({f"central_{k}": v for k, v in metrics.items()}, step=epoch)
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    if family(cfg.model).capabilities.federated != "weights":  # not a torch network: a fitted estimator
        return _fit_estimator(cfg, split, rd, tracker, workers)
    validation = None
    if split.train.task == "anomaly":  # train on normal rows; the threshold comes from a validation part, not the test
        inner = local_split(split.train, cfg.seed)
        split, validation = Split(normal_rows(inner.train), split.test), inner.test
    assess = _assessor(cfg, split.test, validation)
    try:
        if workers > 0:
            from uaap.raytrain import train_on_ray

            weights = train_on_ray(cfg, split, epochs=epochs, workers=workers, address=ray_address, report=report)
        else:
            weights = _train_in_process(cfg, split, epochs, report, rd, assess)
    except BaseException:
        tracker.finish("FAILED")
        raise
    model = build_model(cfg.model, split.train.n_features, split.train.n_classes, split.train.image_shape)
    set_weights(model, weights)
    final = assess(model)
    if cfg.task == "forecast":  # the horizon forecast of every series beside the per-series models, plotted per series
        from uaap.forecast.report import compare, forecasters

        scores = compare(cfg, model, models=forecasters(cfg), plots=rd.path / "forecasts", clients=1)
        forecast = {f"forecast-{k}": v for k, v in scores[cfg.model].items()}
        forecast["naive-mase"] = scores["seasonal_naive"]["mase"]
        forecast.update(
            {f"{name}-mase": m["mase"] for name, m in scores.items() if name not in (cfg.model, "seasonal_naive")}
        )
        final = {**final, **forecast}
        tracker.log_metrics({f"central_{k}": v for k, v in forecast.items()}, step=epochs)
        for png in sorted((rd.path / "forecasts").glob("*.png")):
            tracker.log_artifact(str(png))
    chosen = {THRESHOLD: final[THRESHOLD]} if validation is not None else {}
    workspace.save_model(
        rd.model_file,
        cfg.model,
        weights,
        n_features=split.train.n_features,
        n_classes=split.train.n_classes,
        image_shape=split.train.image_shape,
        extra={"run_id": rd.run_id, "dataset": cfg.dataset, **target_meta(split.train), **chosen},
    )
    rd.log_event("end", status="completed", central=final)
    tracker.log_artifact(str(rd.model_file))
    tracker.set_tags({"uaap.status": "completed"})
    tracker.finish()
    return CentralResult(rd, final)


def _assessor(cfg: RunConfig, test: Dataset, validation: Dataset | None) -> Callable[[Any], dict[str, float]]:
    """The test metrics of a model; anomaly detection flags test rows above the threshold chosen on ``validation``."""

    def assess(model: Any) -> dict[str, float]:
        if validation is None:
            return evaluate(model, test)
        threshold = evaluate(model, validation, anomaly_quantile=cfg.anomaly_quantile)[THRESHOLD]
        return evaluate(model, test, threshold=threshold)

    return assess


def _train_in_process(
    cfg: RunConfig,
    split: Split,
    epochs: int,
    report: Callable[[int, dict[str, float]], None],
    rd: workspace.RunDir,
    assess: Callable[[Any], dict[str, float]],
) -> list[np.ndarray]:
    model = build_model(
        cfg.model, split.train.n_features, split.train.n_classes, split.train.image_shape, seed=cfg.seed
    )
    tcfg = TrainConfig.from_run(cfg, epochs=epochs, proximal_mu=0.0)
    with torch_threads() as threads:  # the CPUs other processes leave free, not torch's core count (uaap.threads)
        log.info("training in-process with %d torch thread(s)", threads)
        rd.log_event("threads", torch=threads)
        local_train(
            model,
            split.train,
            tcfg,
            on_epoch=lambda epoch, loss: report(epoch + 1, {"train_loss": loss, **assess(model)}),
        )
    return get_weights(model)


def _fit_estimator(cfg: RunConfig, split: Split, rd: workspace.RunDir, tracker: Any, workers: int) -> CentralResult:
    """Fit an estimator family (:mod:`uaap.models.estimators`) on the pooled rows; metrics from the same counts."""
    from uaap.metrics import anomaly_counts, anomaly_from_counts, metrics_from_counts
    from uaap.models.estimators import central_estimator, evaluate_counts

    if workers > 0:
        raise ConfigError(f"workers={workers}: Ray Train runs the torch families; model={cfg.model!r} fits in-process")
    train, test = split.train, split.test
    chosen: dict[str, float] = {}
    try:
        if train.task == "anomaly":  # normal rows in; the threshold from a validation part, as for the autoencoder
            inner = local_split(train, cfg.seed)
            estimator = central_estimator(cfg, train.n_classes).fit(normal_rows(inner.train).X)
            val = anomaly_counts(inner.test.y, estimator.anomaly_score(inner.test.X))
            estimator.threshold_ = anomaly_from_counts(val, cfg.anomaly_quantile)[THRESHOLD]
            chosen = {THRESHOLD: estimator.threshold_}
            final = estimator.evaluate(test.X, test.y)
        else:
            estimator = central_estimator(cfg, train.n_classes).fit(train.X, train.y)
            final = metrics_from_counts(evaluate_counts(estimator, test.X, test.y, test.n_classes))
    except BaseException:
        tracker.finish("FAILED")
        raise
    params = {k: v for k, v in estimator.get_params().items() if isinstance(v, (int, float, str))}
    info = estimator_meta(cfg.model, params, cfg, train, rd.run_id, **chosen)
    path = workspace.save_estimator(rd.path / workspace.ESTIMATOR_FILE, estimator, info)
    rd.log_event("epoch", epoch=1, central=final)
    tracker.log_metrics({f"central_{k}": v for k, v in final.items()}, step=1)
    rd.log_event("end", status="completed", central=final)
    tracker.log_artifact(str(path))
    tracker.set_tags({"uaap.status": "completed"})
    tracker.finish()
    return CentralResult(rd, final)
