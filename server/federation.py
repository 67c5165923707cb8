"""The server's round loop: checkpoints, resume, metrics, MLflow, central evaluation, budget stop.

Flower's ``Strategy.start`` always begins at round 1 and keeps nothing on disk, so the loop is
ours; it drives the strategy through Flower's public surface (``configure_train``,
``aggregate_train``, ``configure_evaluate``, ``aggregate_evaluate``) and therefore works with any
strategy or wrapper. Wrappers offer optional hooks through the protocols of :mod:`strategies.wrapper`
(``Stateful``, ``BudgetGate``, ``RoundReporter``, ``CiphertextModel``); the loop calls them on every layer
of the stack that implements them.

A round in which no client result is accepted (no replies, or every reply failed or was rejected) is a failed
round: the model stays as it was and the round's line says why. A run whose rounds all failed ends ``failed``
and raises :class:`uaap.errors.RunFailedError`, so the launcher, ``uaap simulate`` and Flower (``flwr ls``) all
report it as failed instead of completed. Any other exception also ends the run's events with its cause, so a
launcher can show it.

The checkpoint is each round's commit point: it carries the round's metrics (``round_log``) beside the model
and the layers' state, and is written before anything else records the round. A server that dies after it
resumes at the next round and first writes whatever of that round's metrics line and MLflow row is missing,
so a crash loses no round and records none twice.

Length: over 500 lines because the round loop and its waits (for nodes, replies and live clients), its stop signal
and the run's end share one run's state; split up, a wait could no longer end the round it belongs to.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from server.boosting import boosted, initial_booster, save_booster
from server.boosting import evaluator as boosting_evaluator
from server.continual import load_parent
from server.forest import evaluator as forest_evaluator
from server.forest import grows_trees, initial_forest, save_forest
from server.histtrees import evaluator as hist_evaluator
from server.histtrees import grows_histograms, initial_state, save_trees
from strategies import build_strategy, sort_replies
from strategies.histtrees import FedHist
from strategies.wrapper import BudgetGate, RoundReporter, Stateful, innermost, is_encrypted, layers
from uaap import workspace
from uaap.anomaly import threshold_meta
from uaap.config import RunConfig
from uaap.data import Dataset, describe, federated, target_meta
from uaap.errors import RunFailedError, UaapError
from uaap.models import build_model, family, from_record, get_weights, to_record
from uaap.privacy.utility import hopeless_noise_warning, model_size
from uaap.protocol import (
    CONFIG,
    NUM_EXAMPLES,
    PREPROCESSOR,
    RUN_CONFIG,
    RUN_END,
    RUN_END_REASON,
    RUN_END_RUN,
    THRESHOLD,
)
from uaap.training import evaluate

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, Message, MetricRecord
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import Strategy

log = logging.getLogger("uaap.server")
ROUND_LOG = "round_log"  # checkpoint state key of the round's metrics (what metrics.jsonl and MLflow record)


@dataclass
class RoundLog:
    """What one round produced (also one line of metrics.jsonl)."""

    round: int
    seconds: float
    train: dict[str, float] = field(default_factory=dict)
    evaluate: dict[str, float] = field(default_factory=dict)
    central: dict[str, float] = field(default_factory=dict)
    privacy: dict[str, float] = field(default_factory=dict)
    replies: int = 0
    failures: int = 0
    sampled: int = 0
    participants: list[int] = field(default_factory=list)
    failed: bool = False  # no client result was accepted: the global model did not move
    errors: list[str] = field(default_factory=list)  # the first reasons clients gave for failing


def _metrics(record: MetricRecord | None) -> dict[str, float]:
    if record is None:
        return {}
    return {k: float(v) for k, v in record.items() if isinstance(v, int | float)}


def initial_arrays(cfg: RunConfig, meta: Dataset | None = None) -> ArrayRecord:
    """The seeded initial global model, as Flower arrays (``meta``: any split carrying the data's shape)."""
    meta = meta if meta is not None else describe(cfg)
    if grows_histograms(cfg):  # no bins, no trees yet (server/histtrees.py)
        return initial_state(cfg, meta)
    if boosted(cfg):  # no booster yet: the first clients start it (server/boosting.py)
        return initial_booster()
    if grows_trees(cfg):  # a forest of no trees (server/forest.py)
        return initial_forest(meta)
    if summed(cfg):  # the statistics' layout; K-Means seeds its centroids from these rows (server/statistics.py)
        from server.statistics import initial_totals

        return initial_totals(cfg, meta)
    model = build_model(cfg.model, meta.n_features, meta.n_classes, meta.image_shape, seed=cfg.seed)
    return to_record(get_weights(model))


def summed(cfg: RunConfig) -> bool:
    """Whether the run's family is fitted from summed statistics (K-Means, PCA), not from weights."""
    return family(cfg.model).capabilities.federated == "statistics"


def central_evaluator(cfg: RunConfig, num_partitions: int, plan: str = "") -> Any:
    """``evaluate_fn(round, arrays)`` on the server's held-out test set (``plan``: a raw table's preprocessing)."""
    from flwr.app import MetricRecord

    from uaap.models import set_weights

    _, test = federated(cfg, num_partitions, plan)
    if grows_histograms(cfg):  # the finished trees' metrics from counts (server/histtrees.py)
        return hist_evaluator(cfg, test)
    if boosted(cfg):  # the global booster's metrics from counts (server/boosting.py)
        return boosting_evaluator(cfg, test)
    if grows_trees(cfg):  # the global forest's metrics from counts (server/forest.py)
        return forest_evaluator(cfg, test)
    if summed(cfg):  # inertia, silhouette, explained variance of the totals' model (server/statistics.py)
        from server.statistics import evaluator

        return evaluator(cfg, test)
    from uaap.forecast.report import horizon_metrics
    from uaap.forecast.series import load as load_series

    model = build_model(cfg.model, test.n_features, test.n_classes, test.image_shape)
    series = load_series(cfg) if cfg.task == "forecast" else None  # what the test windows were cut from

    def evaluate_fn(server_round: int, arrays: ArrayRecord, threshold: float | None = None) -> MetricRecord:
        set_weights(model, from_record(arrays))  # anomaly: the round's threshold, chosen on the clients' validation
        metrics = evaluate(model, test, threshold=threshold, anomaly_quantile=cfg.anomaly_quantile)
        if series is not None:  # and the horizon forecast of every series' held-out tail
            metrics |= horizon_metrics(cfg, series, model)
        return MetricRecord({**metrics, NUM_EXAMPLES: len(test.y)})

    return evaluate_fn


class StopRequested(Exception):  # noqa: N818 - a request, not an error; an Exception so Flower's thread keeps quiet
    """The process is stopping (Ctrl-C in ``uaap simulate``): the round loop ends at its next poll."""


_STOP = threading.Event()


def request_stop() -> None:
    """Make the round loop of this process end at its next poll (it raises :class:`StopRequested`)."""
    _STOP.set()


def clear_stop() -> None:
    """Forget an earlier :func:`request_stop` (a new run in the same process)."""
    _STOP.clear()


def run_federation(
    grid: Grid,
    cfg: RunConfig,
    strategy: Strategy | None = None,
    *,
    num_partitions: int | None = None,
    announce_end: bool = False,
) -> workspace.RunDir:
    """Run (or resume) the federation described by ``cfg``; returns the run folder.

    Raises :class:`RunFailedError` when every round failed; any exception ends the run's events with its cause.
    ``announce_end``: tell every connected client how the run ended (deployed clients then exit 0).
    """
    rd = workspace.run_dir(cfg.run_id or workspace.new_run_id())
    cfg = cfg.replace(run_id=rd.run_id)
    trackers: list[Any] = []  # the run's tracker once it exists, to close it on failure
    try:
        rd = _federate(grid, cfg, rd, strategy, num_partitions, trackers)
    except RunFailedError as exc:
        if announce_end:  # recorded where it was decided; the clients still learn that the run is over
            _announce(grid, rd.run_id, "failed", str(exc))
        raise
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt | SystemExit | StopRequested)
        reason = "interrupted" if interrupted else failure_reason(exc)
        rd.log_event("end", status="interrupted" if interrupted else "failed", reason=reason)
        if not interrupted:
            log.error("run %s failed: %s", rd.run_id, reason)
        for tracker in trackers:
            with contextlib.suppress(Exception):  # tracking must never hide the cause
                tracker.set_tags({"uaap.status": "failed", "uaap.stop_reason": reason})
                tracker.finish("KILLED" if interrupted else "FAILED")
        if announce_end and not interrupted:
            _announce(grid, rd.run_id, "failed", reason)
        raise
    if announce_end:
        end = rd.events("end")[-1]
        _announce(grid, rd.run_id, str(end["status"]), str(end.get("reason", "")))
    return rd


