"""Secure aggregation by pairwise masking (SecAgg+, Bell et al. CCS 2020) on the Message API, as a wrapper.

Flower 1.42's ``SecAggPlusWorkflow`` drives a legacy ``flwr.server.strategy`` through a LegacyContext and only talks
to ``secaggplus_mod`` on NumPyClients; UAAP's round loop (``server/federation.py``) drives Message-API strategies, so
:class:`SecAggPlus` runs the same four stages itself, with Flower's primitives (:mod:`uaap.crypto.secagg`):

1. **setup** (inside :meth:`SecAggPlus.configure_train`): every sampled client makes two fresh key pairs for the
   round and advertises the public halves;
2. **share keys** (inside ``configure_train``): each client gets its ring neighbours' public keys and returns, for
   each neighbour, an envelope (encrypted under their ECDH key) with Shamir shares of its self-mask seed ``b`` and of
   its masking key ``sk1``; the server only routes envelopes;
3. **collect masked vectors**: the messages ``configure_train`` returns are the round's training messages (the
   inner strategy's model and config plus the envelopes addressed to that client); the client trains and replies
   with its quantised, weighted update plus its self mask and the pairwise masks it shares with each neighbour
   that reached stage 2 (reply validation checks the layout, :meth:`SecAggPlus.check_masked`);
4. **unmask** (inside :meth:`SecAggPlus.aggregate_train`): each survivor returns the shares of its neighbours'
   ``b`` (for neighbours whose vectors are in the sum) or of their ``sk1`` (for neighbours that dropped after
   stage 2); the server rebuilds them, removes the self masks and the dropped clients' pairwise masks, and decodes.

Because the stages run inside one ``configure_train``/``aggregate_train`` pair, every wrapper outside this one
(reply validation, privacy accounting) and the round log see one ordinary round. A client lost after sharing its
keys (before or while sending its masked vector) is recovered from the shares; the round fails (model unchanged)
only when some secret has fewer than ``threshold`` shares, or fewer than ``min-contributors`` vectors survive,
which the server checks *before* asking for any share, so it never unmasks a sum of too few clients.

What the server learns: the sum of the survivors' weighted, quantised updates and their total weight; the training
metrics each reply carries in the clear (num-examples, loss, as under CKKS). It is secure against an honest-but-
curious server colluding with fewer than ``threshold`` clients of any neighbourhood; it does not defend against a
server that lies about who dropped beyond what each client checks (it answers the unmask stage once, and never
for a node it is told is both alive and dead), nor against a client that poisons its update.

Central DP (:class:`DistributedNoise`): the server Poisson-samples the clients, each of the ``m`` clients asked for a
masked vector adds ``N(0, (sigma C)^2 / m)`` to its clipped update before masking, so the sum the server unmasks
already holds ``N(0, (sigma C)^2)`` and is never seen without noise. When only ``m' < m`` vectors survive, the
noise in the sum is ``sigma * sqrt(m'/m)`` times C; the round is accounted with that smaller multiplier. ``m`` is
the server's word (each client checks only that it covers the clients it masks with): the guarantee, like the
rest of this protocol, assumes an honest-but-curious server. Each client's noised values must also fit in
``[-c, c]`` (``secagg-clipping-range`` >= ``dp-central-clip-norm`` is checked; a value clipped there is logged on
the client), and the stochastic rounding of each client's noised update adds at most one quantisation step per
client and coordinate on top of the Gaussian mechanism the accountant analyses (a discrete-Gaussian variant,
Kairouz et al. 2021, would make the guarantee exact; it is not implemented).

Length: over 500 lines because the four stages share one round's state (keys, envelope routing, who dropped when),
each stage's checks of untrusted replies sit beside it, and the release under central DP reuses the unmasked sum.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from strategies.dp_noise import CentralDPNoise
from strategies.wrapper import StrategyWrapper, innermost, weighted_by_key
from uaap.config import RunConfig
from uaap.crypto import secagg
from uaap.errors import ConfigError
from uaap.models import flatten, from_record, to_record, unflatten
from uaap.protocol import (
    ARRAYS,
    CONFIG,
    DP_NOISE_STD,
    DP_SAMPLED,
    SECAGG,
    SECAGG_CIPHERTEXTS,
    SECAGG_CLIENTS,
    SECAGG_DEAD,
    SECAGG_DESTINATIONS,
    SECAGG_DROPPED,
    SECAGG_ERROR_BOUND,
    SECAGG_NODES,
    SECAGG_NOISE_COUNT,
    SECAGG_PK1,
    SECAGG_PK2,
    SECAGG_ROUND,
    SECAGG_SHARES,
    SECAGG_SOURCES,
    SECAGG_STAGE,
    SECAGG_THRESHOLD,
    SECAGG_TOTAL_WEIGHT,
    STAGE_COLLECT,
    STAGE_SETUP,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
)

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp import Grid

log = logging.getLogger("uaap.secagg")
MAX_ENVELOPE = 4096  # bytes: an envelope holds two shares of <= 256-byte secrets, Fernet-encrypted


@dataclass
class RoundState:
    """What the server holds about one round's protocol run."""

    server_round: int
    graph: dict[int, list[int]]
    public: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # node -> (pk1, pk2), stage 1 survivors
    sources: dict[int, list[int]] = field(default_factory=dict)  # node -> who sealed envelopes for it (stage 2)
    masked: list[int] = field(default_factory=list)  # nodes asked for a masked vector


