"""One registered model version, loaded for inference: raw rows in, predictions out.

Rows are validated by a pydantic model generated from the version's input schema (strict types, no extra or
missing column, no NaN or infinity; ``null`` only where the preprocessing imputes), then against the model itself:
a number must stay a finite float32 after the version's own scaling (each column's range is in the row's JSON
Schema), a date must be one the preprocessor reads, a free text must hold a word. Valid rows become model inputs
by the fitted preprocessing the version carries and run through onnxruntime when the version has an ONNX export
(no torch in the API process), the native model otherwise; an output that is not finite is refused like a bad
row, never sent as JSON. Encrypted artefacts are decrypted in memory.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from serving.registry import MANIFEST, TAG_ENCRYPTED, TAG_KEY
from serving.rows import (
    DATE_HINT,
    Column,
    bounds,
    exc_loc,
    row_label,
    row_validator,
    text_columns,
    unreadable_dates,
)
from uaap.errors import UaapError


class ModelLoadError(UaapError):
    """A registered version cannot be served (an artefact failed authentication, or the key is missing)."""


class RowsInvalid(UaapError):
    """Rows that do not fit the input schema; ``errors`` name each bad field (FastAPI's 422 shape)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["msg"] if errors else "invalid rows")
        self.errors = errors


def _open(files: dict[str, bytes], tags: dict[str, str], key: bytes | None, label: str) -> dict[str, bytes]:
    """The artefacts in the clear (in memory), each checked: authenticated when encrypted, hashed otherwise."""
    from uaap import at_rest

    encrypted = tags.get(TAG_ENCRYPTED) == "true"
    if encrypted:
        if key is None:
            raise ModelLoadError(
                f"{label} is encrypted at rest; start the server with its key (${at_rest.KEY_ENV} or --key-file)"
            )
        if tags.get(TAG_KEY) and tags[TAG_KEY] != at_rest.fingerprint(key):
            raise ModelLoadError(
                f"{label} was encrypted with key {tags[TAG_KEY]}, but the server holds key {at_rest.fingerprint(key)}; "
                "start it with the key the version was registered with"
            )
    out: dict[str, bytes] = {}
    for name, blob in files.items():
        if encrypted != at_rest.is_encrypted(blob):
            raise ModelLoadError(
                f"{label}: artefact {name!r} is {'not ' if encrypted else ''}encrypted but the registry says the "
                f"version is {'' if encrypted else 'not '}encrypted; refusing it (a file was replaced)"
            )
        try:
            out[name] = at_rest.decrypt(blob, key, name) if encrypted and key is not None else blob
        except at_rest.AtRestError as exc:
            raise ModelLoadError(f"{label}: {exc}") from None
    manifest = json.loads(out[MANIFEST])
    for name, digest in manifest.get("sha256", {}).items():
        if name in out and hashlib.sha256(out[name]).hexdigest() != digest:
            raise ModelLoadError(
                f"{label}: artefact {name!r} changed after registration (SHA-256 differs); refusing it"
            )
    return out


class ServedModel:
    """A registered version ready to predict: schema, preprocessing and a runtime."""

    def __init__(
        self, name: str, version: str, files: dict[str, bytes], tags: dict[str, str], key: bytes | None = None
    ) -> None:
        label = f"model {name!r} version {version}"
        clear = _open(files, tags, key, label)
        self.name, self.version = name, version
        self.manifest: dict[str, Any] = json.loads(clear[MANIFEST])
        self.task: str = self.manifest["task"]
        self.classes: list[str] = list(self.manifest.get("classes") or [])
        self.columns = [
            Column(str(c["name"]), str(c["type"]), bool(c["nullable"])) for c in self.manifest["input_schema"]
        ]
        spec = self.manifest["preprocessing"]
        self._pre = _fitted(spec)  # a raw table's plan, read once for the checks, the features and /explain
        self.bounds = bounds(spec, self.columns, self._pre)
        self._texts = text_columns(self._pre)
        self._rows_adapter, self.row_model = row_validator(name, version, self.columns, self.bounds)
        self._prepare, self._feature_names = _preprocessor(spec, [c.name for c in self.columns], self._pre)
        onnx = self.manifest.get("onnx")
        if onnx and onnx in clear:
            self.runtime = "onnxruntime"
            self._run = _onnx_runner(clear[onnx])
        else:
            self.runtime = "native"
            self._run = _native_runner(clear[self.manifest["model_file"]], self.manifest, label)
        self._native = clear[self.manifest["model_file"]]  # what /explain loads (in memory, in the clear)
        self._label = label
        self._explained: Any = None  # the native model for SHAP, loaded on the first /explain

    @property
    def run_id(self) -> str:
        """The run the version was registered from."""
        return str(self.manifest["run_id"])

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/models/{name}`` shows."""
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "task": self.task,
            "family": self.manifest.get("family", ""),
            "runtime": self.runtime,
            "classes": self.classes,
            "metrics": self.manifest.get("metrics", {}),
            "privacy": self.manifest.get("privacy", {}),
            "input_schema": [c.__dict__ for c in self.columns],
            "row_json_schema": self.row_model.model_json_schema(),
        }

    def validate(self, rows: list[Any], where: str = "rows") -> list[tuple[Any, ...]]:
        """Each row's values in schema order, or :class:`RowsInvalid` naming every bad field."""
        from pydantic import ValidationError

        try:
            parsed = self._rows_adapter.validate_python(rows)
        except ValidationError as exc:
            errors = [
                {"loc": ["body", where, *exc_loc(e["loc"])], "msg": str(e["msg"]), "type": str(e["type"])}
                for e in exc.errors(include_url=False, include_input=False, include_context=False)
            ]
            raise RowsInvalid(errors) from None
        fields = [f"c{i}" for i in range(len(self.columns))]
        values = [tuple(getattr(r, f) for f in fields) for r in parsed]
        problems = (
            self._range_errors(values, where) + self._date_errors(values, where) + self._text_errors(values, where)
        )
        if problems:
            raise RowsInvalid([e for _, e in sorted(problems, key=lambda pair: pair[0])])
        return values

    def _range_errors(self, values: list[tuple[Any, ...]], where: str) -> list[tuple[tuple[int, int], dict[str, Any]]]:
        """Numbers outside what the model takes: past float32's max, or overflowing after the version's scaling."""
        out: list[tuple[tuple[int, int], dict[str, Any]]] = []
        for j, (col, span) in enumerate(zip(self.columns, self.bounds, strict=True)):
            if span is None:
                continue
            lo, hi = span
            for i, row in enumerate(values):
                v = row[j]
                if v is not None and not lo <= v <= hi:
                    msg = (
                        f"{row_label(where, i)}{col.name!r} = {v!r} is outside the range this model accepts, "
                        f"[{lo:.6g}, {hi:.6g}]: its inputs must stay finite float32 numbers after its own scaling; "
                        "send a value in that range"
                    )
                    out.append(((i, j), {"loc": ["body", where, i, col.name], "msg": msg, "type": "out_of_range"}))
        return out

    def _date_errors(self, values: list[tuple[Any, ...]], where: str) -> list[tuple[tuple[int, int], dict[str, Any]]]:
        """Values of datetime columns that the version's preprocessor would not read as dates (it would impute
        them silently), and UTC offsets mixed in one batch (which it cannot read at all)."""
        out: list[tuple[tuple[int, int], dict[str, Any]]] = []
        for j, col in enumerate(self.columns):
            if col.type != "datetime":
                continue
            for i, why in unreadable_dates([row[j] for row in values]):
                fix = f"send {col.name!r} as {DATE_HINT}{' (or null)' if col.nullable else ''}"
                label = row_label(where, i)
                msg = f"{label}{why}; {fix}" if why.endswith("is not a date or time") else label + why
                out.append(((i, j), {"loc": ["body", where, i, col.name], "msg": msg, "type": "datetime_parsing"}))
        return out

    def _text_errors(self, values: list[tuple[Any, ...]], where: str) -> list[tuple[tuple[int, int], dict[str, Any]]]:
        """Free texts that hold no word, which the preprocessor refuses (a blank or punctuation is likely a mistake)."""
        import re

        from uaap.data.preprocess import TOKENS

        out: list[tuple[tuple[int, int], dict[str, Any]]] = []
        for j, col in enumerate(self.columns):
            if col.name not in self._texts:
                continue
            for i, row in enumerate(values):
                if row[j] is not None and not re.search(TOKENS, row[j]):
                    msg = (
                        f"{row_label(where, i)}{col.name!r} = {row[j]!r:.60} holds no word (letters, digits or "
                        f"underscores) for this free-text column; send its text{', or null' if col.nullable else ''}"
                    )
                    out.append(
                        ((i, j), {"loc": ["body", where, i, col.name], "msg": msg, "type": "string_pattern_mismatch"})
                    )
        return out

    def features(
        self, values: list[tuple[Any, ...]], where: str = "rows", index: list[int] | None = None
    ) -> np.ndarray:
        """Model inputs (float32) of validated rows; :class:`RowsInvalid` names each row whose inputs are not finite
        (``index``: the rows' places in the request, for the error's location)."""
        from uaap.errors import DataError

        try:
            out: np.ndarray = self._prepare(values, [c.name for c in self.columns])
        except DataError as exc:  # what validation did not foresee is still the rows' fault, not the server's
            raise RowsInvalid([{"loc": ["body", where], "msg": str(exc), "type": "value_error"}]) from None

        def inputs(k: int) -> str:
            names = [self._feature_names[f] for f in np.flatnonzero(~np.isfinite(out[k]))]
            return (
                f"the model inputs {', '.join(names[:5])} of this row are not finite float32 numbers after the "
                "model's scaling; send smaller numbers (GET /v1/models/{name} gives each column's range in "
                "row_json_schema)"
            )

        _refuse_not_finite(out, where, index, "out_of_range", inputs)
        return out

    def predict(
        self, values: list[tuple[Any, ...]], where: str = "rows", index: list[int] | None = None
    ) -> list[dict[str, Any]]:
        """One prediction per validated row: the label and class probabilities, or the regression value.

        An output that is not finite (a model that overflows on the row) is :class:`RowsInvalid` naming the row."""
        if not values:
            return []
        out = self._run(self.features(values, where, index))
        found = np.asarray(out, dtype=np.float64).reshape(len(values), -1)
        _refuse_not_finite(found, where, index, "output_not_finite", lambda k: (
            f"the model's output for this row is not finite ({', '.join(map(str, found[k].tolist()[:5]))}): the row "
            "lies where this model cannot answer; send a row closer to its training data, or tell the model's owner"
        ))  # fmt: skip
        if self.task == "regression":
            return [{"prediction": float(v)} for v in np.asarray(out, dtype=np.float64).reshape(-1)]
        probs = np.asarray(out, dtype=np.float64)
        labels = probs.argmax(axis=1)
        return [
            {
                "prediction": self.classes[int(k)] if self.classes else str(int(k)),
                "probabilities": [float(p) for p in row],
            }
            for k, row in zip(labels, probs, strict=True)
        ]

    def explain(self, values: tuple[Any, ...], target_class: str = "") -> dict[str, Any]:
        """SHAP values of one validated row per raw input column (see :func:`explain_row`)."""
        self.features([values], "row")  # inputs that overflow are a 422, before SHAP runs the model on them
        if self._explained is None:
            self._explained = _explainable(self._native, self.manifest, self._label, self._pre)
        found = explain_row(self._explained, self.manifest, self.columns, values, target_class)
        numbers = [found["base_value"], found["model_output"], found["additivity_error"], *found["values"].values()]
        if not all(math.isfinite(v) for v in numbers):
            msg = (
                f"the explanation of this row is not finite (model output {found['model_output']}, base value "
                f"{found['base_value']}): the row lies where this model cannot answer; send a row closer to its "
                "training data, or tell the model's owner"
            )
            raise RowsInvalid([{"loc": ["body", "row", 0], "msg": msg, "type": "output_not_finite"}])
        return found


def _refuse_not_finite(
    array: np.ndarray, where: str, index: list[int] | None, kind: str, why: Callable[[int], str]
) -> None:
    """:class:`RowsInvalid` naming each row of ``array`` (rows x values) holding a value that is not finite, with
    ``why(k)`` saying what of row ``k`` is wrong (``index``: the rows' places in the request)."""
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        errors = []
        for k in map(int, bad):
            i = index[k] if index is not None else k
            errors.append({"loc": ["body", where, i], "msg": f"{row_label(where, i)}{why(k)}", "type": kind})
        raise RowsInvalid(errors)


class NotExplainable(UaapError):
    """The row or the class asked for cannot be explained (a 422 naming what to send)."""


def _explainable(data: bytes, manifest: dict[str, Any], label: str, pre: Any) -> Any:
    """The version's native model for SHAP: a :class:`uaap.monitor.runmodel.RunModel` when it carries a fitted
    preprocessor (what ``uaap explain`` reads from the run folder), else ``(model, meta, torch)``."""
    from pathlib import Path

    from uaap import workspace

    torch = manifest["model_file"].endswith(".npz")
    model, meta = workspace.load_model_bytes(data, label) if torch else workspace.load_estimator_bytes(data, label)
    if pre is None:
        return (model, meta, torch)
    from uaap.monitor.runmodel import RunModel

    return RunModel(workspace.RunDir(Path(str(manifest["run_id"]))), model, dict(meta), pre, torch)


def background_frame(columns: list[Column]) -> Any:
    """The background of a table model's explanation: one row with every column missing, which the fitted
    preprocessor fills with what it learnt in training (the median or mean of a number, the most frequent
    category, no words), so the base value is the model's output on that typical row."""
    import pandas as pd

    return pd.DataFrame([[None] * len(columns)], columns=[c.name for c in columns], dtype=object)


def explain_row(
    model: Any, manifest: dict[str, Any], columns: list[Column], values: tuple[Any, ...], target_class: str = ""
) -> dict[str, Any]:
    """SHAP values of one row per raw column, their base value and the explained output.

    A model with a fitted preprocessor is explained by :func:`uaap.explain.shapley.explain` (the same values as
    ``uaap explain`` on that row with :func:`background_frame` as background, seed 0); a bundled table's model
    (standardised columns) by shap's ``PermutationExplainer`` against the training mean the version carries.
    """
    import pandas as pd

    from uaap.errors import DataError

    names = [c.name for c in columns]
    if not isinstance(model, tuple):
        from uaap.explain.shapley import explain

        frame = pd.DataFrame([list(values)], columns=names, dtype=object)
        try:
            result = explain(model, frame, target_class=target_class, background=background_frame(columns), seed=0)
        except DataError as exc:
            raise NotExplainable(str(exc)) from None
        background = "one row of the training's imputed values (median/mean numbers, most frequent categories)"
        if result.explainer == "tree":
            background = "none: TreeExplainer's path-dependent values use the trees' own training counts"
        return _explained(result.columns, result.grouped[0], result.base, float(result.model_output[0]),
                          result.explainer, result.output, background, result.note)  # fmt: skip
    return _explain_standardized(model, manifest, names, values, target_class)


def _explained(
    names: list[str], values: Any, base: float, output: float, explainer: str, what: str, background: str, note: str
) -> dict[str, Any]:
    shap_values = {n: float(v) for n, v in zip(names, values, strict=True)}
    return {
        "explainer": explainer,
        "output": what,
        "base_value": float(base),
        "model_output": output,
        "values": shap_values,
        "additivity_error": abs(sum(shap_values.values()) + float(base) - output),
        "background": background,
        "note": note,
    }


def _explain_standardized(
    found: tuple[Any, dict[str, Any], bool], manifest: dict[str, Any], names: list[str], values: tuple[Any, ...],
    target_class: str,
) -> dict[str, Any]:  # fmt: skip
    import shap

    model, _, torch = found
    spec = manifest["preprocessing"]
    mean = np.asarray(spec["mean"], dtype=np.float64)
    std = np.asarray(spec["std"], dtype=np.float64)
    classes = list(manifest.get("classes") or [])
    regression = manifest["task"] == "regression"
    if regression:
        k, what = 0, "prediction"
    elif not target_class:
        k = len(classes) - 1 if len(classes) != 2 else 1
        what = f"P({classes[k]})"
    elif target_class in classes:
        k, what = classes.index(target_class), f"P({target_class})"
    else:
        raise NotExplainable(f"target_class {target_class!r} is not one of the model's classes: {', '.join(classes)}")
    scaling = manifest.get("target_scaling") or {}

    def f(raw: np.ndarray) -> np.ndarray:
        X = ((raw - mean) / std).astype(np.float32)
        if torch:
            from uaap.training import predict_proba, predict_values

            if regression:
                return predict_values(model, X, float(scaling.get("mean", 0.0)), float(scaling.get("std", 1.0)))
            return np.asarray(predict_proba(model, X), dtype=np.float64)[:, k]
        if regression:
            return np.asarray(model.predict(X), dtype=np.float64).reshape(-1)
        return np.asarray(model.predict_proba(X), dtype=np.float64)[:, k]

    row = np.asarray([values], dtype=np.float64)
    masker = shap.maskers.Independent(mean[None, :], max_samples=1)
    explainer = shap.PermutationExplainer(f, masker, seed=0)
    result = explainer(row, max_evals=max(500, 2 * row.shape[1] + 1), silent=True)
    base = float(np.asarray(result.base_values, dtype=np.float64).reshape(-1)[0])
    background = "one row: the training mean of each column (what the version's scaling carries)"
    shap_values = np.asarray(result.values, dtype=np.float64)[0]
    return _explained(names, shap_values, base, float(f(row)[0]), "permutation", what, background, "")


def _fitted(spec: dict[str, Any]) -> Any:
    """The version's fitted :class:`uaap.data.preprocess.Preprocessor` (a raw table's), or None (a bundled set's
    standardisation)."""
    if spec["kind"] == "standardize":
        return None
    if spec["kind"] != "uaap-preprocessor":
        raise ModelLoadError(f"preprocessing kind {spec['kind']!r} is unknown to this server; upgrade uaap")
    from uaap.data.preprocess import Preprocessor

    return Preprocessor.from_dict(spec["plan"])


def _preprocessor(spec: dict[str, Any], columns: list[str], pre: Any) -> tuple[Any, list[str]]:
    """``f(values, column_names) -> float32 features`` for the version's preprocessing (``pre``: :func:`_fitted`),
    and the features' names."""
    if spec["kind"] == "standardize":
        mean = np.asarray(spec["mean"], dtype=np.float32)
        std = np.asarray(spec["std"], dtype=np.float32)

        def standardize(values: list[tuple[Any, ...]], names: list[str]) -> np.ndarray:
            return ((np.asarray(values, dtype=np.float32) - mean) / std).astype(np.float32)

        return standardize, [repr(c) for c in columns]
    import pandas as pd

    def transform(values: list[tuple[Any, ...]], names: list[str]) -> np.ndarray:
        return np.asarray(pre.transform(pd.DataFrame(values, columns=names)), dtype=np.float32)

    return transform, [repr(str(f)) for f in pre.get_feature_names_out()]


def _onnx_runner(data: bytes) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    outputs = [o.name for o in sess.get_outputs()]
    wanted = next((o for o in ("probabilities", "prediction") if o in outputs), outputs[-1])

    def run(X: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run([wanted], {input_name: X})[0])

    return run


def _native_runner(data: bytes, manifest: dict[str, Any], label: str) -> Any:
    from uaap import workspace

    regression = manifest["task"] == "regression"
    if manifest["model_file"].endswith(".npz"):
        from uaap.training import predict_proba, predict_values

        module, _ = workspace.load_model_bytes(data, label)
        scaling = manifest.get("target_scaling") or {}
        mean, std = float(scaling.get("mean", 0.0)), float(scaling.get("std", 1.0))
        if regression:
            return lambda X: predict_values(module, X, mean, std)
        return lambda X: predict_proba(module, X)
    estimator, _ = workspace.load_estimator_bytes(data, label)
    if regression:
        return lambda X: np.asarray(estimator.predict(X), dtype=np.float64)
    return lambda X: np.asarray(estimator.predict_proba(X), dtype=np.float64)
