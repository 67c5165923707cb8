"""Anomaly detection with a saved autoencoder: the threshold travels with the model and flags new rows.

The threshold is chosen on validation data, never on the rows it is judged on: federated, from the last round's
summed validation error histograms (``uaap.metrics.anomaly_from_counts``, in the round log); central, from a
validation part held out of the training split. :func:`threshold_meta` puts it into a saved model's metadata,
:func:`detect` flags rows with it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.errors import WorkspaceError
from uaap.protocol import THRESHOLD

log = logging.getLogger("uaap.anomaly")

if TYPE_CHECKING:
    from torch import nn

    from uaap.workspace import RunDir


def threshold_meta(rd: RunDir, task: str) -> dict[str, Any]:
    """``{"threshold": t}`` for an anomaly run's model: the last round's federated threshold ({} for other tasks)."""
    if task != "anomaly":
        return {}
    chosen = [e["evaluate"][THRESHOLD] for e in rd.events("round") if THRESHOLD in (e.get("evaluate") or {})]
    if not chosen:  # the model is still saved: detect() refuses it, saying why
        log.warning(
            "run %s evaluated no round on the clients' validation rows, so its model has no anomaly threshold; "
            "run it with fraction-evaluate > 0",
            rd.run_id,
        )
        return {}
    return {THRESHOLD: float(chosen[-1])}


def detect(model: nn.Module, meta: dict[str, Any], X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's reconstruction error and anomaly flag (1 above the saved model's threshold)."""
    from uaap.training import reconstruction_errors

    if meta.get("task") != "anomaly" or THRESHOLD not in meta:
        raise WorkspaceError(
            f"model {meta.get('model')!r} (task {meta.get('task')!r}) has no anomaly threshold; detect() takes a "
            "model trained with --task anomaly whose run evaluated on validation rows (fraction-evaluate > 0)"
        )
    errors = reconstruction_errors(model, np.asarray(X, dtype=np.float32))
    return errors, (errors > float(meta[THRESHOLD])).astype(np.int64)
