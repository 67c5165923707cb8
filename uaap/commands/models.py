"""``uaap models``: the model families and where each runs (central, federated how, CKKS, DP, export)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``uaap models``."""
    p = sub.add_parser(
        "models",
        help="list the model families and where each runs",
        description="Every model family, the tasks it serves and where it runs: central, federated (and how), "
        "with secure aggregation (CKKS), with differential privacy, and the export formats. A run that asks a "
        "family for something it lacks is refused before it starts.",
    )
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=_models)


def _models(args: argparse.Namespace) -> int:
    from uaap.models.registry import FEDERATION, capability_table

    rows = capability_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="UAAP model families (Y: supported; federated: how the clients' work is combined)")
    for column in [k for k in rows[0] if k != "summary"]:
        table.add_column(column, no_wrap=column in ("family", "central", "dp"))
    for row in rows:
        table.add_row(*[v for k, v in row.items() if k != "summary"])
    console = Console(width=160)
    console.print(table)
    for row in rows:
        console.print(f"[bold]{row['family']}[/bold]: {row['summary']}")
    console.print("federated: " + "; ".join(f"{k}: {v}" for k, v in FEDERATION.items() if k))
    from uaap.config import FORECASTERS

    console.print(
        f"per-series forecasters (--task forecast, --forecast-models, uaap automl --families): {', '.join(FORECASTERS)}"
        "; each fits one series alone, on the client that holds it, beside the global lstm or gru"
    )
    return 0
