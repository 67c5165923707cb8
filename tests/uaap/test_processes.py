"""Process trees on psutil: the launchers stop everything they started, detached SuperExecs included."""

from __future__ import annotations

import subprocess
import sys
import time

from uaap.processes import alive, cmdline, descendants, orphans_of, stop_tree


def _wait_for(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_stop_tree_stops_children_grandchildren_and_parent_pid_orphans() -> None:
    parent = subprocess.Popen(["bash", "-c", "sleep 60 & bash -c 'sleep 60 & wait' & wait"])
    # a detached process that names the parent the way Flower's SuperExec does
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "--parent-pid", str(parent.pid)], start_new_session=True
    )
    try:
        _wait_for(lambda: len(descendants(parent.pid)) >= 3)
        _wait_for(lambda: orphan.pid in orphans_of(parent.pid))
        tree = [parent.pid, *descendants(parent.pid), orphan.pid]
        assert cmdline(parent.pid)[:2] == ["bash", "-c"]
        assert all(alive(p) for p in tree)

        t0 = time.monotonic()
        stop_tree(parent.pid, grace=5)
        assert time.monotonic() - t0 < 3, "processes that honour SIGTERM stop without waiting out the grace"
        assert not any(alive(p) for p in tree)
    finally:
        for p in (parent, orphan):
            p.kill()
            p.wait()


def test_stop_tree_kills_what_ignores_sigterm_and_gone_pids_are_harmless() -> None:
    stubborn = subprocess.Popen(["bash", "-c", "trap '' TERM; while true; do sleep 0.05; done"])
    try:
        time.sleep(0.2)
        stop_tree(stubborn.pid, grace=0.5)
        assert not alive(stubborn.pid)
    finally:
        stubborn.kill()
        stubborn.wait()
    assert descendants(stubborn.pid) == [] and cmdline(stubborn.pid) == [] and not alive(stubborn.pid)
    stop_tree(stubborn.pid, grace=0.1)
