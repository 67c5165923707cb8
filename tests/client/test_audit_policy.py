"""A client's answer to a federated audit keeps the protection its run trained under, whatever the server asks: under
CKKS the additive sums leave only as ciphertext, and a SecAgg+ run (no CKKS key to hide them) is not audited at all.
The server refuses both too (server/audit.py); these tests hand the client a server that does not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from tests.flower_helpers import set_task_identity
from uaap.config import RunConfig
from uaap.errors import DataError
from uaap.protocol import AUDIT_REQUEST, CONFIG


def _message(request: dict) -> Message:
    set_task_identity()
    record = ConfigRecord({AUDIT_REQUEST: json.dumps(request)})
    return Message(content=RecordDict({CONFIG: record}), dst_node_id=1, message_type="query.audit")


CONTEXT = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
EXPLAINED = {":rows": np.array([40.0]), "shap.abs": np.ones((3, 2)), "loss.sum": np.array([12.5])}


@pytest.mark.parametrize(
    ("request_", "refused"),
    [
        ({"kind": "explain", "grids": {}}, "asks for ['loss.sum', 'shap.abs'] in the clear; refused"),
        ({"kind": "explain", "grids": {}, "encrypt": ["shap.abs"]}, "asks for ['loss.sum'] in the clear; refused"),
        ({"kind": "fairness", "sensitive": "plan"}, "asks for ['group:a'] in the clear; refused"),
    ],
)
def test_under_ckks_a_client_refuses_to_send_additive_sums_in_the_clear(
    monkeypatch: pytest.MonkeyPatch, request_: dict, refused: str
) -> None:
    import client.audit as audit

    stats = EXPLAINED if request_["kind"] == "explain" else {"group:a": np.ones(4)}
    monkeypatch.setattr(audit, "compute", lambda *a: {k: v.copy() for k, v in stats.items()})
    cfg = RunConfig(dataset="csv", data_path="t.csv", target="y", secure_aggregation="ckks")
    with pytest.raises(DataError, match=refused.replace("[", r"\[").replace("]", r"\]")):
        audit.answer(_message(request_), CONTEXT, cfg)


def test_without_secure_aggregation_the_sums_go_in_the_clear_and_with_secagg_plus_nothing_is_computed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import client.audit as audit

    monkeypatch.setattr(audit, "compute", lambda *a: {k: v.copy() for k, v in EXPLAINED.items()})
    plain = RunConfig(dataset="csv", data_path="t.csv", target="y")
    reply = audit.answer(_message({"kind": "explain", "grids": {}}), CONTEXT, plain)
    assert reply.content.config_records[CONFIG]  # the plaintext sums, as a run without secure aggregation sends

    def never(*a: object) -> None:
        raise AssertionError("a SecAgg+ client computed sums for an audit")

    monkeypatch.setattr(audit, "compute", never)
    masked = RunConfig(dataset="csv", data_path="t.csv", target="y", secure_aggregation="secagg+")
    with pytest.raises(DataError, match=r"secure-aggregation='secagg\+' .*in the clear; refused"):
        audit.answer(_message({"kind": "ranges"}), CONTEXT, masked)
