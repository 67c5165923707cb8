"""MLflow's model registry, written: a finished run's model as a new version of a registered name.

A registered version's artefacts (logged to the run's own MLflow run, under ``serving-<id>/``):

* ``serving.json``: the input schema (raw columns, their types, whether null is allowed), the fitted
  preprocessing (a bundled table's standardisation, or a raw table's preprocessor plan), the task and classes,
  the run's metrics and privacy epsilon, and the SHA-256 of each model file;
* the native model (``model.npz`` or ``model.skops``) and, when the run has an uncompressed ONNX export
  (``uaap export RUN --to onnx``), ``model.onnx``.

With ``encrypt`` every artefact is AES-256-GCM encrypted (:mod:`uaap.at_rest`) and the version's tags carry the
key's fingerprint. The version's tags carry the summary (task, runtime, metrics, privacy) so listing models needs
no artefact. The library writes the registry (``uaap train --register``, and the serving floor's ``uaap
register``); reading it for inference is the serving floor's (:mod:`serving.registry`).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uaap.errors import UaapError

if TYPE_CHECKING:
    from mlflow import MlflowClient

MANIFEST = "serving.json"
FORMAT = "uaap-serving/1"
ONNX_FILE = "model.onnx"
EXPERIMENT = "uaap-registry"  # runs with no MLflow run of their own get one here
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")  # MLflow's alias characters
TAG_RUN = "uaap.run_id"
TAG_TASK = "uaap.task"
TAG_RUNTIME = "uaap.runtime"
TAG_ENCRYPTED = "uaap.encrypted"
TAG_KEY = "uaap.key_fingerprint"
TAG_METRICS = "uaap.metrics"
TAG_PRIVACY = "uaap.privacy"


class RegistryError(UaapError):
    """A run cannot be registered, or a name/alias is not in the registry."""


class NotRegistered(RegistryError):
    """An unknown model name, alias or version (the API answers 404 with what exists)."""


@dataclass(frozen=True)
class Registered:
    """What ``uaap register`` made."""

    name: str
    version: str
    alias: str | None
    run_id: str
    runtime: str
    encrypted: bool


def check_name(name: str) -> str:
    """A registered model name: letters, digits, ``_ . -``, at most 64, no ``@`` (that picks an alias)."""
    if not NAME.match(name):
        raise RegistryError(
            f"model name {name!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-', starting with a letter "
            "or digit (e.g. breast-cancer); '@' is reserved for name@alias"
        )
    return name


def _check_alias(alias: str) -> None:
    if not ALIAS.match(alias) or alias == "latest" or alias[:1] == "v" and alias[1:].isdigit():
        raise RegistryError(
            f"alias {alias!r} is not allowed: use letters, digits, '_' or '-' (e.g. champion); 'latest' and "
            "'v<number>' are reserved (they pick the newest or a numbered version)"
        )


def client() -> MlflowClient:
    """An MLflow client on the workspace's tracking store (which is also the registry)."""
    import logging

    from mlflow import MlflowClient

    from uaap import quiet, tracking

    quiet.python_warnings()  # SQLAlchemy's deprecation of what MLflow's sqlite store does
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking.tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# ---- what a run holds -------------------------------------------------------------------------------------------


def _model_file(run_path: Path, run_id: str) -> Path:
    from uaap import workspace

    for name in ("model.npz", workspace.ESTIMATOR_FILE):
        if (run_path / name).is_file():
            return run_path / name
    raise RegistryError(
        f"run {run_id!r} has no model.npz or {workspace.ESTIMATOR_FILE} (did it finish? an encrypted federation "
        "keeps no plaintext model: decrypt it with `uaap keys decrypt-model` first)"
    )


