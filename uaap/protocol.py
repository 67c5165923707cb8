"""The wire protocol between UAAP's server and clients: every key that crosses the wire, in one place.

A Flower message is a ``RecordDict`` of named records. UAAP's messages use these names:

server -> client (``configure_train`` / ``configure_evaluate``)
    ``arrays`` (:data:`ARRAYS`)     the global model: plaintext floats, or CKKS ciphertext (:data:`HE_*`)
    ``config`` (:data:`CONFIG`)     Flower's ``server-round`` and ``proximal-mu``, UAAP's run config as
                                    JSON (:data:`RUN_CONFIG`) and, under central DP, :data:`DP_DENOMINATOR`
client -> server (the reply)
    ``arrays``                      the new local model (or its ciphertext)
    ``metrics`` (:data:`METRICS`)   :data:`NUM_EXAMPLES` (FedAvg's weight), :data:`TRAIN_LOSS`, ...
    ``client-info`` (:data:`CLIENT_INFO`)  :data:`PARTITION_ID`, what the client says it holds

Client, server and strategies import these names; nothing else defines one. A test greps the other
packages for the literals so a second definition cannot creep back in.
"""

from __future__ import annotations

import math
from typing import Final

# ---- records of a message -------------------------------------------------------------------------
ARRAYS: Final = "arrays"
CONFIG: Final = "config"
METRICS: Final = "metrics"
CLIENT_INFO: Final = "client-info"

# ---- config entries (server -> client) -------------------------------------------------------------
SERVER_ROUND: Final = "server-round"  # set by Flower's strategies
PROXIMAL_MU: Final = "proximal-mu"  # set by Flower's FedProx
RUN_CONFIG: Final = "uaap-config"  # uaap.config.RunConfig as JSON
DP_DENOMINATOR: Final = "dp-denominator"  # central DP: q * N, the fixed denominator of the estimator
# a raw table's preprocessing, fitted before round 1 from the clients' summed statistics (uaap.data.preprocess)
PREPROCESSOR: Final = "uaap-preprocessor"  # the fitted plan as JSON, in every train/evaluate config
PREPROCESS: Final = "preprocess"  # the action of the query that asks a client for one stage's statistics
PREPROCESS_REQUEST: Final = "preprocess-request"  # the stage's request as JSON (server -> client)
PREPROCESS_STATS: Final = "preprocess-stats"  # the client's statistics of its own rows as JSON (the reply)
# federated audits of a finished run's model (explanations, fairness, drift: server/audit.py, client/audit.py)
AUDIT: Final = "audit"  # the action of the query that asks a client for an audit's sums over its own rows
AUDIT_REQUEST: Final = "audit-request"  # what to compute, as JSON (server -> client)
AUDIT_ANSWER: Final = "audit-answer"  # the client's plaintext sums as JSON (the reply)
AUDIT_SUMS: Final = "audit-sums"  # the client's additive sums as one CKKS ciphertext (secure aggregation)
# the run's last message (a query): how it ended, so that flower-client can exit 0 instead of waiting for a lost server
RUN_END: Final = "run-end"  # "completed", "stopped" or "failed"
RUN_END_RUN: Final = "run-end-run"
RUN_END_REASON: Final = "run-end-reason"

# ---- client-info entries (client -> server) --------------------------------------------------------
PARTITION_ID: Final = "partition-id"  # also the simulation's node-config key

# ---- metric entries --------------------------------------------------------------------------------
NUM_EXAMPLES: Final = "num-examples"  # FedAvg's weight (Flower's default ``weighted_by_key``)
TRAIN_LOSS: Final = "train-loss"
STEPS: Final = "steps"
STRAGGLER: Final = "straggler"
LOSS: Final = "loss"
ACCURACY: Final = "accuracy"
F1_MACRO: Final = "f1_macro"
F1_WEIGHTED: Final = "f1_weighted"
PRECISION_MACRO: Final = "precision_macro"
RECALL_MACRO: Final = "recall_macro"
AUC: Final = "auc"
# evaluation replies carry sums, not ratios (uaap.metrics): the server computes the metrics from their total
CONFUSION: Final = "confusion"  # K x K counts, row-major (true class, predicted class)
LOSS_SUM: Final = "loss-sum"
SCORE_HIST_POS: Final = "score-hist-pos"  # two classes: histogram of P(class 1) over the positive rows
SCORE_HIST_NEG: Final = "score-hist-neg"
# regression: the sums behind MSE, RMSE, MAE and R2 (targets and errors in the target's own units)
Y_SUM: Final = "y-sum"  # sum of the true targets (less the federation's train mean: uaap.metrics)
Y2_SUM: Final = "y2-sum"  # sum of their squares
SSE: Final = "sq-error-sum"  # sum of squared errors
SAE: Final = "abs-error-sum"  # sum of absolute errors
MSE: Final = "mse"
RMSE: Final = "rmse"
MAE: Final = "mae"
R2: Final = "r2"
# forecasting (task=forecast): each client's horizon forecast of its series' held-out tails, as sums (uaap.forecast)
FORECAST_N: Final = "forecast-n"  # forecast points scored
FORECAST_ABS: Final = "forecast-abs-error-sum"  # sum of |actual - forecast|
FORECAST_SQ: Final = "forecast-sq-error-sum"  # sum of squared errors
FORECAST_SMAPE: Final = "forecast-smape-sum"  # sum of the sMAPE terms 2|e| / (|y| + |yhat|), each in [0, 2]
FORECAST_SCALED: Final = "forecast-scaled-error-sum"  # sum of |e| over each series' MASE scale
# anomaly detection: histograms of the rows' reconstruction errors over fixed log bins (uaap.metrics), per label
ERROR_SUM: Final = "error-sum"  # sum of the rows' reconstruction errors (the loss's numerator)
ERROR_HIST_NORMAL: Final = "error-hist-normal"  # rows labelled normal (0): their quantile is the threshold
ERROR_HIST_ANOMALY: Final = "error-hist-anomaly"  # rows labelled anomalous (1)
THRESHOLD: Final = "threshold"  # the reconstruction error above which a row is flagged
PRECISION: Final = "precision"  # of the anomaly flag
RECALL: Final = "recall"
F1: Final = "f1"
# example-level DP-SGD: this round's release, as the client reports it (uaap.privacy.dpsgd.client_report)
DP_SIGMA: Final = "dp-sigma"
DP_Q: Final = "dp-q"
DP_STEPS: Final = "dp-steps"
DP_TOTAL_STEPS: Final = "dp-total-steps"
DP_EPSILON: Final = "dp-epsilon"
DP_RELEASE: Final = frozenset({DP_SIGMA, DP_Q, DP_STEPS, DP_TOTAL_STEPS, DP_EPSILON})
# secure aggregation: the plaintext weight a client's ciphertext is pre-multiplied by
HE_WEIGHT: Final = "he-weight"
# server-side round metrics (aggregated train metrics)
REJECTED_REPLIES: Final = "rejected-replies"
STRAGGLERS_DROPPED: Final = "stragglers-dropped"  # straggler-policy drop (strategies.stragglers)
HE_CLIENTS: Final = "he-clients"
HE_REJECTED: Final = "he-rejected"
# (the round's total weight is reported under HE_TOTAL_WEIGHT, the same name as in the record)
DP_SAMPLED: Final = "dp-sampled"
DP_NOISE_STD: Final = "dp-noise-std"
DP_EXAMPLE_EPSILON_MAX: Final = "dp-example-epsilon-max"

