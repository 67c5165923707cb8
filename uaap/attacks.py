"""Model-poisoning clients for testing robust aggregation (``uaap simulate --malicious-fraction F --attack A``).

A malicious client trains honestly, then sends a transformation of its honest update ``d = w_new - w_global``
(Fang et al. 2020 and Baruch et al. 2019 use the same three):

* ``sign-flip``: ``w_global - k d`` (it pushes the model the other way, k times as hard);
* ``scaled``: ``w_global + k d`` (a model-replacement boost);
* ``noise``: ``w_global + N(0, (k s)^2)`` per coordinate, ``s`` the root mean square of ``d``.

``k`` is ``attack-scale``. Which partitions attack is fixed by the run's seed: ``round(F * num-clients)`` of them,
drawn without replacement, so a run and its baseline attack with the same clients. The transformed update then
goes through the client's usual path (clipping under central DP, encryption under CKKS), as a real attacker's
would. Only simulated clients (partitions) act on it; a deployed client never poisons its update.
"""

from __future__ import annotations

import numpy as np

from uaap.config import ATTACKS, RunConfig
from uaap.errors import ConfigError

SALT = 0x5EED_A77AC  # keeps the attackers' draw apart from the run's other seeded draws


def malicious_partitions(cfg: RunConfig) -> frozenset[int]:
    """The partitions that attack in this run (none when ``malicious-fraction`` is 0)."""
    count = round(cfg.malicious_fraction * cfg.num_clients)
    if count == 0:
        return frozenset()
    order = np.random.default_rng([cfg.seed, SALT]).permutation(cfg.num_clients)
    return frozenset(int(p) for p in order[:count])


def poison(
    kind: str, new: list[np.ndarray], start: list[np.ndarray], scale: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """The weights a malicious client sends instead of ``new`` (its honest result from ``start``)."""
    if kind not in ATTACKS:
        raise ConfigError(f"attack={kind!r} is not an attack; choose one of: {', '.join(ATTACKS)}")
    deltas = [n.astype(np.float64) - s for n, s in zip(new, start, strict=True)]
    if kind == "sign-flip":
        out = [s - scale * d for s, d in zip(start, deltas, strict=True)]
    elif kind == "scaled":
        out = [s + scale * d for s, d in zip(start, deltas, strict=True)]
    else:
        size = sum(d.size for d in deltas)
        rms = float(np.sqrt(sum(float(np.sum(d * d)) for d in deltas) / max(size, 1)))
        out = [s + rng.normal(0.0, scale * rms, size=s.shape) for s in start]
    return [o.astype(n.dtype) for o, n in zip(out, new, strict=True)]


def attack_rng(cfg: RunConfig, server_round: int, pid: int) -> np.random.Generator:
    """The noise attack's generator for one client and round (reproducible from the seed)."""
    return np.random.default_rng([cfg.seed, SALT, server_round, pid])
