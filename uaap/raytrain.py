"""Data-parallel central training on Ray Train (V2 ``TorchTrainer``, CPU workers, gloo DDP).

Every rank builds the same seeded registry model, takes an equal-sized shard of the training split and
runs the very loop the clients run (:func:`uaap.training.local_train`) on a DDP-wrapped model, so the
per-batch logic is shared, not copied. The configured batch size is the *global* one: each of N ranks
uses ``batch_size // N`` rows per step, so steps per epoch and the learning rate mean what they mean
in-process. Rank 0 evaluates on the test split after every epoch and reports metrics (and, at the end,
a checkpoint with the weights); the driver receives each epoch's metrics through a Ray queue while the
trainer runs and calls ``report`` itself, so metrics.jsonl and MLflow are written from one process.

Measured on 2 shared cores: DDP is not faster than one process (gloo all-reduce per step dominates a
small model); Ray Train is for clusters (``address`` / ``RAY_ADDRESS``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from uaap.cluster import SETUP_HOOK, block_tensorflow, connect
from uaap.config import RunConfig
from uaap.data import Split
from uaap.errors import ConfigError

log = logging.getLogger("uaap.raytrain")

WEIGHTS_FILE = "weights.npz"


def shard_indices(n: int, rank: int, world_size: int, seed: int) -> np.ndarray:
    """Rows of rank ``rank``: a seeded permutation cut into equal shards (padded by wrapping around).

    Equal shards keep the number of steps per epoch equal on every rank, which DDP requires (a rank
    with one step more would wait forever in all-reduce); as in torch's DistributedSampler no row is
    dropped, and at most ``world_size - 1`` rows appear twice.
    """
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank={rank} is outside 0..{world_size - 1}")
    if n < world_size:
        raise ConfigError(f"{n} training rows cannot be shared by {world_size} workers; use fewer workers")
    order = np.random.default_rng(seed).permutation(n)
    per_rank = -(-n // world_size)
    padded = np.concatenate([order, order[: per_rank * world_size - n]])
    return np.sort(padded[rank::world_size])


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: shard, DDP-wrap, train with uaap.training, rank 0 evaluates and checkpoints."""
    import ray
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train.torch import prepare_model

    from uaap.models import build_model, get_weights
    from uaap.threads import size_torch_threads
    from uaap.training import TrainConfig, evaluate, local_train

    block_tensorflow()
    size_torch_threads()  # the CPUs Ray reserved for this worker (resources_per_worker), not the machine's
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = RunConfig.from_json(config["cfg"])
    split: Split = ray.get(config["split"])
    epochs: int = config["epochs"]
    queue = config["queue"]
    shard = split.train.subset(shard_indices(len(split.train.y), rank, world, cfg.seed))
    model = build_model(
        cfg.model, split.train.n_features, split.train.n_classes, split.train.image_shape, seed=cfg.seed
    )
    ddp = prepare_model(model)
    tcfg = TrainConfig.from_run(
        cfg, epochs=epochs, proximal_mu=0.0, batch_size=max(1, cfg.batch_size // world), seed=cfg.seed + rank
    )

    def on_epoch(epoch: int, loss: float) -> None:
        # local_train's loss is the mean over this rank's rows; shards are equal, so the mean of means is global.
        total = torch.tensor([loss], dtype=torch.float64)
        dist.all_reduce(total)
        metrics: dict[str, float] = {"train_loss": float(total.item()) / world}
        if rank != 0:
            ray.train.report({"epoch": epoch + 1, **metrics}, checkpoint=None)
            return
        metrics.update(evaluate(model, split.test))
        model.train()  # evaluate() switched to eval mode; local_train sets train mode only once
        queue.put((epoch + 1, metrics))
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if epoch + 1 == epochs:
                weights = get_weights(model)
                np.savez(Path(tmp) / WEIGHTS_FILE, *weights)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({"epoch": epoch + 1, **metrics}, checkpoint=checkpoint)

    local_train(ddp, shard, tcfg, on_epoch=on_epoch)


def train_on_ray(
    cfg: RunConfig,
    split: Split,
    *,
    epochs: int,
    workers: int,
    address: str | None = None,
    report: Callable[[int, dict[str, float]], None] | None = None,
    storage_path: str | Path | None = None,
) -> list[np.ndarray]:
    """Train ``cfg.model`` data-parallel on ``workers`` Ray Train CPU workers; return the final weights.

    ``report(epoch, metrics)`` is called in this (driver) process once per epoch, while training runs,
    with ``train_loss`` and the test metrics of :func:`uaap.training.evaluate`. Ray Train keeps its
    run state and checkpoint under ``storage_path`` (default: ``raytrain/`` in the run folder, or a
    temporary folder when ``cfg`` has no run id). Attaches to ``address`` / ``RAY_ADDRESS`` when given;
    Ray is shut down afterwards only if this call initialised it (an attached cluster keeps running).
    """
    if workers < 1:
        raise ConfigError(f"workers={workers} must be at least 1 for Ray Train; use workers=0 to train in-process")
    if epochs < 1:
        raise ConfigError(f"epochs={epochs} must be at least 1")
    if len(split.train.y) < workers:
        raise ConfigError(
            f"{len(split.train.y)} training rows cannot be shared by workers={workers}; use fewer workers"
        )
    import ray
    from ray.train import RunConfig as RayRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    tmp: tempfile.TemporaryDirectory[str] | None = None
    if storage_path is None:
        if cfg.run_id:
            from uaap import workspace

            storage_path = workspace.run_dir(cfg.run_id).path / "raytrain"
        else:
            tmp = tempfile.TemporaryDirectory(prefix="uaap-raytrain-")
            storage_path = tmp.name
    storage = Path(storage_path).expanduser().resolve()
    storage.mkdir(parents=True, exist_ok=True)

    # Oversubscribing logical CPUs on purpose: --workers 4 on 2 cores runs (slowly) instead of hanging.
    started = connect(address, num_cpus=max(os.cpu_count() or 1, workers))
    queue: Any = None
    try:
        available = ray.cluster_resources().get("CPU", 0.0)
        if workers > available:
            raise ConfigError(
                f"workers={workers} needs {workers} CPUs but the Ray cluster has {available:g}; "
                "use fewer workers or a larger cluster"
            )
        queue = Queue(actor_options={"num_cpus": 0})
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"cfg": cfg.to_json(), "split": ray.put(split), "epochs": epochs, "queue": queue},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 1}),
            # ray.train binds its v2 RunConfig at run time (RAY_TRAIN_V2_ENABLED, on by default), which
            # takes worker_runtime_env; mypy resolves the name to the v1 class it replaces.
            run_config=RayRunConfig(  # type: ignore[call-arg]  # the v2 RunConfig, see above
                name=cfg.run_id or "uaap-central",
                storage_path=str(storage),
                worker_runtime_env={"worker_process_setup_hook": SETUP_HOOK},
            ),
        )
        outcome: dict[str, Any] = {}

        def fit() -> None:
            try:
                outcome["result"] = trainer.fit()
            except BaseException as exc:  # handed to the driver thread below
                outcome["error"] = exc

        runner = threading.Thread(target=fit, name="uaap-raytrain-fit", daemon=True)
        runner.start()
        report_error: BaseException | None = None
        while True:
            try:
                epoch, metrics = queue.get(timeout=0.2)
            except Empty:
                if not runner.is_alive() and queue.empty():
                    break
                continue
            if report is not None and report_error is None:
                try:
                    report(int(epoch), metrics)
                except BaseException as exc:  # keep draining so the trainer can finish, then raise
                    report_error = exc
        runner.join()
        if "error" in outcome:
            raise outcome["error"]
        if report_error is not None:
            raise report_error
        checkpoint = outcome["result"].checkpoint
        if checkpoint is None:
            raise RuntimeError(f"Ray Train finished without a checkpoint; see the Ray Train logs under {storage}")
        with checkpoint.as_directory() as folder, np.load(Path(folder) / WEIGHTS_FILE) as npz:
            return [npz[f"arr_{i}"] for i in range(len(npz.files))]
    finally:
        if queue is not None:
            queue.shutdown(force=True)
        if started and ray.is_initialized():
            ray.shutdown()
        if tmp is not None:
            tmp.cleanup()
