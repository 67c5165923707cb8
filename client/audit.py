"""A client's answer to a federated audit of a finished run's model: sums over its own rows, never a row.

The server (``server/audit.py``) sends the run's final global model (plaintext, or the CKKS ciphertext this
client decrypts with its secret context), the run's preprocessing plan and a request; the client predicts its own
rows through the plan and answers with what the request asks for:

* ``ranges``: each numeric column's count, sum, minimum and maximum (the PDP grid's extremes);
* ``explain``: sums of |SHAP|, SHAP and the model's outputs, PDP sums on the server's grids, and the sums of the
  loss on the true target, as it is and with each raw column permuted among this client's rows ``repeats`` times
  (:mod:`uaap.explain.federated`); under secure aggregation these go as one CKKS ciphertext, the row count in clear;
* ``groups``, ``fairness``: the groups of the sensitive column this client has; per group the confusion counts
  (:mod:`uaap.monitor.fairness`), under secure aggregation for every group the server lists, as one ciphertext;
* ``drift-reference``, ``drift-histograms``, ``drift-current``: the drift sketches (:mod:`uaap.monitor.drift`).

Rows: a simulated client's partition of the run's table, or (``rows: new``) its partition of the new table the
run config names; a deployed client (its own table) answers only about that table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from uaap import crypto
from uaap.config import RunConfig
from uaap.data.preprocess import Preprocessor, Stats, statistics_to_json
from uaap.errors import DataError
from uaap.explain.federated import MAX_REPEATS, REPEATS, ROWS
from uaap.protocol import ARRAYS, AUDIT_ANSWER, AUDIT_REQUEST, AUDIT_SUMS, CONFIG, NODE_DATA_PATH, PREPROCESSOR

if TYPE_CHECKING:
    import pandas as pd
    from flwr.app import Context, Message

    from uaap.monitor.runmodel import RunModel

KINDS = ("ranges", "explain", "groups", "fairness", "drift-reference", "drift-histograms", "drift-current")
MAX_EVALS = 100_000  # model evaluations a row: a server cannot make a client's explanation run unbounded
MAX_GRID = 1_000  # grid values of one column's PDP
# kinds whose sums travel as CKKS ciphertext under secure aggregation, and what of them may still come in the clear
SUMMED: dict[str, set[str]] = {"explain": {ROWS}, "fairness": set()}


def read_request(text: str) -> dict[str, Any]:
    """The server's request, checked for what every kind needs."""
    from client.preprocess import load_request

    request: Any = load_request(text, "audit")
    if not isinstance(request, dict) or request.get("kind") not in KINDS:
        raise DataError(f"the audit request names no known kind (one of {', '.join(KINDS)})")
    if request.get("rows", "run") not in ("run", "new"):
        raise DataError("the audit request's rows must be 'run' or 'new'")
    evals, grids = request.get("max_evals", 0), request.get("grids", {})
    if not isinstance(evals, int) or not 0 <= evals <= MAX_EVALS:
        raise DataError(f"the audit request's max_evals must be a whole number in 0..{MAX_EVALS}")
    if not isinstance(grids, dict) or any(not isinstance(g, list) or len(g) > MAX_GRID for g in grids.values()):
        raise DataError(f"the audit request's grids must be lists of at most {MAX_GRID} values")
    repeats, seed = request.get("repeats", REPEATS), request.get("seed", 0)
    if not isinstance(repeats, int) or not 1 <= repeats <= MAX_REPEATS:
        raise DataError(f"the audit request's repeats must be a whole number in 1..{MAX_REPEATS}")
    if not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise DataError("the audit request's seed must be a whole number in 0..2**32 - 1")
    return request


def global_model(cfg: RunConfig, pre: Preprocessor, msg: Message, context: Context) -> RunModel:
    """The run's final model from the message (decrypted under secure aggregation) with the run's plan."""
    from uaap.models import build_model, from_record, get_weights, set_weights
    from uaap.monitor.runmodel import RunModel

    target = pre.target_
    classes = len(target.classes) if target is not None and pre.task == "classification" else 1
    model = build_model(cfg.model, len(pre.feature_names_out_), classes, None)
    like = get_weights(model)
    record = msg.content.array_records[ARRAYS]
    if crypto.is_encrypted(record):
        if not cfg.secure:
            raise crypto.CiphertextError("the server sent ciphertext but this run has secure aggregation off")
        weights = crypto.decrypt_global(record, crypto.client_context(cfg, context.node_config), like=like)
    else:
        weights = from_record(record)
        if [w.shape for w in weights] != [w.shape for w in like]:
            raise DataError(
                f"the server's model has arrays {[w.shape for w in weights]}; "
                f"this model needs {[w.shape for w in like]}"
            )
    set_weights(model, weights)
    meta = {
        "family": cfg.model,
        "target_mean": target.mean if target else 0.0,
        "target_std": target.std if target else 1.0,
    }
    return RunModel(cast(Any, None), model, meta, pre, True)  # a client has no run folder