def _announce(grid: Grid, run_id: str, status: str, reason: str, timeout: float = 60.0) -> None:
    """The run's last message to every connected client (a query): how it ended. Best effort: never fails."""
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    try:
        record = ConfigRecord({RUN_END: status, RUN_END_RUN: run_id, RUN_END_REASON: reason[:500]})
        messages = [
            Message(
                content=RecordDict({CONFIG: record}), dst_node_id=node, message_type=MessageType.QUERY, group_id=RUN_END
            )
            for node in grid.get_node_ids()
        ]
        # Flower's pull can block without a bound once the clients are gone (seen: 3 min 22 s after a completed
        # run); the acknowledgements are waited for in a daemon thread for at most ``timeout`` seconds
        done: list[list[Message]] = []

        def wait() -> None:
            try:
                done.append(exchange(grid, messages, timeout))
            except Exception as exc:  # the run is over either way
                log.warning("could not tell the clients that run %s ended: %s", run_id, exc)

        waiter = threading.Thread(target=wait, daemon=True, name="uaap-run-end")
        waiter.start()
        waiter.join(timeout + 5.0)
        acknowledged = len(done[0]) if done else 0
        log.info("run %s: %d of %d clients acknowledged its end", run_id, acknowledged, len(messages))
    except Exception as exc:  # the run is over either way
        log.warning("could not tell the clients that run %s ended: %s", run_id, exc)


