"""Process plumbing for the launchers: find Flower's executables, stop whole process trees.

Flower's SuperLink starts its executor in a session of its own (``flower-superexec --parent-pid P``),
so stopping a SuperLink's process group is not enough; these helpers find such orphans too (psutil walks the
process table).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

# Environment of every Flower process the launchers start: no telemetry (no internet here), no runtime
# `uv sync` of the app's dependencies (the launcher's environment is the app's), unbuffered logs.
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "PYTHONUNBUFFERED": "1",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt: the same clean-up, then exit code 143."""


def raise_on_sigterm() -> None:
    """Make SIGTERM raise :class:`Terminated` in the main thread (by default it kills without any clean-up)."""

    def handler(signum: int, frame: object) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, handler)


def stop_code(exc: KeyboardInterrupt) -> int:
    """The exit code of a command stopped by ``exc``: 143 for SIGTERM, 130 for Ctrl-C (as shells report them)."""
    return 143 if isinstance(exc, Terminated) else 130


def console_script(name: str) -> str | None:
    """A console script of this interpreter's environment (flower-superlink, flwr, ...), or None."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else shutil.which(name)


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM when the launcher dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def run_foreground(cmd: list[str], env: dict[str, str]) -> int:
    """Run ``cmd`` until it exits, as this process's foreground child: it dies with this process (even by SIGKILL),
    and Ctrl-C or SIGTERM (which uaap.cli turns into an exception) stop it and its descendants here."""
    import subprocess

    proc = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)  # noqa: PLW1509 - prctl only, no Python state
    try:
        return proc.wait()
    except KeyboardInterrupt as exc:
        stop_tree(proc.pid, grace=5.0)
        return stop_code(exc)


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``, deepest last (empty when it is gone)."""
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` (empty when it is gone or not ours to read)."""
    import psutil

    try:
        return list(psutil.Process(pid).cmdline())
    except psutil.Error:
        return []


def orphans_of(pid: int) -> list[int]:
    """Processes started with ``--parent-pid <pid>`` (Flower's detached SuperExec)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "--parent-pid" in cmd and cmd[cmd.index("--parent-pid") + 1 : cmd.index("--parent-pid") + 2] == [str(pid)]:
            found.append(proc.pid)
    return found


def stop_tree(pid: int, grace: float = 10.0) -> None:
    """Stop ``pid``, its descendants and any ``--parent-pid pid`` process: SIGTERM, then SIGKILL."""
    import psutil

    victims = [pid, *descendants(pid)]
    for orphan in orphans_of(pid):
        victims += [orphan, *descendants(orphan)]
    procs = []
    for v in dict.fromkeys(victims):
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(v))
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        deadline = time.monotonic() + wait
        while procs and time.monotonic() < deadline:
            # wait_procs reaps our own children; a zombie that is not ours counts as gone
            _, procs = psutil.wait_procs(procs, timeout=0.05)
            procs = [p for p in procs if _running(p)]
        if not procs:
            return


def _running(proc: Any) -> bool:
    import psutil

    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    import psutil

    try:
        return _running(psutil.Process(pid))
    except psutil.Error:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
