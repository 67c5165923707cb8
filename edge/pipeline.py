"""``uaap export``: load a model, optionally compress it, export each format, verify, bundle.

Each format is staged in a hidden folder, run on the held-out rows by its own runtime and compared
with the source model; only a bundle that passes is moved into place with its manifest. A format
that cannot express the model (trees as TFLite, C with int8) is reported as not applicable.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import ExportError, NotApplicable
from edge.source import Source, load_source

FORMATS = ("onnx", "tflite", "coreml", "c")
QUANTIZE = ("fp16", "int8")


@dataclass
class Result:
    """What happened to one format."""

    format: str
    status: str  # "ok", "failed" or "not applicable"
    path: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0


def parse_formats(text: str | list[str]) -> list[str]:
    """``"onnx,c"`` -> ``["onnx", "c"]``, refusing unknown names (``all`` means every format)."""
    items = text if isinstance(text, list) else [t.strip().lower() for t in text.split(",") if t.strip()]
    if items == ["all"]:
        return list(FORMATS)
    bad = [t for t in items if t not in FORMATS]
    if bad or not items:
        raise ExportError(f"--to {','.join(items)!r}: unknown format(s) {bad}; choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(items))


def export_model(
    model: str | Path,
    formats: str | list[str] = "onnx",
    *,
    quantize: str | None = None,
    prune: float | None = None,
    distill: str | None = None,
    out: str | Path | None = None,
    data: str | Path | None = None,
    target: str | None = None,
    make_zip: bool = False,
    finetune_epochs: int = 5,
    distill_epochs: int = 30,
    on_result: Any = None,
    trust_pickle: bool = False,
) -> list[Result]:
    """Export ``model`` (run id or file) to each format; returns one :class:`Result` per format."""
    fmts = parse_formats(formats)
    if quantize is not None and quantize not in QUANTIZE:
        raise ExportError(f"--quantize {quantize!r} is not supported; choose one of: {', '.join(QUANTIZE)}")
    source = load_source(model, data=data, target=target, trust_pickle=trust_pickle)
    original = source
    if distill:
        from edge.compress import distill as run_distill

        source = run_distill(source, distill, epochs=distill_epochs)
    if prune:
        from edge.compress import prune as run_prune

        source = run_prune(source, prune, epochs=finetune_epochs)
    out_dir = Path(out) if out is not None else source.out_dir
    assert out_dir is not None
    out_dir.mkdir(parents=True, exist_ok=True)
    if source is not original:
        _save_compressed(source, out_dir)
    results = []
    for fmt in fmts:
        result = export_one(source, fmt, out_dir, quantize=quantize, make_zip=make_zip, original=original)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def bundle_name(fmt: str, source: Source, quantize: str | None) -> str:
    """Folder name of a bundle, e.g. ``onnx``, ``tflite-int8``, ``c-mlp-distilled``."""
    parts = [fmt]
    if source.compression.get("distill"):
        parts.append(f"{source.family}-distilled")
    if source.compression.get("prune"):
        parts.append(f"pruned{int(round(source.compression['prune']['amount'] * 100))}")
    if quantize:
        parts.append(quantize)
    return "-".join(parts)


def export_one(
    source: Source,
    fmt: str,
    out_dir: Path,
    *,
    quantize: str | None = None,
    make_zip: bool = False,
    original: Source | None = None,
) -> Result:
    """Export, verify and bundle one format."""
    from edge import bundle, verify

    start = time.perf_counter()
    name = bundle_name(fmt, source, quantize)
    staging = out_dir / f".{name}.staging"
    work = out_dir / f".{name}.work"
    for folder in (staging, work):
        shutil.rmtree(folder, ignore_errors=True)
    try:
        extra = _write(fmt, source, staging, work, quantize)
        X, y = source.heldout.X, source.heldout.y
        exported = verify.run(fmt, staging, X, source.n_classes, work)
        if source.task == "anomaly":  # an autoencoder's score and flags above its saved threshold
            result = verify.parity_anomaly(source.predict_proba(X), exported, y, float(source.meta["threshold"]))
        elif source.regression:
            result = verify.parity_regression(source.predict_proba(X), exported, y, source.target_scale)
        else:
            result = verify.parity(source.predict_proba(X), exported, y)
        ok, bar = verify.passes(result, quantized=quantize is not None)
        result["criterion"] = bar
        result["passed"] = ok
        result |= _what_was_verified(source)
        if original is not None and original is not source:
            result["accuracy_original_model"] = original.accuracy(source.heldout)
            result["accuracy_original_model_full_heldout"] = original.accuracy(original.full_heldout)
        if not ok:
            agreement = (
                f"relative {result['max_abs_diff_relative']:.3g}"
                if source.regression
                else f"argmax agreement {result['argmax_agreement']:.2%}"
            )
            raise ExportError(
                f"{fmt} export failed verification on {result['rows']} held-out rows: max abs diff "
                f"{result['max_abs_diff']:.3g}, {agreement} (needs {bar}); the bundle was not written"
            )
        manifest = _manifest(fmt, source, quantize, result, extra)
        final = bundle.finish(staging, out_dir / name, manifest, make_zip=make_zip)
        return Result(fmt, "ok", final, manifest | {"size_bytes": _size(final)}, seconds=time.perf_counter() - start)
    except NotApplicable as exc:
        return Result(fmt, "not applicable", reason=str(exc), seconds=time.perf_counter() - start)
    except ExportError as exc:
        return Result(fmt, "failed", reason=str(exc), seconds=time.perf_counter() - start)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _what_was_verified(source: Source) -> dict[str, Any]:
    """The parity sample (rows, class counts, seed) beside the whole held-out split and the model's accuracy on it.

    A reader compares ``accuracy_source`` (sample) with ``accuracy_source_full_heldout`` and the class counts
    to see that the sample stands for the split.
    """
    full = source.full_heldout
    sample = source.sample
    out: dict[str, Any] = {
        "parity_rows": int(len(source.heldout.y)),
        "parity_seed": sample.get("seed"),
        "parity_sampling": sample.get("method", "unknown"),
        "heldout_rows": int(len(full.y)),
    }
    if "class_counts" in sample:
        out["parity_class_counts"] = sample["class_counts"]
        out["heldout_class_counts"] = sample["class_counts_all"]
    if "target_quantiles" in sample:
        out["parity_target_quantiles"] = sample["target_quantiles"]
        out["heldout_target_quantiles"] = sample["target_quantiles_all"]
    if source.regression:  # the model's test metrics, in the target's units, on the whole held-out split
        out["metrics_source_full_heldout"] = source.metrics(full)
    else:
        out["accuracy_source_full_heldout"] = source.accuracy(full)
    return out


def _size(folder: Path) -> int:
    return int(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"))


def _write(fmt: str, source: Source, staging: Path, work: Path, quantize: str | None) -> dict[str, Any]:
    if source.task == "anomaly" and (fmt != "onnx" or quantize):
        raise NotApplicable(
            f"an anomaly detector (model {source.family!r}) exports to fp32 onnx only, not {fmt}"
            + (f" --quantize {quantize}" if quantize else "")
            + "; use --to onnx without --quantize"
        )
    if fmt == "onnx":
        from edge import onnx_export

        onnx_export.export(source, staging, quantize)
        return {}
    if fmt == "tflite":
        from edge import tflite_export

        tflite_export.export(source, staging, quantize)
        return {}
    if fmt == "coreml":
        from edge import coreml_export

        (path,) = coreml_export.export(source, staging, quantize)
        trees_model = path.name == coreml_export.TREE_FILE
        check = coreml_export.check_tree_structure if trees_model else coreml_export.check_structure
        return {"coreml": check(path, source.n_features, source.n_classes)}
    if fmt == "c":
        from edge import c_export, layers, trees

        if quantize:
            raise NotApplicable(f"C export is float32 only; --quantize {quantize} applies to onnx, tflite and coreml")
        what = "one prediction (the target's units)" if source.regression else f"{source.n_classes} class probabilities"
        note = f"UAAP {source.family}: {source.n_features} features -> {what}"
        if source.family not in trees.C_TREE_FAMILIES + layers.NEURAL_FAMILIES:
            raise NotApplicable(
                f"C export is written for neural, linear and scikit-learn/XGBoost tree models, not {source.family!r}; "
                "export it to onnx"
            )
        if source.family in trees.TREE_FAMILIES and source.regression:
            raise NotApplicable(f"C export of {source.family!r} regressors is not written yet; export them to onnx")
        if source.family in trees.C_TREE_FAMILIES:
            head, body = c_export.emit_ensemble(trees.ensemble(source.model, source.family, source.heldout.X), note)
        else:
            head, body = c_export.emit_network(
                layers.network(source.model, source.family),
                source.n_features,
                source.n_classes,
                note,
                regression=source.regression,
            )
        c_export.write(staging, head, body)
        api = (
            "void uaap_predict(const float *x, float *y);"
            if source.regression
            else ("void uaap_predict_proba(const float *x, float *proba);")
        )
        return {
            "c_api": f'#include "model.h"  {api}',
            "footprint": c_export.footprint(staging, work),
        }
    raise ExportError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def _manifest(
    fmt: str, source: Source, quantize: str | None, parity: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    from edge import verify

    classes = getattr(source.model, "classes_", None)
    labels = [c.item() if hasattr(c, "item") else c for c in classes] if classes is not None else None
    return {
        "manifest_version": 1,
        "format": fmt,
        "model": {
            "family": source.family,
            "kind": source.kind,
            "source_file": str(source.path) if source.path else None,
            "dataset": source.meta.get("dataset"),
            "run_id": source.meta.get("run_id"),
        },
        "input": {
            "name": "input",
            "dtype": "float32",
            "shape": [None, source.n_features],
            "feature_names": list(source.feature_names),
            "preprocessing": source.preprocessing,
        },
        "output": _output(source, labels),
        "compression": {"quantize": quantize, **source.compression},
        "parity": parity,
        "verified_with": verify.runtime_name(fmt),
        **extra,
    }


def _output(source: Source, labels: list[Any] | None) -> dict[str, Any]:
    if source.task == "anomaly":
        return {
            "name": "anomaly_score",
            "dtype": "float32",
            "shape": [None, 1],
            "task": "anomaly",
            "units": "mean squared reconstruction error of the (scaled) row",
            "threshold": source.meta.get("threshold"),
            "note": "a row is an anomaly when anomaly_score > threshold (chosen on validation rows)",
        }
    if source.regression:
        return {
            "name": "prediction",
            "dtype": "float32",
            "shape": [None, 1],
            "task": "regression",
            "units": "the target's own units (its training scaling is folded into the model)",
            "target_mean": source.meta.get("target_mean"),
            "target_std": source.meta.get("target_std"),
        }
    return {
        "name": "probabilities",
        "dtype": "float32",
        "shape": [None, source.n_classes],
        "classes": labels if labels is not None else list(range(source.n_classes)),
    }


def _save_compressed(source: Source, out_dir: Path) -> Path:
    """Keep the compressed torch model next to its bundles (re-exportable, loadable with load_model)."""
    from uaap import workspace
    from uaap.models import get_weights

    name = "-".join(k for k in ("distill", "prune") if source.compression.get(k))
    return workspace.save_model(
        out_dir / f"model-{source.family}-{name}.npz",
        source.family,
        get_weights(source.model),
        n_features=source.n_features,
        n_classes=source.n_classes,
        image_shape=source.image_shape,
        extra={
            k: v
            for k, v in source.meta.items()
            if k not in ("format", "model", "n_features", "n_classes", "image_shape")
        }
        | {"compression": source.compression},
    )