def failure_reason(exc: BaseException) -> str:
    """One line for a person: a UaapError's own message, otherwise the exception type and its first line."""
    text = (str(exc).strip().splitlines() or [""])[0]
    return text if isinstance(exc, UaapError) else f"{type(exc).__name__}: {text}".rstrip(": ")


def _federate(
    grid: Grid,
    cfg: RunConfig,
    rd: workspace.RunDir,
    strategy: Strategy | None,
    num_partitions: int | None,
    trackers: list[Any],
) -> workspace.RunDir:
    rd.write_config(cfg)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    parent = load_parent(cfg)  # continual training (server/continual.py): checked before any client is asked
    if parent is not None:
        parent.seed_run_folder(rd)  # its preprocessing plan: the model reads the features it was trained on
    nodes = _wait_for_nodes(grid, cfg)
    num_partitions = num_partitions or cfg.num_clients
    plan = _preprocessing(grid, cfg, rd)  # a raw table's preprocessing, fitted from the clients' summed statistics
    meta = federated(cfg, num_partitions, plan)[1]  # the server's test set (cached): shapes for model and export
    size = model_size(cfg, meta.n_features, meta.n_classes, meta.image_shape)
    # N: also the clients online when the app started. With 1000 simulated clients `nodes` was 7 here (the demo
    # warned of 0.7 clients a round at q=0.1) while every round's Poisson sampling saw all 1000 (~100 sampled)
    if warning := hopeless_noise_warning(cfg.replace(num_clients=max(nodes, num_partitions)), size):
        log.warning(warning)
        rd.log_event("warning", text=warning)
    strategy = strategy or build_strategy(
        cfg,
        num_nodes=nodes,
        n_classes=meta.n_classes,
        task="forecast" if cfg.task == "forecast" else meta.task,  # regression sums and the horizon forecast's
        n_features=meta.n_features,
    )

    ckpt = rd.latest_checkpoint()
    committed: dict[str, Any] | None = None
    if ckpt is not None:
        from flwr.app import Array, ArrayRecord

        arrays = ArrayRecord({k: Array(v) for k, v in ckpt.arrays.items()})
        start = ckpt.round + 1
        committed = ckpt.state.get(ROUND_LOG)
        _load_state(strategy, ckpt.state)
        log.info("resuming run %s from the checkpoint of round %d", rd.run_id, ckpt.round)
    else:
        arrays = initial_arrays(cfg, meta)
        start = 1
        if parent is not None:  # the parent's final model and privacy accountants
            arrays = parent.start(cfg, arrays, strategy, rd)

    encrypted = is_encrypted(strategy)
    evaluate_fn = central_evaluator(cfg, num_partitions, plan) if cfg.central_eval and not encrypted else None
    tracker = _tracker(cfg)
    trackers += [tracker] if tracker else []
    if tracker and parent is not None:
        tracker.set_tags(parent.lineage(cfg.dp_delta))
    if ckpt is not None:
        _recover(rd, tracker, committed)
    rd.log_event(
        "start",
        round=start,
        num_rounds=cfg.num_rounds,
        nodes=nodes,
        resumed=ckpt is not None,
        pid=os.getpid(),  # `uaap runs` tells a running loop from one that was killed
        host=socket.gethostname(),
    )
    if evaluate_fn is not None and start == 1:
        central0 = _metrics(evaluate_fn(0, arrays))
        rd.log_event("round", round=0, central=central0)
        if tracker:
            tracker.log_metrics(tracked_metrics({"central": central0}), step=0)

    status, reason = "completed", ""
    ran: list[RoundLog] = []
    for server_round in range(start, cfg.num_rounds + 1):
        if stop := _stop_reason(strategy, server_round):
            status, reason = "stopped", stop
            log.warning("stopping before round %d: %s", server_round, stop)
            break
        arrays, entry = _one_round(grid, strategy, cfg, server_round, arrays, evaluate_fn, plan=plan)
        state = {x.state_key: x.state_dict() for x in layers(strategy) if isinstance(x, Stateful)}
        state[ROUND_LOG] = dict(entry.__dict__)  # the commit point holds what the lines below record
        rd.save_checkpoint(
            workspace.Checkpoint(server_round, {k: v.numpy() for k, v in arrays.items()}, state),
            encrypt=cfg.encrypt_checkpoints,
        )
        rd.log_event("round", **entry.__dict__)
        if tracker:
            tracker.log_metrics(tracked_metrics(entry.__dict__), step=server_round)
        ran.append(entry)

    if ran and all(e.failed for e in ran):
        reason = _nothing_accepted(ran)
        rd.log_event("end", status="failed", reason=reason, encrypted=encrypted)
        log.error("run %s failed: %s", rd.run_id, reason)
        if tracker:
            tracker.set_tags({"uaap.status": "failed", "uaap.stop_reason": reason})
            tracker.finish("FAILED")
        raise RunFailedError(f"run {rd.run_id} failed: {reason}")
    model_file = rd.model_file
    if not encrypted and grows_histograms(cfg):  # an XGBClassifier or a forest in model.skops (server/histtrees.py)
        model_file = save_trees(rd, cfg, arrays, meta) or model_file
    elif not encrypted and boosted(cfg):  # an XGBClassifier in model.skops (server/boosting.py)
        model_file = save_booster(rd, cfg, arrays, meta) or model_file
    elif not encrypted and grows_trees(cfg):  # a scikit-learn forest in model.skops (server/forest.py)
        model_file = save_forest(rd, cfg, arrays, meta) or model_file
    elif not encrypted and summed(cfg):  # a scikit-learn estimator in model.skops (server/statistics.py)
        from server.statistics import save_final

        model_file = save_final(rd, cfg, arrays, ran[-1].round if ran else start - 1, meta)
    elif not encrypted:
        workspace.save_model(
            rd.model_file,
            cfg.model,
            from_record(arrays),
            n_features=meta.n_features,
            n_classes=meta.n_classes,
            image_shape=meta.image_shape,
            extra={"run_id": rd.run_id, "dataset": cfg.dataset, **target_meta(meta), **threshold_meta(rd, meta.task)},
        )
    rd.log_event("end", status=status, reason=reason, encrypted=encrypted)
    if tracker:
        tracker.set_tags({"uaap.status": status, "uaap.stop_reason": reason})
        if not encrypted:
            tracker.log_artifact(str(model_file))
        tracker.finish()
    return rd