class SecAggPlus(StrategyWrapper):
    """Wrap FedAvg/FedProx so that training updates are summed under pairwise masks (SecAgg+)."""

    encrypted = False  # the aggregate is plaintext: the server may evaluate and save it

    def __init__(
        self,
        strategy: Strategy,
        params: secagg.Params,
        *,
        timeout: float = 600.0,
        min_survivors: int = 1,
        rng: random.Random | None = None,
    ) -> None:
        check_mean(strategy)
        params.check(max_total_weight=1)
        super().__init__(strategy)
        self.params = params
        self.timeout = timeout
        self.min_survivors = max(min_survivors, params.threshold)
        self.rng = rng or random.SystemRandom()
        self.dp_nodes: list[int] | None = None  # set by DistributedNoise: the Poisson sample to use this round
        self.state: RoundState | None = None
        self._current: ArrayRecord | None = None
        self.last_survivors = 0
        self.last_error_bound = 0.0
        self._grid: Any = None  # the round's grid and run config: the unmask stage runs inside aggregate_train
        self._run_config: Any = None

    def summary(self) -> None:
        """Log the protocol's settings, then the inner strategy's summary."""
        p = self.params
        log.info(
            "secure aggregation: SecAgg+ (num-shares %d, threshold %d, clipping range %g, %d levels: error <= %.3g)",
            p.num_shares,
            p.threshold,
            p.clipping_range,
            p.quantization_range,
            p.step,
        )
        self.strategy.summary()

    # ---- stages 0-2 --------------------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Run setup and key sharing with the sampled clients; return the training messages (stage 2)."""
        from flwr.app import ConfigRecord, RecordDict

        self._current, self.state = arrays, None
        inner = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if not inner:
            return []
        template: RecordDict = inner[0].content
        nodes = self.dp_nodes if self.dp_nodes is not None else [int(m.metadata.dst_node_id) for m in inner]
        contents = {int(m.metadata.dst_node_id): m.content for m in inner}
        if len(nodes) < self.min_survivors:
            log.warning(
                "round %d: %d clients sampled; SecAgg+ needs at least %d (threshold, min-contributors)",
                server_round,
                len(nodes),
                self.min_survivors,
            )
            return []
        state = RoundState(server_round, secagg.neighbours(nodes, self.params.num_shares, self.rng))
        run_config = self._run_config = template.config_records[CONFIG]
        # stage 0: setup
        replies = self._exchange(grid, server_round, {u: {SECAGG_STAGE: STAGE_SETUP} for u in nodes}, run_config)
        for node, reply in replies.items():
            try:
                pk1, pk2 = (secagg.check_public_key(reply.get(k)) for k in (SECAGG_PK1, SECAGG_PK2))
            except ValueError as exc:
                log.error("round %d setup: left node %d out: %s", server_round, node, exc)
                continue
            state.public[node] = (pk1, pk2)
        seen = Counter(k for pair in state.public.values() for k in pair)
        for node in [u for u, pair in state.public.items() if any(seen[k] > 1 for k in pair)]:
            log.error("round %d setup: left node %d out: another client advertised the same public key", server_round,
                      node)  # fmt: skip
            del state.public[node]  # both copies go: the server cannot tell the owner from the copier
        if not self._enough(state, set(state.public), STAGE_SETUP):
            return []
        # stage 1: share keys
        requests: dict[int, dict[str, Any]] = {}
        for u in state.public:
            hood = [v for v in state.graph[u] if v in state.public]
            requests[u] = {
                SECAGG_STAGE: STAGE_SHARE_KEYS,
                SECAGG_THRESHOLD: self.params.threshold,
                SECAGG_NODES: hood,
                SECAGG_PK1: [state.public[v][0] for v in hood],
                SECAGG_PK2: [state.public[v][1] for v in hood],
            }
        replies = self._exchange(grid, server_round, requests, run_config)
        envelopes: dict[int, dict[int, bytes]] = {}  # destination -> source -> envelope
        shared: set[int] = set()  # clients whose envelopes reached the server, one for each live neighbour
        for u, reply in replies.items():
            try:
                sealed = _envelopes(u, reply, set(requests[u][SECAGG_NODES]) - {u})
            except ValueError as exc:
                log.error("round %d share-keys: left node %d out: %s", server_round, u, exc)
                continue
            shared.add(u)
            for v, blob in sealed.items():
                envelopes.setdefault(v, {})[u] = blob
        for v in shared:
            state.sources[v] = sorted(u for u in envelopes.get(v, {}) if u in shared)
        if not self._enough(state, shared, STAGE_SHARE_KEYS):
            return []
        # stage 2: the training messages, each with the envelopes addressed to its client
        state.masked = sorted(shared)
        self.state = state
        out = []
        for v in state.masked:
            base = contents.get(v, template)
            record = ConfigRecord(
                {
                    SECAGG_STAGE: STAGE_COLLECT,
                    SECAGG_ROUND: server_round,
                    SECAGG_SOURCES: state.sources[v],
                    SECAGG_CIPHERTEXTS: [envelopes[v][u] for u in state.sources[v]],
                    SECAGG_NOISE_COUNT: len(state.masked),
                }
            )
            content = RecordDict({**dict(base.items()), SECAGG: record})
            out.append(_message(content, v, server_round))
        log.info(
            "round %d: SecAgg+ keys shared by %d of %d sampled clients; collecting masked vectors",
            server_round,
            len(state.masked),
            len(nodes),
        )
        return out

    def _enough(self, state: RoundState, alive: set[int], stage: str) -> bool:
        """Whether every live client still has ``threshold`` live neighbours and enough clients are left."""
        short = [u for u in alive if len(set(state.graph[u]) & alive) < self.params.threshold]
        if short or len(alive) < self.min_survivors:
            log.error(
                "round %d %s: %d clients left (%d needed), %d of them with fewer than threshold=%d live neighbours; "
                "the round is skipped",
                state.server_round,
                stage,
                len(alive),
                self.min_survivors,
                len(short),
                self.params.threshold,
            )
            return False
        return True

    # ---- the layout a masked reply must have (reply validation calls it) -----------------------------------------
    def check_masked(self, record: ArrayRecord) -> None:
        """Refuse a masked reply that is not one uint64 vector of the model's size plus the weight."""
        if self._current is None:
            raise ValueError("no SecAgg+ round in flight")
        size = sum(int(np.prod(a.shape)) for a in self._current.values()) + 1
        if list(record.keys()) != [secagg.MASKED]:
            raise ValueError(f"a masked reply holds one array {secagg.MASKED!r}; got {sorted(record.keys())[:5]}")
        arr = record[secagg.MASKED]
        if arr.dtype != "uint64" or tuple(arr.shape) != (size,) or len(arr.data) > 128 + 8 * size:
            raise ValueError(f"masked vector is {arr.dtype} {tuple(arr.shape)}; expected uint64 ({size},)")

    # ---- stage 3 and the release ---------------------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Sum the masked vectors, run the unmask stage, and release the global model plus the mean update."""
        sums, weight, good = self.unmasked_sum(server_round, replies)
        if sums is None or self._current is None:
            return None, None
        start = from_record(self._current)
        new = flatten(start) + sums / weight
        self.last_error_bound = secagg.error_bound(self.params, weight, weight)
        return to_record(unflatten(new, start)), self.round_metrics(good, weight)

    def round_metrics(self, good: list[Message], weight: int) -> MetricRecord:
        """The inner strategy's aggregate of the accepted replies' metrics, and the protocol's counts."""
        from flwr.app import MetricRecord

        base = innermost(self.strategy)
        aggr = getattr(base, "train_metrics_aggr_fn", None) or aggregate_metricrecords
        metrics: MetricRecord = aggr([m.content for m in good], weighted_by_key(base))
        state = self.state
        metrics[SECAGG_CLIENTS] = len(good)
        metrics[SECAGG_DROPPED] = (len(state.masked) if state else 0) - len(good)
        metrics[SECAGG_TOTAL_WEIGHT] = weight
        metrics[SECAGG_ERROR_BOUND] = self.last_error_bound
        return MetricRecord(dict(metrics))

    def unmasked_sum(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[np.ndarray | None, int, list[Message]]:
        """The survivors' weighted sum of values, their total weight and their replies; None when the round fails."""
        state, self.last_survivors = self.state, 0
        if state is None:
            return None, 0, []
        size = sum(int(np.prod(a.shape)) for a in self._current.values()) + 1 if self._current else 0
        total = np.zeros(size, dtype=np.uint64)
        good: list[Message] = []
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if msg.has_error() or node not in state.masked or node in {int(m.metadata.src_node_id) for m in good}:
                continue
            try:
                record = msg.content.array_records[ARRAYS]
                self.check_masked(record)
                vector = record[secagg.MASKED].numpy()
            except (KeyError, ValueError, TypeError) as exc:
                log.error("round %d: left node %d's masked vector out: %s", server_round, node, exc)
                continue
            total += vector.astype(np.uint64, copy=False)
            good.append(msg)
        alive = {int(m.metadata.src_node_id) for m in good}
        dead = set(state.masked) - alive
        self.last_survivors = len(alive)
        if not self._enough(state, alive, "collect") or not alive:
            return None, 0, good
        # stage 3: unmask
        requests = {
            u: {
                SECAGG_STAGE: STAGE_UNMASK,
                SECAGG_NODES: sorted(v for v in state.graph[u] if v in alive),
                SECAGG_DEAD: sorted(v for v in state.graph[u] if v in dead),
            }
            for u in sorted(alive)
        }
        answers = self._exchange(self._grid, server_round, requests, self._run_config)
        seed_shares: dict[int, list[bytes]] = {}
        key_shares: dict[int, list[bytes]] = {}
        for u, answer in answers.items():
            try:
                owners, shares = _shares(answer, requests[u])
            except ValueError as exc:
                log.error("round %d unmask: ignored node %d's shares: %s", server_round, u, exc)
                continue
            for owner, share in zip(owners, shares, strict=True):
                (seed_shares if owner in alive else key_shares).setdefault(owner, []).append(share)
        try:
            for u in sorted(alive):  # remove each survivor's self mask
                seed = _rebuild(seed_shares.get(u, []), self.params.threshold, f"node {u}'s mask seed")
                total = secagg.apply_mask(total, seed, -1)
            for d in sorted(dead):  # remove the masks survivors share with a client that dropped
                sk1 = _rebuild(key_shares.get(d, []), self.params.threshold, f"node {d}'s masking key")
                if secagg.public_of(sk1) != state.public[d][0]:
                    raise ValueError(f"node {d}'s rebuilt masking key does not match the key it advertised")
                for v in sorted(alive):
                    if d in state.sources.get(v, []):
                        total = secagg.apply_mask(total, secagg.agree(sk1, state.public[v][0]), -secagg.pair_sign(v, d))
        except ValueError as exc:
            log.error("round %d unmask: %s; the round is skipped (the model is unchanged)", server_round, exc)
            return None, 0, good
        sums, weight = secagg.decode(total, self.params)
        if weight < 1:
            log.error("round %d: the unmasked total weight is %d; the round is skipped", server_round, weight)
            return None, 0, good
        log.info(
            "round %d: SecAgg+ unmasked the sum of %d clients (%d dropped after sharing keys, total weight %d)",
            server_round,
            len(alive),
            len(dead),
            weight,
        )
        return sums, weight, good

    # ---- transport -------------------------------------------------------------------------------------------
    def _exchange(
        self, grid: Grid, server_round: int, requests: dict[int, dict[str, Any]], run_config: Any
    ) -> dict[int, ConfigRecord]:
        """Send each node its stage record; the SecAgg record of every reply that came back without an error."""
        from flwr.app import ConfigRecord, RecordDict

        self._grid = grid
        messages = []
        for node, fields in requests.items():
            content = RecordDict({SECAGG: ConfigRecord({**fields, SECAGG_ROUND: server_round})})
            if run_config is not None:
                content[CONFIG] = run_config
            messages.append(_message(content, node, server_round))
        out: dict[int, ConfigRecord] = {}
        for reply in _send_and_receive(grid, messages, self.timeout):
            node = int(reply.metadata.src_node_id)
            if reply.has_error() or node not in requests:
                if reply.has_error():
                    log.warning("round %d: node %d failed a SecAgg+ stage: %s", server_round, node,
                                (reply.error.reason or "")[:200])  # fmt: skip
                continue
            record = reply.content.config_records.get(SECAGG)
            if record is not None:
                out[node] = record
        return out


def _message(content: RecordDict, node: int, server_round: int) -> Message:
    from flwr.app import Message, MessageType

    return Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN, group_id=str(server_round))


