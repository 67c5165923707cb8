"""``uaap export``: ship a model to devices as verified ONNX, TFLite, Core ML or C bundles.

Registered with the library's ``uaap`` CLI through the ``uaap.commands`` entry-point group (see
``pyproject.toml`` and :mod:`uaap.cli`), so ``uaap`` never imports edge/. The converters load inside
:func:`run_export` only.
"""

from __future__ import annotations

import argparse
from typing import Any


def register_export(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``export`` command."""
    p = sub.add_parser(
        "export",
        help="export a model to onnx, tflite, coreml or c (verified on held-out rows)",
        description="Export a run's model (or a model file) to device formats. Each bundle is verified by its own "
        "runtime before it is written, on a seeded sample of held-out rows stratified by class (up to 200), with a "
        "manifest (size, input schema, parity with the rows and class counts verified, sha256).",
    )
    p.add_argument("model", metavar="MODEL", help="run id (runs/<id>/model.npz or model.skops) or a model file")
    p.add_argument("--to", default="onnx", help="comma-separated formats: onnx,tflite,coreml,c or all (default onnx)")
    p.add_argument("--quantize", choices=("fp16", "int8"), default=None, help="weight precision (onnx/tflite/coreml)")
    p.add_argument(
        "--prune",
        type=float,
        default=None,
        metavar="AMOUNT",
        help="magnitude-prune this share of weights (e.g. 0.5), then fine-tune on the train split",
    )
    p.add_argument(
        "--distill",
        default=None,
        metavar="STUDENT",
        help="distil the model into a smaller registry model (logreg, mlp) and export the student",
    )
    p.add_argument("--finetune-epochs", type=int, default=5, help="fine-tuning epochs after pruning (default 5)")
    p.add_argument("--distill-epochs", type=int, default=30, help="student training epochs (default 30)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default runs/<id>/exports/)")
    p.add_argument("--data", default=None, metavar="FILE", help="held-out rows (CSV/Parquet, model's input space)")
    p.add_argument("--target", default=None, metavar="COL", help="label column of --data")
    p.add_argument("--zip", action="store_true", help="also write one .zip per bundle")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load a pickled model.joblib (from UAAP before 0.2): it can run code, so only for a file you wrote",
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", help="show the converters' own output (TensorFlow, coremltools)"
    )
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Export, verify and bundle each format; print one table row per format."""
    import time

    from rich.console import Console
    from rich.table import Table

    from edge import export_model
    from uaap import quiet, workspace

    quiet.VERBOSE = args.verbose
    quiet.converter_loggers()
    console = Console()
    log = workspace.home() / "logs" / f"export-{time.strftime('%Y%m%d-%H%M%S')}.log"
    term = quiet.terminal()  # the spinner stays on the terminal while the converters' output goes to the log
    with Console(file=term).status(f"exporting {args.model} to {args.to}"), quiet.native_output(log):
        results = export_model(
            args.model,
            args.to,
            quantize=args.quantize,
            prune=args.prune,
            distill=args.distill,
            out=args.out,
            data=args.data,
            target=args.target,
            make_zip=args.zip,
            finetune_epochs=args.finetune_epochs,
            distill_epochs=args.distill_epochs,
            trust_pickle=args.trust_pickle,
        )
    table = Table(title="edge export")
    regression = any(r.manifest.get("parity", {}).get("task") == "regression" for r in results)
    columns = (
        "format",
        "status",
        "size",
        "rows",
        "max |diff|" if regression else "max |dp|",
        "max |diff| / target std" if regression else "argmax agree",
        "R2 src -> export" if regression else "accuracy src -> export",
        "src R2, all held-out" if regression else "src, all held-out",
    )
    for col in (*columns, "bundle"):
        table.add_column(col)
    for r in results:
        if r.status == "ok":
            par = r.manifest["parity"]
            if par.get("task") == "anomaly":  # score parity relative to the threshold, flags' accuracy
                agree = f"flags {par['flag_agreement']:.2%}"
                change = f"{par['accuracy_source']:.4f} -> {par['accuracy_export']:.4f}"
                whole = f"{par['accuracy_source_full_heldout']:.4f}" if "accuracy_source_full_heldout" in par else "-"
            elif par.get("task") == "regression":
                full = par.get("metrics_source_full_heldout", {})
                agree = f"{par['max_abs_diff_relative']:.2e}"
                change = f"{par['metrics_source']['r2']:.4f} -> {par['metrics_export']['r2']:.4f}"
                whole = f"{full['r2']:.4f}" if "r2" in full else "-"
            else:
                agree = f"{par['argmax_agreement']:.2%}"
                change = f"{par['accuracy_source']:.4f} -> {par['accuracy_export']:.4f}"
                whole = f"{par['accuracy_source_full_heldout']:.4f}" if "accuracy_source_full_heldout" in par else "-"
            table.add_row(
                r.format,
                "[green]ok[/]",
                f"{r.manifest['size_bytes'] / 1024:.1f} KB",
                f"{par['rows']}/{par.get('heldout_rows', par['rows'])}",
                f"{par['max_abs_diff']:.2e}",
                agree,
                change,
                whole,
                r.path.name if r.path else "-",
            )
        else:
            color = "yellow" if r.status == "not applicable" else "red"
            table.add_row(r.format, f"[{color}]{r.status}[/]", *["-"] * (len(columns) - 1))
    if term is not console.file:
        term.close()
    console.print(table)
    if log.is_file() and log.stat().st_size:
        console.print(f"converter output: {log} (-v shows it here)")
    folders = {str(r.path.parent) for r in results if r.path}
    if folders:
        console.print(f"bundles in: {', '.join(sorted(folders))}")
    for r in results:
        if r.status != "ok":
            color = "yellow" if r.status == "not applicable" else "red"
            console.print(f"[{color}]{r.format} ({r.status}):[/] {r.reason}", soft_wrap=True)
    return 1 if any(r.status == "failed" for r in results) else 0