def client_error(reason: str) -> str:
    """The cause a failed client reply carries, without the transport's wrapping (Ray reprs, colour codes)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", reason)
    said = re.findall(r"Message: (.+)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (said[-1].strip() if said else lines[-1] if lines else "")[:200]


def _nothing_accepted(rounds: list[RoundLog]) -> str:
    """Why a run whose rounds all failed has no model, with the clients' first reasons."""
    errors = list(dict.fromkeys(e for r in rounds for e in r.errors))
    replies = ", ".join(f"round {r.round}: {r.replies} of {r.sampled} replied" for r in rounds[:3])
    text = f"no client result was accepted in any of its {len(rounds)} round(s) ({replies}"
    text += "; " + ("clients reported: " + " | ".join(errors[:3]) if errors else "replies rejected or missing") + ")"
    return text + "; see the clients' logs and metrics.jsonl"


def tracked_metrics(entry: dict[str, Any]) -> dict[str, float]:
    """The MLflow metrics of one ``round`` event of metrics.jsonl (round 0 carries only central metrics)."""
    flat = {f"train_{k}": v for k, v in entry.get("train", {}).items()}
    flat |= {f"fed_{k}": v for k, v in entry.get("evaluate", {}).items()}
    flat |= {f"central_{k}": v for k, v in entry.get("central", {}).items()}
    flat |= {f"privacy_{k}": v for k, v in entry.get("privacy", {}).items()}
    if "seconds" in entry:
        flat |= {"round_seconds": entry["seconds"], "clients": entry["replies"]}
    return flat


