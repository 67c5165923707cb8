"""ONNX: torch models through ``torch.onnx.export`` (dynamo), estimators through skl2onnx/onnxmltools.

Every graph takes ``input`` (float32, ``[batch, n_features]``) and gives ``probabilities``
(``[batch, n_classes]``); tree converters also give a ``label`` output. A regression model gives
``prediction`` (``[batch, 1]``, in the target's units) instead, an autoencoder ``anomaly_score`` (``[batch, 1]``,
each row's mean squared reconstruction error; a row is an anomaly above the model's saved ``threshold``).
Compression: ``fp16`` (weights and math in float16, float32 I/O) and ``int8`` (onnxruntime dynamic quantization
of weights).

Exporter choice: both torch exporters are exact on our models (max abs diff ~2e-7). We use the
TorchScript ("legacy") exporter first: our registry models are static ``nn.Sequential`` stacks with no
data-dependent control flow, which is exactly what tracing captures, and it took 0.5-1.2 s for the CNN
here where the dynamo exporter took 13-30 s. It is deprecated in torch 2.x, so when it is missing or
fails we fall back to dynamo (``torch.export``), which needs onnxscript and a sample batch of >= 2
rows, or it specialises the batch axis to the sample's size.
"""

from __future__ import annotations

import io
import logging
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ExportError, NotApplicable
from edge.source import Source

FILE = "model.onnx"
OPSET = 18
ML_OPSET = 3


