"""A deployed client's rounds near Flower's polling floor: a SuperNode without idle naps, and ClientApps that start
warm.

Flower 1.42 spends most of a deployed round waiting (``benchmarks/deployment.py``):

* the SuperNode naps 3 s whenever a pull finds no message, and polls for the ClientApp's reply every 0.5 s
  (``time.sleep`` literals in ``flwr.supernode.start_client_internal``);
* its SuperExec polls for tasks every ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` seconds (1 by default);
* every message starts a fresh ``flwr-clientapp`` process, which imports torch, Flower and our client (~3 s)
  before it asks for its message;
* a message's objects are pulled with a backoff that starts at 1 s and doubles to 10 s
  (``flwr.supercore.inflatable.inflatable_utils.pull_objects``), and the first try usually comes too early: the
  SuperNode sees a message before the ServerApp has pushed all of its objects, and the ClientApp starts before
  the SuperNode has them (profiled: 1.5 s from "Receiving" to "Received successfully" in the SuperNode, and the
  ClientApp's pull another 1.6 s after that, for a message of a few kB).

Here ``flower-client`` (unless ``--cold``) runs the SuperNode through :func:`supernode` (``time.sleep`` in that one
Flower module capped at ``nap`` seconds; object pulls retried after 0.02 s, at most every 0.25 s:
:func:`quick_object_pulls`) with ``--isolation process``, and starts :func:`superexec` beside it: Flower's own
SuperExec loop (``run_superexec``), polling every ``nap`` seconds, whose subprocess executor hands each task to a
*warm zygote* instead of spawning ``flwr-clientapp``. The zygote (:func:`zygote`) has imported what a ClientApp
needs (torch, scikit-learn, Flower, our client) once; for each task's ``flwr-clientapp`` arguments it forks a
child that runs Flower's ``flwr_clientapp`` entry point with them and exits, so every message still gets a fresh
process of its own (as isolated as Flower's: nothing a task changes outlives it), without paying the imports.
The zygote itself runs no thread and opens no connection, so forking it is safe.

Flower internals this relies on, all in flwr 1.42 (pinned in pyproject.toml): the module
``flwr.supernode.start_client_internal`` calling ``time.sleep``; ``flwr.supercore.superexec.run_superexec``'s
``run_superexec`` and its executor ``SubprocessExecutor.launch(spec)`` building ``flwr-clientapp``'s arguments
from an ``ExecutionSpec``; ``flwr.supernode.cli.flwr_clientapp.flwr_clientapp`` reading ``sys.argv``;
``pull_objects`` and ``pull_and_inflate_object_from_tree`` taking their backoff (``initial_backoff``, ``backoff_cap``,
``max_tries_per_object``) as keyword defaults that their callers in the SuperNode (``_pull_and_store_message``)
and the ClientApp (``run_clientapp``) leave alone; ``HEARTBEAT_DEFAULT_INTERVAL`` read at call time by
``flwr.supercore.heartbeat`` and ``flwr.supernode.fleet_http_connection`` (:func:`short_heartbeats`).
:func:`check_flower` asserts each of them, and ``tests/client/test_warm.py`` runs it, so an upgrade that moves one
fails a test by name instead of slowing or breaking deployments silently.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

NAP = 0.05  # seconds: the SuperNode's and the SuperExec's polls right after work
IDLE_CAP = 0.2  # seconds: their longest idle nap (each idle nap 1.5x the last, from NAP)
# The zygote forks: no thread pool may exist in it when it does (a lock held by a pool thread at the fork would
# stay held in the child forever). One thread each keeps OpenMP, OpenBLAS and MKL from starting pools at import;
# a child sizes torch's threads itself (uaap.threads), after the fork.
SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
PULL_BACKOFF = (0.02, 0.25)  # seconds: first retry and longest wait of an object pull (Flower's: 1 and 10)
# seconds between heartbeats the SuperNode promises (Flower's default 30, its minimum 10): a node that dies without
# its goodbye (seen: a killed warm client's SuperNode, 2 of 3 times on a loaded machine) is offline 2 x 10 s later,
# so the round stops waiting for it and the restarted client is let in (until then: "[code: 2004]")
HEARTBEAT = 10
# What a ClientApp message imports, profiled in a warm child: torch._dynamo (imported by the first torch.optim
# optimizer: 3 s of a 3.7 s train message), Flower's HTTP client (httpcore), scikit-learn's data sets and metrics.
WARM_IMPORTS = (
    "torch", "torch._dynamo", "opacus", "sklearn.datasets", "sklearn.metrics", "sklearn.model_selection", "httpcore",
    "flwr.supernode.cli.flwr_clientapp", "client.app",
)  # fmt: skip


def check_flower() -> None:
    """Fail loudly when the Flower internals this module patches are not what it expects (see the docstring)."""
    import importlib

    import flwr.supernode.start_client_internal as sci
    from flwr.supercore.superexec import run_superexec as rs
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

    entry = importlib.import_module("flwr.supernode.cli.flwr_clientapp").flwr_clientapp  # the module, not the function
    problems = []
    if "time.sleep(3)" not in inspect.getsource(sci.start_client_internal):
        problems.append("flwr.supernode.start_client_internal no longer naps with time.sleep(3)")
    factory = importlib.import_module("flwr.supercore.superexec.executor.factory")
    if not hasattr(rs, "run_superexec") or "SubprocessExecutor" not in inspect.getsource(factory):
        problems.append("flwr.supercore.superexec.run_superexec no longer builds a SubprocessExecutor")
    if "time.sleep(task_poll_interval)" not in inspect.getsource(rs.run_superexec):
        problems.append("run_superexec no longer polls with time.sleep(task_poll_interval)")
    if list(inspect.signature(SubprocessExecutor.launch).parameters) != ["self", "spec"]:
        problems.append("SubprocessExecutor.launch(self, spec) changed its signature")
    if "parse_args()" not in inspect.getsource(entry):
        problems.append("flwr_clientapp no longer reads its arguments from the command line")
    from flwr.supercore.inflatable import inflatable_utils as iu
    from flwr.supernode.runtime import run_clientapp

    backoff = {"initial_backoff", "backoff_cap", "max_tries_per_object"}
    callers = inspect.getsource(sci._pull_and_store_message) + inspect.getsource(run_clientapp)
    pulls = (iu.pull_objects, iu.pull_and_inflate_object_from_tree)
    if not all(backoff <= set(f.__kwdefaults__ or {}) for f in pulls) or "backoff" in callers:
        problems.append("pull_objects no longer takes its backoff as keyword defaults its callers leave alone")
    import flwr.supercore.heartbeat as hb
    from flwr.common import constant
    from flwr.supernode import fleet_http_connection as fc

    uses = all("HEARTBEAT_DEFAULT_INTERVAL" in inspect.getsource(module) for module in (hb, fc))
    if not uses or not constant.HEARTBEAT_MIN_INTERVAL <= HEARTBEAT <= constant.HEARTBEAT_MAX_INTERVAL:
        problems.append("the SuperNode's heartbeat interval is no longer HEARTBEAT_DEFAULT_INTERVAL of its modules")
    if problems:
        raise RuntimeError("client/warm.py relies on Flower internals that changed: " + "; ".join(problems))


def quick_object_pulls(initial: float = PULL_BACKOFF[0], cap: float = PULL_BACKOFF[1]) -> None:
    """Object pulls of this process (and of processes it forks) retry after ``initial`` s, at most every ``cap``
    s, as many times as Flower's own backoff would in the same time."""
    from flwr.supercore.constant import PULL_BACKOFF_CAP, PULL_MAX_TRIES_PER_OBJECT
    from flwr.supercore.inflatable import inflatable_utils as iu

    tries = int(PULL_MAX_TRIES_PER_OBJECT * PULL_BACKOFF_CAP / cap)
    for pull in (iu.pull_objects, iu.pull_and_inflate_object_from_tree):
        defaults = pull.__kwdefaults__
        assert defaults is not None  # check_flower: keyword defaults
        defaults.update(initial_backoff=initial, backoff_cap=cap, max_tries_per_object=tries)


