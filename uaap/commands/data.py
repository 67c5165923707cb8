"""``uaap data profile``: a validation report of a raw table before anything trains on it; ``uaap data example``:
a generated table as messy as a real one, to try the whole path without downloading anything."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``data`` command group."""
    p = sub.add_parser("data", help="look at a table before training: types, missing values, outliers, leaks")
    groups = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    prof = groups.add_parser(
        "profile",
        help="validation report of a table (terminal table and an HTML page in the workspace)",
        description="Profile a table: per column its kind, missing share, distinct values, range, outliers "
        "(IQR, z-score, IsolationForest) and flags; the target's balance; leaks; the preprocessing UAAP would apply.",
    )
    prof.add_argument("source", metavar="SOURCE", help="a file, an http(s)/file URL or a SQLAlchemy database URL")
    prof.add_argument("--target", required=True, metavar="COLUMN", help="the label column")
    prof.add_argument("--data-table", default="", metavar="NAME", help="table to read when SOURCE is a database URL")
    prof.add_argument("--data-query", default="", metavar="SQL", help="query to read when SOURCE is a database URL")
    prof.add_argument("--data-sep", default="", metavar="SEP", help="delimiter of a text table (default: sniffed)")
    prof.add_argument("--data-encoding", default="utf-8", metavar="NAME", help="text encoding (default utf-8)")
    prof.add_argument("--data-decimal", default=".", choices=(".", ","), help="decimal mark (default .)")
    prof.add_argument("--out", default=None, metavar="FILE", help="HTML report (default: <workspace>/profiles/)")
    prof.set_defaults(func=run_profile)
    ex = groups.add_parser(
        "example",
        help="write a generated messy table (holes, outliers, categories, dates, free text) to try UAAP on",
        description="Write uaap.data.messy's table: age, income, score (10%% missing, 3%% far outliers), city, plan, "
        "visit (ISO dates), notes (free text) and two targets, label (yes/no) and cost (a number). The format "
        "follows the suffix: .csv, .tsv, .jsonl, .json, .parquet.",
    )
    ex.add_argument("out", metavar="FILE", help="where to write it (.csv, .tsv, .jsonl, .json or .parquet)")
    ex.add_argument("--rows", type=int, default=1000, help="rows (default 1000)")
    ex.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ex.set_defaults(func=run_example)


def run_profile(args: argparse.Namespace) -> int:
    """Read, profile, print and write the HTML report."""
    import time
    from pathlib import Path

    from rich.console import Console

    from uaap import workspace
    from uaap.data.loaders import ReadOptions, read_frame, shown
    from uaap.data.profile import profile, summary_lines, table, write_html

    options = ReadOptions(
        table=args.data_table,
        query=args.data_query,
        sep=args.data_sep or None,
        encoding=args.data_encoding,
        decimal=args.data_decimal,
    )
    console = Console()
    with console.status(f"reading {shown(args.source)}"):
        frame = read_frame(args.source, options)
    with console.status(f"profiling {len(frame)} rows x {frame.shape[1]} columns"):
        report = profile(frame, args.target, shown(args.source))
    console.print(table(report))
    for line in summary_lines(report):
        console.print(line, style="yellow" if line.startswith("warning") else None, markup=False)
    stem = Path(args.source.split("?")[0].rstrip("/")).stem or "table"
    out = (
        Path(args.out) if args.out else workspace.home() / "profiles" / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.html"
    )
    console.print(f"report: {write_html(report, out)}", markup=False)
    return 0


def run_example(args: argparse.Namespace) -> int:
    """Generate the table and write it in the format its suffix names."""
    from pathlib import Path

    from uaap.data.messy import messy_table
    from uaap.errors import DataError

    if args.rows < 20:
        raise DataError(f"--rows {args.rows} is too few for a table worth profiling; give at least 20")
    out = Path(args.out)
    writers = {
        ".csv": lambda f: f.to_csv(out, index=False),
        ".tsv": lambda f: f.to_csv(out, index=False, sep="\t"),
        ".jsonl": lambda f: f.to_json(out, orient="records", lines=True),
        ".json": lambda f: f.to_json(out, orient="records"),
        ".parquet": lambda f: f.to_parquet(out),
    }
    if out.suffix.lower() not in writers:
        raise DataError(f"{out.name!r} has suffix {out.suffix or '(none)'!r}; use one of {', '.join(writers)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = messy_table(args.rows, seed=args.seed)
    writers[out.suffix.lower()](frame)
    print(f"wrote {out}: {len(frame)} rows, columns {', '.join(frame.columns)}")
    return 0
