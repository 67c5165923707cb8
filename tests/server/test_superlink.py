"""server.superlink: Flower's own in-memory SuperLink state, with each node's id a digest of its public key.

The ids are checked against SHA-256 computed here, on Flower's ``InMemoryLinkState`` (the class the SuperLink
uses without ``--database``): a second state (a restarted SuperLink) gives every key the id the first gave it,
so the privacy ledger's client names survive a server restart. The whole deployment (kill and resume) is in
tests/test_deploy_e2e.py.
"""

from __future__ import annotations

import hashlib

import pytest

from server import superlink


def _state():  # what flower-superlink builds without --database
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink.federation.noop_federation_manager import NoOpFederationManager

    return LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()).state()


def test_the_flower_internals_server_superlink_relies_on_are_there():
    superlink.check_flower()


def test_a_restarted_superlink_gives_each_key_the_id_of_its_digest():
    superlink.install()
    keys = [f"ssh-key-{i}".encode() for i in range(3)]
    first, restarted = _state(), _state()
    ids = [first.create_node("aid", "owner", key, 10.0) for key in keys]
    again = [restarted.create_node("aid", "owner", key, 10.0) for key in reversed(keys)][::-1]
    expected = [int.from_bytes(hashlib.sha256(b"uaap/node-id/v1\x00" + k).digest()[:8], "big") for k in keys]
    assert ids == again == expected
    assert [restarted.get_node_id_by_public_key(k) for k in keys] == expected


def test_a_taken_id_is_refused_not_shared():
    superlink.install()
    state = _state()
    node = state.create_node("aid", "owner", b"key", 10.0)
    with pytest.raises(ValueError, match="already in use"):
        state.create_node("aid", "owner", b"key", 10.0)  # the same key twice: Flower's own refusal stays
    state.delete_node("aid", node)
    with pytest.raises(ValueError, match="already in use"):  # as Flower's: an unregistered key stays spent
        state.create_node("aid", "owner", b"key", 10.0)
    assert state.create_node("aid", "owner", b"another key", 10.0) == superlink.node_id_for(b"another key")


def test_reserved_ids_are_skipped():
    key = b"any key"
    first = superlink.node_id_for(key)
    second = superlink.node_id_for(key, exclude={first})
    assert second != first and second == int.from_bytes(
        hashlib.sha256(b"uaap/node-id/v1\x00" + key).digest()[1:9], "big"
    )


def test_a_changed_flower_internal_fails_loudly(monkeypatch):
    from flwr.server.superlink.linkstate import in_memory_linkstate as iml

    monkeypatch.delattr(iml, "generate_rand_int_from_bytes")
    with pytest.raises(RuntimeError, match="does not match the installed Flower.*--state-db"):
        superlink.check_flower()