def short_heartbeats(interval: int = HEARTBEAT) -> None:
    """The SuperNode of this process promises (and sends) heartbeats every ``interval`` seconds, not 30."""
    import flwr.supercore.heartbeat as hb
    from flwr.supernode import fleet_http_connection as fc

    for module in (hb, fc):  # each reads its own name at call time
        setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", interval)  # noqa: B010 - a module global, not re-exported


class _Napless:
    """Stands in for the ``time`` module inside one Flower module: the same functions, ``sleep`` shortened.

    A sleep of ``idle`` seconds or more is the module's idle nap (nothing to do): it lasts ``nap`` seconds, then
    1.5 times longer each time up to ``cap``, so that an idle client stops polling 20 times a second (on 2 cores, 5
    idle clients' polls through TLS took the CPU the round needed). Any shorter sleep (waiting within a message's
    work) is capped at ``nap`` and makes the next idle nap short again, as :meth:`reset` does.
    """

    def __init__(self, nap: float, cap: float | None = None, idle: float = 3.0) -> None:
        self.nap, self.cap, self.idle = nap, max(nap, cap or nap), idle
        self.current = nap

    def reset(self) -> None:
        """Work came: the next idle nap is short again."""
        self.current = self.nap

    def sleep(self, seconds: float) -> None:
        if seconds >= self.idle:
            wait, self.current = self.current, min(self.current * 1.5, self.cap)
        else:
            wait, self.current = min(seconds, self.nap), self.nap
        time.sleep(wait)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def supernode(argv: list[str], nap: float = NAP) -> None:
    """Flower's ``flower-supernode`` with its naps capped at ``nap`` seconds."""
    import flwr.supernode.start_client_internal as sci
    from flwr.supernode.cli.flower_supernode import flower_supernode

    check_flower()
    setattr(sci, "time", _Napless(nap, IDLE_CAP))  # noqa: B010 - the module's own name for time: only sleeps change
    quick_object_pulls()
    short_heartbeats()
    if "--isolation" not in argv:  # the SuperExec is ours: started here, as Flower starts its own in subprocess mode
        argv = [*argv, "--isolation", "process"]
        host = argv[argv.index("--host") + 1] if "--host" in argv else "127.0.0.1"
        port = argv[argv.index("--port") + 1] if "--port" in argv else "9094"
        subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            [sys.executable, "-m", "client.warm", "superexec", "--runtime-api-address", f"{host}:{port}",
             "--insecure", "--parent-pid", str(os.getpid())],
            env={**os.environ, POLL_ENV: f"{nap:g}"},
        )  # fmt: skip
    sys.argv = ["flower-supernode", *argv]
    flower_supernode()


