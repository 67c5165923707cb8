"""Build real Flower messages in tests (what a ClientApp would send back)."""

from __future__ import annotations

from collections.abc import Callable

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


def train_metrics(n: float, loss: float = 0.5, **extra: float) -> dict[str, float]:
    """The metrics a real training reply carries (client.app.train), with ``extra`` on top."""
    from uaap.protocol import NUM_EXAMPLES, STEPS, STRAGGLER, TRAIN_LOSS

    return {NUM_EXAMPLES: n, TRAIN_LOSS: loss, STEPS: 10, STRAGGLER: 0, **extra}


def eval_metrics(n: int, correct: int, classes: int = 3, loss: float = 0.5, **extra: object) -> dict[str, object]:
    """The counts a real evaluation reply carries (client.app.evaluate_global): ``n`` rows of class 0, of which
    ``correct`` are predicted right and the rest as class 1; two classes add the score histograms."""
    from uaap.metrics import AUC_BINS
    from uaap.protocol import CONFUSION, LOSS_SUM, NUM_EXAMPLES, SCORE_HIST_NEG, SCORE_HIST_POS

    confusion = [0] * (classes * classes)
    confusion[0], confusion[1] = correct, n - correct
    out: dict[str, object] = {NUM_EXAMPLES: n, LOSS_SUM: loss * n, CONFUSION: confusion}
    if classes == 2:
        out[SCORE_HIST_NEG] = [n] + [0] * (AUC_BINS - 1)
        out[SCORE_HIST_POS] = [0] * AUC_BINS
    return out | extra


class FakeGrid:
    """The two Grid calls a strategy's configure_* make (no SuperLink needed to build messages)."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        set_task_identity()
        return self.nodes

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id)


def configure(strategy: object, server_round: int, arrays: object, nodes: list[int]) -> list[Message]:
    """Run ``strategy.configure_train`` as the server loop does (it learns the round's model there)."""
    from flwr.app import ConfigRecord

    return list(strategy.configure_train(server_round, arrays, ConfigRecord({}), FakeGrid(nodes)))  # type: ignore[attr-defined]  # any Strategy


class LocalGrid(FakeGrid):
    """A Grid that runs the real ClientApp functions (client.app) in this process: a federation without Ray.

    Node ``i`` (1-based) holds partition ``i - 1`` of ``num_nodes``; nodes in ``silent`` never reply (a lost
    client, for the round timeout). Each node keeps its ``Context`` across rounds, as a SuperNode does.
    """

    def __init__(
        self,
        num_nodes: int,
        *,
        silent: frozenset[int] = frozenset(),
        tamper: dict[int, Callable[[Message], Message]] | None = None,
    ) -> None:
        from flwr.app import Context

        super().__init__(list(range(1, num_nodes + 1)))
        self.silent = silent
        self.tamper = tamper or {}  # node -> what it does to its honest reply (a participant that lies)
        self.contexts = {
            n: Context(1, n, {"partition-id": n - 1, "num-partitions": num_nodes}, RecordDict(), {}) for n in self.nodes
        }
        self._replies: dict[str, Message] = {}
        self.pushed: list[Message] = []

    def push_messages(self, messages: list[Message]) -> list[str]:
        from uuid import uuid4

        from client.app import evaluate_global, preprocess_statistics, train

        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())  # what Flower's grids do on push
            self.pushed.append(msg)
            ids.append(msg.metadata.message_id)
            node = int(msg.metadata.dst_node_id)
            if node in self.silent:
                continue
            kind = msg.metadata.message_type
            handler = {MessageType.TRAIN: train, MessageType.EVALUATE: evaluate_global}.get(kind, preprocess_statistics)
            set_task_identity()
            reply = handler(msg, self.contexts[node])
            self._replies[msg.metadata.message_id] = self.tamper.get(node, lambda m: m)(reply)
        return ids

    def pull_messages(self, message_ids: set[str]) -> list[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]
