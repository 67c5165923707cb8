"""A client's answer to the server's preprocessing stages: statistics of its own rows, never a row.

The server fits a raw table's preprocessing before round 1 (``server/preprocess.py``); for each stage it asks
for counts, sums, category counts or histograms (:func:`uaap.data.preprocess.local_statistics`). A deployed
client answers from its own table (its node config's data path), a simulated one from its partition's rows.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from uaap.config import RunConfig
from uaap.data.preprocess import local_statistics, statistics_to_json
from uaap.data.tables import RawTable, raw_parts, read_config_table
from uaap.errors import DataError
from uaap.protocol import NODE_DATA_PATH, NODE_NUM_PARTITIONS, NODE_PARTITION_ID

if TYPE_CHECKING:
    from flwr.app import Context

MAX_REQUEST = 4 * 2**20  # bytes: a stage's request carries the plan so far, a few kB per column


def own_rows(cfg: RunConfig, context: Context) -> RawTable:
    """This client's raw rows: its own table (deployment; ``cfg`` already points at it) or its partition."""
    if context.node_config.get(NODE_DATA_PATH):
        return read_config_table(cfg)
    pid = int(context.node_config.get(NODE_PARTITION_ID, 0))
    num = int(context.node_config.get(NODE_NUM_PARTITIONS, cfg.num_clients))
    parts, _ = raw_parts(cfg, num)
    if not 0 <= pid < len(parts):
        raise DataError(f"partition-id={pid} is outside 0..{len(parts) - 1}")
    return parts[pid]


def load_request(text: str, kind: str) -> Any:
    """A server's ``kind`` query request (JSON of at most MAX_REQUEST bytes), parsed but not yet checked."""
    if len(text) > MAX_REQUEST:
        article = "an" if kind[:1] in "aeiou" else "a"
        raise DataError(f"{article} {kind} request of {len(text)} bytes is over {MAX_REQUEST}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DataError(f"the {kind} request is not JSON ({type(exc).__name__})") from exc


def answer(request_text: str, cfg: RunConfig, context: Context) -> str:
    """The statistics of this client's rows for the stage ``request_text`` asks for, as JSON."""
    request = load_request(request_text, "preprocessing")
    if not isinstance(request, dict) or request.get("stage") not in ("schema", "moments", "quantiles", "scaling"):
        raise DataError("the preprocessing request names no known stage")
    if cfg.dataset != "csv":
        raise DataError(f"dataset={cfg.dataset!r} is bundled and preprocessed the same way everywhere; nothing to fit")
    try:
        return statistics_to_json(local_statistics(own_rows(cfg, context).frame, request))
    except (KeyError, TypeError) as exc:
        raise DataError(f"the preprocessing request is malformed ({type(exc).__name__}: {exc})") from exc