class WarmPool:
    """A warm zygote: :meth:`launch` hands a task's arguments to a process that imported everything a ClientApp
    needs once, and forks a child per task (restarted if it died)."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self.zygote: subprocess.Popen[str] | None = None
        self.lock = threading.Lock()
        self._start()

    def _start(self) -> None:
        from uaap.processes import die_with_parent

        env = {**os.environ, **SINGLE_THREADED}
        self.zygote = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            [self.python, "-m", "client.warm", "zygote"], stdin=subprocess.PIPE, text=True, env=env,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - prctl only: the zygote ends with this SuperExec
        )  # fmt: skip

    def launch(self, spec: Any) -> Any:
        """Run the task of an ``ExecutionSpec`` in a child of the zygote (``flwr-clientapp``'s own arguments)."""
        from flwr.supercore.constant import TASK_TYPE_TO_APPIO_API_ADDRESS_ARG, TASK_TYPE_TO_COMMAND
        from flwr.supercore.superexec.executor.types import LaunchResult

        args = [TASK_TYPE_TO_APPIO_API_ADDRESS_ARG[spec.task_type], spec.runtime_api_address, "--token", spec.token]
        if spec.insecure:
            args.append("--insecure")
        elif spec.root_certificates_path is not None:
            args += ["--root-certificates", spec.root_certificates_path]
        if spec.parent_pid is not None:
            args += ["--parent-pid", str(spec.parent_pid)]
        line = json.dumps({"command": TASK_TYPE_TO_COMMAND[spec.task_type], "args": args}) + "\n"
        with self.lock:
            for _ in range(2):  # a zygote that died is replaced once
                if self.zygote is None or self.zygote.poll() is not None or self.zygote.stdin is None:
                    self._start()
                assert self.zygote is not None and self.zygote.stdin is not None
                try:
                    self.zygote.stdin.write(line)
                    self.zygote.stdin.flush()
                    return LaunchResult.accepted()
                except (BrokenPipeError, OSError):
                    self.zygote = None
        return LaunchResult.failed("the warm ClientApp zygote could not be started")

    def close(self) -> None:
        """Stop the zygote (children running a task finish on their own)."""
        with self.lock:
            if self.zygote is not None and self.zygote.poll() is None:
                self.zygote.terminate()


def superexec(argv: list[str], nap: float = NAP) -> None:
    """Flower's SuperExec for a SuperNode run with ``--isolation process``: tasks go to warm workers."""
    from flwr.supercore.superexec import run_superexec as rs
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

    check_flower()
    parser = argparse.ArgumentParser(prog="python -m client.warm superexec")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--root-certificates")
    parser.add_argument("--parent-pid", type=int)
    args = parser.parse_args(argv)
    os.environ[POLL_ENV] = f"{nap:g}"
    napper = _Napless(nap, IDLE_CAP, idle=0.0)  # every sleep of its loop is a poll: idle until a task comes
    setattr(rs, "time", napper)  # noqa: B010 - the module's own name for time
    pool = WarmPool()

    def launch(self: Any, spec: Any) -> Any:
        napper.reset()
        return pool.launch(spec)

    SubprocessExecutor.launch = launch  # type: ignore[method-assign]
    try:
        rs.run_superexec(
            runtime_api_address=args.runtime_api_address,
            insecure=args.insecure,
            root_certificates_path=args.root_certificates,
            parent_pid=args.parent_pid,
        )
    finally:
        pool.close()


def _die_with_zygote() -> None:
    """Linux: SIGKILL this task's process when the zygote ends (its SuperExec, SuperNode or launcher went away),
    so no task outlives its node, whatever it is blocked in."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the zygote ended before the line above
        os._exit(1)


def zygote() -> None:
    """Import what a ClientApp needs, then fork a child for every task line on stdin; the child runs Flower's
    ``flwr_clientapp`` with the task's arguments and exits (a fresh process per message, as Flower's own)."""
    import importlib
    import signal

    for name in WARM_IMPORTS:
        importlib.import_module(name)
    quick_object_pulls()  # the children's pulls of their message from the SuperNode
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    for line in sys.stdin:
        if not line.strip():
            continue
        task = json.loads(line)
        if os.fork() == 0:  # the child: one task, then out
            code = 0
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _die_with_zygote()
                from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

                sys.argv = [task["command"], *task["args"]]
                flwr_clientapp()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - report, then leave with an error code
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown: a library's exit handler must not keep a zygote without tasks alive


def main(argv: list[str] | None = None) -> None:
    """``python -m client.warm supernode|superexec|zygote [args]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("supernode", "superexec", "zygote"):
        raise SystemExit("usage: python -m client.warm supernode|superexec|zygote [args]")
    role, rest = argv[0], argv[1:]
    if role == "supernode":
        supernode(rest)
    elif role == "superexec":
        superexec(rest)
    else:
        zygote()


if __name__ == "__main__":
    main()
