"""Fit a raw table's preprocessing across the federation before round 1, from the clients' summed statistics.

For each stage of :class:`uaap.data.preprocess.FederatedFit` the server sends every connected client a
``query.preprocess`` message with the stage's request; each client answers with the statistics of its own rows
(``client/app.py``), never a row. Each answer is checked against what the stage asks for
(:func:`uaap.data.preprocess.check_statistics`) and a bad one is left out and logged, never fatal; the accepted
ones are summed and fit the stage. The fitted plan is written to the run folder (``preprocessor.json``), so a
resumed run reuses it instead of refitting on clients that may have changed. What the server learns is listed
in the README's threat model: per column counts, sums, sums of squares, extremes and histograms, and the
category counts (``encoding=hashing`` fits no vocabulary).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from uaap import workspace
from uaap.config import RunConfig
from uaap.data.preprocess import FederatedFit, Preprocessor, Stats, check_statistics, merge
from uaap.data.tables import preprocess_options
from uaap.errors import DataError, RunFailedError
from uaap.protocol import CONFIG, PREPROCESS, PREPROCESS_REQUEST, PREPROCESS_STATS, RUN_CONFIG

if TYPE_CHECKING:
    from flwr.app import Message
    from flwr.serverapp import Grid

log = logging.getLogger("uaap.server")
MAX_ANSWER = 64 * 2**20  # bytes of JSON one client may send for one stage


def plan_file(rd: workspace.RunDir) -> str:
    """Where a run keeps its fitted preprocessing plan."""
    return str(rd.path / "preprocessor.json")


def fit_across_clients(
    grid: Grid,
    cfg: RunConfig,
    rd: workspace.RunDir,
    columns: Sequence[str],
    send: Callable[[list[Message]], list[Message]],
) -> Preprocessor:
    """The run's preprocessor: loaded from the run folder on resume, else fitted stage by stage from the clients.

    ``columns`` are the table's columns as the server's schema sample has them (the target included); ``send``
    pushes messages and returns the replies that came back (``server.federation.exchange``).
    """
    from pathlib import Path

    saved = Path(plan_file(rd))
    if saved.is_file():
        log.info("run %s: preprocessing plan from %s", rd.run_id, saved)
        return Preprocessor.loads(saved.read_text(encoding="utf-8"))
    fit = FederatedFit(columns, preprocess_options(cfg), target=cfg.target, task=cfg.task)
    while (request := fit.request()) is not None:
        answers = _ask(grid, cfg, request, send)
        if not answers:
            raise RunFailedError(
                f"no client answered the preprocessing stage {request['stage']!r} with usable statistics; "
                "see the clients' logs (each must hold the table's columns and target)"
            )
        try:
            fit.absorb(merge(answers))
        except DataError as exc:  # the federation's data as a whole cannot be used as configured
            raise DataError(f"preprocessing across {len(answers)} clients: {exc}") from exc
    pre = fit.preprocessor()
    tmp = saved.with_name(saved.name + ".tmp")
    tmp.write_text(pre.dumps(), encoding="utf-8")
    tmp.replace(saved)
    rd.log_event("preprocessor", columns=len(pre.input_columns), features=len(pre.feature_names_out_))
    return pre


def _ask(
    grid: Grid, cfg: RunConfig, request: dict[str, object], send: Callable[[list[Message]], list[Message]]
) -> list[Stats]:
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    text = json.dumps(request)
    messages = [
        Message(
            content=RecordDict({CONFIG: ConfigRecord({PREPROCESS_REQUEST: text, RUN_CONFIG: cfg.to_json()})}),
            dst_node_id=node,
            message_type=f"{MessageType.QUERY}.{PREPROCESS}",
        )
        for node in grid.get_node_ids()
    ]
    accepted = []
    for reply in send(messages):
        node = reply.metadata.src_node_id
        try:
            accepted.append(_read(reply, request))
        except DataError as exc:
            log.warning("preprocessing stage %r: client %s's answer left out: %s", request["stage"], node, exc)
    return accepted


def read_answer(reply: Message, key: str) -> object:
    """The JSON a client's query reply carries under ``key`` of its config record (at most MAX_ANSWER bytes),
    parsed but not yet checked; :class:`DataError` names what is wrong."""
    if reply.has_error():
        raise DataError(f"the client failed: {(reply.error.reason or '')[:300]}")
    record = reply.content.config_records.get(CONFIG)
    text = record.get(key) if record is not None else None
    if not isinstance(text, str) or len(text) > MAX_ANSWER:
        raise DataError(f"no {key!r} text of at most {MAX_ANSWER} bytes")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{key!r} is not JSON ({type(exc).__name__})") from exc


def _read(reply: Message, request: dict[str, object]) -> Stats:
    return check_statistics(read_answer(reply, PREPROCESS_STATS), request)
