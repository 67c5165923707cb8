"""The UAAP ClientApp: ``clientapp = "client.app:app"`` in pyproject's ``[tool.flwr.app]``.

The server sends the validated run config with every message; the node's own config says which
data it holds (``partition-id``/``num-partitions`` in simulation). Simulated ClientApps are rebuilt
for every message, so data loading is cached per process and state lives in ``context.state``.

One round on the client::

    receive_global   plaintext arrays, or CKKS ciphertext decrypted with the secret context
    local_train      FedProx term, stragglers' partial work, DP-SGD when dp-local is on
    prepare_update   clip the update (central DP), pre-weight and encrypt (secure aggregation)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.policy import ClientPolicy, check_spent, enforce
from uaap import attacks, crypto
from uaap.config import RunConfig
from uaap.data import Split, client_data, load_split
from uaap.errors import ConfigError
from uaap.models import build_model, from_record, get_weights, set_weights, to_record
from uaap.privacy import dpsgd
from uaap.privacy.clip import clip_update
from uaap.protocol import (
    ARRAYS,
    AUDIT,
    CLIENT_INFO,
    CONFIG,
    DP_DENOMINATOR,
    DP_EPSILON,
    HE_WEIGHT,
    METRICS,
    NODE_DATA_PATH,
    NODE_DATA_TABLE,
    NODE_NUM_PARTITIONS,
    NODE_PARTITION_ID,
    NODE_STATUS_FILE,
    NODE_TARGET,
    NUM_EXAMPLES,
    PARTITION_ID,
    PREPROCESS,
    PREPROCESS_REQUEST,
    PREPROCESS_STATS,
    PREPROCESSOR,
    PROXIMAL_MU,
    RUN_CONFIG,
    RUN_END,
    RUN_END_REASON,
    RUN_END_RUN,
    SECAGG,
    SERVER_ROUND,
    STEPS,
    STRAGGLER,
    TRAIN_LOSS,
    as_float,
    as_int,
)
from uaap.threads import client_threads, size_torch_threads
from uaap.training import PrivacyEngineLike, TrainConfig, evaluate_counts, local_train

log = logging.getLogger("uaap.client")
torch.set_num_threads(1)  # until a message sizes it from the client's reservation (uaap.threads.client_threads)

app = ClientApp()


def _run_config(msg: Message, context: Context) -> RunConfig:
    """The run config as this client runs it: its policy applied, its own table when it has one."""
    cfg = RunConfig.from_json(str(msg.content.config_records[CONFIG][RUN_CONFIG]))
    cfg = enforce(cfg, ClientPolicy.from_node_config(context.node_config))
    node = context.node_config
    if node.get(NODE_DATA_PATH):  # a deployed client's own table (flower-client --data/--target)
        cfg = cfg.replace(
            dataset="csv", data_path=str(node[NODE_DATA_PATH]), target=str(node.get(NODE_TARGET, cfg.target))
        )
    return cfg


def _setup(msg: Message, context: Context) -> tuple[RunConfig, Split, int]:
    """The run config as this client runs it and its data, through the federation's preprocessing plan."""
    cfg = _run_config(msg, context)
    plan = str(msg.content.config_records[CONFIG].get(PREPROCESSOR, ""))
    # a server that fits no plan (its own data is bundled, or it is older; time series need none)
    if cfg.dataset == "csv" and not plan and cfg.task != "forecast":
        log.warning("the server sent no preprocessing plan: this client fits one on its own rows, which other "
                    "clients do not share; give the server the table's schema (flower-server --data)")  # fmt: skip
    pid = int(context.node_config.get(NODE_PARTITION_ID, 0))
    if context.node_config.get(NODE_DATA_PATH):
        return cfg, load_split(cfg, plan), pid  # split locally into train/validation, the federation's plan
    num = int(context.node_config.get(NODE_NUM_PARTITIONS, cfg.num_clients))
    return cfg, client_data(cfg, pid, num, plan), pid