# ---- entries of an encrypted ArrayRecord (uaap.crypto's wire format) --------------------------------
HE_FINGERPRINT: Final = "he-fingerprint"  # SHA-256 of the public context, ASCII hex
HE_HEADER: Final = "he-header"  # UTF-8 JSON: format, n_values, n_ciphertexts, shapes, dtypes, modulus
HE_TOTAL_WEIGHT: Final = "he-total-weight"  # one float64: the plaintext weight the ciphertext sums over
HE_CHUNK_PREFIX: Final = "he-ct-"  # he-ct-0000, he-ct-0001, ...: ciphertext coefficient chunks

# ---- node config keys (flower-client / simulation -> ClientApp) -------------------------------------
NODE_PARTITION_ID: Final = PARTITION_ID
NODE_NUM_PARTITIONS: Final = "num-partitions"
NODE_DATA_PATH: Final = "data-path"
NODE_TARGET: Final = "target"
NODE_DATA_TABLE: Final = "data-table"  # when data-path is a database URL
NODE_HE_SECRET_CONTEXT: Final = "he-secret-context"
# a deployed client's own requirements (client.policy): the server cannot lower them
NODE_POLICY: Final = "policy"
NODE_REQUIRE_SECURE: Final = "require-secure-aggregation"
NODE_REQUIRE_DP: Final = "require-dp"
NODE_MAX_EPSILON: Final = "max-epsilon"
NODE_STATUS_FILE: Final = "status-file"  # where the ClientApp writes the run-end message for flower-client


# ---- reading values off the wire ------------------------------------------------------------------
def as_float(value: object, key: str) -> float:
    """``value`` (a record entry) as a finite float, or a ValueError naming ``key`` and what came."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key}={value!r:.80}: expected a finite number")
    return float(value)


def as_int(value: object, key: str) -> int:
    """``value`` (a record entry) as an int (integral floats allowed), or a ValueError naming ``key``."""
    number = as_float(value, key)
    if not number.is_integer():
        raise ValueError(f"{key}={value!r:.80}: expected a whole number")
    return int(number)


# ---- SecAgg+ (strategies.secagg, client.secagg): the stage record of a training message and its reply ----------
SECAGG: Final = "secagg"  # ConfigRecord of a SecAgg+ stage (server -> client and back)
SECAGG_STAGE: Final = "secagg-stage"
STAGE_SETUP: Final = "setup"
STAGE_SHARE_KEYS: Final = "share-keys"
STAGE_COLLECT: Final = "collect-masked-vectors"
STAGE_UNMASK: Final = "unmask"
SECAGG_ROUND: Final = "secagg-round"
SECAGG_THRESHOLD: Final = "secagg-threshold"
SECAGG_NODES: Final = "secagg-nodes"  # share keys: the neighbourhood; unmask: the neighbours whose vectors are summed
SECAGG_DEAD: Final = "secagg-dead"  # unmask: the neighbours that dropped after sharing their keys
SECAGG_PK1: Final = "secagg-pk1"  # masking public key(s) (PEM)
SECAGG_PK2: Final = "secagg-pk2"  # envelope public key(s) (PEM)
SECAGG_DESTINATIONS: Final = "secagg-destinations"
SECAGG_SOURCES: Final = "secagg-sources"
SECAGG_CIPHERTEXTS: Final = "secagg-envelopes"
SECAGG_SHARES: Final = "secagg-shares"
SECAGG_NOISE_COUNT: Final = "secagg-noise-count"  # central DP: the m clients asked to mask (each adds 1/m of it)
SECAGG_MASKED: Final = "secagg-masked"  # the one array of a masked reply: uint64 parameters, then the weight
# server-side round metrics under SecAgg+
SECAGG_CLIENTS: Final = "secagg-clients"
SECAGG_DROPPED: Final = "secagg-dropped"
SECAGG_TOTAL_WEIGHT: Final = "secagg-total-weight"
SECAGG_ERROR_BOUND: Final = "secagg-error-bound"  # per coordinate, from the quantisation
