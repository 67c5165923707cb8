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
        "TreeExplainer for forests and boosted trees, its PermutationExplainer for networks and other models "
        "(--explainer deep: its DeepExplainer for a feed-forward network). "
        "The values of a column's model inputs (one-hot categories, date parts, hashed words) are summed into the "
        "column, so they still add up to the model's output. Writes shap.json and shap-summary/-bar/-waterfall.png "
        "in the run folder's explain/ and logs them to MLflow. Central: every row is read here.",
    )
    p.add_argument("run", metavar="RUN", help="the run whose model is explained (`uaap runs` lists them)")
    p.add_argument("--data", default="", metavar="SOURCE", help="rows to explain: a file, URL or database")
    p.add_argument("--target-class", default="", metavar="CLASS",
                   help="the class whose output is explained (default: the 2nd of two, else the last)")  # fmt: skip
    p.add_argument("--row", type=int, default=0, help="the row the waterfall plot explains (default 0)")
    p.add_argument("--max-rows", type=int, default=500, help="rows drawn at random beyond this many (default 500)")
    p.add_argument("--background-rows", type=int, default=100,
                   help="background rows of the permutation explainer (default 100)")  # fmt: skip
    p.add_argument("--explainer", choices=("auto", "tree", "deep", "permutation"), default="auto",
                   help="auto (default): tree for forests and boosting, permutation otherwise; deep: shap's "
                   "DeepExplainer (DeepLIFT) for a feed-forward torch network (logreg, svm, mlp)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the row draws and permutations (default 0)")
    p.add_argument("--trust-pickle", action="store_true", help="load a legacy model.joblib (a pickle) of your own")
    # partial dependence and federated explanations (docs/monitoring.md)
    p.add_argument("--pdp", action="append", default=[], metavar="COLUMN",
                   help="also draw COLUMN's partial dependence with ICE curves (repeatable)")  # fmt: skip
    p.add_argument("--grid-points", type=int, default=20, help="grid values of a numeric column's PDP (default 20)")
    p.add_argument("--federated", action="store_true",
                   help="explain a federated run on its clients' own rows: they send only sums (mean |SHAP|, mean "
                   "SHAP, PDP, permutation importance from loss sums), summed under secure aggregation when the run "
                   "used it; --data is not read")  # fmt: skip
    p.add_argument("--max-evals", type=int, default=0,
                   help="--federated: model evaluations a row (permutation explainer; default 0: shap's)")  # fmt: skip
    # LIME and importances (docs/monitoring.md section 5)
    p.add_argument("--method", choices=("shap", "lime", "importance"), default="shap",
                   help="shap (default); lime: LIME weights of --row; importance: permutation importance (needs the "
                   "target column) and, for tree models, gain importance")  # fmt: skip
    p.add_argument("--repeats", type=int, default=5,
                   help="--method importance and --federated: shuffles per column (default 5)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Explain, print the columns by importance and where the files went."""
    from rich.console import Console
    from rich.table import Table

    from uaap.errors import ConfigError
    from uaap.explain.report import explain_run

    if args.max_rows < 1 or args.background_rows < 1:
        raise ConfigError("--max-rows and --background-rows must be at least 1")
    if args.explainer != "auto" and (args.method != "shap" or args.federated):
        raise ConfigError(
            f"--explainer {args.explainer} picks the SHAP explainer of a central explanation; it does not apply to "
            f"{'--method ' + args.method if args.method != 'shap' else '--federated'} (drop it)"
        )
    if args.method != "shap":
        return run_method(args)
    if args.federated:
        return run_federated(args)
    if not args.data:
        raise ConfigError("uaap explain needs --data SOURCE (the rows to explain), or --federated for a federated run")
    if args.pdp:
        from uaap.explain.pdp import check_request

        check_request(args.run, args.pdp, args.grid_points, trust_pickle=args.trust_pickle)  # before anything runs
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
            explainer=args.explainer,
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
    if args.pdp:
        from uaap.explain.pdp import explain_pdp

        with console.status("partial dependence"):
            drawn = explain_pdp(args.run, args.data, args.pdp, target_class=args.target_class, points=args.grid_points,
                                max_rows=args.max_rows, seed=args.seed, trust_pickle=args.trust_pickle)  # fmt: skip
        for column, numbers in drawn.report["pdp"].items():
            low, high = min(numbers["pdp"]), max(numbers["pdp"])
            console.print(f"PDP of {column}: {numbers['output']} from {low:.4f} to {high:.4f} over "
                          f"{len(numbers['grid'])} values, {numbers['rows']} ICE curves", markup=False)  # fmt: skip
        for path in drawn.files:
            console.print(f"wrote {path}", markup=False, soft_wrap=True)
    return 0


def run_federated(args: argparse.Namespace) -> int:
    """``--federated``: the run's clients explain its final model on their own rows (a Flower simulation)."""
    from rich.console import Console
    from rich.table import Table

    from uaap.commands.common import floor
    from uaap.errors import ConfigError

    if args.pdp:
        raise ConfigError("--pdp draws ICE curves, which stay on the clients: --federated gives every column's PDP")
    if args.max_evals < 0:
        raise ConfigError(f"--max-evals {args.max_evals}: give 0 (shap's default) or a positive number")
    audits = floor("audits")  # the Flower floor (simulations.audit), through its entry point
    console = Console()
    with console.status(f"explaining run {args.run} on its clients"):
        done = audits.explain(args.run, target_class=args.target_class, points=args.grid_points, seed=args.seed,
                              max_evals=args.max_evals, repeats=args.repeats)  # fmt: skip
    r = done.report
    console.print(f"federated: {r['clients']} clients, {r['rows']} rows; output {r['output']}, base value "
                  f"{r['base_value']:.4f}; mean {r['loss']} {r['base_loss']:.4f}", markup=False,
                  soft_wrap=True)  # fmt: skip
    for why in r["left_out"]:
        console.print(f"left out: {why}", markup=False, soft_wrap=True)
    t = Table("column", "mean |SHAP|", "mean SHAP", "permutation")
    importance = r["permutation_importance"]
    for c in dict.fromkeys([*r["ranking"], *r["importance_ranking"]]):
        shap = (f"{r['mean_abs_shap'][c]:.4f}", f"{r['mean_shap'][c]:+.4f}") if c in r["mean_abs_shap"] else ("", "")
        t.add_row(c, *shap, f"{importance[c]:+.4f}" if c in importance else "")
    console.print(t)
    console.print(f"permutation: increase of the mean {r['loss']} when the column is shuffled within each client "
                  f"({r['repeats']} times); equals the pooled rows' only in expectation, when the clients' rows are "
                  "exchangeable", markup=False, soft_wrap=True)  # fmt: skip
    for path in done.files:
        console.print(f"wrote {path}", markup=False, soft_wrap=True)
    return 0


def run_method(args: argparse.Namespace) -> int:
    """``--method lime`` (one row's LIME weights) or ``--method importance`` (permutation and gain importance)."""
    from rich.console import Console
    from rich.table import Table

    from uaap.errors import ConfigError

    if args.federated or args.pdp:
        raise ConfigError(f"--method {args.method} is central: drop --federated and --pdp (they go with --method shap)")
    if not args.data:
        raise ConfigError(f"uaap explain --method {args.method} needs --data SOURCE (the rows to explain)")
    console = Console()
    if args.method == "lime":
        from uaap.explain.lime import explain_lime

        with console.status(f"LIME on row {args.row} of {args.data}"):
            done = explain_lime(args.run, args.data, row=args.row, target_class=args.target_class,
                                max_rows=args.max_rows, background_rows=args.background_rows, seed=args.seed,
                                trust_pickle=args.trust_pickle)  # fmt: skip
        r = done.report
        fit = ("" if r["local_prediction"] is None else f", LIME's local fit {r['local_prediction']:.4f} (intercept "
               f"{r['intercept']:.4f}, R^2 {r['score']:.3f})")  # fmt: skip
        console.print(f"LIME, row {r['row']}: {r['output']} {r['model_prediction']:.4f}{fit}", markup=False,
                      soft_wrap=True)  # fmt: skip
        t = Table("condition", "weight")
        for w in r["weights"]:
            t.add_row(w["condition"], f"{w['weight']:+.4f}")
        if r["text"]:
            for word, weight in r["text"]["weights"]:
                t.add_row(f"word {word!r} in {r['text']['column']}", f"{weight:+.4f}")
    else:
        if args.repeats < 1:
            raise ConfigError(f"--repeats {args.repeats}: give at least 1")
        from uaap.explain.importance import explain_importance

        with console.status(f"permutation importance on {args.data}"):
            done = explain_importance(args.run, args.data, repeats=args.repeats, max_rows=args.max_rows,
                                      seed=args.seed, trust_pickle=args.trust_pickle)  # fmt: skip
        r = done.report
        console.print(f"{r['rows']} rows, {r['score']} {r['baseline']:.4f}; permutation importance: its drop when a "
                      f"column is shuffled ({r['repeats']} times)", markup=False, soft_wrap=True)  # fmt: skip
        t = Table("column", "permutation", "std", *(("gain share",) if r["gain"] else ()))
        for c in r["ranking"]:
            gain = (f"{r['gain'].get(c, 0.0):.4f}",) if r["gain"] else ()
            t.add_row(c, f"{r['permutation_mean'][c]:+.4f}", f"{r['permutation_std'][c]:.4f}", *gain)
    if r["note"]:
        console.print(r["note"], markup=False, soft_wrap=True)
    console.print(t)
    for path in done.files:
        console.print(f"wrote {path}", markup=False, soft_wrap=True)
    return 0
