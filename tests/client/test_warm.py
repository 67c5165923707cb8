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


def test_the_warm_supernode_promises_heartbeats_every_10_s(monkeypatch):
    import flwr.supercore.heartbeat as hb
    from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_MIN_INTERVAL
    from flwr.supernode import fleet_http_connection as fc

    for module in (hb, fc):  # restored after the test: this process is no SuperNode
        monkeypatch.setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", HEARTBEAT_DEFAULT_INTERVAL)
    warm.short_heartbeats()
    assert hb.HEARTBEAT_DEFAULT_INTERVAL == fc.HEARTBEAT_DEFAULT_INTERVAL == HEARTBEAT_MIN_INTERVAL == 10
    assert HEARTBEAT_DEFAULT_INTERVAL == 30  # Flower's: a node without a goodbye stays online 60 s


def test_idle_naps_grow_to_their_cap_and_work_makes_them_short_again():
    napless = warm._Napless(0.001, 0.004)
    naps = []
    for _ in range(5):
        naps.append(napless.current)
        napless.sleep(3)  # Flower's idle nap
    assert naps == pytest.approx([0.001, 0.0015, 0.00225, 0.003375, 0.004])
    napless.sleep(0.5)  # waiting for a reply: capped, and the next idle nap is short again
    assert napless.current == 0.001
