"""Core ML: an ML Program built with coremltools' MIL builder from :mod:`edge.layers`.

The Core ML runtime is macOS-only, so on Linux a bundle is verified by (1) a structural check of the
saved spec (ML Program, input/output names, shapes, types, op set, weight blobs present) and (2) a
NumPy re-execution of the saved program, op by op, with weights read back from the package's blob
file. A macOS run (``coremltools`` ``predict``) remains the only proof on the real runtime.
Compute precision is always set explicitly (coremltools' default is float16). The MIL builder is
used for torch models and scikit-learn logistic regression alike (coremltools' scikit-learn
converters refuse scikit-learn > 1.5.1).

Tree ensembles (scikit-learn trees/forests, XGBoost) are written with coremltools' tree-ensemble
builder from :mod:`edge.trees` (``BranchOnValueLessThan`` on the float32-exact thresholds; forest
leaves pre-divided by the number of trees; XGBoost's intercept, which coremltools' own converter
drops for XGBoost 3, set as the base prediction). They are verified by re-evaluating the saved spec's
node table in NumPy. Their output is ``probabilities`` as a class -> probability dictionary (Core ML's
classifier convention) plus ``label``.
"""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ExportError, NotApplicable
from edge.layers import NEURAL_FAMILIES, conv2d, network
from edge.source import Source

PACKAGE = "model.mlpackage"
TREE_FILE = "model.mlmodel"
SUPPORTED_OPS = (
    "const",
    "linear",
    "relu",
    "conv",
    "max_pool",
    "reshape",
    "softmax",
    "cast",
    "constexpr_affine_dequantize",
)


def _ct() -> Any:
    with redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import coremltools as ct
    return ct


def export(source: Source, folder: Path, quantize: str | None = None) -> list[Path]:
    """Write ``model.mlpackage`` (fp32, fp16 compute, or int8 weights) into ``folder``."""
    from edge.trees import TREE_FAMILIES

    if source.family in TREE_FAMILIES and source.regression:
        raise NotApplicable(f"Core ML export of {source.family!r} regressors is not written yet; export them to onnx")
    if source.family in TREE_FAMILIES:
        if quantize:
            raise NotApplicable(f"--quantize {quantize} applies to neural and linear models, not {source.family!r}")
        return [export_trees(source, folder)]
    if source.family not in NEURAL_FAMILIES:
        raise NotApplicable(
            f"Core ML export supports neural and linear models ({', '.join(NEURAL_FAMILIES)}), not {source.family!r}"
        )
    if quantize not in (None, "fp16", "int8"):
        raise ExportError(f"--quantize {quantize!r} is not supported; choose fp16 or int8")
    ct = _ct()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import get_new_symbol

    layers = network(source.model, source.family)

    @mb.program(input_specs=[mb.TensorSpec(shape=(get_new_symbol(), source.n_features))], opset_version=ct.target.iOS16)
    def program(input: Any) -> Any:  # noqa: A002 - the input's name in the model
        x = input
        for i, layer in enumerate(layers):
            if layer.op == "dense" and source.regression and i == len(layers) - 1:  # the output itself: no softmax
                return mb.linear(x=x, weight=layer.weight, bias=layer.bias, name="prediction")
            if layer.op == "dense":
                x = mb.linear(x=x, weight=layer.weight, bias=layer.bias)
            elif layer.op == "relu":
                x = mb.relu(x=x)
            elif layer.op == "reshape":
                x = mb.reshape(x=x, shape=[-1, *layer.shape] if layer.shape != (-1,) else [-1, _flat(x)])
            elif layer.op == "conv2d":
                p = layer.padding
                x = mb.conv(
                    x=x,
                    weight=layer.weight,
                    bias=layer.bias,
                    strides=[1, 1],
                    pad_type="custom",
                    pad=[p, p, p, p],
                    dilations=[1, 1],
                    groups=1,
                )
            elif layer.op == "maxpool2d":
                k = layer.kernel
                x = mb.max_pool(x=x, kernel_sizes=[k, k], strides=[k, k], pad_type="valid")
        return mb.softmax(x=x, axis=-1, name="probabilities")

    precision = ct.precision.FLOAT16 if quantize == "fp16" else ct.precision.FLOAT32
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ct.convert(
            program, convert_to="mlprogram", compute_precision=precision, minimum_deployment_target=ct.target.iOS16
        )
        if quantize == "int8":
            from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

            config = OptimizationConfig(
                global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", weight_threshold=0)
            )
            model = linear_quantize_weights(model, config)
    what = "one prediction" if source.regression else f"{source.n_classes} classes"
    model.short_description = f"UAAP {source.family} ({source.n_features} features -> {what})"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PACKAGE
    model.save(str(path))
    return [path]


