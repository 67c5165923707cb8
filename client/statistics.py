"""A client's round of a family fitted from summed statistics (K-Means, PCA): its rows' statistics, never a row.

The global arrays are the previous round's totals (:mod:`uaap.models.summed`): plaintext, or under secure
aggregation a CKKS sum this client decrypts with its secret context (round 1's arrays are plaintext). The reply
carries this client's statistics as plaintext arrays, or encrypted with weight 1 so that the server's
ciphertext sum is the plain total. Its metrics are those every training reply carries (``num-examples``, its
inertia per row as ``train-loss``, no steps, no straggling) so that reply validation treats it like any other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from uaap import crypto
from uaap.errors import ConfigError
from uaap.models import from_record, to_record
from uaap.models.summed import Arrays, KMeansRounds, PCARounds, as_arrays, check_ckks_range, decrypt_totals, rounds_of
from uaap.protocol import (
    ARRAYS,
    CLIENT_INFO,
    HE_WEIGHT,
    METRICS,
    NUM_EXAMPLES,
    PARTITION_ID,
    STEPS,
    STRAGGLER,
    TRAIN_LOSS,
)

if TYPE_CHECKING:
    from flwr.app import Context

    from uaap.config import RunConfig
    from uaap.data import Split


def _family(cfg: RunConfig) -> KMeansRounds | PCARounds:
    family = rounds_of(cfg.model)
    if family is None:
        raise ConfigError(f"strategy 'fedstats' sums the statistics of model kmeans or pca, not model={cfg.model!r}")
    return family


def received_totals(cfg: RunConfig, content: RecordDict, context: Context) -> Arrays:
    """The global totals of a server message, decrypted under secure aggregation (raw sums, not averages)."""
    family = _family(cfg)
    record = content.array_records[ARRAYS]
    if crypto.is_encrypted(record):
        if not cfg.secure:
            raise crypto.CiphertextError("the server sent ciphertext but this run has secure aggregation off")
        return as_arrays(family, decrypt_totals(record, crypto.client_context(cfg, context.node_config)))
    return as_arrays(family, from_record(record))


def train_statistics(cfg: RunConfig, data: Split, pid: int, msg: Message, context: Context) -> Message:
    """Reply with this client's statistics for the received totals (the run's model decides which)."""
    family = _family(cfg)
    X = np.asarray(data.train.X, dtype=np.float64)
    stats, loss = family.local(cfg, X, received_totals(cfg, msg.content, context))
    values = [stats[name] for name in family.names]
    metrics = MetricRecord({NUM_EXAMPLES: len(X), TRAIN_LOSS: float(loss), STEPS: 0, STRAGGLER: 0})
    arrays: ArrayRecord
    if cfg.secure:
        check_ckks_range(cfg.model, values, cfg.num_clients)
        hctx = crypto.client_context(cfg, context.node_config)
        arrays = crypto.encrypt_weights(values, 1.0, hctx, max_summands=cfg.num_clients)
        metrics[HE_WEIGHT] = 1.0
    else:
        arrays = to_record(values)
    content = RecordDict({ARRAYS: arrays, METRICS: metrics, CLIENT_INFO: ConfigRecord({PARTITION_ID: pid})})
    return Message(content=content, reply_to=msg)