def _recover(rd: workspace.RunDir, tracker: Any, committed: dict[str, Any] | None) -> None:
    """On resume, write what a crash lost: the checkpointed round's metrics line, and MLflow rows of logged rounds.

    MLflow rows are queued (:meth:`uaap.tracking.Tracker.log_metrics`), so a killed server can lose the rows of
    rounds whose lines metrics.jsonl holds; each is written again unless MLflow has its step.
    """
    rounds = rd.events("round")
    if committed is not None and not any(e.get("round") == committed["round"] for e in rounds):
        log.warning(
            "resume: round %d was checkpointed but its metrics were not written; writing them now", committed["round"]
        )
        rd.log_event("round", **committed)
        rounds.append(committed)
    if not tracker:
        return
    for entry in rounds:
        flat = tracked_metrics(entry)
        if flat and not tracker.has_step(next(iter(flat)), int(entry["round"])):
            tracker.log_metrics(flat, step=int(entry["round"]))


def _stop_reason(strategy: Strategy, server_round: int) -> str | None:
    """The first reason any layer gives not to run ``server_round`` (a privacy budget), or None."""
    for layer in layers(strategy):
        if isinstance(layer, BudgetGate) and (reason := layer.before_round(server_round)):
            return reason
    return None


def _load_state(strategy: Strategy, state: dict[str, Any]) -> None:
    """Give each stateful layer its part of a checkpoint's state.

    Checkpoints written before the DP wrappers were split keep the accountants under ``"strategy"``.
    """
    for layer in layers(strategy):
        if isinstance(layer, Stateful):
            part = state.get(layer.state_key, state.get("strategy") if layer.state_key == "privacy" else None)
            if part is not None:
                layer.load_state_dict(part)


def _preprocessing(grid: Grid, cfg: RunConfig, rd: workspace.RunDir) -> str:
    """The run's preprocessing plan as JSON: fitted across the clients before round 1 for a raw table
    (``dataset=csv``; ``server/preprocess.py``), kept in the run folder for a resume; empty for bundled data and for
    time series (``task=forecast``: each client scales its own series' windows, uaap.forecast.series)."""
    if cfg.dataset != "csv" or cfg.task == "forecast":
        return ""
    from server.preprocess import fit_across_clients
    from uaap.data.tables import read_config_table

    columns = list(read_config_table(cfg).frame.columns)  # the server's own table: the schema the clients share
    fitted = fit_across_clients(grid, cfg, rd, columns, lambda msgs: exchange(grid, msgs, cfg.round_timeout))
    return fitted.dumps()


def _wait_for_nodes(grid: Grid, cfg: RunConfig, poll: float = 1.0) -> int:
    deadline = time.monotonic() + cfg.round_timeout
    while (n := len(list(grid.get_node_ids()))) < cfg.min_clients:
        if _STOP.is_set():
            raise StopRequested("stop requested")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {n} of min-clients={cfg.min_clients} clients connected within {cfg.round_timeout:g}s; "
                "start more clients or lower min-clients"
            )
        time.sleep(poll)
    return n


