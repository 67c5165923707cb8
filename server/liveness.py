"""Replies that will not come: a client that left, came back as a new SuperNode, or stopped halfway through a reply.

Flower 1.42's deployed grid (``HttpGrid.pull_messages``) hands the ServerApp a reply in two steps: the reply's
message (the SuperLink deletes it from its state as it answers) and then the reply's objects (``pull_objects``,
retried with a backoff of up to 10 s for ``PULL_MAX_TIME`` = 2 h or 500 tries an object). A SuperNode that dies
after pushing a reply's message and before all of its objects leaves the reply *half-sent*: the pull then blocks
until the SuperLink drops the upload (``OBJECT_PUSH_SESSION_TTL_SECONDS`` = 180 s) and only then returns an error
reply, and the round loop, inside that one call, cannot notice that the node left. Measured: round 2 of the e2e
fault test waited 185 s for a warm client killed while it sent its reply. Neither Flower's heartbeats (a node is
offline 60 s after its last one, at once when it says goodbye) nor the run's round timeout reached into that call.

A client that is restarted with the same SuperNode key comes back with the same node id but without the message
it was sent (the SuperLink handed it to the old process), so its reply never comes either; when it restarts
within the round loop's liveness check, the node looks online throughout.

:class:`NodeWatch` covers both for one exchange: it notes each node's ``last_activated_at`` (Flower's
``NodeInfo``; it changes when a node comes back online) when the exchange starts, :meth:`NodeWatch.lost` names
the nodes that went offline or came back since, and :meth:`NodeWatch.pull` pulls replies with the object pulls
bounded: an object still missing after ``grace`` seconds while a watched node is lost, or at the exchange's
deadline (the run's round timeout), ends the pull with Flower's own error reply for that message
(``MESSAGE_UNAVAILABLE``), so the round goes on without it. A reply whose node stays online uploads as long as it
needs within the round timeout.

Flower internals this relies on (flwr 1.42, pinned): ``flwr.superlink.grid.http_grid`` calling its module-level
``pull_objects(object_ids=..., pull_object_fn=...)`` and turning an ``ObjectPullError`` into an error reply;
``pull_objects`` retrying on ``ObjectUnavailableError`` and stopping on ``ObjectPullError``; ``Grid.get_nodes()``
giving ``NodeInfo`` with ``node_id`` and ``last_activated_at``. :func:`check_flower` asserts each, and
``tests/server/test_node_watch.py`` runs it, so an upgrade that moves one fails a test by name.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flwr.app import Message
    from flwr.serverapp import Grid

GRACE = 5.0  # seconds an object may stay missing while a watched node is lost before its pull is given up
CHECK_EVERY = 2.0  # seconds between two listings of the nodes (one Runtime API call each)
_PATCHED = "_uaap_bounded"
_active: list[NodeWatch] = []  # the watches whose pulls run now (the object pulls run in Flower's thread pool)
_active_lock = threading.Lock()


def check_flower() -> None:
    """Fail loudly when the Flower internals this module relies on are not what it expects (see the docstring)."""
    from flwr.proto.node_pb2 import NodeInfo
    from flwr.serverapp import Grid
    from flwr.supercore.inflatable import inflatable_utils as iu
    from flwr.superlink.grid import http_grid

    problems = []
    source = inspect.getsource(http_grid.HttpGrid.pull_messages)
    if "pull_objects(" not in source or "pull_object_fn=" not in source or "except ObjectPullError" not in source:
        problems.append("HttpGrid.pull_messages no longer pulls objects through pull_objects(pull_object_fn=...)")
    if not callable(getattr(http_grid, "pull_objects", None)):
        problems.append("flwr.superlink.grid.http_grid has no module-level pull_objects")
    params = inspect.signature(iu.pull_objects).parameters
    if not {"object_ids", "pull_object_fn", "backoff_cap", "initial_backoff"} <= set(params):
        problems.append("pull_objects(object_ids, pull_object_fn, ..., initial_backoff, backoff_cap) changed")
    retry = inspect.getsource(iu.pull_objects)
    if "except ObjectUnavailableError" not in retry or not hasattr(iu, "ObjectPullError"):
        problems.append("pull_objects no longer retries on ObjectUnavailableError")
    if not hasattr(Grid, "get_nodes") or not {"node_id", "last_activated_at"} <= {
        f.name for f in NodeInfo.DESCRIPTOR.fields
    }:
        problems.append("Grid.get_nodes() no longer gives NodeInfo with node_id and last_activated_at")
    if problems:
        raise RuntimeError("server/liveness.py relies on Flower internals that changed: " + "; ".join(problems))


def _install() -> None:
    """Route ``HttpGrid``'s object pulls through the watches of the pulls running now (once per process)."""
    from flwr.superlink.grid import http_grid

    original = getattr(http_grid, "pull_objects")  # noqa: B009 - not re-exported: mypy would refuse the attribute
    if getattr(original, _PATCHED, False):
        return
    check_flower()

    def bounded(object_ids: list[str], pull_object_fn: Callable[[str], bytes], **kwargs: Any) -> dict[str, bytes]:
        with _active_lock:
            watches = list(_active)
        if not watches:
            return dict(original(object_ids, pull_object_fn, **kwargs))
        kwargs.setdefault("initial_backoff", 0.02)  # a reply still uploading is asked for again soon (Flower: 1 s)
        kwargs.setdefault("backoff_cap", 0.25)
        kwargs.setdefault("max_tries_per_object", None)  # the watch's deadline bounds it
        return dict(original(object_ids, _giving_up(pull_object_fn, watches), **kwargs))

    setattr(bounded, _PATCHED, True)
    setattr(http_grid, "pull_objects", bounded)  # noqa: B010 - see above