@app.query(PREPROCESS)
def preprocess_statistics(msg: Message, context: Context) -> Message:
    """One preprocessing stage: the statistics of this client's own rows (never a row; client/preprocess.py)."""
    from client.preprocess import answer

    request = str(msg.content.config_records[CONFIG].get(PREPROCESS_REQUEST, ""))
    text = answer(request, _run_config(msg, context), context)
    return Message(content=RecordDict({CONFIG: ConfigRecord({PREPROCESS_STATS: text})}), reply_to=msg)


@app.query(AUDIT)
def audit_sums(msg: Message, context: Context) -> Message:
    """A federated audit of the run's final model: sums over this client's own rows (never a row; client/audit.py)."""
    from client.audit import answer

    size_torch_threads(client_threads())
    return answer(msg, context, _run_config(msg, context))


def straggler_steps(cfg: RunConfig, server_round: int, pid: int, full_steps: int) -> int | None:
    """Steps a straggler manages this round (FedProx paper: partial work), or None for full work."""
    if cfg.straggler_fraction <= 0.0 or full_steps < 2:
        return None
    rng = np.random.default_rng([cfg.seed, server_round, pid])
    if rng.random() >= cfg.straggler_fraction:
        return None
    return int(rng.integers(1, full_steps))


def maybe_poison(
    cfg: RunConfig, new: list[np.ndarray], start: list[np.ndarray], server_round: int, pid: int, context: Context
) -> list[np.ndarray]:
    """A simulated malicious client's poisoned weights (uaap.attacks), else ``new`` unchanged.

    Only partitions of a simulation attack: a deployed client (its own table) never does, whatever the run says.
    """
    if cfg.malicious_fraction <= 0 or context.node_config.get(NODE_DATA_PATH):
        return new
    if pid not in attacks.malicious_partitions(cfg):
        return new
    return attacks.poison(cfg.attack, new, start, cfg.attack_scale, attacks.attack_rng(cfg, server_round, pid))


def receive_global(cfg: RunConfig, content: RecordDict, context: Context, like: list[np.ndarray]) -> list[np.ndarray]:
    """The global model's weights from a server message (decrypting them under HE), shaped as ``like``.

    The layout comes from the local model, never from the message: a ciphertext header or an array that
    declares other shapes or sizes is refused before anything is allocated for it.
    """
    record = content.array_records[ARRAYS]
    if cfg.secure and crypto.is_encrypted(record):  # round 1's initial model is plaintext
        return crypto.decrypt_global(record, crypto.client_context(cfg, context.node_config), like=like)
    if crypto.is_encrypted(record):
        raise crypto.CiphertextError("the server sent ciphertext but this run has secure aggregation off")
    shapes = [tuple(int(d) for d in a.shape) for a in record.values()]
    if shapes != [w.shape for w in like] or any(
        a.dtype not in ("float16", "float32", "float64") for a in record.values()
    ):
        raise ValueError(f"the server's model has arrays {shapes}; this client's model has {[w.shape for w in like]}")
    return from_record(record)


def local_privacy(cfg: RunConfig, data: Split, context: Context) -> PrivacyEngineLike | None:
    """The DP-SGD session for this client when example-level DP is on (accountant kept in ``context.state``)."""
    if not cfg.dp_local:
        return None
    return dpsgd.client_engine(cfg, len(data.train.y), context.state, dp_state_key(context))


def dp_state_key(context: Context) -> str:
    """The name this client's DP-SGD history is kept under (``$UAAP_HOME/clients/<run-id>/<key>/``).

    A data owner's budget belongs to its table: the key hashes the table's source (path or URL, table,
    target), so clients sharing a workspace never read each other's history, and a restarted client finds
    its own whatever node id it comes back with. The hash keeps a database URL's password out of the path.
    A simulated client is its partition.
    """
    node = context.node_config
    if node.get(NODE_DATA_PATH):
        source = "\n".join(str(node.get(k, "")) for k in (NODE_DATA_PATH, NODE_DATA_TABLE, NODE_TARGET))
        return "data-" + hashlib.sha256(source.encode()).hexdigest()[:16]
    return f"partition-{int(node.get(NODE_PARTITION_ID, 0))}"


