"""The workspace: one folder holds everything a run leaves.

Layout (default ``./.uaap``, or ``$UAAP_HOME``)::

    mlflow.db                 MLflow tracking store (sqlite; MLFLOW_TRACKING_URI overrides)
    mlartifacts/              MLflow artifacts of the experiments UAAP creates in that store
    ledger.db                 privacy ledger
    runs/<run-id>/config.json resolved run configuration
                  config.toml   the same as a config file (`uaap simulate --config` it to repeat the run)
                  metrics.jsonl one JSON event per line (rounds, evaluations, summaries)
                  checkpoints/round-NNNN.npz global model (ciphertext under HE) + loop state (AES-256-GCM
                                             with encrypt-checkpoints)
                  model.npz     the final plaintext model
                  exports/      edge bundles
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from uaap.config import RunConfig
from uaap.errors import WorkspaceError

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger("uaap.workspace")
_STATE_KEY = "__state__"


def home() -> Path:
    """The workspace root (``$UAAP_HOME`` or ``./.uaap``), created on demand."""
    path = Path(os.environ.get("UAAP_HOME", ".uaap")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_run_id(prefix: str = "run") -> str:
    """A sortable, unique run id such as ``run-20261128-231500-3fa2``."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class Checkpoint:
    """The global model after ``round`` plus whatever loop state the server must resume."""

    round: int
    arrays: dict[str, np.ndarray]
    state: dict[str, Any]


@dataclass(frozen=True)
class RunDir:
    """The folder of one run and the files in it."""

    path: Path

    @property
    def run_id(self) -> str:
        """The run's id (its folder name)."""
        return self.path.name

    @property
    def config_file(self) -> Path:
        """Resolved configuration (JSON)."""
        return self.path / "config.json"

    @property
    def metrics_file(self) -> Path:
        """One JSON event per line."""
        return self.path / "metrics.jsonl"

    @property
    def model_file(self) -> Path:
        """The final plaintext model."""
        return self.path / "model.npz"

    @property
    def checkpoint_dir(self) -> Path:
        """Per-round checkpoints."""
        return self.path / "checkpoints"

    @property
    def exports_dir(self) -> Path:
        """Edge bundles."""
        return self.path / "exports"

    # ---- config ------------------------------------------------------------------------
    def write_config(self, cfg: RunConfig) -> None:
        """Store the resolved configuration (JSON, read on resume) and a config file that repeats the run."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(json.loads(cfg.to_json()), indent=2, sort_keys=True) + "\n")
        header = (
            f"# Settings of run {self.run_id} as resolved, run-id left out. Repeat the run under a new id with\n"
            f"# the command that started it, e.g.  uaap simulate --config {self.path / 'config.toml'}\n\n"
        )
        names = tuple(n for n in type(cfg).model_fields if n != "run_id")
        (self.path / "config.toml").write_text(header + cfg.to_toml(names))

    def read_config(self) -> RunConfig:
        """The configuration the run was started with."""
        if not self.config_file.is_file():
            raise WorkspaceError(f"run {self.run_id!r} has no config.json in {self.path}; was it started?")
        return RunConfig.from_json(self.config_file.read_text())

    # ---- metrics -----------------------------------------------------------------------
    def log_event(self, kind: str, **values: Any) -> None:
        """Append one event (``kind`` plus values) to ``metrics.jsonl``."""
        self.path.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"kind": kind, "time": time.time(), **values}, default=_json_default)
        with open(self.metrics_file, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every event logged so far (optionally only one kind)."""
        return [e for e in iter_events(self.metrics_file) if kind is None or e["kind"] == kind]

    # ---- checkpoints -------------------------------------------------------------------
    def save_checkpoint(self, ckpt: Checkpoint, *, encrypt: bool = False) -> Path:
        """Write a checkpoint atomically (a crash never leaves half a file); with ``encrypt``, AES-256-GCM
        encrypted with the at-rest key (:mod:`uaap.at_rest`), bound to this run and round."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"round-{ckpt.round:04d}.npz"
        state = json.dumps({"round": ckpt.round, **ckpt.state}, default=_json_default)
        # Any: numpy's stub would match **payload against savez's `allow_pickle: bool` as well
        payload: dict[str, Any] = {**ckpt.arrays, _STATE_KEY: np.frombuffer(state.encode(), dtype=np.uint8)}
        if not encrypt:
            _atomic_write(path, lambda fh: np.savez(fh, **payload))
            return path
        from uaap import at_rest

        buffer = io.BytesIO()
        np.savez(buffer, **payload)
        blob = at_rest.encrypt(buffer.getvalue(), at_rest.load_key(create=True), self._artefact(path))
        _atomic_write(path, lambda fh: fh.write(blob))
        return path

    def latest_checkpoint(self) -> Checkpoint | None:
        """The checkpoint of the highest round, or None for a fresh run (an encrypted one is decrypted in memory)."""
        files = sorted(self.checkpoint_dir.glob("round-*.npz")) if self.checkpoint_dir.is_dir() else []
        if not files:
            return None
        blob = files[-1].read_bytes()
        from uaap import at_rest

        if at_rest.is_encrypted(blob):
            blob = at_rest.decrypt(blob, at_rest.load_key(), self._artefact(files[-1]))
        with np.load(io.BytesIO(blob)) as npz:
            state = json.loads(bytes(npz[_STATE_KEY]).decode())
            arrays = {k: npz[k] for k in npz.files if k != _STATE_KEY}
        return Checkpoint(round=int(state.pop("round")), arrays=arrays, state=state)

    def _artefact(self, path: Path) -> str:
        # The name an encrypted checkpoint is bound to: another run's or another round's file is refused
        return f"checkpoint:{self.run_id}/{path.name}"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def iter_events(path: Path) -> Iterator[dict[str, Any]]:
    """Read ``metrics.jsonl`` events; a half-written last line is skipped, not fatal."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def run_dir(run_id: str) -> RunDir:
    """The folder of ``run_id`` (not created)."""
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise WorkspaceError(f"run id {run_id!r} is not a valid run id; list runs with `uaap runs`")
    return RunDir(home() / "runs" / run_id)