def _meta(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The model's metadata and its class labels (empty for regression), read without building the model."""
    import numpy as np

    from uaap import workspace

    if path.suffix == ".npz":
        with np.load(path) as npz:
            meta: dict[str, Any] = json.loads(bytes(npz["__meta__"]).decode())
        classes = [str(i) for i in range(int(meta.get("n_classes") or 0))]
    else:
        estimator, meta = workspace.load_estimator(path)
        found = getattr(estimator, "classes_", None)
        classes = [str(c) for c in found] if found is not None else []
    plan = meta.get("preprocessor") or {}
    target = plan.get("target") or {}
    if target.get("classes"):  # a raw table's labels, as the preprocessor encoded them
        classes = [str(c) for c in target["classes"]]
    return meta, classes


def _preprocessing(meta: dict[str, Any], run_path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """How raw rows become model inputs, and the raw columns (name, type, nullable) a row must carry."""
    from uaap.config import RunConfig
    from uaap.data import BUNDLED, feature_scaling, load_bundled, train_test

    if meta.get("preprocessor"):
        from uaap.data.preprocess import Preprocessor

        pre = Preprocessor.from_dict(meta["preprocessor"])
        kinds = {"numeric": "number", "datetime": "datetime", "categorical": "string", "text": "string"}
        columns = [{"name": p.name, "type": kinds.get(p.kind, "string"), "nullable": True} for p in pre.plan_]
        return {"kind": "uaap-preprocessor", "plan": meta["preprocessor"]}, columns
    cfg = RunConfig.from_json((run_path / "config.json").read_text())
    if cfg.dataset not in BUNDLED:
        raise RegistryError(
            f"run {run_path.name!r} trained on dataset={cfg.dataset!r} without a fitted preprocessor, so its raw "
            "input columns are unknown; serve runs on a bundled table or on your own table (--data FILE --target COL)"
        )
    data = load_bundled(cfg.dataset)
    mean, std = feature_scaling(train_test(data, cfg.test_fraction, cfg.seed).train.X, cfg.dataset)
    columns = [{"name": n, "type": "number", "nullable": False} for n in data.feature_names]
    return {"kind": "standardize", "mean": mean.tolist(), "std": std.tolist()}, columns


def _onnx(run_path: Path) -> Path | None:
    """The run's ONNX export, if it is the model itself (not quantised, pruned or distilled)."""
    folder = run_path / "exports" / "onnx"
    if not (folder / ONNX_FILE).is_file() or not (folder / "manifest.json").is_file():
        return None
    manifest = json.loads((folder / "manifest.json").read_text())
    compression = {k: v for k, v in (manifest.get("compression") or {}).items() if v}
    return folder / ONNX_FILE if not compression and manifest.get("parity", {}).get("passed", True) else None


def _metrics(run_path: Path, run_id: str, mlflow_run: Any) -> dict[str, float]:
    """The run's final metrics: its MLflow run's latest values, else the ``end`` event's."""
    if mlflow_run is not None and mlflow_run.data.metrics:
        return {k: float(v) for k, v in sorted(mlflow_run.data.metrics.items())}
    from uaap import workspace

    ends = workspace.RunDir(run_path).events("end")
    central = ends[-1].get("central", {}) if ends else {}
    return {k: float(v) for k, v in central.items() if isinstance(v, int | float)}


def _privacy(run_id: str) -> dict[str, Any]:
    """The run's final epsilons from the privacy ledger (empty for a run without DP)."""
    from uaap.privacy.ledger import Ledger
    from uaap.privacy.report import final_epsilons

    ledger = Ledger()
    try:
        budget = ledger.budget(run_id)
        if budget is None:
            return {}
        eps = final_epsilons(run_id, ledger)
        user = eps.pop("user", None)
        return {
            "user_epsilon": user,
            "example_epsilon_max": max(eps.values()) if eps else None,
            "delta": budget.delta,
            "max_epsilon": budget.max_epsilon,
        }
    finally:
        ledger.close()


def _tracked_run(mlc: MlflowClient, run_id: str) -> Any:
    from uaap.tracking import RUN_TAG

    experiments = [e.experiment_id for e in mlc.search_experiments()]
    found = mlc.search_runs(experiments, filter_string=f"tags.`{RUN_TAG}` = '{run_id}'", max_results=1)
    return found[0] if found else None


# ---- register ---------------------------------------------------------------------------------------------------


def register_run(
    run_id: str,
    name: str,
    *,
    alias: str | None = None,
    encrypt: bool = False,
    key_file: Path | None = None,
) -> Registered:
    """Register run ``run_id``'s model as a new version of ``name`` (and point ``alias`` at it)."""
    from uaap import at_rest, tracking, workspace

    check_name(name)
    if alias is not None:
        _check_alias(alias)
    rd = workspace.existing_run(run_id)
    model_path = _model_file(rd.path, run_id)
    meta, classes = _meta(model_path)
    task = str(meta.get("task") or "classification")
    if task not in ("classification", "regression"):
        raise RegistryError(f"run {run_id!r} is a {task} model; the API serves classification and regression models")
    preprocessing, columns = _preprocessing(meta, rd.path)
    onnx_path = _onnx(rd.path)
    key = at_rest.load_key(key_file, create=True) if encrypt else None

    mlc = client()
    tracked = _tracked_run(mlc, run_id)
    metrics = _metrics(rd.path, run_id, tracked)
    privacy = _privacy(run_id)
    files = {model_path.name: model_path.read_bytes()}
    if onnx_path is not None:
        files[ONNX_FILE] = onnx_path.read_bytes()
    manifest = {
        "format": FORMAT,
        "run_id": run_id,
        "task": task,
        "classes": classes if task == "classification" else [],
        "model_file": model_path.name,
        "family": str(meta.get("model") or meta.get("family") or ""),
        "onnx": ONNX_FILE if onnx_path is not None else None,
        "input_schema": columns,
        "preprocessing": preprocessing,
        "target_scaling": {"mean": float(meta.get("target_mean", 0.0)), "std": float(meta.get("target_std", 1.0))},
        "metrics": metrics,
        "privacy": privacy,
        "sha256": {n: hashlib.sha256(b).hexdigest() for n, b in files.items()},
    }
    files[MANIFEST] = json.dumps(manifest, indent=1).encode()

    if tracked is None:
        exp = tracking.ensure_experiment(EXPERIMENT)
        tracked = mlc.create_run(exp, run_name=run_id, tags={tracking.RUN_TAG: run_id, "uaap.kind": "registered"})
        mlc.set_terminated(tracked.info.run_id)
    artifact_dir = f"serving-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="uaap-register-") as tmp:
        for fname, data in files.items():
            (Path(tmp) / fname).write_bytes(at_rest.encrypt(data, key, fname) if key is not None else data)
        mlc.log_artifacts(tracked.info.run_id, tmp, artifact_path=artifact_dir)
    runtime = "onnxruntime" if onnx_path is not None else "native"
    tags = {
        TAG_RUN: run_id,
        TAG_TASK: task,
        TAG_RUNTIME: runtime,
        TAG_ENCRYPTED: "true" if key is not None else "false",
        TAG_METRICS: json.dumps(metrics)[:4000],
        TAG_PRIVACY: json.dumps(privacy),
    }
    if key is not None:
        tags[TAG_KEY] = at_rest.fingerprint(key)
    from mlflow.exceptions import MlflowException

    try:
        mlc.get_registered_model(name)
    except MlflowException:
        mlc.create_registered_model(name, description="registered by `uaap register`")
    source = f"{tracked.info.artifact_uri.rstrip('/')}/{artifact_dir}"
    mv = mlc.create_model_version(name, source, run_id=tracked.info.run_id, tags=tags, description=f"run {run_id}")
    if alias is not None:
        mlc.set_registered_model_alias(name, alias, mv.version)
    return Registered(name, str(mv.version), alias, run_id, runtime, key is not None)


def register_spec(spec: str) -> tuple[str, str | None]:
    """``NAME[@ALIAS]`` -> (name, alias or None), both checked."""
    name, _, alias = spec.partition("@")
    check_name(name)
    if alias:
        _check_alias(alias)
    return name, alias or None
