"""UAAP's ClientApp, except that partition 1 sends a booster of another objective (a participant that lies)."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.app import evaluate_global, train
from uaap.models import boosting

app = ClientApp()


@app.train()
def _train(msg: Message, context: Context) -> Message:
    reply = train(msg, context)
    if int(context.node_config["partition-id"]) == 1:
        raw = boosting.from_record(reply.content.array_records["arrays"])
        reply.content["arrays"] = boosting.to_record(raw.replace(b"binary:logistic", b"reg:logistic"))
    return reply


@app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    return evaluate_global(msg, context)
