"""Federated audits of a finished run's model: the server asks every client for sums over its own rows.

Each step sends every connected client a ``query.audit`` message with the run's final global model (the last
checkpoint's arrays: plaintext, or under secure aggregation the CKKS ciphertext only the clients can decrypt),
the run's preprocessing plan and a request (``client/audit.py``). Every answer is checked before it is summed
(:func:`uaap.explain.federated.check_explain_sums`, :func:`uaap.monitor.fairness.check_fairness_counts`,
:func:`uaap.monitor.drift.check_sketch`); a bad one is left out and logged, never fatal.

Under secure aggregation the explanation sums (|SHAP|, SHAP, outputs, PDP, base and permuted losses) and the
per-group confusion counts come as CKKS ciphertexts and are summed with the public context alone
(:class:`uaap.crypto.EncryptedSum`); the server holds their total as ciphertext and a key holder decrypts it
(:func:`uaap.explain.federated.open_sums`, :func:`uaap.monitor.fairness.open_counts`), as ``uaap keys
decrypt-model`` does for a model. The row counts, the
names of the groups each client has, the PDP grid's extremes and the drift sketches travel in the clear, as the
preprocessing statistics do: the sketches' layout depends on each client's categories, and minima and maxima do
not add.

A run trained under SecAgg+ (pairwise masking, ``--secure-aggregation secagg+``) is refused by every audit
(:func:`audited`): its clients hold no CKKS keys, so their sums could only travel in the clear, which that run's
data owners did not agree to; and SecAgg+'s masking (``strategies/secagg.py``) is built into a training round
(four stages in one ``configure_train``/``aggregate_train`` pair, updates clipped and quantised to a fixed range),
not into a sum of arbitrary statistics.

:func:`make_app` wraps one audit in a ServerApp; ``simulations/audit.py`` runs it over the run's simulated clients.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from uaap import workspace
from uaap.config import RunConfig
from uaap.data.preprocess import Stats, merge
from uaap.errors import ConfigError, DataError, RunFailedError, UaapError, WorkspaceError
from uaap.protocol import ARRAYS, AUDIT, AUDIT_ANSWER, AUDIT_REQUEST, AUDIT_SUMS, CONFIG, PREPROCESSOR, RUN_CONFIG

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, Message
    from flwr.serverapp import Grid, ServerApp

    from uaap.crypto import HEContext
    from uaap.monitor.runmodel import RunModel

log = logging.getLogger("uaap.server")
T = TypeVar("T")
Send = Callable[[list["Message"]], list["Message"]]


@dataclass
class Audited:
    """What the server holds to audit run ``rd``: its config, plan, final global model and public context."""

    rd: workspace.RunDir
    cfg: RunConfig
    plan: str
    arrays: ArrayRecord
    public: HEContext | None = None
    left_out: list[str] = field(default_factory=list)  # (step, node, why) of each answer left out

    @property
    def model(self) -> RunModel:
        """The run's plan as a model without weights (the server computes layouts and reports from it)."""
        from uaap.data.preprocess import Preprocessor
        from uaap.monitor.runmodel import RunModel

        return RunModel(self.rd, None, {"family": self.cfg.model}, Preprocessor.loads(self.plan), True)


def audited(run_id: str) -> Audited:
    """Run ``run_id`` as a federated audit needs it, or a clear error: a finished federated run of a network on a
    table (its last checkpoint is the final global model)."""
    from flwr.app import Array, ArrayRecord

    from uaap import crypto
    from uaap.models.nets import MODELS

    rd = workspace.existing_run(run_id)
    cfg = rd.read_config()
    if cfg.secagg:  # before anything is sent: a client's sums would reach the server unmasked
        raise ConfigError(
            f"run {run_id!r} was trained under secure-aggregation={cfg.secure_aggregation!r} (pairwise masking): a "
            "federated audit cannot mask its sums that way, so each client's sums would reach the server in the "
            "clear. Audit this run centrally on rows you may read (drop --federated and give --data SOURCE), or "
            "train it again with --secure-aggregation ckks, whose audits send the sums as one CKKS ciphertext"
        )
    plan_file = rd.path / "preprocessor.json"
    if cfg.dataset != "csv" or not plan_file.is_file():
        raise DataError(
            f"run {run_id!r} has no preprocessing plan fitted across its clients (dataset={cfg.dataset!r}): a "
            "federated audit reads each client's raw rows through it; audit a federated run on a table "
            "(uaap simulate --dataset csv)"
        )
    if cfg.model not in MODELS:
        raise DataError(
            f"run {run_id!r} trained model={cfg.model!r}; a federated audit sends the final global network to the "
            f"clients and supports the networks {', '.join(sorted(MODELS))}; audit this run centrally "
            "(without --federated)"
        )
    ckpt = rd.latest_checkpoint()
    ends = rd.events("end")
    if ckpt is None or not ends or ends[-1].get("status") not in ("completed", "stopped"):
        raise WorkspaceError(
            f"run {run_id!r} has not finished (no final checkpoint); audit a finished run (`uaap runs`)"
        )
    arrays = ArrayRecord({k: Array(v) for k, v in ckpt.arrays.items()})
    public = crypto.server_context(cfg.he_public_context) if cfg.secure else None
    return Audited(rd, cfg, plan_file.read_text(encoding="utf-8"), arrays, public)


