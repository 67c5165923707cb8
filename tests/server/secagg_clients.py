"""UAAP's ClientApp in which partition 4 dies after sharing its SecAgg+ keys (it never sends its masked vector).

In a run without SecAgg+ the same partition fails every training message, so the two runs aggregate the same
four clients' updates.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.app import evaluate_global, run_end, train
from uaap.protocol import PARTITION_ID, SECAGG, SECAGG_STAGE, STAGE_COLLECT

DIES = 4
app = ClientApp()


@app.train()
def _train(msg: Message, context: Context) -> Message:
    if int(context.node_config[PARTITION_ID]) == DIES:  # type: ignore[arg-type]
        stage = msg.content.config_records[SECAGG][SECAGG_STAGE] if SECAGG in msg.content.config_records else None
        if stage in (None, STAGE_COLLECT):
            raise RuntimeError(f"partition {DIES} died after sharing its keys")
    return train(msg, context)


@app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    return evaluate_global(msg, context)


@app.query()
def _query(msg: Message, context: Context) -> Message:
    return run_end(msg, context)
