"""``uaap privacy report RUN`` (budget tables from the ledger) and ``uaap dashboard`` (Streamlit)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``privacy`` and ``dashboard`` commands."""
    p = sub.add_parser("privacy", help="privacy ledger: budget spent per run")
    psub = p.add_subparsers(dest="privacy_command", required=True, metavar="SUBCOMMAND")
    rep = psub.add_parser("report", help="print a run's privacy budget table (user- and example-level epsilon)")
    rep.add_argument("run_id", metavar="RUN", help="run id (see `uaap runs`)")
    rep.add_argument(
        "--ledger", default=None, help="SQLAlchemy URL of the ledger (default: UAAP_LEDGER_URL or ledger.db)"
    )
    rep.set_defaults(func=report)

    d = sub.add_parser("dashboard", help="privacy-budget dashboard (Streamlit) over the ledger and MLflow")
    d.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    d.add_argument("--address", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    d.add_argument(
        "--ledger", default=None, help="SQLAlchemy URL of the ledger (default: UAAP_LEDGER_URL or ledger.db)"
    )
    d.add_argument("--refresh", type=float, default=5.0, help="seconds between live refreshes (0 = off)")
    d.set_defaults(func=dashboard)


def report(args: argparse.Namespace) -> int:
    """Print the budget table and the per-client DP-SGD table of one run."""
    from rich.console import Console

    from uaap.errors import WorkspaceError
    from uaap.privacy.ledger import Ledger, redact
    from uaap.privacy.report import budget_table, client_table

    ledger = Ledger(args.ledger)
    if ledger.budget(args.run_id) is None:
        known = [b.run_id for b in ledger.runs()]
        listing = ", ".join(known[-5:]) if known else "none yet"
        raise WorkspaceError(
            f"run {args.run_id!r} has no privacy ledger entries in {redact(ledger.url)}; runs with DP: {listing}"
        )
    console = Console()
    console.print(budget_table(args.run_id, ledger))
    if ledger.releases(args.run_id, level="example"):
        console.print(client_table(args.run_id, ledger))
    return 0


def dashboard_command(port: int, address: str = "127.0.0.1") -> list[str]:
    """The ``streamlit run`` command line that serves the dashboard."""
    import sys
    from pathlib import Path

    app = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]


def dashboard(args: argparse.Namespace) -> int:
    """Run Streamlit on the dashboard app in the foreground (Ctrl-C stops it)."""
    import os

    from uaap import workspace
    from uaap.processes import run_foreground

    env = dict(os.environ, UAAP_HOME=str(workspace.home()), UAAP_DASHBOARD_REFRESH=str(args.refresh))
    if args.ledger:
        env["UAAP_LEDGER_URL"] = args.ledger
    print(f"privacy dashboard on http://{args.address}:{args.port} (Ctrl-C to stop)", flush=True)
    return run_foreground(dashboard_command(args.port, args.address), env)  # Streamlit dies with this process