def export(source: Source, folder: Path, quantize: str | None = None) -> list[Path]:
    """Write ``model.onnx`` (optionally fp16/int8) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE
    if source.kind == "torch":
        _torch(source, path)
    elif quantize and source.family == "logistic_regression":
        _dense_graph(source, path)  # skl2onnx's LinearClassifier (ai.onnx.ml) has no fp16/int8 kernels
    else:
        _estimator(source, path)
    if quantize:
        if source.family not in ("logreg", "svm", "mlp", "cnn", "logistic_regression"):
            raise NotApplicable(f"--quantize {quantize} applies to neural and linear models, not {source.family!r}")
        _quantize(path, quantize)
    return [path]


def _torch(source: Source, path: Path) -> None:
    import torch
    from torch import nn

    out = source.output_name
    if source.task == "anomaly":  # the graph computes the anomaly score itself: mean squared reconstruction error
        wrapped = reconstruction_error_module(source.model).eval()
    elif source.regression:
        wrapped = source.model.eval()
    else:
        wrapped = nn.Sequential(source.model, nn.Softmax(dim=1)).eval()
    sample = torch.from_numpy(np.ascontiguousarray(source.heldout.X[:2], dtype=np.float32))
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped,
                (sample,),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=[out],
                dynamic_axes={"input": {0: "batch"}, out: {0: "batch"}},
                opset_version=17,
            )
        return
    except Exception:  # legacy exporter removed or unable: use the dynamo exporter below
        pass
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapped,
            (sample,),
            dynamo=True,
            input_names=["input"],
            output_names=[out],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            verbose=False,
        )
    program.save(str(path), external_data=False)


def reconstruction_error_module(model: Any) -> Any:
    """``model`` (an autoencoder) wrapped to output each row's mean squared reconstruction error, shape (batch, 1)."""
    import torch
    from torch import nn

    class _Error(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return ((self.inner(x) - x.flatten(1)) ** 2).mean(dim=1, keepdim=True)

    return _Error(model)


def _estimator(source: Source, path: Path) -> None:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    if source.family == "catboost":
        _catboost(source, path)
        return
    if source.family == "federated_forest":
        _federated_forest(source, path)
        return
    _register_xgboost()
    _register_lightgbm()
    est = _library_estimator(source.model)
    try:
        onx = convert_sklearn(
            est,
            initial_types=[("input", FloatTensorType([None, source.n_features]))],
            target_opset={"": 17, "ai.onnx.ml": ML_OPSET},
            options={} if source.regression else {id(est): {"zipmap": False}},
            final_types=None,
        )
    except Exception as exc:  # skl2onnx raises bare RuntimeError/NotImplementedError for unknown models
        raise ExportError(f"skl2onnx cannot convert {type(est).__name__}: {exc}") from exc
    if source.family == "lightgbm":
        _lightgbm_thresholds(onx, est)
    _rename_output(onx, source.output_name)
    path.write_bytes(onx.SerializeToString())


def _federated_forest(source: Source, path: Path) -> None:
    """A federated forest's class-weighted vote: skl2onnx's multi-output forest regressor over the weighted leaves
    (the class scores), then each row divided by its sum (``uaap.models.forest.FederatedForestClassifier``)."""
    from onnx import TensorProto, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    weighted = source.model.weighted_trees()
    onx = convert_sklearn(
        weighted,
        initial_types=[("input", FloatTensorType([None, source.n_features]))],
        target_opset={"": 17, "ai.onnx.ml": ML_OPSET},
    )
    graph = onx.graph
    (scores,) = [o.name for o in graph.output]
    for node in graph.node:  # the forest's output becomes internal: the normalised scores take its place
        node.output[:] = ["uaap_scores" if n == scores else n for n in node.output]
        node.input[:] = ["uaap_scores" if n == scores else n for n in node.input]
    out = helper.make_tensor_value_info("normalised", TensorProto.FLOAT, [None, source.n_classes])
    graph.initializer.append(helper.make_tensor("uaap_axes", TensorProto.INT64, [1], [1]))
    graph.node.extend(
        [
            helper.make_node("ReduceSum", ["uaap_scores", "uaap_axes"], ["uaap_total"], keepdims=1),
            helper.make_node("Div", ["uaap_scores", "uaap_total"], [out.name]),
        ]
    )
    del graph.output[:]
    graph.output.append(out)
    _rename_output(onx, source.output_name)
    path.write_bytes(onx.SerializeToString())


def _library_estimator(est: Any) -> Any:
    """``est`` as the library class it extends (skl2onnx finds converters by exact type, so a subclass that only
    adds methods, such as ``evaluate``, is converted as its base: same fitted attributes)."""
    cls = next((c for c in type(est).__mro__ if not c.__module__.startswith("uaap.")), type(est))
    if cls is type(est) or cls is object:
        return est
    plain = cls.__new__(cls)
    plain.__dict__.update(est.__dict__)
    return plain


def _lightgbm_thresholds(model: Any, est: Any) -> None:
    """Give each split of the converted trees the float32 threshold that decides as LightGBM does.

    LightGBM splits on ``x <= t`` with a double ``t``; the converter stores ``float32(t)``, which rounds up past
    ``t`` half the time, so a float32 ``x`` equal to the rounded value goes left in ONNX and right in LightGBM
    (measured: diabetes, 100 trees of depth 4, one prediction off by 5.7). The largest float32 ``<= t`` gives
    LightGBM's decision for every float32 ``x``. A split is matched to its double by feature and rounded value;
    one that would match two different corrections (never seen) is left as converted.
    """
    corrected: dict[tuple[int, float], set[float]] = {}

    def walk(node: dict[str, Any]) -> None:
        if "split_index" not in node:
            return
        if node.get("decision_type") == "<=":
            t = float(node["threshold"])
            v = np.float32(t)
            good = v if float(v) <= t else np.nextafter(v, np.float32(-np.inf))
            corrected.setdefault((int(node["split_feature"]), float(v)), set()).add(float(good))
        walk(node["left_child"])
        walk(node["right_child"])

    for tree in est.booster_.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    for node in model.graph.node:
        if not node.op_type.startswith("TreeEnsemble"):
            continue
        attrs = {a.name: a for a in node.attribute}
        modes, features = attrs["nodes_modes"].strings, attrs["nodes_featureids"].ints
        values = list(attrs["nodes_values"].floats)
        for i, (mode, feature) in enumerate(zip(modes, features, strict=True)):
            fix = corrected.get((int(feature), float(np.float32(values[i]))), set())
            if mode == b"BRANCH_LEQ" and len(fix) == 1:
                values[i] = next(iter(fix))
        del attrs["nodes_values"].floats[:]
        attrs["nodes_values"].floats.extend(values)


def _catboost(source: Source, path: Path) -> None:
    """CatBoost's own ONNX-ML export, renamed to our interface: ``input`` in, ``probabilities`` as a
    ``[batch, n_classes]`` tensor (its ZipMap removed) or ``prediction`` ``[batch, 1]`` out."""
    import onnx
    from catboost.utils import convert_to_onnx_object
    from onnx import TensorProto, helper

    try:
        model = convert_to_onnx_object(source.model)
    except Exception as exc:  # CatBoostError: categorical features, an unfitted model
        raise ExportError(f"CatBoost cannot export this model to ONNX: {exc}") from exc
    graph = model.graph
    rename = {graph.input[0].name: "input"}
    if source.regression:
        rename[graph.output[0].name] = "prediction"
        outputs = [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, [None, 1])]
    else:
        zipmap = next(n for n in graph.node if n.op_type == "ZipMap")
        rename[zipmap.input[0]] = "probabilities"
        graph.node.remove(zipmap)
        outputs = [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, source.n_classes]),
        ]
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, source.n_features]))
    del graph.output[:]
    graph.output.extend(outputs)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def _rename_output(model: Any, name: str) -> None:
    """Name the graph's last output ``name`` (skl2onnx calls a classifier's ``probabilities``, a regressor's
    ``variable``)."""
    outputs = [o.name for o in model.graph.output]
    if name in outputs:
        return
    old = outputs[-1]
    for node in model.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
    model.graph.output[-1].name = name


