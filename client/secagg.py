"""A client's side of SecAgg+ (``secure-aggregation = "secagg+"``; the protocol: :mod:`strategies.secagg`).

Every stage arrives as a training message carrying a ``secagg`` record; the client's secrets for the round live in
``context.state`` between messages (as Flower's ``secaggplus_mod`` keeps them) and are wiped after the unmask stage:

* setup: two fresh key pairs; reply with the public halves;
* share keys: check the neighbourhood the server sends (this client's own keys in it, no key twice, more than half
  of it needed to rebuild a secret), draw the self-mask seed, Shamir-share the seed and the masking key, and reply
  with one envelope per neighbour;
* collect masked vectors: open the envelopes addressed to this client (each must say it is from its sender and for
  this client), then train as usual; :func:`masked_update` replaces the plaintext update;
* unmask: answer once, and only for neighbours this client holds shares of; never reveal both the seed share and
  the key share of one node (a node the server calls both alive and dead is refused, as is this client called dead).

Under central DP the clipped update gets ``N(0, (sigma C)^2 / m)`` noise here, before masking (``m``: the clients the
server asked for a masked vector), so the sum the server unmasks is already noised.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from uaap.crypto import secagg
from uaap.errors import ConfigError
from uaap.models import flatten
from uaap.protocol import (
    SECAGG,
    SECAGG_CIPHERTEXTS,
    SECAGG_DEAD,
    SECAGG_DESTINATIONS,
    SECAGG_NODES,
    SECAGG_NOISE_COUNT,
    SECAGG_PK1,
    SECAGG_PK2,
    SECAGG_ROUND,
    SECAGG_SHARES,
    SECAGG_SOURCES,
    SECAGG_STAGE,
    SECAGG_THRESHOLD,
    STAGE_COLLECT,
    STAGE_SETUP,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    as_int,
)

if TYPE_CHECKING:
    from uaap.config import RunConfig

log = logging.getLogger("uaap.client.secagg")
STATE = "secagg-state"  # the key of this client's protocol state in context.state (never sent)
MASKED = "masked"  # the state's stage after masked_update
DONE = "done"


class ProtocolError(ValueError):
    """A SecAgg+ message this client refuses to act on."""


def params_of(cfg: RunConfig) -> secagg.Params:
    """The run's SecAgg+ settings, as this client runs them."""
    return secagg.Params(cfg.secagg_num_shares, cfg.secagg_threshold, cfg.secagg_clipping_range,
                         cfg.secagg_quantization_range)  # fmt: skip


def answer_stage(cfg: RunConfig, msg: Message, context: Context) -> Message | None:
    """This client's reply to a SecAgg+ stage, or None for the collect stage (training follows)."""
    if cfg.secure_aggregation != "secagg+":
        raise ConfigError(
            f"the server sent a SecAgg+ stage, but the run config says secure-aggregation={cfg.secure_aggregation!r}"
        )
    record = msg.content.config_records[SECAGG]
    stage = str(record.get(SECAGG_STAGE, ""))
    server_round = as_int(record.get(SECAGG_ROUND), SECAGG_ROUND)
    me = int(msg.metadata.dst_node_id)
    state = _load(context)
    if stage == STAGE_SETUP:
        state, out = setup(me, server_round)
    elif stage == STAGE_SHARE_KEYS:
        out = share_keys(state, record, server_round, params_of(cfg))
    elif stage == STAGE_COLLECT:
        collect(state, record, server_round, params_of(cfg))
        out = None
    elif stage == STAGE_UNMASK:
        out = unmask(state, record, server_round)
    else:
        raise ProtocolError(f"unknown SecAgg+ stage {stage!r:.40}")
    context.state.config_records[STATE] = ConfigRecord(state)
    if out is None:
        return None
    return Message(content=RecordDict({SECAGG: ConfigRecord(out)}), reply_to=msg)


def _load(context: Context) -> dict[str, Any]:
    record = context.state.config_records.get(STATE)
    return dict(record.items()) if record is not None else {}


