"""``uaap runs``: list the runs in the workspace, each with the state its events say."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``runs`` command."""
    p = sub.add_parser("runs", help="list runs in the workspace")
    p.set_defaults(func=run)


def run_state(events: list[dict[str, Any]]) -> str:
    """What a run's ``metrics.jsonl`` says about it: its end status (and why), or whether its loop still runs.

    A run whose last ``start`` has no ``end`` after it is running when the process that wrote the start is alive
    on this machine, and was killed otherwise (``--resume`` continues it).
    """
    import socket

    from uaap.processes import alive

    starts = [i for i, e in enumerate(events) if e.get("kind") == "start"]
    ends = [i for i, e in enumerate(events) if e.get("kind") == "end"]
    if ends and (not starts or ends[-1] > starts[-1]):
        end = events[ends[-1]]
        status = str(end.get("status", "ended"))
        reason = str(end.get("reason") or "")
        return (
            f"{status}: {reason[:60]}{'...' if len(reason) > 60 else ''}"
            if reason and status != "completed"
            else status
        )
    if not starts:
        return "not started" if not events else "running or killed"
    start = events[starts[-1]]
    pid, host = start.get("pid"), start.get("host")
    if pid is None:
        return "running or killed"
    if host == socket.gethostname():
        return "running" if alive(int(pid)) else "killed (resume with --resume)"
    return f"running or killed (on {host})"


def run(args: argparse.Namespace) -> int:
    """One line per run: id, state, rounds done, last accuracy and where it was measured."""
    from rich.console import Console
    from rich.table import Table

    from uaap import workspace
    from uaap.metrics import headline

    lines = []
    for run_id in workspace.list_runs():
        rd = workspace.run_dir(run_id)
        events = rd.events()
        rounds = [e for e in events if e["kind"] in ("round", "epoch")]
        last = rounds[-1] if rounds else {}
        central, fed = last.get("central", {}), last.get("evaluate", {})
        name, value = headline(central)  # accuracy, or R2 for a regression run
        where = "server's test split"
        if value is None:
            (name, value), where = headline(fed), "clients' validation"
        lines.append((run_id, run_state(events), str(last.get("round", last.get("epoch", 0))), name, value, where))
    names = sorted({line[3] for line in lines if line[4] is not None}) or ["accuracy"]
    metric = " | ".join(names)  # the column holds what its header says: accuracy, r2, or both
    table = Table()
    for col in ("run", "state", "rounds", metric, "measured on"):
        table.add_column(col, justify="right" if col in ("rounds", metric) else "left")
    for run_id, state, rounds_done, name, value, where in lines:
        shown = "-" if value is None else (f"{name} " if len(names) > 1 else "") + f"{value:.4f}"
        table.add_row(run_id, state, rounds_done, shown, "-" if value is None else where)
    console = Console()
    console.print(f"runs in {workspace.home()}", markup=False, soft_wrap=True)  # a title would wrap a long path
    console.print(table)
    return 0
