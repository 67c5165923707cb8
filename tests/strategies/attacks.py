"""Misbehaving participants for the adversarial simulations: UAAP's own ClientApp, then one change per attack.

An attacking client trains honestly (its update looks real), then breaks one rule of the protocol in its
reply; which rule depends on its partition and the round, so a few clients cover every class of attack.
Honest clients write each reply they send to ``dump_dir`` (``r<round>-p<partition>.npz`` and ``.json``), so a
test can compute the aggregate of the honest replies alone and the releases they carried.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from uaap.protocol import ARRAYS, CLIENT_INFO, CONFIG, HE_HEADER, HE_WEIGHT, METRICS, NUM_EXAMPLES, PARTITION_ID

Attack = Callable[[Message, Context], None]


def _metrics(reply: Message) -> dict[str, object]:
    return dict(reply.content.metric_records[METRICS])


def _set_metric(reply: Message, key: str, value: object) -> None:
    reply.content.metric_records[METRICS][key] = value  # type: ignore[assignment]  # the attack's point


def _header(reply: Message, text: bytes) -> None:
    from uaap.crypto.wire import _u8_array

    reply.content.array_records[ARRAYS][HE_HEADER] = _u8_array(text)


def extra_metric(reply: Message, context: Context) -> None:
    _set_metric(reply, "backdoor", 1.0)


def huge_weight(reply: Message, context: Context) -> None:
    _set_metric(reply, NUM_EXAMPLES, 1e308)


def string_partition(reply: Message, context: Context) -> None:
    reply.content.config_records[CLIENT_INFO] = ConfigRecord({PARTITION_ID: "not-an-int"})


def claimed_identity_bigger_model(reply: Message, context: Context) -> None:
    """Claim partition 0 (an honest client) and send a model with a bigger first layer."""
    reply.content.config_records[CLIENT_INFO] = ConfigRecord({PARTITION_ID: 0})
    record = reply.content.array_records[ARRAYS]
    first = next(iter(record.keys()))
    grown = np.zeros((record[first].shape[0] + 1000, *record[first].shape[1:]), dtype=np.float32)
    record[first] = Array(grown)


def integer_arrays(reply: Message, context: Context) -> None:
    record = reply.content.array_records[ARRAYS]
    for name in list(record.keys()):
        record[name] = Array(np.round(record[name].numpy()).astype(np.int32))


def nan_update(reply: Message, context: Context) -> None:
    record = reply.content.array_records[ARRAYS]
    name = next(iter(record.keys()))
    values = record[name].numpy().copy()
    values.flat[0] = np.nan
    record[name] = Array(values)


def extra_record(reply: Message, context: Context) -> None:
    reply.content["second-model"] = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})


def nested_header(reply: Message, context: Context) -> None:
    _header(reply, b"[" * 5_000 + b"]" * 5_000)  # 10 KB: within the size cap, deep enough for a RecursionError


def huge_declared_size(reply: Message, context: Context) -> None:
    """A 270-byte header that declares 2e12 values (this once cost the server 219 MiB and 0.9 s)."""
    header = {
        "format": "uaap-ckks/2",
        "n_values": 2 * 10**12,
        "n_ciphertexts": 2 * 10**12 // 8192,
        "shapes": [[2 * 10**12]],
        "dtypes": ["float32"],
        "modulus": "1",
    }
    _header(reply, json.dumps(header).encode())


def foreign_key(reply: Message, context: Context) -> None:
    """Re-encrypt under another federation's key."""
    from uaap import crypto
    from uaap.config import RunConfig

    record = reply.content.array_records[ARRAYS]
    with tempfile.TemporaryDirectory() as tmp:
        other = crypto.generate_keys(Path(tmp) / "other")
        hctx = crypto.load_context(other.secret)
        shapes = crypto.record_shapes(record)
        zeros = [np.zeros(s, dtype=np.float32) for s in shapes]
        weight = float(_metrics(reply)[HE_WEIGHT])  # type: ignore[arg-type]
        reply.content[ARRAYS] = crypto.encrypt_weights(zeros, weight, hctx, max_summands=RunConfig().num_clients)


def weight_mismatch(reply: Message, context: Context) -> None:
    _set_metric(reply, HE_WEIGHT, float(_metrics(reply)[HE_WEIGHT]) * 1000)  # type: ignore[arg-type]


def plaintext_under_he(reply: Message, context: Context) -> None:
    from uaap import crypto

    shapes = crypto.record_shapes(reply.content.array_records[ARRAYS])
    reply.content[ARRAYS] = ArrayRecord({f"w{i}": Array(np.zeros(s, dtype=np.float32)) for i, s in enumerate(shapes)})


PLAINTEXT: dict[int, tuple[Attack, ...]] = {  # partition -> attack in rounds 1, 2, 3
    3: (extra_metric, huge_weight, claimed_identity_bigger_model),
    4: (string_partition, nan_update, integer_arrays),
}
ENCRYPTED: dict[int, tuple[Attack, ...]] = {
    3: (foreign_key, nested_header, huge_declared_size),
    4: (weight_mismatch, extra_record, plaintext_under_he),
}


def _dump(reply: Message, folder: Path, server_round: int, pid: int) -> None:
    record = reply.content.array_records[ARRAYS]
    np.savez(folder / f"r{server_round}-p{pid}.npz", **{k: record[k].numpy() for k in record})
    (folder / f"r{server_round}-p{pid}.json").write_text(json.dumps({"order": list(record.keys()), **_metrics(reply)}))


def federation_app(attacks: dict[int, tuple[Attack, ...]], dump_dir: str) -> ClientApp:
    """UAAP's ClientApp in which the partitions in ``attacks`` misbehave; honest replies go to ``dump_dir``."""
    from client.app import evaluate_global, train
    from uaap.protocol import SERVER_ROUND

    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config[PARTITION_ID])  # type: ignore[arg-type]
        server_round = int(msg.content.config_records[CONFIG][SERVER_ROUND])  # type: ignore[arg-type]
        reply = train(msg, context)
        if pid in attacks:
            attacks[pid][(server_round - 1) % len(attacks[pid])](reply, context)
        else:
            _dump(reply, Path(dump_dir), server_round, pid)
        return reply

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        reply = evaluate_global(msg, context)
        if int(context.node_config[PARTITION_ID]) in attacks:  # type: ignore[arg-type]
            _set_metric(reply, "loss-sum", -7.0)  # out of range: rejected
        return reply

    return app
