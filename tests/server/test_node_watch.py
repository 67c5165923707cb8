"""server.liveness: the Flower internals it relies on are still there (an upgrade that moves one fails here, by
name); a node that left or came back is named; a half-sent reply's object pull ends at the grace or the deadline,
through Flower's own pull_objects and its retry loop. The deployed path (a warm client killed mid-round, then
restarted) runs in tests/test_deploy_e2e.py."""

from __future__ import annotations

import time

import pytest
from flwr.proto.node_pb2 import NodeInfo

from server import liveness


class Nodes:
    """The SuperLink's answers to GetNodes, as the grid gives them (real NodeInfo records)."""

    def __init__(self, **activated: str) -> None:
        self.activated = dict(activated)

    def get_node_ids(self) -> list[int]:
        return [int(n) for n in self.activated]

    def get_nodes(self) -> list[NodeInfo]:
        return [NodeInfo(node_id=int(n), status="online", last_activated_at=t) for n, t in self.activated.items()]


def test_the_flower_internals_server_liveness_relies_on_are_there():
    import flwr

    assert flwr.__version__.startswith("1.42.")
    liveness.check_flower()


def test_a_changed_flower_internal_fails_loudly(monkeypatch):
    from flwr.superlink.grid import http_grid

    def pull_messages(self, message_ids):  # a Flower that pulls a reply's objects some other way
        return []

    monkeypatch.setattr(http_grid.HttpGrid, "pull_messages", pull_messages)
    with pytest.raises(RuntimeError, match="no longer pulls objects through pull_objects"):
        liveness.check_flower()


def test_nodes_that_left_or_came_back_are_lost_and_others_are_not():
    grid = Nodes(**{"1": "t0", "2": "t0", "3": "t0"})
    watch = liveness.NodeWatch(grid, [1, 2, 3, 4], deadline=time.monotonic() + 60)  # 4 was never online
    assert watch.lost(now=True) == {4}
    del grid.activated["2"]  # said goodbye, or missed its heartbeats
    grid.activated["3"] = "t1"  # restarted with the same key: same node id, activated again
    assert watch.lost(now=True) == {2, 3, 4}
    grid.activated["2"] = "t0"  # a node once lost stays lost for this exchange: its message went to the old one
    assert watch.lost(now=True) == {2, 3, 4}


def _missing(object_id: str) -> bytes:
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    raise ObjectUnavailableError(object_id)


def _pull(watch: liveness.NodeWatch, pull_object_fn) -> dict[str, bytes]:
    """The object pull HttpGrid.pull_messages makes for one reply, while ``watch`` is pulling."""
    from flwr.superlink.grid import http_grid

    liveness._install()
    liveness._active.append(watch)
    try:
        return http_grid.pull_objects(object_ids=["a", "b"], pull_object_fn=pull_object_fn)
    finally:
        liveness._active.remove(watch)


def test_a_half_sent_reply_is_given_up_soon_after_its_node_left():
    from flwr.supercore.inflatable.inflatable_utils import ObjectPullError

    grid = Nodes(**{"1": "t0", "2": "t0"})
    watch = liveness.NodeWatch(grid, [1, 2], deadline=time.monotonic() + 600, grace=0.5, every=0.1)
    del grid.activated["1"]
    t0 = time.monotonic()
    with pytest.raises(ObjectPullError, match=r"stopped halfway and node\(s\) \[1\] left"):
        _pull(watch, _missing)
    assert time.monotonic() - t0 < 3.0  # Flower's own pull waits for the upload session's 180 s


def test_a_reply_of_live_nodes_waits_until_the_deadline_only():
    from flwr.supercore.inflatable.inflatable_utils import ObjectPullError

    watch = liveness.NodeWatch(Nodes(**{"1": "t0"}), [1], deadline=time.monotonic() + 1.5, grace=0.1, every=0.1)
    t0 = time.monotonic()
    with pytest.raises(ObjectPullError, match="round timeout passed"):
        _pull(watch, _missing)
    assert 1.4 < time.monotonic() - t0 < 4.0


def test_a_slow_upload_of_a_live_node_is_pulled_whole():
    ready = time.monotonic() + 0.8
    watch = liveness.NodeWatch(Nodes(**{"1": "t0"}), [1], deadline=time.monotonic() + 60, grace=0.1, every=0.1)

    def slowly(object_id: str) -> bytes:
        return object_id.encode() if time.monotonic() > ready else _missing(object_id)

    assert _pull(watch, slowly) == {"a": b"a", "b": b"b"}


def test_without_a_watch_the_pull_is_flowers_own():
    from flwr.superlink.grid import http_grid

    liveness._install()
    assert http_grid.pull_objects(object_ids=["a"], pull_object_fn=lambda oid: b"x") == {"a": b"x"}


def test_messages_are_labelled_with_their_round_as_flowers_legacy_strategies_did():
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    from tests.flower_helpers import set_task_identity
    from uaap.protocol import CONFIG, RUN_END, SERVER_ROUND

    set_task_identity()
    train = Message(
        RecordDict({CONFIG: ConfigRecord({SERVER_ROUND: 3})}), dst_node_id=1, message_type=MessageType.TRAIN
    )
    end = Message(RecordDict({}), dst_node_id=1, message_type=MessageType.QUERY, group_id=RUN_END)
    liveness.label_rounds([train, end])
    assert (train.metadata.group_id, end.metadata.group_id) == ("3", RUN_END)  # the SuperNode logs "[RUN r, ROUND 3]"
