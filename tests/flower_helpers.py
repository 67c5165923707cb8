"""Build real Flower messages in tests (what a ClientApp would send back)."""

from __future__ import annotations

from flwr.app import Message, MessageType, RecordDict


def set_task_identity() -> None:
    """Outside a running app Flower has no task identity; messages need one (run and task ids)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def reply_from(node_id: int, content: RecordDict, message_type: str = MessageType.TRAIN) -> Message:
    """A reply Message as node ``node_id`` would send it, with ``content``."""
    set_task_identity()
    request = Message(content=RecordDict(), dst_node_id=node_id, message_type=message_type)
    return Message(content=content, reply_to=request)
