"""Process plumbing for the launchers: find Flower's executables, stop whole process trees.

Flower's SuperLink starts its executor in a session of its own (``flower-superexec --parent-pid P``),
so stopping a SuperLink's process group is not enough; these helpers find such orphans too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

# Environment of every Flower process the launchers start: no telemetry (no internet here), no runtime
# `uv sync` of the app's dependencies (the launcher's environment is the app's), unbuffered logs.
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "PYTHONUNBUFFERED": "1",
}


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


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc), deepest last."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` (empty when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def orphans_of(pid: int) -> list[int]:
    """Processes started with ``--parent-pid <pid>`` (Flower's detached SuperExec) and their children."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            cmd = cmdline(int(entry.name))
            if "--parent-pid" in cmd and cmd[cmd.index("--parent-pid") + 1 : cmd.index("--parent-pid") + 2] == [
                str(pid)
            ]:
                found.append(int(entry.name))
    return found


def stop_tree(pid: int, grace: float = 10.0) -> None:
    """Stop ``pid``, its descendants and any ``--parent-pid pid`` process: SIGTERM, then SIGKILL."""
    victims = [pid, *descendants(pid)]
    for orphan in orphans_of(pid):
        victims += [orphan, *descendants(orphan)]
    victims = list(dict.fromkeys(victims))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for v in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(v, sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 2.0)
        while time.monotonic() < deadline:
            for v in victims:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(v, os.WNOHANG)  # reap our own children
            if not any(alive(v) for v in victims):
                return
            time.sleep(0.2)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
