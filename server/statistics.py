"""The server's side of families fitted from summed statistics (K-Means, PCA), beside the generic round loop.

The loop (``server/federation.py``) asks here for round 1's arrays, the held-out evaluation of a plaintext
run's totals, and the final model, which is saved as a scikit-learn estimator (``model.skops``, as AutoML's
are) with the data's metadata. Under secure aggregation the totals stay ciphertext in the checkpoints: a key
holder makes the model with ``uaap keys decrypt-model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap import workspace
from uaap.models import from_record, to_record
from uaap.models.summed import as_arrays, evaluate, rounds_of, save_model
from uaap.protocol import NUM_EXAMPLES

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, MetricRecord

    from uaap.config import RunConfig
    from uaap.data import Dataset


def _family(cfg: RunConfig) -> Any:
    family = rounds_of(cfg.model)
    if family is None:
        raise ValueError(f"model={cfg.model!r} is not fitted from summed statistics")
    return family


def initial_totals(cfg: RunConfig, rows: Dataset) -> ArrayRecord:
    """Round 1's global arrays (K-Means: centroids seeded from the server's held-out ``rows``)."""
    family = _family(cfg)
    initial = family.initial(cfg, np.asarray(rows.X, dtype=np.float64))
    return to_record([initial[name] for name in family.names])


def model_from_totals(cfg: RunConfig, arrays: ArrayRecord | list[np.ndarray], rounds: int) -> Any:
    """The fitted estimator a round's plaintext totals give."""
    family = _family(cfg)
    values = from_record(arrays) if not isinstance(arrays, list) else arrays
    return family.estimator(cfg, as_arrays(family, values), rounds)


def evaluator(cfg: RunConfig, test: Dataset) -> Any:
    """``evaluate_fn(round, arrays)`` on the server's held-out rows (inertia, silhouette, explained variance)."""
    from flwr.app import MetricRecord

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if server_round == 0 and cfg.model == "pca":
            return MetricRecord({})  # PCA's round 1 arrays are a layout, not a model
        model = model_from_totals(cfg, arrays, server_round)
        return MetricRecord({**evaluate(model, test.X, _labels(test)), NUM_EXAMPLES: len(test.X)})

    return evaluate_fn


def _labels(data: Dataset) -> np.ndarray | None:
    return None if data.regression else data.y


def save_final(rd: workspace.RunDir, cfg: RunConfig, arrays: ArrayRecord, rounds: int, meta: Dataset) -> Path:
    """Save the final model of a plaintext run as ``model.skops`` in the run folder; returns its path."""
    return save_model(rd, cfg, from_record(arrays), rounds, meta)