def _giving_up(pull_object_fn: Callable[[str], bytes], watches: list[NodeWatch]) -> Callable[[str], bytes]:
    """``pull_object_fn`` that turns a missing object into ``ObjectPullError`` once a watch says to give up."""
    from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, ObjectUnavailableError

    first_missing: dict[str, float] = {}

    def pull(object_id: str) -> bytes:
        try:
            return pull_object_fn(object_id)
        except ObjectUnavailableError:
            missing = time.monotonic() - first_missing.setdefault(object_id, time.monotonic())
            for watch in watches:
                if why := watch.give_up(missing):
                    raise ObjectPullError(object_id, why) from None
            raise

    return pull


class NodeWatch:
    """The nodes one exchange waits for: which of them left or came back since it began, and bounded pulls."""

    def __init__(
        self, grid: Grid, nodes: Iterable[int], deadline: float, *, grace: float = GRACE, every: float = CHECK_EVERY
    ) -> None:
        self.grid, self.deadline, self.grace, self.every = grid, deadline, grace, every
        self.watched = {int(n) for n in nodes}
        self.began = self._activations()
        self.lost_nodes: set[int] = set()
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _activations(self) -> dict[int, str]:
        """``{node id: last_activated_at}`` of the nodes online now (``get_node_ids``, Flower's list of online
        nodes; the activation times from ``get_nodes`` where the grid has it)."""
        online = {int(n) for n in self.grid.get_node_ids()}
        get_nodes = getattr(self.grid, "get_nodes", None)
        stamps = {int(n.node_id): str(n.last_activated_at) for n in get_nodes()} if get_nodes else {}
        return {n: stamps.get(n, "") for n in online}

    def lost(self, *, now: bool = False) -> set[int]:
        """Watched nodes that went offline or came back online (a restarted client) since the watch began; the
        nodes are listed at most every ``every`` seconds (``now``: list them now)."""
        with self._lock:
            if now or time.monotonic() - self._checked >= self.every:
                self._checked = time.monotonic()
                online = self._activations()
                self.lost_nodes |= {n for n in self.watched if online.get(n) != self.began.get(n, "?")}
            return set(self.lost_nodes)

    def give_up(self, missing_for: float) -> str:
        """Why an object missing for ``missing_for`` seconds is not waited for any longer ('' to keep waiting)."""
        if time.monotonic() >= self.deadline:
            return "the round timeout passed while the reply was still uploading"
        if missing_for >= self.grace and (gone := self.lost()):
            return f"the reply stopped halfway and node(s) {sorted(gone)} left or restarted"
        return ""

    def pull(self, message_ids: Iterable[str]) -> list[Message]:
        """``grid.pull_messages(message_ids)`` with its object pulls bounded by this watch."""
        _install()
        with _active_lock:
            _active.append(self)
        try:
            return list(self.grid.pull_messages(message_ids))
        finally:
            with _active_lock:
                _active.remove(self)


def label_rounds(messages: Iterable[Message]) -> None:
    """Give each message without a ``group_id`` its round's number (``server-round`` of its config), as Flower's
    legacy strategies did: the SuperNode then logs ``[RUN r, ROUND n]`` for it, and ``flower-client``'s JSON round
    events carry the round."""
    from uaap.protocol import CONFIG, SERVER_ROUND

    for message in messages:
        config = message.content.config_records.get(CONFIG) if message.has_content() else None
        if not message.metadata.group_id and config is not None and SERVER_ROUND in config:
            message.metadata.group_id = str(config[SERVER_ROUND])