def prepare_update(
    cfg: RunConfig,
    new: list[np.ndarray],
    start: list[np.ndarray],
    num_examples: int,
    context: Context,
    denominator: float | None = None,
) -> tuple[ArrayRecord, dict[str, float]]:
    """What goes on the wire (arrays) and extra metrics for the reply.

    ``denominator`` is central DP's ``q * N`` (the server's ``dp-denominator``); under HE the client sends
    its clipped update divided by it, so that the server's sum of additions is the DP estimator itself.
    """
    extra: dict[str, float] = {}
    if cfg.dp_local:  # this round's DP-SGD release (sigma, q, steps) and the example-level epsilon so far
        extra = dpsgd.client_report(cfg, context.state, dp_state_key(context))
        check_spent(float(extra.get(DP_EPSILON, 0.0)), ClientPolicy.from_node_config(context.node_config))
    if cfg.dp_central:  # client-level DP: bound this client's contribution before it leaves (and before HE)
        new = clip_update(new, start, cfg.dp_central_clip_norm)
    if cfg.secagg:  # quantised, weighted and masked (client/secagg.py); central DP's noise share added there
        from client.secagg import masked_update

        return masked_update(cfg, new, start, num_examples, context), extra
    if not cfg.secure:
        return to_record(new), extra
    hctx = crypto.client_context(cfg, context.node_config)
    if cfg.dp_central:  # Enc(clip(w_k - w) / (q N)), weight 1: see strategies.dp_noise
        if denominator is None or not denominator > 0:
            raise ConfigError(
                f"central DP under HE needs the server's {DP_DENOMINATOR} (q * N) > 0, got {denominator!r}: "
                "client and server run different UAAP versions or settings"
            )
        update = [((n - s) / denominator).astype(s.dtype) for n, s in zip(new, start, strict=True)]
        record = crypto.encrypt_weights(update, 1.0, hctx, max_summands=cfg.num_clients)
        return record, {HE_WEIGHT: 1.0, **extra}
    weight = float(num_examples)  # pre-weighted: the server's sum over the total weight is FedAvg
    record = crypto.encrypt_weights(new, weight, hctx, max_summands=cfg.num_clients)
    return record, {HE_WEIGHT: weight, **extra}


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on local data; reply with the update and metrics."""
    size_torch_threads(client_threads())  # a simulated client's Ray reservation (--client-cpus), else one
    if SECAGG in msg.content.config_records:  # a SecAgg+ stage; its collect stage goes on to train (client/secagg.py)
        from client.secagg import answer_stage

        if (reply := answer_stage(_run_config(msg, context), msg, context)) is not None:
            return reply
    cfg, data, pid = _setup(msg, context)
    if cfg.strategy == "fedstats":  # K-Means, PCA: this client's sufficient statistics (client/statistics.py)
        from client.statistics import train_statistics

        return train_statistics(cfg, data, pid, msg, context)
    if cfg.strategy == "fedhist":  # trees grown from summed histograms: this client's sums (client/histtrees.py)
        from client.histtrees import train_hist

        return train_hist(cfg, data, pid, msg)
    if cfg.strategy == "fedtrees":  # random forest: this client's trees (client/forest.py)
        from client.forest import train_trees

        return train_trees(cfg, data, pid, msg)
    if cfg.strategy.startswith("fedxgb-"):  # XGBoost: trees, not weights (client/boosting.py)
        from client.boosting import train_boosting

        return train_boosting(cfg, data, pid, msg)
    server_round = as_int(msg.content.config_records[CONFIG].get(SERVER_ROUND), SERVER_ROUND)
    model = build_model(cfg.model, data.train.n_features, data.train.n_classes, data.train.image_shape)
    start = receive_global(cfg, msg.content, context, like=get_weights(model))
    set_weights(model, start)
    global_params = [p.detach().clone() for p in model.parameters()]
    full_steps = cfg.local_epochs * math.ceil(len(data.train.y) / cfg.batch_size)
    max_steps = straggler_steps(cfg, server_round, pid, full_steps)
    tcfg = TrainConfig.from_run(
        cfg,
        proximal_mu=as_float(msg.content.config_records[CONFIG].get(PROXIMAL_MU, 0.0), PROXIMAL_MU),
        max_steps=max_steps,
        seed=cfg.seed + 1000 * server_round + pid,
    )
    result = local_train(
        model, data.train, tcfg, global_params=global_params, privacy=local_privacy(cfg, data, context)
    )
    denominator = msg.content.config_records[CONFIG].get(DP_DENOMINATOR)
    arrays, extra = prepare_update(
        cfg,
        maybe_poison(cfg, get_weights(model), start, server_round, pid, context),
        start,
        result.num_examples,
        context,
        None if denominator is None else as_float(denominator, DP_DENOMINATOR),
    )
    metrics = MetricRecord(
        {
            NUM_EXAMPLES: result.num_examples,
            TRAIN_LOSS: result.loss,
            STEPS: result.steps,
            STRAGGLER: int(max_steps is not None),
            **extra,
        }
    )
    info = ConfigRecord({PARTITION_ID: pid})
    content = RecordDict({ARRAYS: arrays, METRICS: metrics, CLIENT_INFO: info})
    return Message(content=content, reply_to=msg)


@app.query()
def run_end(msg: Message, context: Context) -> Message:
    """The server's last message says how the run ended; a deployed client writes it where ``flower-client``
    watches (its node config's ``status-file``, never a path the server names) and then exits 0."""
    record = msg.content.config_records.get(CONFIG)
    path = context.node_config.get(NODE_STATUS_FILE)
    if record is not None and path and str(record.get(RUN_END, "")) in ("completed", "stopped", "failed"):
        fields = {key: str(record.get(key, ""))[:500] for key in (RUN_END, RUN_END_RUN, RUN_END_REASON)}
        target = Path(str(path))
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(fields))
        tmp.replace(target)
    return Message(content=RecordDict({}), reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the local validation split."""
    size_torch_threads(client_threads())
    cfg, data, pid = _setup(msg, context)
    if cfg.strategy == "fedhist":  # the finished trees' counts (client/histtrees.py)
        from client.histtrees import evaluate_hist

        return evaluate_hist(cfg, data, pid, msg)
    if cfg.strategy == "fedtrees":  # random forest: the global forest's counts (client/forest.py)
        from client.forest import evaluate_trees

        return evaluate_trees(cfg, data, pid, msg)
    if cfg.strategy.startswith("fedxgb-"):  # XGBoost: the booster's counts (client/boosting.py)
        from client.boosting import evaluate_boosting

        return evaluate_boosting(cfg, data, pid, msg)
    model = build_model(cfg.model, data.test.n_features, data.test.n_classes, data.test.image_shape)
    set_weights(model, receive_global(cfg, msg.content, context, like=get_weights(model)))
    counts = evaluate_counts(model, data.test)  # sums: the server computes the metrics of the total
    if cfg.task == "forecast":  # and the horizon forecast of this client's own series' held-out tails
        counts |= horizon_counts(cfg, context, pid, model)
    metrics = MetricRecord(counts)
    content = RecordDict({METRICS: metrics, CLIENT_INFO: ConfigRecord({PARTITION_ID: pid})})
    return Message(content=content, reply_to=msg)


def horizon_counts(cfg: RunConfig, context: Context, pid: int, model: torch.nn.Module) -> dict[str, float]:
    """The summed counts of ``model``'s horizon forecast over the series this client holds (its own table when
    deployed, else its partition of the run's series): the federation's MAE, RMSE, sMAPE and MASE come from their
    total (uaap.forecast.metrics)."""
    from uaap.forecast.report import network_counts
    from uaap.forecast.series import client_series, load

    if context.node_config.get(NODE_DATA_PATH):
        series = load(cfg)
    else:
        series = client_series(cfg, pid, int(context.node_config.get(NODE_NUM_PARTITIONS, cfg.num_clients)))
    return network_counts(cfg, series, model)