def rows(cfg: RunConfig, request: dict[str, Any], context: Context) -> pd.DataFrame:
    """This client's rows the request is about: its partition of the run's table, or of the new one."""
    from client.preprocess import own_rows

    if request.get("rows") == "new" and context.node_config.get(NODE_DATA_PATH):
        raise DataError(
            "this deployed client holds one table (flower-client --data); comparing new rows needs them in its node "
            "config, which is not wired: audit its new rows in a simulation or centrally (uaap monitor)"
        )
    return own_rows(cfg, context).frame


def compute(request: dict[str, Any], cfg: RunConfig, msg: Message, context: Context) -> Stats:
    """The sums ``request`` asks for over this client's rows."""
    from uaap.monitor import drift

    record = msg.content.config_records[CONFIG]
    pre = Preprocessor.loads(str(record.get(PREPROCESSOR, "")))
    frame = rows(cfg, request, context)
    kind = request["kind"]
    if kind == "ranges":
        plans = [p for p in drift.monitored_plan(pre) if p.kind == "numeric"]
        return drift.reference_ranges(frame, plans)
    model = global_model(cfg, pre, msg, context)
    if kind == "explain":
        from uaap.explain.federated import explain_sums

        grids = {str(c): list(g) for c, g in dict(request["grids"]).items()}
        seed, evals = int(request.get("seed", 0)), int(request.get("max_evals", 0))
        repeats = int(request.get("repeats", REPEATS))
        return explain_sums(model, frame, grids, seed=seed, max_evals=evals, repeats=repeats)
    if kind in ("groups", "fairness"):
        from uaap.monitor import fairness as fair

        groups = fair.group_values(frame, str(request["sensitive"]))
        if kind == "groups":  # which groups this client has (secure aggregation: the counts' layout)
            return {f"{fair.GROUP}{name}": np.ones(1) for name in sorted(set(map(str, groups)))}
        if model.target not in frame.columns:
            raise DataError(f"this client's rows lack the target column {model.target!r}")
        y_true = fair.encode_labels(frame[model.target].to_numpy(), model.classes, f"target column {model.target!r}")
        y_pred = model.predict_proba(frame).argmax(axis=1)
        counts = fair.fairness_counts(y_true, y_pred, groups, len(model.classes))
        if "groups" in request:  # every group of the federation, zeros where this client has none
            names = {f"{fair.GROUP}{g}" for g in request["groups"]}
            if set(counts) - names:
                raise DataError(f"this client has groups the server did not list: {sorted(set(counts) - names)[:5]}")
            counts.update({n: np.zeros(len(model.classes) ** 2) for n in names - set(counts)})
        return counts
    plans = drift.monitored_plan(pre, model.task)
    frame = drift.with_predictions(frame, model.predict(frame))
    if kind == "drift-reference":
        return drift.reference_ranges(frame, plans)
    ranges = {str(k): (float(v[0]), float(v[1])) for k, v in dict(request["ranges"]).items()}
    if kind == "drift-histograms":
        return drift.reference_histograms(frame, plans, ranges)
    return drift.current_statistics(frame, plans, ranges)


def refuse_unprotected(cfg: RunConfig, kind: str, clear: Iterable[str] = ()) -> None:
    """Keep the protection the run trained under, whatever the server asks (it refuses these audits too:
    ``server/audit.py``; a client does not rely on that): a SecAgg+ run answers no audit (no CKKS key could hide its
    sums), and under CKKS the ``clear`` part of an answer holds none of the sums :data:`SUMMED` names for ``kind``."""
    if cfg.secagg:
        raise DataError(
            f"this run trains under secure-aggregation={cfg.secure_aggregation!r} (pairwise masking), which an audit "
            "cannot use: its sums would reach the server in the clear; refused"
        )
    leaked = sorted(set(clear) - SUMMED[kind]) if cfg.secure and kind in SUMMED else []
    if leaked:
        raise DataError(
            f"this run uses secure aggregation, but the server asks for {leaked[:5]} in the clear; refused (a "
            "server may not lower a client's protection)"
        )


def answer(msg: Message, context: Context, cfg: RunConfig) -> Message:
    """The reply to one ``query.audit`` message: plaintext sums as JSON, the additive ones encrypted under CKKS
    when the request says so (``encrypt``: the names, in order)."""
    from flwr.app import ConfigRecord, Message, RecordDict

    request = read_request(str(msg.content.config_records[CONFIG].get(AUDIT_REQUEST, "")))
    refuse_unprotected(cfg, request["kind"])  # before a row is read
    try:
        stats = compute(request, cfg, msg, context)
    except (KeyError, TypeError, IndexError) as exc:
        raise DataError(f"the audit request is malformed ({type(exc).__name__}: {exc})") from exc
    content = RecordDict({})
    hidden = [str(k) for k in request.get("encrypt", [])]
    refuse_unprotected(cfg, request["kind"], set(stats) - set(hidden))
    if hidden:
        if not cfg.secure:
            raise DataError("the server asks for encrypted sums but this run has secure aggregation off")
        values = [np.asarray(stats.pop(k), dtype=np.float64) for k in hidden]
        hctx = crypto.client_context(cfg, context.node_config)
        content[AUDIT_SUMS] = crypto.encrypt_weights(values, 1.0, hctx, max_summands=max(1, cfg.num_clients))
    content[CONFIG] = ConfigRecord({AUDIT_ANSWER: statistics_to_json(stats)})
    return Message(content=content, reply_to=msg)