def _send_and_receive(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
    """Push, then pull until every reply is in, its node went offline, or ``timeout`` passes (short polls)."""
    if not messages:
        return []
    ids = list(grid.push_messages(messages))
    node_of = {mid: int(m.metadata.dst_node_id) for mid, m in zip(ids, messages, strict=False)}
    pending, replies = set(ids), []
    deadline, next_check, pause = time.monotonic() + timeout, time.monotonic() + 5.0, 0.005
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(pending))
        replies += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        if pending and time.monotonic() >= next_check:
            next_check = time.monotonic() + 5.0
            online = {int(n) for n in grid.get_node_ids()}
            pending -= {mid for mid in pending if node_of.get(mid) not in online}
        pause = 0.005 if got else min(pause * 1.5, 0.5)
        if pending:
            time.sleep(pause)
    return replies


def _envelopes(node: int, reply: ConfigRecord, expected: set[int]) -> dict[int, bytes]:
    """A share-keys reply's envelopes by destination: exactly one for each neighbour, each of a sane size."""
    dsts, blobs = _ints(reply.get(SECAGG_DESTINATIONS)), _blobs(reply.get(SECAGG_CIPHERTEXTS), MAX_ENVELOPE)
    if len(dsts) != len(blobs):
        raise ValueError("expected equal lists of destinations and envelopes")
    if sorted(dsts) != sorted(expected) or len(set(dsts)) != len(dsts):
        raise ValueError(f"envelopes for {sorted(dsts)[:8]}; expected one for each of {sorted(expected)[:8]}")
    return dict(zip(dsts, blobs, strict=True))


