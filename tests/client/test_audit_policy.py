"""A client's answer to a federated audit keeps the protection its run trained under, whatever the server asks: under
CKKS the additive sums leave only as ciphertext, and a SecAgg+ run (no CKKS key to hide them) is not audited at all.
The server refuses both too (server/audit.py); these tests hand the client a server that does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.audit import answer, refuse_unprotected
from tests.flower_helpers import set_task_identity
from uaap.config import RunConfig
from uaap.errors import DataError
from uaap.explain import federated as fx
from uaap.monitor.fairness import GROUP
from uaap.protocol import AUDIT_REQUEST, CONFIG

EXPLAINED = {fx.ROWS, fx.SHAP_ABS, fx.SHAP_SUM, fx.OUTPUT_SUM, fx.LOSS, fx.LOSS_PERMUTED}  # an explain answer's sums
CKKS = RunConfig(dataset="csv", data_path="t.csv", target="y", secure_aggregation="ckks")


@pytest.mark.parametrize(
    ("kind", "clear", "refused"),
    [
        ("explain", EXPLAINED, "['loss.permuted', 'loss.sum', 'output.sum', 'shap.abs', 'shap.sum'] in the clear"),
        ("explain", {fx.ROWS, fx.LOSS}, "['loss.sum'] in the clear"),
        ("fairness", {f"{GROUP}a"}, f"['{GROUP}a'] in the clear"),
    ],
)
def test_under_ckks_a_client_refuses_to_send_additive_sums_in_the_clear(kind: str, clear: set, refused: str) -> None:
    with pytest.raises(DataError, match=refused.replace("[", r"\[").replace("]", r"\]")):
        refuse_unprotected(CKKS, kind, clear)


def test_what_may_travel_in_the_clear_still_does() -> None:
    refuse_unprotected(CKKS, "explain", {fx.ROWS})  # the row count, beside the one ciphertext
    refuse_unprotected(CKKS, "fairness", set())
    refuse_unprotected(CKKS, "drift-current", {"x0"})  # drift sketches travel in the clear (documented)
    refuse_unprotected(CKKS.replace(secure_aggregation="none"), "explain", EXPLAINED)  # nothing to keep


def test_a_secagg_plus_client_answers_no_audit_before_reading_a_row(tmp_path: Path) -> None:
    set_task_identity()
    request = ConfigRecord({AUDIT_REQUEST: json.dumps({"kind": "ranges"})})
    msg = Message(content=RecordDict({CONFIG: request}), dst_node_id=1, message_type="query.audit")
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    masked = CKKS.replace(secure_aggregation="secagg+", data_path=str(tmp_path / "absent.csv"))
    # the refusal, not the missing table (which reading a row would have hit first)
    with pytest.raises(DataError, match=r"secure-aggregation='secagg\+' .*in the clear; refused"):
        answer(msg, context, masked)
