"""Text classification federated like the other tables (issue 14, part 3): a free-text column hashed into word-count
buckets on each client (no vocabulary, nothing about its words sent), a linear model and the embedding-bag classifier
federated with FedAvg through the real ClientApp (tests.LocalGrid), each within 3 points of the same model trained
centrally; every message both ways is inspected for the fixture's words. Fixture: tests/fixtures/text/topics.csv
(CC0, written for this repository)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from flwr.app import Message

from server.federation import run_federation
from tests.flower_helpers import LocalGrid
from uaap.config import RunConfig

TOPICS = Path(__file__).resolve().parents[1] / "fixtures" / "text" / "topics.csv"
CFG = RunConfig(
    data_path=str(TOPICS), dataset="csv", target="topic", text_columns="hashing", model="logreg", partition="iid",
    num_clients=3, min_clients=3, num_rounds=10, local_epochs=3, strategy="fedavg", learning_rate=0.1, seed=0,
    experiment="tests-text",
)  # fmt: skip


def _texts(msg: Message) -> list[bytes]:
    """Every key, text value and byte string a message carries (arrays as their raw bytes), lower-cased."""
    out: list[bytes] = []
    content = msg.content

    def add(value: Any) -> None:
        if isinstance(value, str):
            out.append(value.lower().encode())
        elif isinstance(value, bytes):
            out.append(value.lower())
        elif isinstance(value, list | tuple):
            for v in value:
                add(v)

    for records in (content.config_records, content.metric_records):
        for name, record in records.items():
            add(name)
            for key, value in record.items():
                add(key)
                add(value)
    for name, record in content.array_records.items():
        add(name)
        for key, array in record.items():
            add(key)
            add(array.data)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model", ["logreg", "embedding_bag"])
def test_hashed_text_federates_within_3_points_of_central_and_no_word_reaches_the_server(
    module_home: Path, model: str
) -> None:
    from uaap.centralized import train_central

    cfg = CFG.replace(model=model)
    replies: list[Message] = []

    def keep(reply: Message) -> Message:
        replies.append(reply)
        return reply

    grid = LocalGrid(3, tamper={n: keep for n in (1, 2, 3)})
    rd = run_federation(grid, cfg.replace(run_id=f"text-fed-{model}"), num_partitions=3)
    federated = [e for e in rd.events("round")][-1]["central"]["accuracy"]
    central = train_central(cfg.replace(run_id=f"text-central-{model}"), epochs=cfg.num_rounds * cfg.local_epochs)
    print(f"hashed text, {model}: federated accuracy {federated:.3f}, central {central.metrics['accuracy']:.3f}")
    central = central.metrics
    assert central["accuracy"] >= 0.9
    assert abs(federated - central["accuracy"]) <= 0.03

    words = {w for text in pd.read_csv(TOPICS)["text"] for w in re.findall(r"[a-z]{5,}", text.lower())}
    settings = cfg.to_json().lower()
    words = {w for w in words if w not in settings}  # in the run's setting names ("season" of "seasonal-period")
    assert len(words) > 50 and len(replies) >= 3 * cfg.num_rounds and grid.pushed
    seen = [blob for msg in [*grid.pushed, *replies] for blob in _texts(msg)]
    leaked = sorted(w for w in words if any(w.encode() in blob for blob in seen))
    assert not leaked, f"words of the clients' texts in the messages: {leaked[:10]}"