def _ints(value: object) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError("expected a list of node ids")
    return [int(v) for v in value]


def _blobs(value: object, limit: int) -> list[bytes]:
    if not isinstance(value, list) or not all(isinstance(b, bytes) and 0 < len(b) <= limit for b in value):
        raise ValueError(f"expected a list of byte strings of 1 to {limit} bytes")
    return [bytes(b) for b in value]


def _shares(answer: ConfigRecord, request: dict[str, Any]) -> tuple[list[int], list[bytes]]:
    """An unmask reply's (owners, shares), which must answer exactly what was asked."""
    owners, shares = _ints(answer.get(SECAGG_NODES)), _blobs(answer.get(SECAGG_SHARES), 1024)
    if len(owners) != len(shares):
        raise ValueError("expected equal lists of owners and shares")
    if owners != request[SECAGG_NODES] + request[SECAGG_DEAD]:
        raise ValueError("the shares are not for the nodes asked about")
    return owners, shares


def _rebuild(shares: list[bytes], threshold: int, what: str) -> bytes:
    if len(shares) < threshold:
        raise ValueError(f"{what} has {len(shares)} shares, fewer than threshold={threshold}")
    try:
        return secagg.combine(shares[:threshold])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{what} cannot be rebuilt from its shares ({exc})") from exc


