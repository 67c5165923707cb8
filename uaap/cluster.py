"""Start or attach to Ray with TensorFlow blocked in every worker: one place for simulation, Ray Train, Tune."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}
# Ray Train V2 waits for a health-check poll (2 s by default) per report; FIELD-NOTES measured 73 s -> 14 s.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
# Tune's default CSV/JSON/TensorBoard loggers write files per result we never read (MLflow is the record).
TUNE_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # the new console output prints a config box even at verbose=0
}
SETUP_HOOK = "uaap.cluster.block_tensorflow"
# Flower hands each message to a Ray actor as a task argument, and Ray ships arguments and returns above
# 100 KB through its object store instead of inline. A CKKS update of the digits MLP is 160 KB: at the
# default, every HE message paid ~8 ms more and a 10-client HE round was 1.3-1.4x the plaintext one.
INLINE_BYTES = 1 << 20


def block_tensorflow() -> None:
    """Make ``import tensorflow`` fail fast here (libraries that probe for it skip it; ~0.5 GB saved per worker).

    Nothing is blocked once TensorFlow is imported (nothing to save); a TFLite export lifts the block it needs gone.
    """
    if "tensorflow" not in sys.modules:
        sys.modules["tensorflow"] = None  # type: ignore[assignment]  # None is how sys.modules blocks an import


def quiet_env() -> None:
    """No telemetry (no internet here), no Tune file loggers, fast Ray Train reports: set before Ray starts."""
    os.environ.update(QUIET_ENV)
    os.environ.update(TRAIN_ENV)
    for key, value in TUNE_ENV.items():
        os.environ.setdefault(key, value)


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Start a local Ray (or attach to ``address`` / ``RAY_ADDRESS``); True when this call started it.

    An attached cluster is never stopped by UAAP; the caller shuts down only what it started.
    """
    quiet_env()
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_reachable(address)
    runtime_env = {"worker_process_setup_hook": SETUP_HOOK, "env_vars": {**QUIET_ENV, **TRAIN_ENV}}
    kwargs: dict[str, Any] = {"runtime_env": runtime_env, "logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(
            include_dashboard=False,
            num_cpus=num_cpus or os.cpu_count() or 1,
            _system_config={"max_direct_call_object_size": INLINE_BYTES},  # only a cluster's starter sets it
        )
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    ray.init(**kwargs)
    if callable(sigterm):  # ray.init replaces it with sys.exit(15): keep the command's own clean stop (exit 143)
        signal.signal(signal.SIGTERM, sigterm)
    return True


def check_reachable(address: str, within: float = 10.0) -> None:
    """Fail within ``within`` seconds when nothing listens at a Ray address (``ray.init`` would retry for many
    minutes, deaf to Ctrl-C). ``auto`` and ``local`` are Ray's own lookups and are left to it."""
    import socket
    import time

    from uaap.errors import ConfigError

    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":") if ":" in target else (target, "", "6379")
    if not port.isdigit():
        raise ConfigError(f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.2:6379, or ray://HOST:10001)")
    deadline = time.monotonic() + within
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(3.0, within)):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"no Ray cluster answers at {address} ({exc.strerror or exc}, tried for {within:g}s); start one "
                    f"there (`ray start --head --port {port}`) or drop --ray-address and RAY_ADDRESS to run on this "
                    "machine"
                ) from None
            time.sleep(1.0)


def cluster_cpus() -> int:
    """Logical CPUs of the connected Ray cluster (at least 1)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))
