"""Central training on Ray Train (2 CPU workers, gloo DDP), against in-process references."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from uaap import workspace
from uaap.config import RunConfig
from uaap.data import load_split
from uaap.errors import ConfigError
from uaap.raytrain import shard_indices, train_on_ray
from uaap.training import evaluate, make_loader, make_optimizer

EPOCHS = 5
CFG = RunConfig(dataset="digits", model="mlp", seed=7, experiment="tests")


@dataclass(frozen=True)
class Runs:
    ray: object  # CentralResult of the 2-worker Ray Train run
    local: object  # CentralResult of the in-process run, same config
    ray_initialized_after: bool


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    import ray

    from uaap.centralized import train_central

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UAAP_HOME", str(tmp_path_factory.mktemp("uaap-home")))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("RAY_ADDRESS", raising=False)
        on_ray = train_central(CFG, epochs=EPOCHS, workers=2)
        after = ray.is_initialized()
        local = train_central(CFG, epochs=EPOCHS, workers=0)
        yield Runs(on_ray, local, after)


def _model_weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as npz:
        return [npz[k] for k in sorted(npz.files) if k.startswith("w")]


def _ddp_reference(cfg: RunConfig, epochs: int, world: int) -> list[np.ndarray]:
    """What 2-rank DDP must compute, in one process: every step averages the ranks' batch gradients.

    Rebuilds each rank's shard and seeded loader exactly as the workers do, then steps one model with
    the mean of the per-rank mean losses (DDP all-reduces and averages gradients).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker does; a tiny MLP on 2 busy cores is ~20x slower with 2 threads
    try:
        return _ddp_steps(cfg, epochs, world)
    finally:
        torch.set_num_threads(threads)


def _ddp_steps(cfg: RunConfig, epochs: int, world: int) -> list[np.ndarray]:
    import torch

    from uaap.models import build_model, get_weights
    from uaap.training import TrainConfig

    split = load_split(cfg)
    train = split.train
    model = build_model(cfg.model, train.n_features, train.n_classes, train.image_shape, seed=cfg.seed)
    tcfg = TrainConfig.from_run(cfg, epochs=epochs, proximal_mu=0.0, batch_size=cfg.batch_size // world)
    loaders = [
        make_loader(train.subset(shard_indices(len(train.y), r, world, cfg.seed)), tcfg.batch_size, cfg.seed + r)
        for r in range(world)
    ]
    optimizer = make_optimizer(model, tcfg)
    criterion = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        for batches in zip(*loaders, strict=True):
            optimizer.zero_grad(set_to_none=True)
            loss = sum(criterion(model(xb), yb) for xb, yb in batches) / world
            loss.backward()
            optimizer.step()
    return get_weights(model)


@pytest.mark.slow
def test_ray_train_learns_like_in_process_training(runs: Runs) -> None:
    ray_acc = runs.ray.metrics["accuracy"]
    local_acc = runs.local.metrics["accuracy"]
    # Tolerance: both reach 0.9 on digits after 5 epochs and differ by at most 5 points (shards/shuffles differ).
    assert ray_acc >= 0.9 and local_acc >= 0.9, (ray_acc, local_acc)
    assert abs(ray_acc - local_acc) <= 0.05, (ray_acc, local_acc)


@pytest.mark.slow
def test_ray_train_weights_match_a_one_process_ddp_reference(runs: Runs) -> None:
    got = _model_weights(runs.ray.run_dir.model_file)
    want = _ddp_reference(CFG, EPOCHS, world=2)
    assert [w.shape for w in got] == [w.shape for w in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_ray_train_logs_one_epoch_event_per_epoch_and_saves_a_reloadable_model(runs: Runs) -> None:
    rd = runs.ray.run_dir
    epochs = rd.events("epoch")
    assert [e["epoch"] for e in epochs] == list(range(1, EPOCHS + 1))
    for e in epochs:
        assert {"train_loss", "loss", "accuracy", "f1_macro"} <= set(e["central"]), e
        assert np.isfinite(e["central"]["train_loss"])
    assert rd.events("end")[-1]["status"] == "completed"

    model, meta = workspace.load_model(rd.model_file)
    assert meta["run_id"] == rd.run_id
    reproduced = evaluate(model, load_split(CFG).test)["accuracy"]
    assert reproduced == pytest.approx(runs.ray.metrics["accuracy"], abs=1e-12)
    assert reproduced == pytest.approx(epochs[-1]["central"]["accuracy"], abs=1e-12), "checkpoint = last report"


@pytest.mark.slow
def test_ray_train_releases_ray_it_started(runs: Runs) -> None:
    assert runs.ray_initialized_after is False


def test_shards_are_equal_cover_every_row_and_depend_on_the_seed() -> None:
    for n, world in [(1437, 2), (10, 3), (7, 7)]:
        shards = [shard_indices(n, r, world, seed=1) for r in range(world)]
        assert len({len(s) for s in shards}) == 1, "DDP needs the same number of steps on every rank"
        assert set(np.concatenate(shards)) == set(range(n))
        assert sum(len(s) for s in shards) - n < world
    assert not np.array_equal(shard_indices(100, 0, 2, seed=1), shard_indices(100, 0, 2, seed=2))
    with pytest.raises(ConfigError, match="rank=2"):
        shard_indices(10, 2, 2, seed=0)


def test_train_on_ray_refuses_bad_worker_counts_before_starting_ray() -> None:
    import ray

    split = load_split(CFG)
    with pytest.raises(ConfigError, match="workers=0"):
        train_on_ray(CFG, split, epochs=1, workers=0)
    with pytest.raises(ConfigError, match="epochs=0"):
        train_on_ray(CFG, split, epochs=0, workers=2)
    assert not ray.is_initialized()