def _flat(x: Any) -> int:
    return int(np.prod([int(d) for d in x.shape[1:]]))


# ---- verification without the Core ML runtime ------------------------------------------------


def check_structure(path: Path, n_features: int, n_classes: int) -> dict[str, Any]:
    """Structural check of a saved package; returns a summary, raises ExportError on any defect."""
    ct = _ct()
    spec = ct.utils.load_spec(str(path))
    problems = []
    if spec.WhichOneof("Type") != "mlProgram":
        problems.append(f"model type is {spec.WhichOneof('Type')!r}, expected mlProgram")
    inputs = {i.name: i for i in spec.description.input}
    outputs = {o.name: o for o in spec.description.output}
    if list(inputs) != ["input"]:
        problems.append(f"inputs are {list(inputs)}, expected ['input']")
    elif list(inputs["input"].type.multiArrayType.shape)[1:] != [n_features]:
        problems.append(f"input shape {list(inputs['input'].type.multiArrayType.shape)} != [batch, {n_features}]")
    expected = "prediction" if n_classes == 1 else "probabilities"  # one output: a regression model's prediction
    if list(outputs) != [expected]:
        problems.append(f"outputs are {list(outputs)}, expected [{expected!r}]")
    ops = [op.type for op in _ops(spec)]
    unknown = sorted(set(ops) - set(SUPPORTED_OPS))
    if unknown:
        problems.append(f"ops {unknown} are outside the verified op set {SUPPORTED_OPS}")
    weights = path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    if not weights.is_file():
        problems.append("weight blob Data/com.apple.CoreML/weights/weight.bin is missing")
    if problems:
        raise ExportError(f"Core ML package {path} failed the structural check: " + "; ".join(problems))
    return {
        "specification_version": int(spec.specificationVersion),
        "ops": {t: ops.count(t) for t in sorted(set(ops))},
        "runtime": "not run (Core ML runtime is macOS-only); NumPy re-execution of the saved program",
    }


def _ops(spec: Any) -> list[Any]:
    main = spec.mlProgram.functions["main"]
    return list(main.block_specializations[main.opset].operations)