def ask(
    grid: Grid,
    audit: Audited,
    request: Mapping[str, Any],
    check: Callable[[Any], Stats],
    send: Send,
    *,
    cfg: RunConfig | None = None,
    encrypted: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[Stats, ArrayRecord | None, int]:
    """Every client's checked answer to ``request``: the plaintext parts merged, the ``encrypted`` arrays (name ->
    shape, in order) summed as ciphertext, and how many clients were summed. ``cfg`` is the run config the clients
    get (the run's own, or one naming the new rows' table)."""
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    from uaap import crypto

    body = dict(request)
    if encrypted:
        body["encrypt"] = list(encrypted)
    config = ConfigRecord(
        {AUDIT_REQUEST: json.dumps(body), RUN_CONFIG: (cfg or audit.cfg).to_json(), PREPROCESSOR: audit.plan}
    )
    messages = [
        Message(
            content=RecordDict({CONFIG: config, ARRAYS: audit.arrays}),
            dst_node_id=node,
            message_type=f"{MessageType.QUERY}.{AUDIT}",
        )
        for node in grid.get_node_ids()
    ]
    acc = (
        crypto.EncryptedSum(audit.public, [tuple(s) for s in encrypted.values()])
        if encrypted and audit.public
        else None
    )
    if encrypted and acc is None:
        raise DataError("encrypted sums need the run's public CKKS context; this run has secure aggregation off")
    parts: list[Stats] = []
    for reply in sorted(send(messages), key=lambda m: int(m.metadata.src_node_id)):
        node = int(reply.metadata.src_node_id)
        try:
            plain = _read(reply, check)
            if acc is not None:
                if AUDIT_SUMS not in reply.content.array_records:
                    raise DataError(f"no {AUDIT_SUMS!r} ciphertext")
                acc.add(reply.content.array_records[AUDIT_SUMS])  # checked in full before the sum changes
        except (UaapError, ValueError, TypeError, KeyError) as exc:
            audit.left_out.append(f"{request['kind']}: client {node}: {exc}")
            log.warning("audit step %r: client %s's answer left out: %s", request["kind"], node, exc)
            continue
        parts.append(plain)
    if not parts:
        raise RunFailedError(
            f"no client answered the audit step {request['kind']!r} with usable sums"
            + (f" ({audit.left_out[-1]})" if audit.left_out else "; are the clients connected?")
        )
    return merge(parts), (acc.result() if acc is not None else None), len(parts)


def _read(reply: Message, check: Callable[[Any], Stats]) -> Stats:
    from server.preprocess import read_answer

    return check(read_answer(reply, AUDIT_ANSWER))


# ---- the audits -------------------------------------------------------------------------------------------------


@dataclass
class ExplainTotals:
    """A federated explanation's totals: the grids, the plaintext sums, and under CKKS the encrypted ones."""

    grids: dict[str, list[Any]]
    plain: Stats
    encrypted: ArrayRecord | None
    layout: dict[str, tuple[int, ...]]
    clients: int


def explain(
    grid: Grid,
    audit: Audited,
    send: Send,
    *,
    points: int = 20,
    seed: int = 0,
    max_evals: int = 0,
    repeats: int = 5,
) -> ExplainTotals:
    """Two steps: the numeric columns' extremes (the PDP grids), then the clients' SHAP, PDP and loss sums (the
    base loss and each column's ``repeats`` permuted losses)."""
    from uaap.explain import federated as fx
    from uaap.explain.pdp import grid_of, gridded_columns
    from uaap.monitor import drift

    fx.check_permutations(repeats, seed)

    model = audit.model
    numeric = [p for p in drift.monitored_plan(model.preprocessor) if p.kind == "numeric"]
    grids: dict[str, list[Any]] = {}
    ranges: dict[str, tuple[float, float]] = {}
    if numeric:
        stage, _, _ = ask(grid, audit, {"kind": "ranges"}, lambda a: drift.check_sketch(a, numeric), send)
        ranges = drift.ranges_of(stage, numeric)
    for plan in gridded_columns(model.preprocessor):
        low, high = ranges[plan.name] if plan.kind == "numeric" else (np.nan, np.nan)
        grids[plan.name] = grid_of(plan, low, high, points)
    shapes = fx.layout(model, grids, repeats)
    classification = model.task == "classification"
    hidden = shapes if audit.public is not None else None

    def check(answer: Any) -> Stats:
        if hidden:  # the sums are ciphertext: only the row count comes in clear
            if not isinstance(answer, Mapping) or set(answer) != {fx.ROWS}:
                raise DataError(f"under secure aggregation the clear part is exactly {[fx.ROWS]}")
            rows = np.asarray(answer[fx.ROWS], dtype=np.float64)
            if rows.shape != (1,) or not rows[0] >= 0 or rows[0] != np.round(rows[0]):
                raise DataError("the row count must be one whole non-negative number")
            return {fx.ROWS: rows}
        return fx.check_explain_sums(answer, shapes, classification=classification)

    request = {"kind": "explain", "grids": grids, "seed": seed, "max_evals": max_evals, "repeats": repeats}
    plain, enc, clients = ask(grid, audit, request, check, send, encrypted=hidden)
    return ExplainTotals(grids, plain, enc, dict(shapes), clients)


@dataclass
class Totals:
    """Summed answers: the plaintext part, and under CKKS the ciphertext sum of the arrays ``layout`` names."""

    plain: Stats
    encrypted: ArrayRecord | None
    layout: dict[str, tuple[int, ...]]
    clients: int


def fairness(grid: Grid, audit: Audited, send: Send, sensitive: str, *, cfg: RunConfig | None = None) -> Totals:
    """The clients' per-group confusion counts of the final model on their rows, summed: one step in the clear, or
    under secure aggregation two (the groups each client has, in the clear; then every group's counts, zeros where
    a client has none, as one CKKS ciphertext: the server learns only the federation's totals)."""
    from uaap.monitor.fairness import GROUP, MAX_GROUPS, check_fairness_counts

    model = audit.model
    if model.task != "classification":
        raise DataError(f"run {audit.rd.run_id!r} is a {model.task} model; group fairness needs a classifier")
    k = len(model.classes)
    rows = "new" if cfg is not None else "run"
    request: dict[str, Any] = {"kind": "fairness", "sensitive": sensitive, "rows": rows}
    if audit.public is None:
        total, _, clients = ask(grid, audit, request, lambda a: check_fairness_counts(a, k), send, cfg=cfg)
        return Totals(total, None, {}, clients)

    def check_groups(answer: Any) -> Stats:
        if not isinstance(answer, Mapping) or not 0 < len(answer) <= MAX_GROUPS:
            raise DataError(f"the groups must map 1 to {MAX_GROUPS} names to [1]")
        if any(not isinstance(key, str) or not key.startswith(GROUP) or answer[key] != [1] for key in answer):
            raise DataError(f"each group must be named {GROUP}NAME and carry [1]")
        return {key: np.ones(1) for key in answer}

    present, _, _ = ask(grid, audit, {**request, "kind": "groups"}, check_groups, send, cfg=cfg)
    layout: dict[str, tuple[int, ...]] = {key: (k * k,) for key in sorted(present)[:MAX_GROUPS]}

    def check_empty(answer: Any) -> Stats:
        if answer != {}:
            raise DataError("under secure aggregation the counts come only as ciphertext")
        return {}

    request["groups"] = [key[len(GROUP) :] for key in layout]
    plain, enc, clients = ask(grid, audit, request, check_empty, send, cfg=cfg, encrypted=layout)
    return Totals(plain, enc, layout, clients)


def drift(grid: Grid, audit: Audited, send: Send, current: RunConfig) -> tuple[dict[str, Any], Stats]:
    """Three steps: the reference (the clients' training rows) in two, the new rows (``current``'s table) in one."""
    from dataclasses import asdict

    from uaap.monitor import drift as dr

    plans = dr.monitored_plan(audit.model.preprocessor, audit.model.task)
    stage1, _, _ = ask(grid, audit, {"kind": "drift-reference"}, lambda a: dr.check_sketch(a, plans), send)
    ranges = dr.ranges_of(stage1, plans)
    request: dict[str, Any] = {"kind": "drift-histograms", "ranges": ranges}
    stage2, _, _ = ask(grid, audit, request, lambda a: dr.check_sketch(a, plans, ranges), send)
    request = {"kind": "drift-current", "ranges": ranges, "rows": "new"}
    now, _, _ = ask(grid, audit, request, lambda a: dr.check_sketch(a, plans, ranges, current=True), send, cfg=current)
    reference = {"plan": [asdict(p) for p in plans], "ranges": ranges, "stats": {**stage1, **stage2}}
    return reference, now


def make_app(
    job: Callable[[Grid, Send], T], out: list[T], *, timeout: float = 600.0, min_clients: int = 1
) -> ServerApp:
    """A ServerApp that waits for ``min_clients`` clients, runs ``job`` over them and appends its result to ``out``."""
    import time

    from flwr.serverapp import ServerApp

    from server.federation import exchange

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: object) -> None:
        deadline = time.monotonic() + timeout
        while len(list(grid.get_node_ids())) < min_clients:
            if time.monotonic() > deadline:
                raise RunFailedError(f"fewer than {min_clients} clients connected within {timeout:g}s")
            time.sleep(0.2)
        out.append(job(grid, lambda messages: exchange(grid, messages, timeout)))

    return app