def _tracker(cfg: RunConfig) -> Any:
    from uaap.tracking import Tracker

    try:
        tracker = Tracker(cfg.experiment, cfg.run_id, kind="federated")
        tracker.log_params(cfg.to_flower())
        return tracker
    except Exception as exc:  # tracking must never take a run down
        log.warning("MLflow tracking disabled for this run: %s", exc)
        return None


def _one_round(
    grid: Grid,
    strategy: Strategy,
    cfg: RunConfig,
    server_round: int,
    arrays: ArrayRecord,
    evaluate_fn: Any,
    *,
    plan: str = "",
) -> tuple[ArrayRecord, RoundLog]:
    t0 = time.perf_counter()
    from flwr.app import ConfigRecord

    sent = {RUN_CONFIG: cfg.to_json(), **({PREPROCESSOR: plan} if plan else {})}

    if _fit_sampling(grid, strategy, cfg, server_round) == 0:
        reason = f"no client online after waiting {min(REJOIN_WAIT, cfg.round_timeout):g}s"
        log.warning("round %d failed: %s", server_round, reason)
        return arrays, RoundLog(server_round, time.perf_counter() - t0, failed=True, errors=[reason])
    train_cfg = ConfigRecord(dict(sent))
    messages = list(strategy.configure_train(server_round, arrays, train_cfg, grid))
    replies = sort_replies(exchange(grid, messages, cfg.round_timeout))
    ok = [m for m in replies if not m.has_error()]
    _warn_missing("train", server_round, messages, replies)
    new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
    exchanges = 1
    while new_arrays is not None and _busy(strategy):  # fedhist: a round is several exchanges (one a tree level)
        if exchanges >= MAX_EXCHANGES:
            log.warning("round %d: still busy after %d exchanges; the next round goes on", server_round, exchanges)
            break
        arrays = new_arrays
        messages = list(strategy.configure_train(server_round, arrays, train_cfg, grid))
        replies = sort_replies(exchange(grid, messages, cfg.round_timeout))
        ok = [m for m in replies if not m.has_error()]
        _warn_missing("train", server_round, messages, replies)
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        exchanges += 1
    if new_arrays is None:
        log.warning("round %d failed: no client result was accepted; the global model is unchanged", server_round)
    else:
        arrays = new_arrays
    entry = RoundLog(
        server_round,
        0.0,
        train=_metrics(train_metrics),
        replies=len(ok),
        failures=len(replies) - len(ok),
        sampled=len(messages),
        participants=sorted(int(m.metadata.src_node_id) for m in ok),  # replied; wrappers log rejections
        failed=new_arrays is None,
        errors=list(dict.fromkeys(client_error(m.error.reason or "") for m in replies if m.has_error()))[:3],
    )

    eval_msgs = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(dict(sent)), grid))
    if eval_msgs:
        eval_replies = sort_replies(exchange(grid, eval_msgs, cfg.round_timeout))
        _warn_missing("evaluate", server_round, eval_msgs, eval_replies)
        entry.evaluate = _metrics(strategy.aggregate_evaluate(server_round, eval_replies))
    if evaluate_fn is not None:
        chosen = {"threshold": entry.evaluate[THRESHOLD]} if THRESHOLD in entry.evaluate else {}
        entry.central = _metrics(evaluate_fn(server_round, arrays, **chosen))
    for layer in layers(strategy):
        if isinstance(layer, RoundReporter):
            entry.privacy |= layer.round_report(server_round)
    entry.seconds = time.perf_counter() - t0
    return arrays, entry


MAX_EXCHANGES = 100  # of one round (fedhist: bins, then one per tree level; trees are at most 64 deep)


def _busy(strategy: Strategy) -> bool:
    """Whether a layer of the strategy still has this round's exchanges to run (strategies.histtrees.FedHist)."""
    return any(isinstance(layer, FedHist) and layer.busy() for layer in layers(strategy))


REJOIN_WAIT = 60.0  # seconds a round waits for min-clients to be online again after some dropped out
_SAMPLING = ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes")


