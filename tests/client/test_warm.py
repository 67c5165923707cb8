"""client.warm: the Flower internals it patches are still there (a Flower upgrade that moves one fails here, by
name), a capped nap, and a warm worker that runs a task's flwr-clientapp arguments it receives on stdin."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from client import warm
from tests.conftest import REPO


def test_the_flower_internals_client_warm_relies_on_are_there():
    import flwr

    assert flwr.__version__.startswith("1.42.")  # pinned; check_flower says what moved if this changes
    warm.check_flower()


def test_a_changed_flower_internal_fails_loudly(monkeypatch):
    import flwr.supernode.start_client_internal as sci

    original = sci.start_client_internal

    def renamed(*args, **kwargs):  # a Flower whose SuperNode loop was rewritten (no 3 s nap literal)
        return original(*args, **kwargs)

    monkeypatch.setattr(sci, "start_client_internal", renamed)
    with pytest.raises(RuntimeError, match="no longer naps"):
        warm.check_flower()


def test_the_supernode_naps_at_most_the_cap_and_keeps_the_rest_of_time():
    napless = warm._Napless(0.01)
    t0 = time.perf_counter()
    napless.sleep(3)
    assert time.perf_counter() - t0 < 0.5
    assert napless.monotonic() <= time.monotonic()  # every other function is time's own


def test_the_warm_zygote_forks_a_child_per_task_it_is_handed():
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.warm", "zygote"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    task = {"command": "flwr-clientapp", "args": ["--help"]}  # Flower's own argument parser answers and exits
    proc.stdin.write((json.dumps(task) + "\n") * 2)
    proc.stdin.flush()
    out, deadline = "", time.monotonic() + 120
    while out.count("Run a Flower ClientApp") < 2 and time.monotonic() < deadline:  # two tasks, two children
        out += proc.stdout.readline()
    proc.stdin.close()  # the SuperExec went away: the zygote leaves (its children die with it)
    assert proc.wait(timeout=60) == 0, out
    assert out.count("Run a Flower ClientApp") == 2 and "--runtime-api-address" in out
