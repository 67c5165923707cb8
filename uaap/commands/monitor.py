"""``uaap monitor``: drift of new rows from a run's training rows, per feature and of the model's predictions."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``uaap monitor``."""
    p = sub.add_parser(
        "monitor",
        help="drift of new rows from a run's training rows (PSI, KS / chi-square, Wasserstein) and of its predictions",
        description="Compare new rows with the rows a run was trained on, feature by feature, on fixed-bin histograms "
        "and category counts that add up across clients: PSI, Kolmogorov-Smirnov (numeric) or chi-square and "
        "Cramér's V (categorical), Wasserstein distance, and the same for the model's predictions. A feature "
        "drifts when its test is significant and an effect size crosses its threshold. Writes drift-TIME.json and "
        ".png in the run folder's monitor/ and logs the statistics to MLflow; exits 0 whether or not drift is "
        "found (the JSON's `drifted` lists the features). docs/monitoring.md explains the numbers.",
    )
    p.add_argument("--reference", required=True, metavar="RUN", help="the run whose training rows are the reference")
    p.add_argument("--data", required=True, metavar="SOURCE", help="the new rows: a file, URL or database")
    p.add_argument(
        "--reference-data",
        default="",
        metavar="SOURCE",
        help="reference rows to use instead of the run's training rows (when its table is not readable here)",
    )
    p.add_argument("--psi", type=float, default=0.2, help="PSI at which a feature drifts (default 0.2)")
    p.add_argument("--ks", type=float, default=0.1, help="KS statistic at which a numeric feature drifts (default 0.1)")
    p.add_argument(
        "--wasserstein",
        type=float,
        default=0.1,
        help="Wasserstein distance, in reference standard deviations, at which a feature drifts (default 0.1)",
    )
    p.add_argument("--cramers-v", type=float, default=0.1, help="Cramér's V at which a category drifts (default 0.1)")
    p.add_argument("--pvalue", type=float, default=0.01, help="significance the test must reach too (default 0.01)")
    p.add_argument("--trust-pickle", action="store_true", help="load a legacy model.joblib (a pickle) of your own")
    p.add_argument("--federated", action="store_true",
                   help="compare on a federated run's clients (a simulation of them): each holds its share of --data "
                   "and its training rows, and sends only the sketches")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compare, print one line per feature and where the files went."""
    from rich.console import Console
    from rich.table import Table

    from uaap.errors import ConfigError
    from uaap.monitor.drift import Thresholds
    from uaap.monitor.reports import monitor

    for flag in ("psi", "ks", "wasserstein", "cramers_v", "pvalue"):
        if not getattr(args, flag) > 0:
            raise ConfigError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: give a positive number")
    thresholds = Thresholds(args.psi, args.ks, args.wasserstein, args.cramers_v, args.pvalue)
    console = Console()
    if args.federated:
        if args.reference_data:
            raise ConfigError(
                "--reference-data is central: with --federated the clients' training rows are the reference"
            )
        from uaap.commands.common import floor

        audits = floor("audits")  # the Flower floor (simulations.audit), through its entry point
        with console.status(f"comparing {args.data} with run {args.reference} on its clients"):
            done = audits.monitor(args.reference, args.data, thresholds=thresholds)
    else:
        with console.status(f"comparing {args.data} with run {args.reference}"):
            done = monitor(args.reference, args.data, reference_data=args.reference_data, thresholds=thresholds,
                           trust_pickle=args.trust_pickle)  # fmt: skip
    result = done.report
    t = Table("feature", "kind", "PSI", "KS / V", "p-value", "W / std", "drifted")
    rows = dict(result["features"], **({"(prediction)": result["prediction"]} if result["prediction"] else {}))
    for name, r in rows.items():
        numeric = r["kind"] == "numeric"
        t.add_row(
            name,
            r["kind"],
            f"{r['psi']:.4f}",
            f"{r['ks'] if numeric else r['cramers_v']:.4f}",
            f"{r['ks_pvalue'] if numeric else r['chi2_pvalue']:.2g}",
            f"{r['wasserstein_std']:.4f}" if numeric else "",
            "yes" if r["drifted"] else "",
        )
    console.print(t)
    console.print(f"drifted: {', '.join(result['drifted']) or 'none'}; predictions drifted: "
                  f"{'yes' if result['prediction_drifted'] else 'no'}", markup=False)  # fmt: skip
    from uaap.monitor.continual import retrain_hint

    if hint := retrain_hint(args.reference, args.data, list(result["drifted"])):
        console.print(hint, markup=False, soft_wrap=True)
    for path in done.files:
        console.print(f"wrote {path}", markup=False, soft_wrap=True)
    return 0