def _fit_sampling(grid: Grid, strategy: Strategy, cfg: RunConfig, server_round: int, poll: float = 1.0) -> int:
    """The clients online for this round, after waiting up to ``REJOIN_WAIT`` for min-clients of them; Flower's
    sampling minimums are lowered to that number for this round.

    Flower's strategies wait, without a bound and at a log level nobody sees, until their ``min_*_nodes`` are
    online (``sample_nodes``): with min-clients=3, one client that died stalled every later round for good.
    Here a round goes on with the clients that remain; an aggregate of fewer than min-contributors accepted
    replies is still withheld.
    """
    deadline = time.monotonic() + min(REJOIN_WAIT, cfg.round_timeout)
    while (online := len(list(grid.get_node_ids()))) < cfg.min_clients and time.monotonic() < deadline:
        if _STOP.is_set():
            raise StopRequested("stop requested")
        time.sleep(poll)
    if online < cfg.min_clients:
        log.warning(
            "round %d: %d of min-clients=%d clients online; going on with them", server_round, online, cfg.min_clients
        )
    sampler = innermost(strategy)  # Flower's FedAvg/FedProx, which does the sampling
    configured = sampler.__dict__.setdefault(
        "_uaap_sampling", {a: getattr(sampler, a) for a in _SAMPLING if hasattr(sampler, a)}
    )
    for attr, value in configured.items():
        setattr(sampler, attr, min(int(value), max(online, 1)))
    return online


def exchange(
    grid: Grid, messages: list[Message], timeout: float, *, max_pause: float = 0.1, liveness_every: float = 5.0
) -> list[Message]:
    """Push ``messages`` and pull their replies until all are in, their nodes went offline, or ``timeout`` passes.

    Flower's ``send_and_receive`` sleeps a fixed 0.1 s (simulation) or 3 s (deployment) between pulls, so
    every phase of a round ended on one of those ticks. Here polling starts at 5 ms, backs off by 1.5x to
    ``max_pause`` while nothing arrives, and starts short again after each reply.

    Every ``liveness_every`` seconds the grid's connected nodes are listed: a node that left (the SuperLink drops
    a SuperNode that misses two heartbeats, about 60 s with Flower's defaults, or at once when it says goodbye)
    is not waited for, whether or not Flower answers for it; only a client that stays online without answering
    holds the round until ``timeout``. A node that came back as a new SuperNode (a restarted client) counts as
    left, and a reply that stopped halfway does not hold a pull beyond that (``server.liveness``).
    """
    from server.liveness import NodeWatch, label_rounds  # a node that left or restarted, a half-sent reply

    label_rounds(messages)  # the SuperNode logs the round of each message, and so do the clients' round events
    deadline = time.monotonic() + timeout
    watch = NodeWatch(grid, [int(m.metadata.dst_node_id) for m in messages], deadline)
    ids = list(grid.push_messages(messages))
    node_of = {mid: int(m.metadata.dst_node_id) for mid, m in zip(ids, messages, strict=False)}
    pending = set(ids)
    next_check = time.monotonic() + liveness_every
    replies: list[Message] = []
    pause = 0.005
    while pending:
        if _STOP.is_set():
            raise StopRequested("stop requested")
        got = watch.pull(pending)
        replies.extend(got)
        pending -= {m.metadata.reply_to_message_id for m in got}
        now = time.monotonic()
        if pending and now >= next_check:
            next_check = now + liveness_every
            lost = watch.lost(now=True)
            gone = {mid for mid in pending if node_of.get(mid) in lost}
            for mid in gone:
                log.warning("node %s went offline (no heartbeat); not waiting for its reply", node_of.get(mid))
            pending -= gone
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            break
        pause = 0.005 if got else min(pause * 1.5, max_pause)
        time.sleep(min(pause, left))
    return replies


def _warn_missing(phase: str, server_round: int, sent: list[Message], got: list[Message]) -> None:
    failed = [m for m in got if m.has_error()]
    missing = len(sent) - len(got)
    if missing or failed:
        log.warning(
            "round %d %s: %d of %d clients did not reply%s; aggregating the rest",
            server_round,
            phase,
            missing + len(failed),
            len(sent),
            "" if not failed else " (" + "; ".join((m.error.reason or "")[:120] for m in failed[:3]) + ")",
        )
