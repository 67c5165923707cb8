"""Centralised XGBoost on Ray Train (``XGBoostTrainer``, train-function API), beside the torch path.

Each of N workers takes a seeded shard of the training split (and of the test split, so the test
metrics XGBoost all-reduces across workers are the global ones) and calls ``xgboost.train`` inside
the collective (rabit) context that Ray Train sets up: the histograms are summed across workers, so
the N workers grow one model. Workers report to Ray Train every ``report_every`` boosting rounds (a
report per round costs far more than a round on small data); rank 0 saves the booster and the full
per-round history in the final checkpoint, which the driver turns into an ``XGBClassifier`` that
:func:`uaap.workspace.save_estimator` stores like any AutoML estimator.

Measured here (2 shared cores): two workers are not faster than one process on these datasets;
Ray Train pays off on a cluster (``address`` / ``RAY_ADDRESS``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uaap.data import Split
from uaap.errors import ConfigError

MODEL_FILE = "model.ubj"
HISTORY_FILE = "history.json"


@dataclass(frozen=True)
class XGBRayResult:
    """The trained classifier, the per-round evaluation history and what was reported to Ray Train."""

    estimator: Any
    history: list[dict[str, float]]
    reported_rounds: list[int]
    workers: int


def booster_params(params: Mapping[str, Any], n_classes: int, seed: int = 0) -> tuple[dict[str, Any], int]:
    """``xgboost.train`` parameters (and the number of rounds) from scikit-learn-style XGBoost parameters."""
    values = dict(params)
    rounds = int(values.pop("n_estimators", 100))
    if rounds < 1:
        raise ConfigError(f"n_estimators={rounds} must be at least 1")
    if "learning_rate" in values:
        values["eta"] = values.pop("learning_rate")
    if n_classes == 2:
        values.update(objective="binary:logistic", eval_metric=["logloss", "error"])
    else:
        values.update(objective="multi:softprob", num_class=n_classes, eval_metric=["mlogloss", "merror"])
    values.update(tree_method="hist", nthread=1, seed=seed, verbosity=0)
    return values, rounds


def _shard(n: int, rank: int, world: int, seed: int) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[rank::world])


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: shard, train inside the collective, report every N rounds, rank 0 checkpoints."""
    import ray
    import ray.train
    import xgboost

    from uaap.cluster import block_tensorflow

    block_tensorflow()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    split: Split = ray.get(config["split"])
    seed, every = int(config["seed"]), int(config["report_every"])
    tr = _shard(len(split.train.y), rank, world, seed)
    te = _shard(len(split.test.y), rank, world, seed + 1)
    dtrain = xgboost.DMatrix(split.train.X[tr], label=split.train.y[tr])
    dtest = xgboost.DMatrix(split.test.X[te], label=split.test.y[te])
    rounds = int(config["rounds"])

    def latest(evals_log: Mapping[str, Mapping[str, list[float]]]) -> dict[str, float]:
        return {f"{data}-{name}": float(vals[-1]) for data, m in evals_log.items() for name, vals in m.items()}

    class ReportEvery(xgboost.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            done = epoch + 1
            if done % every == 0 and done < rounds:  # the last round is reported with the checkpoint
                ray.train.report({"round": done, **latest(evals_log)}, checkpoint=None)
            return False

    evals_result: dict[str, Any] = {}
    booster = xgboost.train(
        dict(config["params"]),
        dtrain,
        num_boost_round=rounds,
        evals=[(dtrain, "train"), (dtest, "test")],
        evals_result=evals_result,
        callbacks=[ReportEvery()],
        verbose_eval=False,
    )
    history = [
        {f"{data}-{name}": float(vals[i]) for data, m in evals_result.items() for name, vals in m.items()}
        for i in range(rounds)
    ]
    final = {"round": rounds, **history[-1]}
    if rank != 0:
        ray.train.report(final, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        booster.save_model(str(Path(tmp) / MODEL_FILE))
        (Path(tmp) / HISTORY_FILE).write_text(json.dumps(history))
        ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def train_xgboost_on_ray(
    split: Split,
    params: Mapping[str, Any] | None = None,
    *,
    workers: int = 2,
    report_every: int = 10,
    seed: int = 0,
    address: str | None = None,
    storage_path: str | Path | None = None,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
) -> XGBRayResult:
    """Train an XGBoost classifier data-parallel on ``workers`` Ray Train CPU workers.

    ``params`` are scikit-learn-style (``n_estimators``, ``max_depth``, ``learning_rate``, ...).
    ``on_round(round, metrics)`` is called in this process for every reported round, after training.
    Attaches to ``address`` / ``RAY_ADDRESS`` when given; Ray is shut down afterwards only if this
    call started it.
    """
    if workers < 1:
        raise ConfigError(f"workers={workers} must be at least 1 for Ray Train XGBoost")
    if report_every < 1:
        raise ConfigError(f"report_every={report_every} must be at least 1 boosting round")
    if len(split.train.y) < 2 * workers or len(split.test.y) < workers:
        raise ConfigError(
            f"{len(split.train.y)} training / {len(split.test.y)} test rows are too few for workers={workers}; "
            "use fewer workers"
        )
    import ray
    from ray.train import RunConfig as TrainRunConfig
    from ray.train import ScalingConfig
    from ray.train.xgboost import XGBoostTrainer
    from xgboost import XGBClassifier

    from uaap.cluster import SETUP_HOOK, cluster_cpus, connect

    n_classes = split.train.n_classes
    bparams, rounds = booster_params(params or {}, n_classes, seed)
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if storage_path is None:
        tmp = tempfile.TemporaryDirectory(prefix="uaap-xgb-ray-")
        storage_path = tmp.name
    storage = Path(storage_path).expanduser().resolve()
    storage.mkdir(parents=True, exist_ok=True)
    started = connect(address)
    try:
        if workers > cluster_cpus():
            raise ConfigError(
                f"workers={workers} needs {workers} CPUs but the Ray cluster has {cluster_cpus()}; "
                "use fewer workers or a larger cluster"
            )
        trainer = XGBoostTrainer(
            _worker,
            train_loop_config={
                "split": ray.put(split),
                "params": bparams,
                "rounds": rounds,
                "report_every": report_every,
                "seed": seed,
            },
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 1}),
            # ray.train binds its v2 RunConfig at run time (RAY_TRAIN_V2_ENABLED, on by default), which
            # takes worker_runtime_env; mypy resolves the name to the v1 class it replaces.
            run_config=TrainRunConfig(  # type: ignore[call-arg]  # the v2 RunConfig, see above
                name="xgboost",
                storage_path=str(storage),
                worker_runtime_env={"worker_process_setup_hook": SETUP_HOOK},
            ),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"Ray Train XGBoost finished without a checkpoint; see the logs under {storage}")
        with result.checkpoint.as_directory() as folder:
            history = json.loads((Path(folder) / HISTORY_FILE).read_text())
            estimator = XGBClassifier()
            estimator.load_model(str(Path(folder) / MODEL_FILE))
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
        if tmp is not None:
            tmp.cleanup()
    reported = [r for r in range(report_every, rounds, report_every)] + [rounds]
    if on_round is not None:
        for r in reported:
            on_round(r, history[r - 1])
    return XGBRayResult(estimator, history, reported, workers)
