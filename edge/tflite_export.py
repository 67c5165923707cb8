"""TFLite: the fixed registry architectures rebuilt in Keras with the torch weights copied in.

onnx2tf pins old TensorFlow/onnx/numpy and silently switches to NHWC, so we rebuild instead. Torch is
NCHW and Keras NHWC: conv weights go ``(out, in, kh, kw) -> (kh, kw, in, out)``, and before a flatten
we permute back to CHW so the dense layer sees torch's flatten order. TensorFlow is imported only
inside these functions (simulation processes block it). Tree ensembles have no TFLite form here
(TFLite has no tree ops; TF-DF models do not convert): they are refused as not applicable.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ExportError, NotApplicable
from edge.layers import NEURAL_FAMILIES, network
from edge.source import PARITY_SEED, Source
from edge.trees import TREE_FAMILIES
from uaap.sampling import representative_rows

FILE = "model.tflite"
CALIBRATION_ROWS = 200  # int8 calibration rows, drawn from the train split stratified by class


def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules and sys.modules["tensorflow"] is None:
        # a simulation in this process kept TensorFlow out (uaap.cluster.block_tensorflow); a TFLite export needs it
        del sys.modules["tensorflow"]
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def keras_model(source: Source) -> Any:
    """The source model as a Keras model (flat float32 rows in, probabilities or a regression prediction out)."""
    if source.family not in NEURAL_FAMILIES:
        raise NotApplicable(
            f"TFLite export supports neural and linear models ({', '.join(NEURAL_FAMILIES)}), not {source.family!r}: "
            + (
                "TFLite has no tree-ensemble ops; export trees to onnx or c"
                if source.family in TREE_FAMILIES
                else "TFLite has no tree-ensemble or kernel ops; export it to onnx"
            )
        )
    _tf()
    import keras

    inputs = keras.Input(shape=(source.n_features,), dtype="float32", name="input")
    x = inputs
    image = False  # whether x is currently an NHWC image
    for layer in network(source.model, source.family):
        if layer.op == "reshape":
            if layer.shape == (-1,):
                if image:
                    x = keras.layers.Permute((3, 1, 2))(x)  # NHWC -> NCHW, then flatten like torch
                x, image = keras.layers.Flatten()(x), False
            else:
                x = keras.layers.Reshape(layer.shape)(x)
                x, image = keras.layers.Permute((2, 3, 1))(x), True  # CHW -> HWC
        elif layer.op == "dense":
            assert layer.weight is not None and layer.bias is not None
            if image:
                raise ExportError("a dense layer directly on an image tensor is not supported; flatten first")
            dense = keras.layers.Dense(layer.weight.shape[0])
            x = dense(x)
            dense.set_weights([layer.weight.T, layer.bias])
        elif layer.op == "relu":
            x = keras.layers.ReLU()(x)
        elif layer.op == "conv2d":
            assert layer.weight is not None and layer.bias is not None
            k, p = layer.kernel, layer.padding
            if p and 2 * p != k - 1:
                x = keras.layers.ZeroPadding2D(p)(x)
            conv = keras.layers.Conv2D(layer.weight.shape[0], k, padding="same" if p else "valid")
            x = conv(x)
            conv.set_weights([layer.weight.transpose(2, 3, 1, 0), layer.bias])
        elif layer.op == "maxpool2d":
            x = keras.layers.MaxPool2D(layer.kernel)(x)
    if source.regression:  # the prediction itself, in the target's units (no softmax)
        outputs = keras.layers.Activation("linear", name="prediction")(x)
    else:
        outputs = keras.layers.Softmax(name="probabilities")(x)
    return keras.Model(inputs, outputs)


def export(source: Source, folder: Path, quantize: str | None = None) -> list[Path]:
    """Write ``model.tflite`` (fp32, fp16 weights, or int8 with float I/O) into ``folder``."""
    model = keras_model(source)  # first: a family TFLite cannot express is refused without importing TensorFlow
    tf = _tf()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if source.train is None:
            raise ExportError("int8 TFLite needs representative rows (the train split); export from a run or dataset")
        # calibrate on rows of every class, not the split's first rows (tables are often sorted by label)
        rows = source.train.X[
            representative_rows(source.train.y, CALIBRATION_ROWS, source.sample.get("seed", PARITY_SEED))
        ]

        def representative() -> Any:
            for row in rows:
                yield [row[None, :].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif quantize:
        raise ExportError(f"--quantize {quantize!r} is not supported; choose fp16 or int8")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE
    with redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path.write_bytes(converter.convert())
    return [path]


def interpreter(path: Path, batch: int) -> Any:
    """A TFLite interpreter sized for ``batch`` rows."""
    tf = _tf()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interp = tf.lite.Interpreter(model_path=str(path), num_threads=1)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], [batch, int(inp["shape"][1])])
    interp.allocate_tensors()
    return interp


def predict(path: Path, X: np.ndarray) -> np.ndarray:
    """Probabilities from the TFLite interpreter for rows ``X``."""
    interp = interpreter(path, len(X))
    interp.set_tensor(interp.get_input_details()[0]["index"], np.ascontiguousarray(X, dtype=np.float32))
    interp.invoke()
    return np.asarray(interp.get_tensor(interp.get_output_details()[0]["index"]), dtype=np.float64)
