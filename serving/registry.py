"""Reading MLflow's model registry for inference: names and aliases, the version an alias points at, artefacts.

Registering (writing) is the library's (:mod:`uaap.model_registry`, re-exported here for the ``uaap register``
command and the tests).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from uaap.errors import WorkspaceError
from uaap.model_registry import (
    ALIAS,
    EXPERIMENT,
    FORMAT,
    MANIFEST,
    NAME,
    ONNX_FILE,
    TAG_ENCRYPTED,
    TAG_KEY,
    TAG_METRICS,
    TAG_PRIVACY,
    TAG_RUN,
    TAG_RUNTIME,
    TAG_TASK,
    NotRegistered,
    Registered,
    RegistryError,
    check_name,
    client,
    register_run,
    register_spec,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = [
    "ALIAS",
    "EXPERIMENT",
    "FORMAT",
    "MANIFEST",
    "NAME",
    "ONNX_FILE",
    "TAG_ENCRYPTED",
    "TAG_KEY",
    "TAG_METRICS",
    "TAG_PRIVACY",
    "TAG_RUN",
    "TAG_RUNTIME",
    "TAG_TASK",
    "NotRegistered",
    "Registered",
    "RegistryError",
    "catalogue",
    "check_name",
    "client",
    "describe_known",
    "download",
    "register_run",
    "register_spec",
    "resolve",
]


# ---- look up ----------------------------------------------------------------------------------------------------


def catalogue(mlc: MlflowClient) -> dict[str, dict[str, str]]:
    """Every registered name with its aliases (alias -> version)."""
    out: dict[str, dict[str, str]] = {}
    token = None
    while True:
        page = mlc.search_registered_models(max_results=200, page_token=token)
        for rm in page:
            out[rm.name] = {str(a): str(v) for a, v in (rm.aliases or {}).items()}
        token = page.token
        if not token:
            return dict(sorted(out.items()))


def describe_known(mlc: MlflowClient) -> str:
    """``a (@champion -> 2), b (no alias)``: what a 404 names."""
    known = catalogue(mlc)
    if not known:
        return "none registered yet (`uaap register RUN --name NAME --alias champion`)"
    return ", ".join(
        f"{n} ({', '.join(f'@{a} -> v{v}' for a, v in sorted(al.items())) or 'no alias'})" for n, al in known.items()
    )


def resolve(mlc: MlflowClient, name: str, alias: str) -> str:
    """The version ``name@alias`` points at (``alias`` may be ``v<N>`` or ``latest``); :class:`NotRegistered` else."""
    from mlflow.exceptions import MlflowException

    if not NAME.match(name) or not ALIAS.match(alias):
        raise NotRegistered(f"model {name!r}@{alias!r} is not registered; registered: {describe_known(mlc)}")
    try:
        if alias.startswith("v") and alias[1:].isdigit():
            return str(mlc.get_model_version(name, alias[1:]).version)
        if alias == "latest":
            versions = mlc.search_model_versions(f"name = '{name}'")
            if versions:
                return str(max(int(v.version) for v in versions))
            raise NotRegistered(f"model {name!r} has no versions; registered: {describe_known(mlc)}")
        return str(mlc.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        raise NotRegistered(
            f"model {name!r} has no alias or version {alias!r}; registered: {describe_known(mlc)}"
        ) from None


def download(mlc: MlflowClient, name: str, version: str) -> tuple[dict[str, bytes], dict[str, str]]:
    """A version's artefact files (bytes, still encrypted if they were) and its tags."""
    import os

    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar on the API's stderr per load
    mv = mlc.get_model_version(name, version)
    with tempfile.TemporaryDirectory(prefix="uaap-serve-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=tmp))
        files = {p.name: p.read_bytes() for p in local.iterdir() if p.is_file()}
    if MANIFEST not in files:
        raise WorkspaceError(f"model {name!r} version {version} has no {MANIFEST}; was it made by `uaap register`?")
    return files, {str(k): str(v) for k, v in (mv.tags or {}).items()}
