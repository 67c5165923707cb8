"""Client-level central DP: Poisson client sampling, clipping and Gaussian noise, as a wrapper.

:class:`CentralDPNoise` wraps any Flower strategy the way Flower's
``DifferentialPrivacyServerSideFixedClipping(strategy, noise_multiplier, clipping_norm, ...)`` does, with
explicit mechanism parameters. It releases; it does not account: :class:`strategies.dp_accounting.PrivacyAccounting`
wraps outside it and turns each release into epsilon, ledger rows and the budget stop.

The mechanism is DP-FedAvg (McMahan et al., ICLR 2018). Each online client joins a round independently with
probability ``q = sample_rate`` (Poisson sampling: amplification by sampling is then valid, and an empty
sample is a valid round). Clients clip their update to ``C = clipping_norm``; the server adds
``N(0, (sigma*C)^2)`` per coordinate to the SUM of the updates (``sigma = noise_multiplier``).

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

Under secure aggregation (the wrapped strategy is a :class:`strategies.secure.SecureAggregation`) the same
estimator is computed with additions only (the add-only modulus chain allows no multiply). The server sends
``dp-denominator = q * N`` with the training message; each client sends ``Enc(clip(w_k - w) / (q N))`` with
weight 1; the server takes the running encrypted sum from ``SecureAggregation.sum_replies``, adds to it the
global model (a ciphertext of weight 1, or round 1's public plaintext initialisation) and the encoded noise
``N(0, sigma^2 C^2 I) / (q N)``, and publishes the result with weight 1. The released model is therefore
exactly the plaintext path's, and nothing in it depends on the realised count ``m``. An empty sample
releases ``w + noise / (q N)`` as in plaintext. The server cannot re-clip ciphertexts: under HE the
clipping is the clients'.

Randomness for sampling and noise comes from the OS entropy pool, never the run's public seed.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from flwr.serverapp.strategy import Strategy

from strategies.secure import SecureAggregation
from strategies.wrapper import StrategyWrapper, find_layer, weighted_by_key
from uaap import crypto
from uaap.errors import ConfigError
from uaap.models import flatten, from_record, to_record, unflatten
from uaap.privacy.clip import clip_update
from uaap.protocol import CONFIG, DP_DENOMINATOR, DP_NOISE_STD, DP_SAMPLED

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.serverapp import Grid

log = logging.getLogger("uaap.privacy")


def poisson_sample(nodes: list[int], q: float, rng: np.random.Generator) -> list[int]:
    """Each node independently with probability ``q`` (the sampling the amplification analysis assumes)."""
    return [n for n, u in zip(nodes, rng.random(len(nodes)), strict=True) if u < q]


class CentralDPNoise(StrategyWrapper):
    """Poisson client sampling, server-side re-clipping and Gaussian noise on the sum (fixed denominator)."""

    def __init__(
        self,
        strategy: Strategy,
        *,
        noise_multiplier: float,
        clipping_norm: float,
        sample_rate: float,
        rng: np.random.Generator | None = None,
    ) -> None:
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise ConfigError(
                f"dp-noise-multiplier={noise_multiplier} gives no client-level guarantee under dp-central; "
                "use a value > 0 (e.g. 1.0) or turn dp-central off"
            )
        if not (math.isfinite(clipping_norm) and clipping_norm > 0):
            raise ConfigError(f"dp-central-clip-norm={clipping_norm} must be a positive finite number (e.g. 1.0)")
        if not 0 < sample_rate <= 1:
            raise ConfigError(f"fraction-train={sample_rate} is central DP's sampling rate q; it must be in (0, 1]")
        secure = find_layer(strategy, SecureAggregation)
        if secure is not None and secure is not strategy:
            raise ConfigError("central DP under secure aggregation must wrap SecureAggregation directly")
        super().__init__(strategy)
        self.secure = secure
        self.noise_multiplier = noise_multiplier
        self.clipping_norm = clipping_norm
        self.sample_rate = sample_rate
        self.rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
        self.last_population = 0
        self.last_sampled = 0
        self._current: ArrayRecord | None = None

    @property
    def encrypted(self) -> bool:
        """Ciphertext global model when the wrapped strategy is secure aggregation."""
        return self.secure is not None

    @property
    def denominator(self) -> float:
        """The fixed denominator ``q * N`` of this round's estimator (N: clients online at sampling time)."""
        return self.sample_rate * max(self.last_population, 1)

    @property
    def noise_std(self) -> float:
        """Per-coordinate standard deviation of the noise in the released model."""
        return self.noise_multiplier * self.clipping_norm / self.denominator

    def summary(self) -> None:
        """Log the mechanism and the inner strategy's summary."""
        log.info(
            "central DP: sigma=%s C=%s q=%s%s",
            self.noise_multiplier,
            self.clipping_norm,
            self.sample_rate,
            " (noise added to the encrypted sum)" if self.secure else "",
        )
        self.strategy.summary()

    # ---- sampling ----------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Poisson-sample the online clients and send them the inner strategy's message with ``q * N``."""
        from flwr.app import Message, MessageType

        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        chosen = self.start_round(arrays, [int(n) for n in grid.get_node_ids()])
        if not messages:
            if chosen:
                raise ConfigError("the inner strategy built no training message; central DP needs one to forward")
            return []
        content = messages[0].content  # the inner strategy's payload (arrays + config), one per node
        content.config_records[CONFIG][DP_DENOMINATOR] = self.denominator  # clients divide their update under HE
        log.info(
            "round %d: Poisson sampling (q=%g) chose %d of %d clients",
            server_round,
            self.sample_rate,
            len(chosen),
            self.last_population,
        )
        return [Message(content=content, message_type=MessageType.TRAIN, dst_node_id=n) for n in chosen]

    def start_round(self, arrays: ArrayRecord, nodes: list[int]) -> list[int]:
        """Remember the round's global model and population; the Poisson sample of ``nodes``."""
        self._current = arrays
        nodes = sorted(nodes)
        chosen = poisson_sample(nodes, self.sample_rate, self.rng)
        self.last_population, self.last_sampled = len(nodes), len(chosen)
        return chosen

    # ---- the release -------------------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Release ``w + (sum of clipped updates + noise) / (q N)``, in plaintext or over ciphertext."""
        if self._current is None:
            raise ConfigError("aggregate_train was called before configure_train: the round's start model is unknown")
        replies = list(replies)
        if self.secure is not None:
            return self._noisy_encrypted(server_round, self.secure, self._current, replies)
        return self._noisy_plaintext(server_round, self._current, replies)

    def _noise(self, size: int) -> np.ndarray:
        return self.rng.normal(0.0, self.noise_multiplier * self.clipping_norm, size=size)

    def _noisy_plaintext(
        self, server_round: int, current: ArrayRecord, replies: list[Message]
    ) -> tuple[ArrayRecord, MetricRecord]:
        from flwr.app import MetricRecord

        start = from_record(current)
        weight_key = weighted_by_key(self.strategy)
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
                log.error("round %d: left node %d out of the DP sum: %s", server_round, msg.metadata.src_node_id, exc)
                continue
            clipped.append(clip_update(new, start, self.clipping_norm))
            msg.content[key] = to_record(clipped[-1])
            for rec in msg.content.metric_records.values():
                rec[weight_key] = 1
            valid.append(msg)
        _, metrics = self.strategy.aggregate_train(server_round, valid) if valid else (None, None)
        start_flat = flatten(start)
        total = np.zeros_like(start_flat)
        for w in clipped:
            total += flatten(w) - start_flat
        new_global = unflatten(start_flat + (total + self._noise(start_flat.size)) / self.denominator, start)
        out = MetricRecord(dict(metrics) if metrics is not None else {})
        out[DP_SAMPLED] = len(clipped)
        out[DP_NOISE_STD] = self.noise_std
        return to_record(new_global), out

    def _noisy_encrypted(
        self, server_round: int, secure: SecureAggregation, current: ArrayRecord, replies: list[Message]
    ) -> tuple[ArrayRecord, MetricRecord]:
        """``w + Enc(sum of clip(delta_k) / qN) + noise / qN`` with additions only; published with weight 1."""
        from flwr.app import MetricRecord

        acc, metrics = secure.sum_replies(server_round, replies)
        out = MetricRecord(dict(metrics) if metrics is not None else {})
        out[DP_SAMPLED] = acc.count
        out[DP_NOISE_STD] = self.noise_std
        if crypto.is_encrypted(current):
            if (weight := crypto.total_weight(current)) != 1.0:
                raise ConfigError(
                    f"the encrypted global model has total weight {weight:g}; central DP under HE keeps it at 1 "
                    "(it was not made by this protocol): start a new run instead of resuming this one"
                )
            acc.add(current)
            assert acc.header is not None  # set by the add above
            plain = self._noise(int(acc.header["n_values"])) / self.denominator
        else:  # round 1: the public initialisation, added as a plaintext
            start = from_record(current)
            base = flatten(start)
            plain = base + self._noise(base.size) / self.denominator
            if acc.count == 0:  # empty sample: the public initialisation plus noise, in the clear
                log.warning("round %d: empty sample; the model moves by noise only", server_round)
                return to_record(unflatten(plain, start)), out
        acc.add_plain(plain)
        total = acc.result(weight=1.0)
        assert total is not None  # the sum holds at least the global model or one reply
        return total, out
