"""Laws that hold for every input, checked by Hypothesis on inputs it draws (and shrinks when one fails).

* The server's encrypted sum (uaap.crypto) decrypts to NumPy's float64 weighted sum, for any tensor shapes,
  client count and weights within the CKKS range, and keeps the exact total weight.
* Privacy accounting (uaap.privacy.accountant) is monotone: more rounds never cost less epsilon, more noise or
  a lower sampling rate never more, and peeking at a round does not spend it.

Summed metrics equal pooled ones for any split of the rows: tests/uaap/test_metrics.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uaap import crypto
from uaap.privacy.accountant import Accountant, epsilon_of

shapes = st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple), min_size=1, max_size=4)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[crypto.HEContext, crypto.HEContext]:
    files = crypto.generate_keys(Path(tmp_path_factory.mktemp("prop")) / "fed")
    return crypto.load_context(files.secret), crypto.server_context(files.public)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=shapes,
    weights=st.lists(st.floats(0.001, 1000.0), min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
    long=st.booleans(),
)
def test_encrypted_sum_equals_the_plaintext_weighted_sum(keys, shape, weights, seed, long) -> None:
    secret, public = keys
    rng = np.random.default_rng(seed)
    if long:  # a model of more than one ciphertext (8192 values each)
        shape = [*shape, (9000,)]
    clients = [[rng.uniform(-1, 1, s).astype(np.float32) for s in shape] for _ in weights]
    acc = crypto.EncryptedSum(public, [tuple(s) for s in shape])
    for update, w in zip(clients, weights, strict=True):
        acc.add(crypto.encrypt_weights(update, w, secret, max_summands=len(weights)))
    total = acc.result()
    assert total is not None and acc.count == len(weights)
    assert crypto.total_weight(total) == sum(weights)  # the same additions in the same order
    reference = sum(
        w * np.concatenate([a.ravel().astype(np.float64) for a in u]) for u, w in zip(clients, weights, strict=True)
    )
    got = crypto.decrypt_sum(total, secret)
    assert got.shape == reference.shape
    assert np.abs(got - reference).max() <= 1e-6 * max(1.0, float(np.abs(reference).max()))
    mean = crypto.decrypt_global(total, secret)
    assert [m.shape for m in mean] == [tuple(s) for s in shape] and all(m.dtype == np.float32 for m in mean)


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
@settings(max_examples=60, deadline=None)
@given(
    sigma=st.floats(0.5, 8.0),
    q=st.floats(0.001, 1.0),
    rounds=st.integers(1, 300),
    more_noise=st.floats(1.0, 3.0),
    lower_rate=st.floats(0.1, 1.0),
)
def test_epsilon_is_monotone_in_rounds_noise_and_sampling_rate(sigma, q, rounds, more_noise, lower_rate) -> None:
    delta = 1e-5
    eps = epsilon_of([(sigma, q, rounds)], delta)
    assert 0.0 < eps < float("inf")
    tie = eps * 1e-12  # equal settings up to the last float bit (lower_rate 0.9999999999999999) round either way
    assert epsilon_of([(sigma, q, rounds + 1)], delta) >= eps
    assert epsilon_of([(sigma * more_noise, q, rounds)], delta) <= eps + tie
    assert epsilon_of([(sigma, q * lower_rate, rounds)], delta) <= eps + tie
    acc = Accountant("rdp", [(sigma, q, rounds)])
    assert acc.epsilon_after(delta, sigma, q, 1) == epsilon_of([(sigma, q, rounds + 1)], delta)
    assert acc.epsilon(delta) == eps and acc.steps == rounds, "peeking spends nothing"
    acc.step(sigma * more_noise, q, 1)  # any further release costs something
    assert acc.epsilon(delta) >= eps and acc.steps == rounds + 1
