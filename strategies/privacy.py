"""Client-level central DP and privacy accounting as a wrapper around any strategy.

:class:`CentralDP` wraps any ``flwr.serverapp.strategy.Strategy`` (FedAvg, FedProx, or the HE
``SecureAggregation``), the same shape as Flower's ``DifferentialPrivacyServerSideFixedClipping``.
It has two modes, one mechanism:

* ``central=True`` (``dp-central``): DP-FedAvg (McMahan et al., ICLR 2018). Each online client joins a
  round independently with probability ``q = fraction-train`` (Poisson sampling: amplification by
  sampling is then valid, and an empty sample is a valid round). Clients clip their update to
  ``C = dp-central-clip-norm``; the server adds ``N(0, (sigma*C)^2)`` per coordinate to the SUM of the
  updates (``sigma = dp-noise-multiplier``) and accounts one sampled-Gaussian release per round at the
  user (client) level.
* ``central=False`` (only ``dp-local``): no sampling change and no noise; the wrapper only accounts the
  clients' DP-SGD releases (reported in their reply metrics), writes the ledger and stops the run on
  budget.

Estimator (plaintext). We use McMahan et al.'s *fixed-denominator* estimator::

    w_new = w + (sum_k clip(w_k - w) + N(0, sigma^2 C^2 I)) / (q * N)

with ``N`` the clients online at sampling time. Its output depends on the private data only through the
noisy sum, whose add/remove-one-client sensitivity is ``C``: exactly the Poisson-subsampled Gaussian
mechanism the accountant analyses. Dividing by the realised count ``m`` instead would release ``m`` (a
function of who participated) and need a sensitivity analysis of the ratio (their clipped-denominator
estimator needs 2x the noise). The fixed denominator is unbiased for the mean update; its price is the
extra variance of ``m / (q N)`` when few clients are online. The server also re-clips every update
(idempotent for honest clients) so the guarantee does not rest on client code.

Weights are uniform (every client's update counts once, clipped to ``C``): with ``num-examples`` weights a
client's influence, hence the sensitivity, would depend on its private dataset size, and the weights
themselves would leak it.

Under secure aggregation (CKKS) the same estimator is computed with additions only (the add-only modulus
chain allows no multiply). The server sends ``dp-denominator = q * N`` with the training message; each
client sends ``Enc(clip(w_k - w) / (q N))`` with weight 1; the server adds the encrypted sum, the global
model (a ciphertext of weight 1, or round 1's public plaintext initialisation) and the encoded noise
``N(0, sigma^2 C^2 I) / (q N)`` (:func:`uaap.crypto.add_plain`), and publishes the result with weight 1.
The released model is therefore exactly the plaintext path's, and nothing in it depends on the realised
count ``m``. An empty sample releases ``w + noise / (q N)`` as in plaintext. The server cannot re-clip
ciphertexts: under HE the clipping is the clients'.

Randomness for sampling and noise comes from the OS entropy pool, never the run's public seed.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.serverapp.strategy import Strategy

from strategies.base import CLIENT_INFO_KEY, DENOMINATOR_KEY, PARTITION_KEY
from strategies.wrapper import StrategyWrapper
from uaap import crypto
from uaap.config import RunConfig
from uaap.errors import ConfigError
from uaap.models import flatten, from_record, to_record, unflatten
from uaap.privacy.accountant import Accountant
from uaap.privacy.clip import clip_update
from uaap.privacy.ledger import EXAMPLE, SERVER_CLIENT, USER, Budget, Ledger, Release

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.serverapp import Grid

log = logging.getLogger("uaap.privacy")

CENTRAL_MECHANISM = "central-gaussian"
LOCAL_MECHANISM = "dp-sgd"
CLIENT_RELEASE_METRICS = {"dp-sigma", "dp-q", "dp-steps", "dp-epsilon"}  # uaap.privacy.dpsgd.client_report


def client_key(msg: Message) -> str:
    """A stable name for the client that sent ``msg`` (partition id when known, else node id)."""
    info = msg.content.config_records.get(CLIENT_INFO_KEY) if not msg.has_error() else None
    if info is not None and PARTITION_KEY in info:
        return f"partition-{int(info[PARTITION_KEY])}"
    return f"node-{int(msg.metadata.src_node_id)}"


def poisson_sample(nodes: list[int], q: float, rng: np.random.Generator) -> list[int]:
    """Each node independently with probability ``q`` (the sampling the amplification analysis assumes)."""
    return [n for n, u in zip(nodes, rng.random(len(nodes)), strict=True) if u < q]


class CentralDP(StrategyWrapper):
    """Client-level DP (Poisson sampling, clipping, Gaussian noise) plus accounting, ledger and budget stop."""

    def __init__(
        self,
        strategy: Strategy,
        cfg: RunConfig,
        *,
        central: bool | None = None,
        ledger: Ledger | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(strategy)
        self.cfg = cfg
        self.central = cfg.dp_central if central is None else central
        if self.central and cfg.dp_noise_multiplier <= 0:
            raise ConfigError(
                f"dp-noise-multiplier={cfg.dp_noise_multiplier} gives no client-level guarantee under dp-central; "
                "use a value > 0 (e.g. 1.0) or turn dp-central off"
            )
        self.sigma = cfg.dp_noise_multiplier
        self.clip = cfg.dp_central_clip_norm
        self.q = cfg.fraction_train
        self.delta = cfg.dp_delta
        self.max_epsilon = cfg.max_epsilon
        self.rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
        self.user = Accountant(cfg.dp_accountant)
        self.clients: dict[str, Accountant] = {}
        self.client_round: dict[str, tuple[float, float, int]] = {}  # largest per-round (sigma, q, steps)
        self.ledger_round = 0
        self.last_population = 0
        self.last_sampled = 0
        self._current: ArrayRecord | None = None
        self.ledger = ledger if ledger is not None else (Ledger() if cfg.run_id else None)
        if self.ledger is not None:
            levels = "+".join(x for x, on in ((USER, self.central), (EXAMPLE, cfg.dp_local)) if on) or "none"
            self.ledger.set_budget(Budget(cfg.run_id, cfg.max_epsilon, cfg.dp_delta, cfg.dp_accountant, levels))

    def summary(self) -> None:
        """Log the DP settings and the inner strategy's summary."""
        log.info(
            "privacy: central=%s sigma=%s C=%s q=%s local=%s accountant=%s max-epsilon=%s",
            self.central,
            self.sigma,
            self.clip,
            self.q,
            self.cfg.dp_local,
            self.cfg.dp_accountant,
            self.max_epsilon,
        )
        self.strategy.summary()

    # ---- sampling ----------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Poisson-sample the online clients (central DP) and send them the inner strategy's message."""
        from flwr.app import Message, MessageType

        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        chosen = self.start_round(arrays, [int(n) for n in grid.get_node_ids()])
        if not self.central:
            self.last_sampled = len(messages)
            return messages
        if not messages:
            if chosen:
                raise ConfigError("the inner strategy built no training message; central DP needs one to forward")
            return []
        content = messages[0].content  # the inner strategy's payload (arrays + config), one per node
        content["config"][DENOMINATOR_KEY] = self.denominator  # clients divide their update under HE
        log.info(
            "round %d: Poisson sampling (q=%g) chose %d of %d clients",
            server_round,
            self.q,
            len(chosen),
            self.last_population,
        )
        return [Message(content=content, message_type=MessageType.TRAIN, dst_node_id=n) for n in chosen]

    @property
    def denominator(self) -> float:
        """The fixed denominator ``q * N`` of this round's estimator (N: clients online at sampling time)."""
        return self.q * max(self.last_population, 1)

    def start_round(self, arrays: ArrayRecord, nodes: list[int]) -> list[int]:
        """Remember the round's global model and population; the Poisson sample of ``nodes`` (central DP)."""
        self._current = arrays
        nodes = sorted(nodes)
        chosen = poisson_sample(nodes, self.q, self.rng) if self.central else nodes
        self.last_population, self.last_sampled = len(nodes), len(chosen)
        return chosen

    # ---- aggregation -------------------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Account the clients' DP-SGD releases; under central DP clip, aggregate uniformly and add noise."""
        replies = list(replies)
        releases = self._local_releases(server_round, replies)
        if not self.central:
            arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        else:
            self.user.step(self.sigma, self.q, 1)
            releases.append(
                Release(
                    self.cfg.run_id,
                    server_round,
                    SERVER_CLIENT,
                    USER,
                    CENTRAL_MECHANISM,
                    self.sigma,
                    self.q,
                    1,
                    self.delta,
                    self.user.epsilon(self.delta),
                    self.user.mechanism,
                )
            )
            if self._encrypted(replies):
                arrays, metrics = self._noisy_encrypted(server_round, replies)
            else:
                arrays, metrics = self._noisy_plaintext(server_round, replies)
        if self.ledger is not None and self.cfg.run_id:
            self.ledger.record(releases)
        self.ledger_round = server_round
        if metrics is not None:  # averages of per-client releases mean nothing; the ledger keeps each one
            for key in CLIENT_RELEASE_METRICS & set(metrics.keys()):
                del metrics[key]
            if examples := [r.epsilon for r in releases if r.level == EXAMPLE]:
                metrics["dp-example-epsilon-max"] = max(examples)
        return arrays, metrics

    def _encrypted(self, replies: list[Message]) -> bool:
        if self.cfg.secure or bool(getattr(self.strategy, "encrypted", False)):
            return True
        return any(
            crypto.is_encrypted(r) for m in replies if not m.has_error() for r in m.content.array_records.values()
        )

    def _noisy_plaintext(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        from flwr.app import MetricRecord

        if self._current is None:
            raise ConfigError("aggregate_train was called before configure_train: the round's start model is unknown")
        start = from_record(self._current)
        weight_key = getattr(self.strategy, "weighted_by_key", "num-examples")
        valid, clipped = [], []
        for msg in replies:  # server-side re-clip (idempotent for honest clients) and uniform weight 1
            if msg.has_error() or len(msg.content.array_records) != 1:
                continue
            key = next(iter(msg.content.array_records))
            try:
                new = from_record(msg.content.array_records[key])
                if [w.shape for w in new] != [w.shape for w in start] or not all(np.isfinite(w).all() for w in new):
                    raise ValueError("update does not match the global model or is not finite")
            except (ValueError, KeyError, TypeError) as exc:
                log.error("round %d: left %s out of the DP sum: %s", server_round, client_key(msg), exc)
                continue
            clipped.append(clip_update(new, start, self.clip))
            msg.content[key] = to_record(clipped[-1])
            for rec in msg.content.metric_records.values():
                rec[weight_key] = 1
            valid.append(msg)
        _, metrics = self.strategy.aggregate_train(server_round, valid) if valid else (None, None)
        start_flat = flatten(start)
        total = np.zeros_like(start_flat)
        for w in clipped:
            total += flatten(w) - start_flat
        noise = self.rng.normal(0.0, self.sigma * self.clip, size=start_flat.size)
        denom = self.denominator
        new_global = unflatten(start_flat + (total + noise) / denom, start)
        m = len(clipped)
        out = MetricRecord(dict(metrics) if metrics is not None else {})
        out["dp-sampled"] = m
        out["dp-noise-std"] = self.sigma * self.clip / denom
        return to_record(new_global), out

    def _noisy_encrypted(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """``w + (Enc(sum of clip(delta_k) / qN)) + noise / qN`` with additions only; published with weight 1."""
        from flwr.app import MetricRecord

        context = getattr(self.strategy, "context", None)
        if context is None:
            raise ConfigError("central DP over ciphertext needs the inner SecureAggregation's public context")
        if self._current is None:
            raise ConfigError("aggregate_train was called before configure_train: the round's start model is unknown")
        summed, metrics = self.strategy.aggregate_train(server_round, replies)
        acc = crypto.EncryptedSum(context)
        if summed is not None:
            acc.add(summed)
        start: list[np.ndarray] | None = None
        if crypto.is_encrypted(self._current):
            if (weight := crypto.total_weight(self._current)) != 1.0:
                raise ConfigError(
                    f"the encrypted global model has total weight {weight:g}; central DP under HE keeps it at 1 "
                    "(it was not made by this protocol): start a new run instead of resuming this one"
                )
            acc.add(self._current)
            assert acc.header is not None
            plain = self.rng.normal(0.0, self.sigma * self.clip, size=int(acc.header["n_values"])) / self.denominator
        else:  # round 1: the public initialisation, added as a plaintext
            start = from_record(self._current)
            base = flatten(start)
            plain = base + self.rng.normal(0.0, self.sigma * self.clip, size=base.size) / self.denominator
        out = MetricRecord(dict(metrics) if metrics is not None else {})
        out["dp-sampled"] = int(out.get("he-clients", 0))
        out["dp-noise-std"] = self.sigma * self.clip / self.denominator
        total = acc.result(weight=1.0)
        if total is None:  # empty sample in round 1: the public initialisation plus noise, in the clear
            assert start is not None
            log.warning("round %d: empty sample; the model moves by noise only", server_round)
            return to_record(unflatten(plain, start)), out
        return crypto.add_plain(total, plain, context), out

    def _local_releases(self, server_round: int, replies: list[Message]) -> list[Release]:
        out = []
        for msg in replies:
            if msg.has_error():
                continue
            for rec in msg.content.metric_records.values():
                if "dp-sigma" not in rec:
                    continue
                sigma, q, steps = float(rec["dp-sigma"]), float(rec["dp-q"]), int(rec["dp-steps"])
                if steps < 1:
                    continue
                key = client_key(msg)
                acc = self.clients.setdefault(key, Accountant(self.cfg.dp_accountant))
                acc.step(sigma, q, steps)
                prev = self.client_round.get(key)
                self.client_round[key] = (sigma, q, max(steps, prev[2] if prev else 0))
                eps = acc.epsilon(self.delta)
                out.append(
                    Release(
                        self.cfg.run_id,
                        server_round,
                        key,
                        EXAMPLE,
                        LOCAL_MECHANISM,
                        sigma,
                        q,
                        steps,
                        self.delta,
                        eps,
                        acc.mechanism,
                    )
                )
        return out

    # ---- server-loop hooks -------------------------------------------------------------------------
    def user_epsilon(self) -> float | None:
        """Client-level epsilon spent so far (None without central DP)."""
        return self.user.epsilon(self.delta) if self.central else None

    def example_epsilons(self) -> dict[str, float]:
        """Each client's example-level epsilon so far (server-side recomputation from reported releases)."""
        return {k: acc.epsilon(self.delta) for k, acc in sorted(self.clients.items())}

    def before_round(self, server_round: int) -> str | None:
        """Why round ``server_round`` must not run (it would exceed max-epsilon), or None."""
        if self.max_epsilon <= 0:
            return None
        if self.central:
            now = self.user.epsilon(self.delta)
            nxt = self.user.epsilon_after(self.delta, self.sigma, self.q, 1)
            if nxt > self.max_epsilon:
                return (
                    f"privacy budget: round {server_round} would raise the user-level epsilon from {now:.4f} to "
                    f"{nxt:.4f}, above max-epsilon={self.max_epsilon:g} (delta={self.delta:g}, "
                    f"{self.user.mechanism}); stopped with epsilon {now:.4f} spent. Raise max-epsilon, add noise "
                    "or sample fewer clients to train further"
                )
        for key, acc in sorted(self.clients.items()):
            sigma, q, steps = self.client_round[key]
            nxt = acc.epsilon_after(self.delta, sigma, q, steps)
            if nxt > self.max_epsilon:
                now = acc.epsilon(self.delta)
                return (
                    f"privacy budget: round {server_round} would raise {key}'s example-level epsilon from {now:.4f} "
                    f"to {nxt:.4f}, above max-epsilon={self.max_epsilon:g} (delta={self.delta:g}, {acc.mechanism}); "
                    "stopped before it. Raise max-epsilon or lower dp-target-epsilon to train further"
                )
        return None

    def round_report(self, server_round: int) -> dict[str, float]:
        """Metrics for the round: ``epsilon`` (user level under central DP, else the largest client's) and more."""
        report: dict[str, float] = {"delta": self.delta}
        user = self.user_epsilon()
        examples = self.example_epsilons()
        if user is not None:
            report |= {
                "user_epsilon": user,
                "noise_multiplier": self.sigma,
                "sample_rate": self.q,
                "sampled": self.last_sampled,
            }
        if examples:
            report["example_epsilon_max"] = max(examples.values())
        headline = user if user is not None else report.get("example_epsilon_max")
        if headline is not None:
            report["epsilon"] = headline
            if self.max_epsilon > 0:
                report["budget_used"] = headline / self.max_epsilon
        return report

    def state_dict(self) -> dict[str, Any]:
        """Accountants and ledger position, for checkpoints (resume continues the same accountant)."""
        return {
            "user": self.user.state_dict(),
            "clients": {k: a.state_dict() for k, a in self.clients.items()},
            "client_round": {k: list(v) for k, v in self.client_round.items()},
            "ledger_round": self.ledger_round,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; ledger rows of rounds after the checkpoint are dropped (they rerun)."""
        self.user.load_state_dict(state.get("user", {}))
        self.clients = {k: Accountant.from_state(s) for k, s in state.get("clients", {}).items()}
        self.client_round = {k: (float(v[0]), float(v[1]), int(v[2])) for k, v in state.get("client_round", {}).items()}
        self.ledger_round = int(state.get("ledger_round", 0))
        if self.ledger is not None and self.cfg.run_id:
            dropped = self.ledger.truncate(self.cfg.run_id, self.ledger_round)
            if dropped:
                log.warning(
                    "resume: dropped %d ledger rows of rounds after %d (they rerun)", dropped, self.ledger_round
                )


def wrap_privacy(cfg: RunConfig, strategy: Strategy) -> Strategy:
    """``strategy`` wrapped in :class:`CentralDP` when the run uses any DP, else unchanged."""
    if not (cfg.dp_central or cfg.dp_local):
        return strategy
    return CentralDP(strategy, cfg)
