"""How many torch threads a process may use: the CPUs reserved for it, not the machine's core count.

torch starts as many intra-op threads as the machine has cores. On a shared machine those cores are busy, and
every parallel region of a small model then waits for a descheduled thread: one central MLP fit on a 6k-row
table took 38 s on 2 quiet cores and 17 min on the same cores busy (FIELD-NOTES). So each process sizes its
threads from what it holds:

* a simulated client or a Ray Train worker: the CPUs Ray assigned to it (``num_cpus`` of its reservation);
* central training in-process: the CPUs of its affinity mask that other processes leave idle when it starts
  (measured over 0.2 s from ``/proc/stat``), at least one.

``UAAP_TORCH_THREADS`` overrides the choice everywhere (a whole number >= 1).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from uaap.errors import ConfigError

log = logging.getLogger("uaap.threads")
THREADS_ENV = "UAAP_TORCH_THREADS"


def affinity_cpus() -> int:
    """CPUs this process may run on (its affinity mask; the CPU count where the OS has no masks)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def ray_assigned_cpus() -> float | None:
    """The CPUs Ray reserved for this worker or actor, or None outside a Ray worker."""
    ray = sys.modules.get("ray")  # never import Ray for this: a process that did not load it is not a worker
    if ray is None or not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:  # the driver holds no reservation
        return None
    cpus = context.get_assigned_resources().get("CPU")
    return None if cpus is None else float(cpus)


def idle_cpus(window: float = 0.2) -> float | None:
    """CPUs the machine left idle over the last ``window`` seconds (``/proc/stat``), or None where unreadable."""
    import time

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields[:8])  # idle + iowait, all but guest time (counted in user)

    try:
        idle0, total0 = sample()
        time.sleep(window)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    busy_share = 1.0 - (idle1 - idle0) / max(total1 - total0, 1)
    return (os.cpu_count() or 1) * (1.0 - busy_share)


def free_cpus(idle: float | None = None) -> int:
    """CPUs of the affinity mask that other processes leave free now (measured: :func:`idle_cpus`), at least 1.

    A CPU counts when at least three quarters of it is idle: a thread that must share a core makes every
    parallel region wait for it. Where nothing can be measured, the affinity mask is the answer.
    """
    total = affinity_cpus()
    idle = idle_cpus() if idle is None else idle
    if idle is None:
        return total
    return max(1, min(total, math.floor(idle + 0.25)))


def threads_for(cpus: float) -> int:
    """Threads for ``cpus`` reserved CPUs: the whole CPUs, at least 1 (a fraction of a CPU gets one thread)."""
    if not (math.isfinite(cpus) and cpus > 0):
        raise ConfigError(f"{cpus!r} reserved CPUs: expected a positive number of CPUs (e.g. --client-cpus 1)")
    return max(1, math.floor(cpus))


def env_threads() -> int | None:
    """``UAAP_TORCH_THREADS`` as a thread count, or None when unset."""
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{THREADS_ENV}={text!r}: expected a whole number >= 1, or leave it unset")
    return int(text)


def reserved_threads() -> int:
    """Threads for this process: ``UAAP_TORCH_THREADS``, else Ray's reservation, else the free CPUs."""
    forced = env_threads()
    if forced is not None:
        return forced
    assigned = ray_assigned_cpus()
    if assigned is not None:
        return threads_for(assigned) if assigned > 0 else 1
    return free_cpus()


def client_threads() -> int:
    """Threads for a federated client: ``UAAP_TORCH_THREADS``, else Ray's reservation in a simulation, else 1.

    A deployed client shares its machine with whatever its owner runs; one thread is the safe default there.
    """
    forced = env_threads()
    if forced is not None:
        return forced
    assigned = ray_assigned_cpus()
    return threads_for(assigned) if assigned else 1


def size_torch_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (default :func:`reserved_threads`); returns the count."""
    import torch

    count = reserved_threads() if threads is None else threads
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    log.debug("torch threads: %d", count)
    return count


@contextmanager
def torch_threads(threads: int | None = None) -> Iterator[int]:
    """Run a block with :func:`size_torch_threads`, restoring the previous count afterwards."""
    import torch

    before = torch.get_num_threads()
    try:
        yield size_torch_threads(threads)
    finally:
        torch.set_num_threads(before)
