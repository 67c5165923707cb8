"""The deployment's SuperLink: Flower's ``flower-superlink`` with its state in memory and node ids that are a
function of the SuperNodes' public keys.

Flower 1.42 keeps the SuperLink's state (nodes, runs, messages, and every object a message is made of) in SQLite
when ``--database`` is given, and every Fleet request (a message pull, each object pushed or pulled) runs several
SQLAlchemy transactions. ``benchmarks/deployment.py`` with 5 clients: 4.2 s a round with ``--database``, 3.5 s with
only the object store in memory, 2.3 s with all state in memory; the SuperLink's CPU fell from 0.75 to 0.5 of a
core on 2 shared cores.

``flower-server`` used the database for one thing: a SuperNode keeps its node id when the SuperLink restarts (the
launcher registers every key again at start, and a run in flight is never resumed by Flower: the launcher submits
a new one that continues from UAAP's checkpoint). The privacy ledger names clients by that id
(``strategies.dp_accounting.client_key``), so it must not change. Here Flower's in-memory state draws a node's id
from its public key (:func:`node_id_for`) instead of at random: the same key gets the same id in every SuperLink,
restarted or not, with nothing stored. An id is a 64-bit digest of the key, so two keys collide with
probability ~n^2 / 2^65; Flower refuses a second registration of a taken id ("Unexpected node registration
failure"), so a collision could never merge two clients.

Flower internals this relies on (flwr 1.42, pinned in pyproject.toml): ``InMemoryLinkState.create_node`` taking
the key as ``public_key`` and drawing the id with ``generate_rand_int_from_bytes(NODE_ID_NUM_BYTES, exclude=...)``
looked up in its module; ``flower_superlink`` reading ``sys.argv`` and using in-memory state when ``--database`` is
left out. :func:`check_flower` asserts each; ``tests/server/test_superlink.py`` runs it.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from contextvars import ContextVar

_KEY: ContextVar[bytes | None] = ContextVar("uaap_registering_key", default=None)
DOMAIN = b"uaap/node-id/v1\x00"  # what the digest is of: a UAAP node id, this scheme's version, then the key
NODE_ID_BYTES = 8  # flwr.common.constant.NODE_ID_NUM_BYTES
RESERVED = frozenset({0, 1})  # no node, and flwr.common.constant.SUPERLINK_NODE_ID


def node_id_for(public_key: bytes, num_bytes: int = 8, exclude: set[int] | frozenset[int] = frozenset()) -> int:
    """The node id of the SuperNode holding ``public_key``: an unsigned ``num_bytes`` integer from its SHA-256,
    never one of ``exclude`` (Flower's reserved ids: 0 and the SuperLink's own)."""
    digest = hashlib.sha256(DOMAIN + public_key).digest()
    for start in range(0, len(digest) - num_bytes + 1):
        candidate = int.from_bytes(digest[start : start + num_bytes], "big")
        if candidate not in exclude:
            return candidate
    raise ValueError("no node id left for this key")  # unreachable: 25 candidates against two reserved ids


def check_flower() -> None:
    """Fail loudly when the Flower internals this module patches are not what it expects (see the docstring)."""
    import importlib

    from flwr.common import constant
    from flwr.server.superlink.linkstate import in_memory_linkstate as iml

    fs = importlib.import_module("flwr.superlink.cli.flower_superlink")  # the module (the package exports the function)
    problems = []
    create = getattr(iml.InMemoryLinkState.create_node, "__wrapped__", iml.InMemoryLinkState.create_node)  # Flower's
    if "public_key" not in inspect.signature(create).parameters:
        problems.append("InMemoryLinkState.create_node no longer takes public_key")
    if "generate_rand_int_from_bytes(" not in inspect.getsource(create):
        problems.append("InMemoryLinkState.create_node no longer draws its id with generate_rand_int_from_bytes")
    if not callable(getattr(iml, "generate_rand_int_from_bytes", None)):
        problems.append("flwr...in_memory_linkstate no longer imports generate_rand_int_from_bytes")
    if "self.nodes" not in inspect.getsource(iml.InMemoryLinkState.__init__):
        problems.append("InMemoryLinkState no longer keeps its nodes in self.nodes")
    if (constant.NODE_ID_NUM_BYTES, {0, constant.SUPERLINK_NODE_ID}) != (NODE_ID_BYTES, set(RESERVED)):
        problems.append("node ids are no longer 8 bytes with 0 and 1 reserved")
    if "FLWR_IN_MEMORY_DB_NAME" not in inspect.getsource(fs):
        problems.append("flower-superlink no longer defaults to in-memory state without --database")
    if problems:
        raise RuntimeError(
            "server/superlink.py does not match the installed Flower: " + "; ".join(problems) + " (UAAP pins flwr "
            "1.42; on another version run flower-server --state-db to use Flower's SQLite state as shipped)"
        )


def install() -> None:
    """Make this process's in-memory SuperLink state give each node the id :func:`node_id_for` its key."""
    from flwr.server.superlink.linkstate import in_memory_linkstate as iml

    check_flower()
    if hasattr(iml.InMemoryLinkState.create_node, "__wrapped__"):
        return  # installed already
    draw = getattr(iml, "generate_rand_int_from_bytes")  # noqa: B009 - not re-exported by its module
    create = iml.InMemoryLinkState.create_node

    def generate(num_bytes: int, exclude: set[int] | None = None) -> int:
        key = _KEY.get()
        return draw(num_bytes, exclude) if key is None else node_id_for(key, num_bytes, frozenset(exclude or ()))

    def create_node(self: iml.InMemoryLinkState, *args: object, **kwargs: object) -> int:
        key = bytes(inspect.signature(create).bind(self, *args, **kwargs).arguments["public_key"])
        if node_id_for(key, NODE_ID_BYTES, RESERVED) in self.nodes:  # registered before (also if unregistered since)
            raise ValueError("Public key already in use")  # Flower's own refusal of a key it has seen
        token = _KEY.set(key)
        try:
            return create(self, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            _KEY.reset(token)

    create_node.__wrapped__ = create  # type: ignore[attr-defined]
    setattr(iml, "generate_rand_int_from_bytes", generate)  # noqa: B010 - the module's own name for it
    iml.InMemoryLinkState.create_node = create_node  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    """``flower-superlink`` with ``argv``: in memory, node ids from keys (``--database`` given: Flower's as is)."""
    from flwr.superlink.cli.flower_superlink import flower_superlink

    argv = sys.argv[1:] if argv is None else argv
    if "--database" not in argv:
        install()
    sys.argv = ["flower-superlink", *argv]
    flower_superlink()


if __name__ == "__main__":
    main()