def check_mean(strategy: Strategy) -> None:
    """Refuse a strategy whose aggregation is not FedAvg's weighted mean: a masked sum computes only that."""
    base = innermost(strategy)
    if isinstance(base, FedAvg) and type(base).aggregate_train is FedAvg.aggregate_train and base is strategy:
        return
    if base is not strategy:
        raise ConfigError(
            f"SecAgg+ must wrap Flower's strategy directly; {type(strategy).__name__} between them would be bypassed"
        )
    raise ConfigError(
        f"SecAgg+ cannot run {type(base).__name__}: the server sees only the sum of the masked updates, which gives "
        "FedAvg's weighted mean and nothing else (robust aggregators need each update; server optimisers work on "
        "the mean but are not offered here). Use strategy 'fedavg' or 'fedprox', or secure-aggregation none"
    )


class DistributedNoise(CentralDPNoise):
    """Central DP under SecAgg+: Poisson sampling here, the Gaussian noise added by the clients before masking.

    The release is the plaintext path's estimator ``w + (sum_k (clip(delta_k) + z_k)) / (q N)`` with
    ``z_k ~ N(0, (sigma C)^2 / m)`` from each of the ``m`` clients asked for a masked vector. With every one of
    them in the sum the noise is ``N(0, (sigma C)^2)``, the mechanism the accountant analyses; with ``m'`` survivors
    it is ``sigma sqrt(m'/m)``, and :attr:`noise_multiplier` holds that value when the accountant reads it.
    """

    def __init__(self, strategy: SecAggPlus, **kwargs: Any) -> None:
        super().__init__(strategy, **kwargs)
        self.secagg = strategy
        self.nominal = self.noise_multiplier

    def summary(self) -> None:
        """Log the mechanism and the inner strategy's summary."""
        log.info("central DP under SecAgg+: sigma=%s C=%s q=%s, noise added by the clients", self.nominal,
                 self.clipping_norm, self.sample_rate)  # fmt: skip
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Poisson-sample the online clients; SecAgg+ runs its stages with them."""
        self.noise_multiplier = self.nominal
        self.secagg.dp_nodes = self.start_round(arrays, [int(n) for n in grid.get_node_ids()])
        log.info("round %d: Poisson sampling (q=%g) chose %d of %d clients", server_round, self.sample_rate,
                 self.last_sampled, self.last_population)  # fmt: skip
        return self.secagg.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Release ``w + noisy sum / (q N)``; the noise multiplier becomes the one the survivors' noise gives."""
        secagg_layer = self.secagg
        sums, weight, good = secagg_layer.unmasked_sum(server_round, replies)
        asked = len(secagg_layer.state.masked) if secagg_layer.state else 0
        if asked:
            self.noise_multiplier = self.nominal * math.sqrt(secagg_layer.last_survivors / asked)
        if sums is None or self._current is None:
            return None, None
        start = from_record(self._current)
        new = flatten(start) + sums / self.denominator
        secagg_layer.last_error_bound = secagg.error_bound(secagg_layer.params, weight, self.denominator)
        metrics = secagg_layer.round_metrics(good, weight)
        metrics[DP_SAMPLED] = len(good)
        metrics[DP_NOISE_STD] = self.noise_std
        return to_record(unflatten(new, start)), metrics


