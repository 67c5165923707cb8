"""Parity of an export with its source model on held-out rows, and the runtimes that measure it.

fp32 exports must match within ``FP32_TOLERANCE`` (max abs probability difference) with 100% argmax
agreement; quantized (fp16/int8) exports need ``QUANT_AGREEMENT`` argmax agreement, and the accuracy
change is recorded. Runtimes: onnxruntime (ONNX), the TFLite interpreter (TFLite), a gcc-compiled
harness (C), and the structural check + NumPy re-execution for Core ML (no runtime on Linux).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ExportError

FP32_TOLERANCE = 1e-5
QUANT_AGREEMENT = 0.99
REGRESSION_TOLERANCE = 1e-4  # max abs diff of fp32 regression exports, relative to the target's std
QUANT_REGRESSION_TOLERANCE = 0.05  # quantized: the same, relative


def parity(reference: np.ndarray, exported: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Max abs probability difference, argmax agreement and accuracies (source vs export)."""
    reference = np.asarray(reference, dtype=np.float64)
    exported = np.asarray(exported, dtype=np.float64)
    if reference.shape != exported.shape:
        raise ExportError(f"export returned probabilities of shape {exported.shape}; expected {reference.shape}")
    ref_acc = float(np.mean(reference.argmax(axis=1) == y))
    exp_acc = float(np.mean(exported.argmax(axis=1) == y))
    return {
        "rows": int(len(y)),
        "max_abs_diff": float(np.abs(reference - exported).max()) if len(y) else 0.0,
        "argmax_agreement": float(np.mean(reference.argmax(axis=1) == exported.argmax(axis=1))) if len(y) else 1.0,
        "accuracy_source": ref_acc,
        "accuracy_export": exp_acc,
        "accuracy_change": exp_acc - ref_acc,
    }


def parity_regression(reference: np.ndarray, exported: np.ndarray, y: np.ndarray, scale: float) -> dict[str, Any]:
    """Max abs difference of two regression models' predictions, absolute and relative to ``scale`` (the
    target's std), beside both models' metrics on the rows (MSE, RMSE, MAE, R2 in the target's units)."""
    from uaap.metrics import regression_metrics

    reference = np.asarray(reference, dtype=np.float64).reshape(len(y), -1)
    exported = np.asarray(exported, dtype=np.float64)
    if exported.shape != reference.shape:
        raise ExportError(f"export returned predictions of shape {exported.shape}; expected {reference.shape}")
    diff = float(np.abs(reference - exported).max()) if len(y) else 0.0
    src = regression_metrics(y, reference[:, 0]) if len(y) else {}
    exp = regression_metrics(y, exported[:, 0]) if len(y) else {}
    return {
        "rows": int(len(y)),
        "task": "regression",
        "max_abs_diff": diff,
        "max_abs_diff_relative": diff / scale if scale > 0 else diff,
        "target_scale": scale,
        "metrics_source": src,
        "metrics_export": exp,
        "r2_change": exp.get("r2", 0.0) - src.get("r2", 0.0),
    }


def parity_anomaly(reference: np.ndarray, exported: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, Any]:
    """Max abs difference of two anomaly scores (reconstruction errors), absolute and relative to ``threshold``
    (the model's saved one), agreement of the flags (score > threshold) and both flags' accuracy on labels ``y``."""
    reference = np.asarray(reference, dtype=np.float64).reshape(len(y), -1)
    exported = np.asarray(exported, dtype=np.float64)
    if exported.shape != reference.shape:
        raise ExportError(f"export returned anomaly scores of shape {exported.shape}; expected {reference.shape}")
    diff = float(np.abs(reference - exported).max()) if len(y) else 0.0
    ref_flag, exp_flag = reference[:, 0] > threshold, exported[:, 0] > threshold
    ref_acc, exp_acc = (float(np.mean(f == (y == 1))) if len(y) else 0.0 for f in (ref_flag, exp_flag))
    return {
        "rows": int(len(y)),
        "task": "anomaly",
        "threshold": threshold,
        "max_abs_diff": diff,
        "max_abs_diff_relative": diff / threshold if threshold > 0 else diff,
        "flag_agreement": float(np.mean(ref_flag == exp_flag)) if len(y) else 1.0,
        "accuracy_source": ref_acc,
        "accuracy_export": exp_acc,
        "accuracy_change": exp_acc - ref_acc,
    }


def passes(result: dict[str, Any], quantized: bool) -> tuple[bool, str]:
    """Whether a parity result meets the bar for its precision, and the bar in words."""
    if result["rows"] == 0:
        return False, "no held-out rows to verify on"
    if result.get("task") == "anomaly":  # scores within the regression bar (relative to the threshold), same flags
        bar = QUANT_REGRESSION_TOLERANCE if quantized else REGRESSION_TOLERANCE
        agree = QUANT_AGREEMENT if quantized else 1.0
        ok = result["max_abs_diff_relative"] <= bar and result["flag_agreement"] >= agree
        return ok, f"max abs diff <= {bar:g} x the threshold and {agree:.0%} flag agreement"
    if result.get("task") == "regression":
        bar = QUANT_REGRESSION_TOLERANCE if quantized else REGRESSION_TOLERANCE
        return result["max_abs_diff_relative"] <= bar, f"max abs diff <= {bar:g} x the target's std"
    if quantized:
        ok = result["argmax_agreement"] >= QUANT_AGREEMENT
        return ok, f"argmax agreement >= {QUANT_AGREEMENT:.0%}"
    ok = result["max_abs_diff"] <= FP32_TOLERANCE and result["argmax_agreement"] == 1.0
    return ok, f"max abs diff <= {FP32_TOLERANCE:g} and 100% argmax agreement"


def run(fmt: str, folder: Path, X: np.ndarray, n_classes: int, work: Path) -> np.ndarray:
    """Probabilities of the bundle in ``folder`` for rows ``X``, from the format's own runtime."""
    if fmt == "onnx":
        from edge import onnx_export

        return onnx_export.predict(folder / onnx_export.FILE, X)
    if fmt == "tflite":
        from edge import tflite_export

        return tflite_export.predict(folder / tflite_export.FILE, X)
    if fmt == "coreml":
        from edge import coreml_export

        if (folder / coreml_export.TREE_FILE).is_file():
            coreml_export.check_tree_structure(folder / coreml_export.TREE_FILE, X.shape[1], n_classes)
            return coreml_export.predict_trees(folder / coreml_export.TREE_FILE, X)
        coreml_export.check_structure(folder / coreml_export.PACKAGE, X.shape[1], n_classes)
        return coreml_export.predict(folder / coreml_export.PACKAGE, X)
    if fmt == "c":
        from edge import c_export

        exe = c_export.compile_harness(folder, work)
        return c_export.run_harness(exe, X, n_classes)[0]
    raise ExportError(f"no verifier for format {fmt!r}")


def runtime_name(fmt: str) -> str:
    """What executed the export during verification (with versions)."""
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "?"

    return {
        "onnx": f"onnxruntime {v('onnxruntime')} (CPU)",
        "tflite": f"tensorflow.lite Interpreter {v('tensorflow')}",
        "coreml": f"structural check + NumPy re-execution of the saved ML Program (coremltools {v('coremltools')})",
        "c": "gcc-compiled harness (-O2 -std=c99 -Wall -Wextra -Werror)",
    }.get(fmt, fmt)
