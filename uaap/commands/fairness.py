"""``uaap fairness``: group fairness of a run's classifier on labelled rows (fairlearn's metrics, a plot)."""

from __future__ import annotations

import argparse
from typing import Any

CONSTRAINTS = ("demographic_parity", "equalized_odds")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``uaap fairness``."""
    p = sub.add_parser(
        "fairness",
        help="per-group accuracy, selection rate, TPR and FPR of a run's classifier, and their gaps",
        description="Predict labelled rows with a run's model (through its fitted preprocessor) and compare groups of "
        "a sensitive column: per-group accuracy, selection rate, true- and false-positive rate, and the "
        "demographic-parity and equalized-odds differences and ratios (fairlearn's definitions), computed from "
        "per-group confusion counts that add up across clients. Writes fairness-COLUMN.json and .png in the run "
        "folder's monitor/ and logs them to MLflow. docs/monitoring.md explains the numbers.",
    )
    p.add_argument("run", metavar="RUN", help="the run whose model is audited (`uaap runs` lists them)")
    p.add_argument("--sensitive", required=True, metavar="COLUMN", help="the column whose groups are compared")
    p.add_argument("--data", default="", metavar="SOURCE", help="labelled rows: a file, URL or database")
    p.add_argument("--positive", default="", metavar="CLASS", help="the favourable class (default: the 2nd of two)")
    p.add_argument(
        "--mitigate",
        default="",
        choices=CONSTRAINTS,
        help="also fit fairlearn's ThresholdOptimizer under this constraint on half the rows and show the other "
        "half before and after (binary classifiers)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the mitigation's split and randomised thresholds")
    p.add_argument("--trust-pickle", action="store_true", help="load a legacy model.joblib (a pickle) of your own")
    p.add_argument("--federated", action="store_true",
                   help="audit a federated run on its clients' own rows (a simulation of its clients: their training "
                   "rows, or their share of --data); they send only per-group confusion counts")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Audit, print the table and where the files went."""
    from rich.console import Console
    from rich.table import Table

    from uaap.errors import ConfigError
    from uaap.monitor.fairness import SUMMARY, table
    from uaap.monitor.reports import fairness

    if args.federated and args.mitigate:
        raise ConfigError("--mitigate is central (ThresholdOptimizer reads each row's score); drop it with --federated")
    if not args.data and not args.federated:
        raise ConfigError("uaap fairness needs --data SOURCE (labelled rows), or --federated for a federated run")
    console = Console()
    if args.federated:
        from uaap.commands.common import floor

        audits = floor("audits")  # the Flower floor (simulations.audit), through its entry point
        with console.status(f"auditing run {args.run} by {args.sensitive!r} on its clients"):
            done = audits.fairness(args.run, args.sensitive, data=args.data, positive=args.positive)
    else:
        with console.status(f"auditing run {args.run} by {args.sensitive!r}"):
            done = fairness(args.run, args.data, args.sensitive, positive=args.positive, mitigate=args.mitigate,
                            seed=args.seed, trust_pickle=args.trust_pickle)  # fmt: skip
    result = done.report
    sections = [("", result)]
    if "mitigation" in result:
        sections = [("held-out half, before", result["mitigation"]["before"]),
                    ("held-out half, after ThresholdOptimizer", result["mitigation"]["after"])]  # fmt: skip
        sections.insert(0, ("all rows", result))
    for label, part in sections:
        rows = table(part)
        t = Table(*rows[0], title=f"{label} (positive class {part['positive']!r})".strip())
        for row in rows[1:]:
            t.add_row(*row)
        console.print(t)
        console.print(", ".join(f"{m.replace('_', ' ')} {part[m]:.4f}" for m in SUMMARY), markup=False)
    for path in done.files:
        console.print(f"wrote {path}", markup=False, soft_wrap=True)
    return 0