def _expect(state: dict[str, Any], stage: str, server_round: int) -> None:
    if state.get("stage") != stage or state.get("round") != server_round:
        raise ProtocolError(
            f"SecAgg+ out of order: this client is at stage {state.get('stage')!r} of round {state.get('round')}, "
            f"the message expects {stage!r} of round {server_round}"
        )


def setup(me: int, server_round: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fresh key pairs for the round: (the new state, the reply advertising the public keys)."""
    sk1, pk1 = secagg.key_pair()
    sk2, pk2 = secagg.key_pair()
    state = {"stage": STAGE_SETUP, "round": server_round, "node": me, "sk1": sk1, "pk1": pk1, "sk2": sk2, "pk2": pk2}
    return state, {SECAGG_PK1: pk1, SECAGG_PK2: pk2}


def share_keys(state: dict[str, Any], record: Any, server_round: int, params: secagg.Params) -> dict[str, Any]:
    """Check the neighbourhood, draw the self-mask seed, and seal its shares and the masking key's to each neighbour."""
    _expect(state, STAGE_SETUP, server_round)
    me = int(state["node"])
    nodes = [int(v) for v in record.get(SECAGG_NODES, [])]
    pk1s, pk2s = list(record.get(SECAGG_PK1, [])), list(record.get(SECAGG_PK2, []))
    threshold = as_int(record.get(SECAGG_THRESHOLD), SECAGG_THRESHOLD)
    if not (len(nodes) == len(pk1s) == len(pk2s)) or len(set(nodes)) != len(nodes) or me not in nodes:
        raise ProtocolError("the neighbourhood must list each node once, this client included, with both its keys")
    if len(nodes) > params.num_shares:
        raise ProtocolError(f"a neighbourhood of {len(nodes)} nodes; this run shares with at most {params.num_shares}")
    if threshold != params.threshold or not len(nodes) // 2 < threshold <= len(nodes):
        raise ProtocolError(
            f"threshold {threshold} for a neighbourhood of {len(nodes)}: expected this run's {params.threshold}, more "
            "than half of the neighbourhood and no more than all of it"
        )
    mine = nodes.index(me)
    if (pk1s[mine], pk2s[mine]) != (state["pk1"], state["pk2"]):
        raise ProtocolError("the neighbourhood carries other public keys for this client")
    keys = [secagg.check_public_key(k) for k in pk1s + pk2s]
    if len(set(keys)) != len(keys):
        raise ProtocolError("two neighbours advertise the same public key")
    seed = os.urandom(secagg.SEED_BYTES)
    seed_shares = secagg.split(seed, threshold, len(nodes))
    key_shares = secagg.split(state["sk1"], threshold, len(nodes))
    dsts, envelopes = [], []
    for i, v in enumerate(nodes):
        if v == me:
            continue
        key = secagg.agree(state["sk2"], pk2s[i])
        dsts.append(v)
        envelopes.append(secagg.seal(key, me, v, seed_shares[i], key_shares[i]))
    state.update(
        stage=STAGE_SHARE_KEYS, seed=seed, threshold=threshold, nodes=nodes, pk1s=pk1s, pk2s=pk2s,
        holders=[me], seed_shares=[seed_shares[mine]], key_shares=[key_shares[mine]],
    )  # fmt: skip
    return {SECAGG_DESTINATIONS: dsts, SECAGG_CIPHERTEXTS: envelopes}


def collect(state: dict[str, Any], record: Any, server_round: int, params: secagg.Params) -> None:
    """Open the envelopes addressed to this client and keep the shares (training and masking follow)."""
    _expect(state, STAGE_SHARE_KEYS, server_round)
    me, nodes = int(state["node"]), [int(v) for v in state["nodes"]]
    sources = [int(v) for v in record.get(SECAGG_SOURCES, [])]
    envelopes = list(record.get(SECAGG_CIPHERTEXTS, []))
    if len(sources) != len(envelopes) or len(set(sources)) != len(sources) or not set(sources) <= set(nodes) - {me}:
        raise ProtocolError("envelopes must come once from each of some of this client's neighbours")
    if len(sources) + 1 < int(state["threshold"]):
        raise ProtocolError(f"{len(sources)} neighbours shared keys; at least threshold - 1 are needed")
    noise_count = as_int(record.get(SECAGG_NOISE_COUNT), SECAGG_NOISE_COUNT)
    if noise_count < len(sources) + 1:
        raise ProtocolError(f"{SECAGG_NOISE_COUNT}={noise_count} is fewer than the clients this one masks with")
    holders, seed_shares, key_shares = list(state["holders"]), list(state["seed_shares"]), list(state["key_shares"])
    for src, blob in zip(sources, envelopes, strict=True):
        key = secagg.agree(state["sk2"], state["pk2s"][nodes.index(src)])
        seed_share, key_share = secagg.open_envelope(key, blob, src, me)
        holders.append(src)
        seed_shares.append(seed_share)
        key_shares.append(key_share)
    state.update(
        stage=STAGE_COLLECT, sources=sources, holders=holders, seed_shares=seed_shares, key_shares=key_shares,
        noise_count=noise_count,
    )  # fmt: skip


def masked_update(
    cfg: RunConfig, new: list[np.ndarray], start: list[np.ndarray], num_examples: int, context: Context
) -> ArrayRecord:
    """The update ``new - start``, weighted (num-examples; 1 under central DP, with this client's share of the noise),
    quantised and masked: what the server sums."""
    state = _load(context)
    if state.get("stage") != STAGE_COLLECT:
        raise ProtocolError("a SecAgg+ run trains only in the collect stage, after the keys were shared")
    params = params_of(cfg)
    delta = flatten(new) - flatten(start)
    weight = int(num_examples)
    if cfg.dp_central:  # distributed noise: m clients each add 1/m of the variance (strategies.secagg)
        std = cfg.dp_noise_multiplier * cfg.dp_central_clip_norm / math.sqrt(int(state["noise_count"]))
        delta = delta + np.random.default_rng(secrets.randbits(128)).normal(0.0, std, delta.size)
        weight = 1
    vector, clipped = secagg.encode(delta, weight, params)
    if clipped:
        log.warning("SecAgg+: %d of %d update values lie outside secagg-clipping-range=%g and were clipped",
                    clipped, delta.size, params.clipping_range)  # fmt: skip
    me, nodes = int(state["node"]), [int(v) for v in state["nodes"]]
    vector = secagg.apply_mask(vector, state["seed"], 1)
    for src in state["sources"]:
        pair = secagg.agree(state["sk1"], state["pk1s"][nodes.index(int(src))])
        vector = secagg.apply_mask(vector, pair, secagg.pair_sign(me, int(src)))
    state["stage"] = MASKED
    context.state.config_records[STATE] = ConfigRecord(state)
    return ArrayRecord({secagg.MASKED: Array(vector)})


def unmask(state: dict[str, Any], record: Any, server_round: int) -> dict[str, Any]:
    """The shares the server asks for, once: seed shares of summed neighbours, key shares of dropped ones."""
    _expect(state, MASKED, server_round)
    me = int(state["node"])
    alive = [int(v) for v in record.get(SECAGG_NODES, [])]
    dead = [int(v) for v in record.get(SECAGG_DEAD, [])]
    holders = [int(v) for v in state["holders"]]
    if set(alive) & set(dead) or len(set(alive)) != len(alive) or len(set(dead)) != len(dead):
        raise ProtocolError("a node is listed twice (or both summed and dropped); no shares are given")
    if me not in alive or not set(alive + dead) <= set(holders):
        raise ProtocolError("the unmask request names nodes this client holds no shares of, or calls it dropped")
    if len(alive) < int(state["threshold"]):
        raise ProtocolError(f"only {len(alive)} summed neighbours; fewer than threshold={state['threshold']}")
    shares = [state["seed_shares"][holders.index(v)] for v in alive]
    shares += [state["key_shares"][holders.index(v)] for v in dead]
    state.clear()  # answered once; the round's secrets are gone
    state.update(stage=DONE, round=server_round)
    return {SECAGG_NODES: alive + dead, SECAGG_SHARES: shares}
