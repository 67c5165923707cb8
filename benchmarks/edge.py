"""Edge export benchmark: parity matrix, export time, size and single-row latency per format, compression.

Run: ``UAAP_HOME=/tmp/ws_bench .venv/bin/python benchmarks/edge.py`` (about 5-10 CPU-minutes on 2 cores).
Everything is measured in this one run, side by side: medians of single-row calls with one thread
(onnxruntime, the TFLite interpreter, the gcc -O2 harness, and the source framework as reference).
Core ML has no runtime on Linux: its export time and size are listed, its latency is not.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

# Run as a script, this file's folder comes first on sys.path and its name shadows the `edge` package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from edge import c_export, demo, onnx_export, tflite_export  # noqa: E402
from edge.compress import distill, prune  # noqa: E402
from edge.pipeline import export_one  # noqa: E402
from edge.source import load_source  # noqa: E402

FORMATS = ("onnx", "tflite", "coreml", "c")


def median_latency_us(fn: Any, repeats: int) -> float:
    """Median wall time of ``fn()`` in microseconds (after a warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e6)


def latency(fmt: str, bundle: Path, source: Any, row: np.ndarray, rows: np.ndarray, repeats: int, work: Path) -> float:
    """Single-row latency (us) of one bundle in its runtime."""
    if fmt == "onnx":
        sess = onnx_export.session(bundle / onnx_export.FILE)
        return median_latency_us(lambda: sess.run(["probabilities"], {"input": row}), repeats)
    if fmt == "tflite":
        interp = tflite_export.interpreter(bundle / tflite_export.FILE, 1)
        inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

        def call() -> None:
            interp.set_tensor(inp, row)
            interp.invoke()
            interp.get_tensor(out)

        return median_latency_us(call, repeats)
    if fmt == "c":
        exe = c_export.compile_harness(bundle, work / f"{bundle.name}-bench")
        return float(c_export.run_harness(exe, rows, source.n_classes, repeats=max(repeats // 10, 21))[1]) / 1000
    return float("nan")


def reference_latency(source: Any, row: np.ndarray, repeats: int) -> float:
    """Single-row latency (us) of the source framework (torch eager / scikit-learn / XGBoost)."""
    if source.kind == "torch":
        import torch

        torch.set_num_threads(1)
        x = torch.from_numpy(row)
        model = source.model

        def call() -> None:
            with torch.no_grad():
                torch.softmax(model(x), dim=1)

        return median_latency_us(call, repeats)
    return median_latency_us(lambda: source.model.predict_proba(row), repeats)


def deflated(folder: Path) -> int:
    """Bytes of the bundle's model files after zlib (what a pruned model gains from zeros)."""
    total = 0
    for p in folder.rglob("*"):
        if p.is_file() and p.name != "manifest.json":
            total += len(zlib.compress(p.read_bytes(), 9))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="training epochs of the torch models")
    parser.add_argument("--repeats", type=int, default=300, help="single-row calls per latency median")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="uaap-edge-bench-"))
    sources: dict[str, Any] = {}
    for name in ("logreg", "mlp", "cnn"):
        model, split = demo.train_torch(name, epochs=args.epochs)
        sources[name] = load_source(demo.save_torch(work / f"{name}.npz", name, model, split, "digits"))
    for family in ("logistic_regression", "decision_tree", "random_forest", "xgboost"):
        est, split = demo.fit_estimator(family, "digits")
        sources[family] = load_source(demo.save_est(work / f"{family}.joblib", family, est, split, "digits"))

    figures: dict[str, Any] = {"parity": [], "compression": []}
    print(f"## Export matrix (digits, {len(sources['mlp'].heldout.y)} held-out rows, fp32)\n")
    print("| model | format | status | max abs diff | argmax agree | size (KB) | export+verify (s) | latency (us) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, source in sources.items():
        row = np.ascontiguousarray(source.heldout.X[:1])
        ref_us = reference_latency(source, row, args.repeats)
        print(f"| {name} | source ({source.kind}) | - | - | - | - | - | {ref_us:.1f} |")
        for fmt in FORMATS:
            t = time.perf_counter()
            result = export_one(source, fmt, work / "bundles" / name)
            seconds = time.perf_counter() - t
            if result.status != "ok":
                print(f"| {name} | {fmt} | {result.status} | - | - | - | - | - |")
                figures["parity"].append({"model": name, "format": fmt, "status": result.status})
                continue
            par = result.manifest["parity"]
            us = latency(fmt, result.path, source, row, source.heldout.X, args.repeats, work)
            size = result.manifest["size_bytes"]
            lat = "n/a (macOS)" if fmt == "coreml" else f"{us:.1f}"
            print(
                f"| {name} | {fmt} | ok | {par['max_abs_diff']:.1e} | {par['argmax_agreement']:.1%} | "
                f"{size / 1024:.1f} | {seconds:.2f} | {lat} |"
            )
            entry = {"model": name, "format": fmt, "size": size, "seconds": seconds, "latency_us": us, **par}
            if fmt == "c":
                entry["footprint"] = result.manifest["footprint"]
            figures["parity"].append(entry)

    print("\n## C footprint (gcc -Os, host x86-64)\n")
    print("| model | flash (text+rodata+data) B | .data+.bss B | stack B | RAM B |")
    print("|---|---|---|---|---|")
    for e in figures["parity"]:
        if e.get("format") == "c" and "footprint" in e:
            fp = e["footprint"]
            print(
                f"| {e['model']} | {fp['flash_bytes']} | {fp['data_bytes'] + fp['bss_bytes']} | "
                f"{fp['stack_bytes']} | {fp['ram_bytes']} |"
            )

    print("\n## Compression (teacher: cnn fp32; accuracy on the held-out rows)\n")
    cnn = sources["cnn"]
    variants: list[tuple[str, Any, str | None]] = [("cnn", cnn, None), ("cnn", cnn, "fp16"), ("cnn", cnn, "int8")]
    t = time.perf_counter()
    pruned = prune(cnn, 0.5, epochs=3)
    prune_s = time.perf_counter() - t
    variants += [("cnn pruned 50% + 3 ep fine-tune", pruned, None), ("cnn pruned 50% + int8", pruned, "int8")]
    t = time.perf_counter()
    student = distill(cnn, "mlp", epochs=30)
    distill_s = time.perf_counter() - t
    variants += [
        ("mlp distilled", student, None),
        ("mlp distilled", student, "fp16"),
        ("mlp distilled", student, "int8"),
    ]
    small = distill(cnn, "logreg", epochs=30)
    variants += [("logreg distilled", small, None), ("logreg distilled", small, "int8")]
    scratch_model, _ = demo.train_torch("mlp", epochs=30)
    scratch = cnn.with_model(scratch_model, "mlp")
    variants += [("mlp from scratch (same epochs)", scratch, None)]
    base = {}
    print(
        "| variant | format | quantize | size (KB) | zipped (KB) | accuracy | vs cnn fp32 | size ratio "
        "| agree w/ own fp32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, source, quant in variants:
        for fmt in ("onnx", "tflite"):
            folder = work / "compress" / label.replace(" ", "_").replace("%", "").replace("+", "")
            result = export_one(source, fmt, folder, quantize=quant, original=cnn)
            if result.status != "ok":
                print(f"| {label} | {fmt} | {quant or 'fp32'} | {result.status}: {result.reason[:60]} |")
                continue
            par = result.manifest["parity"]
            size = result.manifest["size_bytes"]
            if label == "cnn" and quant is None:
                base[fmt] = (size, par["accuracy_export"])
            bsize, bacc = base[fmt]
            print(
                f"| {label} | {fmt} | {quant or 'fp32'} | {size / 1024:.1f} | {deflated(result.path) / 1024:.1f} | "
                f"{par['accuracy_export']:.3f} | {par['accuracy_export'] - bacc:+.3f} | {bsize / size:.1f}x | "
                f"{par['argmax_agreement']:.1%} |"
            )
            figures["compression"].append(
                {
                    "variant": label,
                    "format": fmt,
                    "quantize": quant,
                    "size": size,
                    "zipped": deflated(result.path),
                    "size_ratio": bsize / size,
                    "accuracy_delta": par["accuracy_export"] - bacc,
                    **par,
                }
            )
    print(f"\nprune+fine-tune {prune_s:.1f} s; distillation (30 epochs) {distill_s:.1f} s")
    print(f"pruning detail: {json.dumps(pruned.compression['prune'])}")
    print(f"distillation detail: {json.dumps(student.compression['distill'])}")
    claim = [c for c in figures["compression"] if c["size_ratio"] >= 20]
    best = max(claim, key=lambda c: c["accuracy_delta"]) if claim else None
    if best:
        print(
            f"\nclaim '20x smaller, < 2% accuracy loss': best >= 20x variant is {best['variant']} "
            f"{best['format']} {best['quantize'] or 'fp32'}: {best['size_ratio']:.1f}x smaller, accuracy "
            f"{best['accuracy_delta'] * 100:+.1f} points -> {'holds' if best['accuracy_delta'] > -0.02 else 'fails'}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=float))
    print(f"\nbundles and sources in {work}")


if __name__ == "__main__":
    main()
