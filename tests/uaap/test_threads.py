"""Torch threads from the CPUs reserved for the process (uaap.threads): Ray's reservation in a Ray worker, the
idle CPUs for central training, UAAP_TORCH_THREADS over both."""

from __future__ import annotations

from pathlib import Path

import pytest

from uaap import threads
from uaap.errors import ConfigError


def test_threads_follow_the_reservation_and_the_idle_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 4)
    assert [threads.free_cpus(idle) for idle in (0.0, 0.7, 1.8, 2.6, 3.9, 12.0)] == [1, 1, 2, 2, 4, 4]
    assert [threads.threads_for(c) for c in (0.5, 1.0, 2.0, 3.7)] == [1, 1, 2, 3]
    with pytest.raises(ConfigError, match=r"0 reserved CPUs: expected a positive number of CPUs"):
        threads.threads_for(0)
    assert threads.client_threads() == 1  # not a Ray worker: a deployed client keeps one thread
    monkeypatch.setenv(threads.THREADS_ENV, "3")
    assert threads.reserved_threads() == threads.client_threads() == 3
    monkeypatch.setenv(threads.THREADS_ENV, "many")
    with pytest.raises(ConfigError, match="UAAP_TORCH_THREADS='many': expected a whole number >= 1, or leave it unset"):
        threads.reserved_threads()


def test_idle_cpus_are_measured_and_bounded() -> None:
    idle = threads.idle_cpus(0.05)
    assert idle is not None and 0.0 <= idle <= threads.affinity_cpus() + 1e-9


def test_central_training_sizes_its_threads_and_restores_them(uaap_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from uaap.centralized import train_central
    from uaap.config import RunConfig

    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    monkeypatch.setattr(threads, "idle_cpus", lambda window=0.2: 0.0)  # every core busy elsewhere
    before = torch.get_num_threads()
    result = train_central(RunConfig(dataset="wine", model="logreg", experiment="tests-threads"), epochs=1)
    assert [e["torch"] for e in result.run_dir.events("threads")] == [1]
    assert torch.get_num_threads() == before


def test_a_ray_worker_takes_the_cpus_ray_reserved_for_it() -> None:
    import ray

    from uaap.cluster import connect

    started = connect(num_cpus=2)
    try:

        @ray.remote
        def sized() -> tuple[int, int]:
            return threads.reserved_threads(), threads.client_threads()

        one = ray.get(sized.options(num_cpus=1).remote())
        two = ray.get(sized.options(num_cpus=2).remote())
        assert (one, two) == ((1, 1), (2, 2))
        assert threads.ray_assigned_cpus() is None  # the driver holds no reservation
    finally:
        if started:
            ray.shutdown()