def predict(path: Path, X: np.ndarray) -> np.ndarray:
    """Re-execute the saved ML Program in NumPy (op by op, weights from the blob file)."""
    ct = _ct()
    from coremltools.libmilstoragepython import _BlobStorageReader

    spec = ct.utils.load_spec(str(path))
    blob = _BlobStorageReader(str(path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"))
    env: dict[str, np.ndarray] = {"input": np.asarray(X, dtype=np.float32)}
    for op in _ops(spec):
        args = {name: _arg(arg, env, blob) for name, arg in op.inputs.items()}
        out = op.outputs[0].name
        env[out] = _run(op, args, blob)
    return np.asarray(env["probabilities"] if "probabilities" in env else env["prediction"], dtype=np.float64)


_DTYPES = {
    "FLOAT32": np.float32,
    "FLOAT16": np.float16,
    "INT32": np.int32,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}


def _arg(arg: Any, env: dict[str, np.ndarray], blob: Any) -> Any:
    binding = arg.arguments[0]
    if binding.WhichOneof("binding") == "name":
        return env[binding.name]
    return _value(binding.value, blob)


def _value(value: Any, blob: Any) -> Any:
    from coremltools.proto import MIL_pb2

    kind = value.WhichOneof("value")
    tensor_type = value.type.tensorType
    dtype_name = MIL_pb2.DataType.Name(tensor_type.dataType)
    shape = [int(d.constant.size) for d in tensor_type.dimensions]
    if kind == "blobFileValue":
        offset = value.blobFileValue.offset
        readers = {
            "FLOAT32": blob.read_float_data,
            "FLOAT16": blob.read_fp16_data,
            "INT8": blob.read_int8_data,
            "UINT8": blob.read_uint8_data,
        }
        if dtype_name not in readers:
            raise ExportError(f"Core ML blob of type {dtype_name} is not supported by the NumPy re-execution")
        data = np.asarray(readers[dtype_name](offset))
        if dtype_name == "FLOAT16":
            data = data.view(np.float16)
        return data.reshape(shape)
    t = value.immediateValue.tensor
    field = t.WhichOneof("value")
    if field is None:
        return np.zeros(shape, dtype=_DTYPES.get(dtype_name, np.float32))
    raw = getattr(t, field).values
    if field == "strings":
        vals = list(raw)
        return vals[0] if not shape else vals
    if field == "bytes":
        data = np.frombuffer(raw, dtype=_DTYPES[dtype_name])
    else:
        data = np.asarray(list(raw), dtype=_DTYPES.get(dtype_name, np.float32))
    return data.reshape(shape) if shape else data.reshape(()).item() if data.size == 1 else data


def _run(op: Any, a: dict[str, Any], blob: Any) -> Any:
    t = op.type
    if t == "const":
        return _value(op.attributes["val"], blob)
    if t == "constexpr_affine_dequantize":
        q = _value(op.attributes["quantized_data"], blob).astype(np.float32)
        zp = np.asarray(_value(op.attributes["zero_point"], blob), dtype=np.float32)
        scale = np.asarray(_value(op.attributes["scale"], blob), dtype=np.float32)
        axis = int(_value(op.attributes["axis"], blob))
        shape = [1] * q.ndim
        if scale.ndim:
            shape[axis] = -1
        return ((q - zp.reshape(shape if zp.ndim else ())) * scale.reshape(shape if scale.ndim else ())).astype(
            np.float32
        )
    if t == "cast":
        return np.asarray(a["x"]).astype({"fp16": np.float16, "fp32": np.float32}[a["dtype"]])
    x = np.asarray(a["x"])
    if t == "linear":
        w = np.asarray(a["weight"])
        y = x @ w.T.astype(x.dtype)
        return y + np.asarray(a["bias"]).astype(x.dtype) if "bias" in a else y
    if t == "relu":
        return np.maximum(x, 0).astype(x.dtype)
    if t == "reshape":
        return x.reshape([int(s) for s in np.asarray(a["shape"]).ravel()])
    if t == "softmax":
        axis = int(a.get("axis", -1))
        z = x.astype(np.float32) - x.astype(np.float32).max(axis=axis, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)
    if t == "conv":
        if list(np.ravel(a.get("strides", [1, 1]))) != [1, 1] or int(a.get("groups", 1)) != 1:
            raise ExportError("the NumPy re-execution only supports stride-1, groups-1 convolutions")
        pad = [int(p) for p in np.ravel(a.get("pad", [0, 0, 0, 0]))]
        if a.get("pad_type") not in ("custom", "valid") or len(set(pad)) > 1:
            raise ExportError(f"unsupported conv padding {a.get('pad_type')} {pad}")
        w = np.asarray(a["weight"])
        b = np.asarray(a["bias"]) if "bias" in a else None
        return conv2d(
            x.astype(np.float32), w.astype(np.float32), None if b is None else b.astype(np.float32), pad[0]
        ).astype(x.dtype)
    if t == "max_pool":
        k = [int(v) for v in np.ravel(a["kernel_sizes"])]
        s = [int(v) for v in np.ravel(a["strides"])]
        if k != s or a.get("pad_type") != "valid":
            raise ExportError("the NumPy re-execution only supports non-overlapping valid max pooling")
        n, c, h, w = x.shape
        return (
            x[:, :, : h // k[0] * k[0], : w // k[1] * k[1]]
            .reshape(n, c, h // k[0], k[0], w // k[1], k[1])
            .max(axis=(3, 5))
        )
    raise ExportError(f"op {t!r} is not supported by the NumPy re-execution of Core ML programs")


# ---- tree ensembles -----------------------------------------------------------------------------


def export_trees(source: Source, folder: Path) -> Path:
    """Write a Core ML tree-ensemble classifier (``model.mlmodel``) into ``folder``."""
    from edge.trees import ensemble

    ct = _ct()
    from coremltools.models import datatypes
    from coremltools.models.tree_ensemble import TreeEnsembleClassifier

    ens = ensemble(source.model, source.family, source.heldout.X)
    labels = list(range(ens.n_classes))
    builder = TreeEnsembleClassifier([("input", datatypes.Array(ens.n_features))], labels, ["label", "probabilities"])
    binary_mean = ens.link == "none" and ens.n_classes == 2
    if ens.link == "sigmoid":
        builder.set_default_prediction_value([float(ens.bias[0])])
        builder.set_post_evaluation_transform("Regression_Logistic")
    elif ens.link == "softmax":
        builder.set_default_prediction_value([float(b) for b in ens.bias])
        builder.set_post_evaluation_transform("Classification_SoftMax")
    else:
        builder.set_default_prediction_value([0.0] if binary_mean else [0.0] * ens.n_classes)
        builder.set_post_evaluation_transform("NoTransform")
    scale = 1.0 / len(ens.trees) if ens.aggregate == "mean" else 1.0
    for tree_id, tree in enumerate(ens.trees):
        for node in range(len(tree.feature)):
            if tree.feature[node] >= 0:
                builder.add_branch_node(
                    tree_id,
                    node,
                    int(tree.feature[node]),
                    float(tree.threshold[node]),
                    "BranchOnValueLessThan",
                    int(tree.left[node]),
                    int(tree.right[node]),
                )
            elif tree.target >= 0 and ens.link == "softmax":
                builder.add_leaf_node(tree_id, node, {int(tree.target): float(tree.value[node, 0])})
            elif binary_mean:
                builder.add_leaf_node(tree_id, node, [float(tree.value[node, 1] * scale)])
            else:
                builder.add_leaf_node(tree_id, node, [float(v * scale) for v in tree.value[node]])
    builder.spec.description.metadata.shortDescription = f"UAAP {source.family} tree ensemble"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TREE_FILE
    ct.utils.save_spec(builder.spec, str(path))
    return path


def check_tree_structure(path: Path, n_features: int, n_classes: int) -> dict[str, Any]:
    """Structural check of a saved tree-ensemble classifier."""
    ct = _ct()
    spec = ct.utils.load_spec(str(path))
    problems = []
    if spec.WhichOneof("Type") != "treeEnsembleClassifier":
        problems.append(f"model type is {spec.WhichOneof('Type')!r}, expected treeEnsembleClassifier")
    inputs = [i.name for i in spec.description.input]
    if inputs != ["input"] or list(spec.description.input[0].type.multiArrayType.shape) != [n_features]:
        problems.append(
            f"input is {inputs} {list(spec.description.input[0].type.multiArrayType.shape)}, "
            f"expected ['input'] [{n_features}]"
        )
    if [o.name for o in spec.description.output] != ["label", "probabilities"]:
        problems.append(f"outputs are {[o.name for o in spec.description.output]}, expected ['label', 'probabilities']")
    labels = list(spec.treeEnsembleClassifier.int64ClassLabels.vector)
    if labels != list(range(n_classes)):
        problems.append(f"class labels {labels} != 0..{n_classes - 1}")
    params = spec.treeEnsembleClassifier.treeEnsemble
    if problems:
        raise ExportError(f"Core ML model {path} failed the structural check: " + "; ".join(problems))
    return {
        "specification_version": int(spec.specificationVersion),
        "type": "treeEnsembleClassifier",
        "nodes": len(params.nodes),
        "trees": len({n.treeId for n in params.nodes}),
        "runtime": "not run (Core ML runtime is macOS-only); NumPy re-evaluation of the saved node table",
    }


def predict_trees(path: Path, X: np.ndarray) -> np.ndarray:
    """Evaluate a saved tree-ensemble classifier spec in NumPy (float64, as Core ML compares doubles)."""
    ct = _ct()
    from coremltools.proto import TreeEnsemble_pb2

    spec = ct.utils.load_spec(str(path))
    params = spec.treeEnsembleClassifier.treeEnsemble
    n_classes = len(spec.treeEnsembleClassifier.int64ClassLabels.vector)
    node_t = TreeEnsemble_pb2.TreeEnsembleParameters.TreeNode
    nodes = {(n.treeId, n.nodeId): n for n in params.nodes}
    base = np.asarray(params.basePredictionValue, dtype=np.float64)
    X = np.asarray(X, dtype=np.float32).astype(np.float64)
    out = np.tile(base, (len(X), 1))
    for tree_id in sorted({t for t, _ in nodes}):
        for r, row in enumerate(X):
            node = nodes[(tree_id, 0)]
            while node.nodeBehavior != node_t.LeafNode:
                mode = node_t.TreeNodeBehavior.Name(node.nodeBehavior)
                if mode != "BranchOnValueLessThan":
                    raise ExportError(f"branch mode {mode} is not what this exporter writes")
                go = row[node.branchFeatureIndex] < node.branchFeatureValue
                node = nodes[(tree_id, node.trueChildNodeId if go else node.falseChildNodeId)]
            for info in node.evaluationInfo:
                out[r, info.evaluationIndex] += info.evaluationValue
    transform = TreeEnsemble_pb2.TreeEnsemblePostEvaluationTransform.Name(
        spec.treeEnsembleClassifier.postEvaluationTransform
    )
    if transform == "Regression_Logistic":
        p = 1.0 / (1.0 + np.exp(-out[:, 0]))
        return np.column_stack([1.0 - p, p])
    if transform == "Classification_SoftMax":
        e = np.exp(out - out.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if out.shape[1] == 1 and n_classes == 2:
        return np.column_stack([1.0 - out[:, 0], out[:, 0]])
    return out
