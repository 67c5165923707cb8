"""A deployed client's node config pins its protection: the real ClientApp refuses a server that asks for less."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from client.policy import ClientPolicy, PolicyError, check_spent, enforce
from tests.flower_helpers import set_task_identity
from uaap import crypto
from uaap.config import RunConfig
from uaap.models import build_model, get_weights, to_record
from uaap.protocol import ARRAYS, CONFIG, PROXIMAL_MU, RUN_CONFIG, SERVER_ROUND


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> crypto.KeyFiles:
    return crypto.generate_keys(tmp_path_factory.mktemp("policy") / "fed")


@pytest.fixture
def table(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    rows = ["a,b,c,d,y"] + [",".join(f"{v:.3f}" for v in r) + f",{int(r[0] > 0)}" for r in x]
    path = tmp_path / "mine.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _node(table: Path, keys: crypto.KeyFiles, **policy: str) -> Context:
    node = {"data-path": str(table), "target": "y", "he-secret-context": str(keys.secret), "policy": "deployed"}
    return Context(run_id=1, node_id=7, node_config=node | policy, state=RecordDict(), run_config={})


def _message(cfg: RunConfig) -> Message:
    set_task_identity()
    weights = get_weights(build_model(cfg.model, 4, 2, seed=0))
    config = ConfigRecord({RUN_CONFIG: cfg.to_json(), SERVER_ROUND: 1, PROXIMAL_MU: 0.0})
    content = RecordDict({ARRAYS: to_record(weights), CONFIG: config})
    return Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN)


def test_a_server_cannot_switch_secure_aggregation_or_dp_off(table: Path, keys: crypto.KeyFiles, uaap_home: Path):
    from client.app import train

    secure_cfg = RunConfig(model="logreg", local_epochs=1, secure_aggregation="ckks", num_clients=2)
    node = _node(table, keys, **{"require-secure-aggregation": "true", "require-dp": "true", "max-epsilon": "4.0"})
    with pytest.raises(PolicyError, match="secure-aggregation='none'.*requires 'ckks' or 'secagg\\+'"):
        train(_message(secure_cfg.replace(secure_aggregation="none", dp_local=True, dp_target_epsilon=2.0)), node)
    # pairwise masking hides the update from the server as CKKS does: the client takes part
    policy = ClientPolicy.from_node_config(node.node_config)
    masked = secure_cfg.replace(secure_aggregation="secagg+", dp_local=True, dp_target_epsilon=2.0)
    assert enforce(masked, policy).secure_aggregation == "secagg+"
    with pytest.raises(PolicyError, match="dp-local=false"):
        train(_message(secure_cfg), node)
    with pytest.raises(PolicyError, match="dp-target-epsilon=8.*at most 4"):
        train(_message(secure_cfg.replace(dp_local=True, dp_target_epsilon=8.0)), node)
    # what the client requires, it runs: the reply is ciphertext, encrypted with the client's own key
    reply = train(_message(secure_cfg.replace(dp_local=True, dp_target_epsilon=3.0)), node)
    assert crypto.is_encrypted(reply.content.array_records[ARRAYS])
    assert crypto.record_fingerprint(reply.content.array_records[ARRAYS]) == keys.fingerprint


def test_data_and_keys_come_from_the_node_not_the_server(table: Path, keys: crypto.KeyFiles, tmp_path: Path):
    policy = ClientPolicy.from_node_config(_node(table, keys).node_config)
    asked = RunConfig(
        dataset="csv",
        data_path="sqlite:////srv/clinic.db",
        data_query="SELECT * FROM billing",
        target="x",
        he_secret_context=str(tmp_path / "theirs"),
    )
    ran = enforce(asked, policy)
    assert ran.data_path == str(table) and ran.target == "y" and ran.he_secret_context == str(keys.secret)
    assert ran.data_query == "" and ran.data_table == ""
    bare = ClientPolicy.from_node_config({"policy": "deployed", "partition-id": 0})  # flower-client --partition-id
    with pytest.raises(PolicyError, match="asks this client to read 'sqlite:////srv/clinic.db'"):
        enforce(asked, bare)
    assert enforce(RunConfig(dataset="digits"), bare).dataset == "digits"
    # a simulated client (no policy) runs the run config as sent: a simulation is one trust domain
    assert enforce(asked, ClientPolicy.from_node_config({"partition-id": 0})) == asked


def test_an_update_past_the_clients_own_epsilon_is_not_sent():
    policy = ClientPolicy(deployed=True, require_dp=True, max_epsilon=4.0)
    check_spent(3.99, policy)
    with pytest.raises(PolicyError, match="4.0100.*above its --max-epsilon 4"):
        check_spent(4.01, policy)
    check_spent(99.0, ClientPolicy())  # no policy, no limit
