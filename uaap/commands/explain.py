"""``uaap explain``: SHAP values of a run's model per raw input column, with plots."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``uaap explain``."""
    p = sub.add_parser(
        "explain",
        help="SHAP values of a run's model on rows you give, per raw column (beeswarm, bar, waterfall plots)",
        description="Explain a run's model on rows of a table with SHAP, through its fitted preprocessor: shap's "
        "TreeExplainer for forests and boosted trees, its PermutationExplainer for networks and other models. "
        "The values of a column's model inputs (one-hot categories, date parts, hashed words) are summed into the "
        "column, so they still add up to the model's output. Writes shap.json and shap-summary/-bar/-waterfall.png "
        "in the run folder's explain/ and logs them to MLflow. Central: every row is read here.",
    )
    p.add_argument("run", metavar="RUN", help="the run whose model is explained (`uaap runs` lists them)")
    p.add_argument("--data", required=True, metavar="SOURCE", help="rows to explain: a file, URL or database")
    p.add_argument("--target-class", default="", metavar="CLASS",
                   help="the class whose output is explained (default: the 2nd of two, else the last)")  # fmt: skip
    p.add_argument("--row", type=int, default=0, help="the row the waterfall plot explains (default 0)")
    p.add_argument("--max-rows", type=int, default=500, help="rows drawn at random beyond this many (default 500)")
    p.add_argument("--background-rows", type=int, default=100,
                   help="background rows of the permutation explainer (default 100)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the row draws and permutations (default 0)")
    p.add_argument("--trust-pickle", action="store_true", help="load a legacy model.joblib (a pickle) of your own")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Explain, print the columns by importance and where the files went."""
    from rich.console import Console
    from rich.table import Table

    from uaap.errors import ConfigError
    from uaap.explain.report import explain_run

    if args.max_rows < 1 or args.background_rows < 1:
        raise ConfigError("--max-rows and --background-rows must be at least 1")
    console = Console()
    with console.status(f"explaining run {args.run}"):
        done = explain_run(
            args.run,
            args.data,
            target_class=args.target_class,
            row=args.row,
            max_rows=args.max_rows,
            background_rows=args.background_rows,
            seed=args.seed,
            trust_pickle=args.trust_pickle,
        )
    r = done.report
    head = f"{r['explainer']} explainer, output {r['output']}, base value {r['base_value']:.4f}, {r['rows']} rows"
    console.print(f"{head}; additivity error {r['additivity_error']:.2e}", markup=False, soft_wrap=True)
    for note in (r["note"], r["rows_note"]):
        if note:
            console.print(note, markup=False)
    t = Table("column", "mean |SHAP|", "mean SHAP", f"row {r['row']['index']}")
    for c in r["ranking"]:
        t.add_row(c, f"{r['mean_abs_shap'][c]:.4f}", f"{r['mean_shap'][c]:+.4f}", f"{r['row']['values'][c]:+.4f}")
    console.print(t)
    for path in done.files:
        console.print(f"wrote {path}", markup=False, soft_wrap=True)
    return 0
