"""A deployed client exits 0 when the server says the run ended (the run's last message), not after losing it."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from client.app import run_end
from client.launcher import ClientOptions, FlowerClient
from tests.flower_helpers import set_task_identity
from uaap.protocol import CONFIG, NODE_STATUS_FILE, RUN_END, RUN_END_REASON, RUN_END_RUN


def _end_message(status: str) -> Message:
    set_task_identity()  # Flower builds messages only inside a task
    record = ConfigRecord({RUN_END: status, RUN_END_RUN: "study-1", RUN_END_REASON: ""})
    return Message(content=RecordDict({CONFIG: record}), dst_node_id=1, message_type=MessageType.QUERY)


def test_the_clientapp_writes_the_run_end_where_its_node_config_says(tmp_path: Path) -> None:
    status = tmp_path / "run-end.json"
    context = Context(1, 1, {NODE_STATUS_FILE: str(status)}, RecordDict(), {})
    run_end(_end_message("completed"), context)
    assert json.loads(status.read_text())[RUN_END] == "completed"
    status.unlink()
    run_end(_end_message("anything else"), context)  # not a status: nothing written
    assert not status.exists()
    run_end(_end_message("completed"), Context(1, 1, {}, RecordDict(), {}))  # a simulated client: no file


class _SleepingSupernode(FlowerClient):
    """A SuperNode stand-in that would run for a minute."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(60)"]


def test_the_launcher_exits_0_as_soon_as_the_run_ended(tmp_path: Path, capsys) -> None:
    status = tmp_path / "run-end.json"
    client = _SleepingSupernode(ClientOptions(server="127.0.0.1:1", status_file=status, quiet=True))
    client.start()

    def finish() -> None:
        time.sleep(1.0)
        status.write_text(json.dumps({RUN_END: "completed", RUN_END_RUN: "study-1", RUN_END_REASON: ""}))

    threading.Thread(target=finish).start()
    t0 = time.monotonic()
    assert client.wait() == 0
    assert time.monotonic() - t0 < 10
    assert client.proc is not None and client.proc.poll() is not None, "the SuperNode was stopped"
    assert "run study-1 finished (completed); exiting" in capsys.readouterr().out