def params_of(cfg: RunConfig) -> secagg.Params:
    """The run's SecAgg+ settings."""
    return secagg.Params(
        num_shares=cfg.secagg_num_shares,
        threshold=cfg.secagg_threshold,
        clipping_range=cfg.secagg_clipping_range,
        quantization_range=cfg.secagg_quantization_range,
    )


def build_secagg_strategy(cfg: RunConfig, inner: Strategy, n_classes: int | None, task: str) -> Strategy:
    """``inner`` (FedAvg/FedProx) under SecAgg+, central DP's client-side noise and accounting when asked, and reply
    validation outermost (the masked vectors' layout, the metrics as for every run)."""
    from strategies.dp_accounting import PrivacyAccounting
    from strategies.validation import ValidateReplies

    layer = SecAggPlus(
        inner,
        params_of(cfg),
        timeout=cfg.round_timeout,
        min_survivors=1 if cfg.dp_central else cfg.min_contributors,
    )
    stack: Strategy = layer
    if cfg.dp_central:
        stack = DistributedNoise(
            layer,
            noise_multiplier=cfg.dp_noise_multiplier,
            clipping_norm=cfg.dp_central_clip_norm,
            sample_rate=cfg.fraction_train,
        )
    if cfg.dp_central or cfg.dp_local:
        stack = PrivacyAccounting(
            stack,
            run_id=cfg.run_id,
            delta=cfg.dp_delta,
            accountant=cfg.dp_accountant,
            max_epsilon=cfg.max_epsilon,
            dp_local=cfg.dp_local,
        )
    return ValidateReplies(
        stack,
        cfg.run_id,
        dp_local=cfg.dp_local,
        central=cfg.dp_central,
        max_num_examples=cfg.max_num_examples,
        min_contributors=cfg.min_contributors,
        n_classes=n_classes,
        task=task,
        check_arrays=layer.check_masked,
    )