def _dense_graph(source: Source, path: Path) -> None:
    """A linear model as plain ONNX ops (Gemm + Softmax), which onnxruntime can quantize."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge.layers import network

    nodes, inits, cur = [], [], "input"
    for i, layer in enumerate(network(source.model, source.family)):
        if layer.op == "dense":
            assert layer.weight is not None and layer.bias is not None
            inits += [numpy_helper.from_array(layer.weight, f"W{i}"), numpy_helper.from_array(layer.bias, f"B{i}")]
            nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"B{i}"], [f"h{i}"], transB=1))
        elif layer.op == "relu":
            nodes.append(helper.make_node("Relu", [cur], [f"h{i}"]))
        else:
            raise ExportError(f"layer {layer.op!r} has no plain-ONNX form here")
        cur = f"h{i}"
    nodes.append(helper.make_node("Softmax", [cur], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        "uaap_linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, source.n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, source.n_classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="uaap")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


_REGISTERED = False


def _register_xgboost() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    try:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from skl2onnx import update_registered_converter
        from skl2onnx.common.shape_calculator import (
            calculate_linear_classifier_output_shapes,
            calculate_linear_regressor_output_shapes,
        )
        from xgboost import XGBClassifier, XGBRegressor
    except ImportError:
        return
    update_registered_converter(
        XGBClassifier,
        "XGBoostXGBClassifier",
        calculate_linear_classifier_output_shapes,
        convert_xgboost,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    update_registered_converter(
        XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes, convert_xgboost
    )
    _REGISTERED = True


_LIGHTGBM_REGISTERED = False


def _register_lightgbm() -> None:
    """onnxmltools' LightGBM converter for skl2onnx (LightGBM's scikit-learn estimators)."""
    global _LIGHTGBM_REGISTERED
    if _LIGHTGBM_REGISTERED:
        return
    try:
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
        from skl2onnx import update_registered_converter
        from skl2onnx.common.shape_calculator import (
            calculate_linear_classifier_output_shapes,
            calculate_linear_regressor_output_shapes,
        )
    except ImportError:
        return
    update_registered_converter(
        LGBMClassifier,
        "LightGbmLGBMClassifier",
        calculate_linear_classifier_output_shapes,
        convert_lightgbm,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    update_registered_converter(
        LGBMRegressor,
        "LightGbmLGBMRegressor",
        calculate_linear_regressor_output_shapes,
        convert_lightgbm,
        options={"split": None},
    )
    _LIGHTGBM_REGISTERED = True


def _quantize(path: Path, mode: str) -> None:
    import onnx

    if mode == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
        onnx.save(model, str(path))
    elif mode == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        fp32 = path.with_name("fp32.onnx")
        path.rename(fp32)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # onnxruntime logs a pre-processing hint on the root logger
        try:
            with redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
        except Exception as exc:  # onnxruntime raises ValueError/RuntimeError for graphs it cannot quantize
            raise ExportError(f"onnxruntime could not quantize this graph to int8: {exc}") from exc
        finally:
            root.setLevel(level)
        fp32.unlink()
    else:
        raise ExportError(f"--quantize {mode!r} is not supported; choose fp16 or int8")


def predict(path: Path, X: np.ndarray) -> np.ndarray:
    """Probabilities (or a regression model's predictions, or an autoencoder's anomaly scores, as one column) from
    onnxruntime (CPU) for rows ``X``."""
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    name = next((n for n in ("probabilities", "anomaly_score") if n in names), "prediction")
    out = sess.run([name], {"input": np.ascontiguousarray(X, dtype=np.float32)})[0]
    return np.asarray(out, dtype=np.float64).reshape(len(X), -1)


def session(path: Path) -> Any:
    """An onnxruntime CPU session with one thread (what a small device gets)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
