"""``uaap runs``: list the runs in the workspace."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``runs`` command."""
    p = sub.add_parser("runs", help="list runs in the workspace")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """One line per run: id, status, rounds done, last accuracy."""
    from rich.console import Console
    from rich.table import Table

    from uaap import workspace

    table = Table(title=f"runs in {workspace.home()}")
    for col in ("run", "status", "rounds", "accuracy"):
        table.add_column(col)
    for run_id in workspace.list_runs():
        rd = workspace.run_dir(run_id)
        ends = rd.events("end")
        rounds = [e for e in rd.events() if e["kind"] in ("round", "epoch")]
        last = rounds[-1] if rounds else {}
        acc = last.get("central", {}).get("accuracy", last.get("evaluate", {}).get("accuracy"))
        table.add_row(
            run_id,
            ends[-1]["status"] if ends else "running/interrupted",
            str(last.get("round", last.get("epoch", 0))),
            "-" if acc is None else f"{acc:.4f}",
        )
    Console().print(table)
    return 0