def existing_run(run_id: str) -> RunDir:
    """The folder of an existing run, or a clear error listing the runs that exist."""
    rd = run_dir(run_id)
    if not rd.config_file.is_file():
        known = list_runs()
        listing = ", ".join(known[-5:]) if known else "none yet"
        raise WorkspaceError(f"run {run_id!r} does not exist in {home() / 'runs'}; recent runs: {listing}")
    return rd


def list_runs() -> list[str]:
    """Run ids in the workspace, oldest first."""
    root = home() / "runs"
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file()) if root.is_dir() else []


# ---- plaintext models ------------------------------------------------------------------------


def save_model(
    path: Path,
    model_name: str,
    weights: list[np.ndarray],
    *,
    n_features: int,
    n_classes: int,
    image_shape: tuple[int, int, int] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save a registry model (weights + how to rebuild it) as one ``.npz`` file."""
    meta = {
        "format": "uaap-model/1",
        "model": model_name,
        "n_features": n_features,
        "n_classes": n_classes,
        "image_shape": list(image_shape) if image_shape else None,
        **(extra or {}),
    }
    # Any: numpy's stub would match **payload against savez's `allow_pickle: bool` as well
    payload: dict[str, Any] = {f"w{i:04d}": w for i, w in enumerate(weights)}
    payload["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda fh: np.savez(fh, **payload))
    return path


def load_model(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_model`; returns the module and its metadata."""
    if not Path(path).is_file():
        raise WorkspaceError(f"model file {str(path)!r} does not exist")
    return _model_from_npz(path, str(path))


def load_model_bytes(data: bytes, label: str) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_model` from the file's bytes (a model decrypted in memory); ``label`` names it in errors."""
    import io

    return _model_from_npz(io.BytesIO(data), label)


def _model_from_npz(source: Path | BinaryIO, label: str) -> tuple[nn.Module, dict[str, Any]]:
    from uaap.models import build_model, set_weights

    try:
        npz = np.load(source)
    except (OSError, ValueError) as exc:
        raise WorkspaceError(f"{label} is not a readable UAAP model file ({exc})") from exc
    with npz:
        if "__meta__" not in npz.files:
            raise WorkspaceError(f"{label} is not a UAAP model file (no metadata); was it written by `uaap`?")
        meta = json.loads(bytes(npz["__meta__"]).decode())
        weights = [npz[k] for k in sorted(k for k in npz.files if k.startswith("w"))]
    shape = tuple(meta["image_shape"]) if meta.get("image_shape") else None
    model = build_model(meta["model"], meta["n_features"], meta["n_classes"], shape)
    set_weights(model, weights)
    model.eval()
    return model, meta


# ---- scikit-learn / XGBoost estimators -------------------------------------------------------


ESTIMATOR_FILE = "model.skops"
LEGACY_ESTIMATOR_FILE = "model.joblib"  # pickle: loaded only with trust_pickle
# What an estimator file may instantiate: skops rebuilds only these types, never an arbitrary callable.
TRUSTED_MODULES = ("sklearn.", "xgboost.", "numpy.", "scipy.", "uaap.")
# Types trusted one by one: LightGBM's and CatBoost's estimators rebuild their boosters from the library's own
# model text / binary (their __setstate__), not from a pickle.
TRUSTED_TYPES = (
    "collections.OrderedDict",
    "lightgbm.basic.Booster",
    "lightgbm.sklearn.LGBMClassifier",
    "lightgbm.sklearn.LGBMRegressor",
    "catboost.core.CatBoostClassifier",
    "catboost.core.CatBoostRegressor",
)


def save_estimator(path: Path, estimator: Any, meta: dict[str, Any]) -> Path:
    """Save a fitted scikit-learn-compatible estimator (incl. XGBoost) with its metadata, in skops' format.

    ``meta`` should carry at least ``family``, ``n_features``, ``n_classes`` and ``feature_names``. skops
    stores the estimator as data (no pickle), so loading it cannot run code (:func:`load_estimator`).
    """
    import skops.io as sio

    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": "uaap-estimator/2", "estimator": estimator, "meta": meta}
    _atomic_write(path, lambda fh: fh.write(sio.dumps(payload)))
    return path


def load_estimator(path: Path, *, trust_pickle: bool = False) -> tuple[Any, dict[str, Any]]:
    """Inverse of :func:`save_estimator`: the estimator and its metadata.

    A ``.skops`` file may hold only types from scikit-learn, XGBoost, NumPy, SciPy and UAAP (and the LightGBM and
    CatBoost estimators of :data:`TRUSTED_TYPES`); anything else is
    refused before it is built. A ``.joblib`` file (written by UAAP before 0.2) is a pickle, which runs
    whatever code it holds when loaded: it is refused unless ``trust_pickle`` says the file is your own.
    """
    path = Path(path)
    if not path.is_file():
        raise WorkspaceError(f"estimator file {str(path)!r} does not exist")
    if path.suffix == ".joblib":
        if not trust_pickle:
            raise WorkspaceError(
                f"{path} is a pickle (joblib) file: loading it runs any code it holds, so a file from a shared "
                "folder could take over this account. Pass --trust-pickle only for a file your own run wrote; "
                "new runs save model.skops, which needs no trust"
            )
        import joblib

        log.warning("loading the pickle %s because --trust-pickle was given: it can run code", path)
        payload = joblib.load(path)
    else:
        return load_estimator_bytes(path.read_bytes(), str(path))
    return _estimator_payload(payload, str(path))


def load_estimator_bytes(data: bytes, label: str) -> tuple[Any, dict[str, Any]]:
    """:func:`load_estimator` of a ``.skops`` file's bytes (decrypted in memory), with the same type checks."""
    import skops.io as sio

    try:
        types = sio.get_untrusted_types(data=data)
    except Exception as exc:  # not a skops archive (zip) or a damaged one
        raise WorkspaceError(f"{label} is not a readable skops estimator file ({exc})") from exc
    foreign = [t for t in types if not t.startswith(TRUSTED_MODULES) and t not in TRUSTED_TYPES]
    if foreign:
        raise WorkspaceError(
            f"{label} would build types outside scikit-learn, XGBoost, LightGBM, CatBoost, NumPy, SciPy and UAAP: "
            f"{foreign[:5]}; "
            "refusing to load it (a crafted file can name any callable)"
        )
    return _estimator_payload(sio.loads(data, trusted=types), label)


def _estimator_payload(payload: Any, label: str) -> tuple[Any, dict[str, Any]]:
    if not isinstance(payload, dict) or payload.get("format") not in ("uaap-estimator/1", "uaap-estimator/2"):
        raise WorkspaceError(f"{label} is not a UAAP estimator file; was it written by `uaap automl`?")
    return payload["estimator"], payload["meta"]
