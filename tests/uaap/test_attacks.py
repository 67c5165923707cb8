"""The poisoning attacks (uaap.attacks): each is the transformation of the honest update it names, and the
attackers are a seeded choice of partitions."""

from __future__ import annotations

import numpy as np
import pytest

from uaap.attacks import malicious_partitions, poison
from uaap.config import RunConfig
from uaap.errors import ConfigError


def _weights(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(300, 40)).astype(np.float32), rng.normal(size=40).astype(np.float32)]


def test_each_attack_transforms_the_honest_update() -> None:
    start, new = _weights(0), _weights(1)
    delta = [n.astype(np.float64) - s for n, s in zip(new, start, strict=True)]
    flipped = poison("sign-flip", new, start, 3.0, np.random.default_rng(0))
    scaled = poison("scaled", new, start, 10.0, np.random.default_rng(0))
    for f, sc, s, d, n in zip(flipped, scaled, start, delta, new, strict=True):
        assert f.dtype == n.dtype and f.shape == n.shape
        np.testing.assert_allclose(f, s - 3.0 * d, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(sc, s + 10.0 * d, rtol=1e-5, atol=1e-5)
    noisy = poison("noise", new, start, 2.0, np.random.default_rng(0))
    rms = np.sqrt(sum(float(np.sum(d * d)) for d in delta) / sum(d.size for d in delta))
    noise = np.concatenate([(x.astype(np.float64) - s).ravel() for x, s in zip(noisy, start, strict=True)])
    assert abs(noise.std() / (2.0 * rms) - 1) < 0.02 and abs(noise.mean()) < 0.02 * rms  # 12040 draws
    assert np.corrcoef(noise, np.concatenate([d.ravel() for d in delta]))[0, 1] < 0.05  # not the update itself
    with pytest.raises(ConfigError, match="attack='flip' is not an attack; choose one of: sign-flip, scaled, noise"):
        poison("flip", new, start, 1.0, np.random.default_rng(0))


def test_the_attackers_are_a_seeded_share_of_the_partitions() -> None:
    cfg = RunConfig(num_clients=20, malicious_fraction=0.3, seed=5)
    chosen = malicious_partitions(cfg)
    assert len(chosen) == 6 and chosen <= set(range(20))
    assert malicious_partitions(cfg) == chosen  # the same run attacks with the same clients
    assert malicious_partitions(cfg.replace(seed=6)) != chosen
    assert malicious_partitions(cfg.replace(malicious_fraction=0.0)) == frozenset()
    assert len(malicious_partitions(cfg.replace(num_clients=10, malicious_fraction=0.1))) == 1
