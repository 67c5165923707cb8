"""A ClientApp whose every training fails (a crashing client, as a SIGSEGV'd worker looks to the server)."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def _train(msg: Message, context: Context) -> Message:
    raise RuntimeError("this client always crashes")


@app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    raise RuntimeError("this client always crashes")
