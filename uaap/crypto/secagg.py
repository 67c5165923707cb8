"""SecAgg+ (Bell et al., CCS 2020) as Flower implements it: the pieces client and server share.

Flower 1.42 ships SecAgg+ only for its legacy API (``SecAggPlusWorkflow`` + ``secaggplus_mod``, LegacyContext and
NumPyClient); UAAP's round loop runs on the Message API, so the protocol's four stages run as exchanges of one
round (:mod:`strategies.secagg` on the server, :mod:`client.secagg` on the client) and reuse Flower's primitives
rather than new cryptography:

* key pairs and key agreement: ``flwr.supercore.primitives.asymmetric`` (ECDH on NIST P-384, PEM bytes) and
  ``flwr.common.secure_aggregation.crypto.symmetric_encryption.generate_shared_key`` (HKDF-SHA256);
* the encrypted share envelopes: Flower's ``encrypt``/``decrypt`` (Fernet: AES-128-CBC + HMAC-SHA256) around
  ``share_keys_plaintext_concat`` (source, destination, both shares);
* Shamir secret sharing of the self-mask seed and of the masking secret key: Flower's ``crypto.shamir``
  (pycryptodome, GF(2^128), 16-byte chunks);
* quantisation: Flower's ``quantization.quantize`` (clip to [-c, c], stochastic rounding onto ``Q`` levels).

One deliberate difference: Flower's ``pseudo_rand_gen`` folds its seed to 32 bits (``np.random.RandomState``), so
each mask has only 2^32 possible values. Masks here are AES-256-CTR key streams of the full 256-bit seed (the PRG
of Bell et al.), 64-bit words, uniform over the ring Z_(2^64) the vectors live in.

Encoding and its error. A client's vector is its update ``delta = w_k - w`` (flattened), clipped coordinate-wise to
``[-c, c]`` (``c = clipping_range``) and quantised to ``q = SR((delta + c) * Q / (2c))`` in ``[0, Q]``
(``Q = quantization_range``, SR: unbiased stochastic rounding), multiplied by the client's integer weight ``n_k``,
with ``n_k`` itself appended as one more coordinate. The server's unmasked sum is exact in Z_(2^64) as long as
``W * Q < 2^64`` (``W``: the survivors' total weight; checked before a run starts), so

    mean_j = (sum_k n_k q_kj) * (2c / Q) / W - c,   |mean_j - sum_k n_k delta_kj / W| < 2c / Q

for every coordinate whose client values lie in [-c, c] (each client's rounding error is below one step
``2c/Q`` and a weighted mean of such errors is too), whatever the number of clients; the expected error is 0 and
its standard deviation at most ``(c/Q) * sqrt(sum n_k^2) / W``. Defaults (c = 8, Q = 2^22): 3.8e-6.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np

from uaap.config import check_secagg_params as check_params
from uaap.protocol import SECAGG_MASKED

RING_BITS = 64  # vectors live in Z_(2^64): numpy's uint64 arithmetic wraps exactly there
SEED_BYTES = 32
MASKED = SECAGG_MASKED


@dataclass(frozen=True)
class Params:
    """One run's SecAgg+ settings (``secagg-*`` of the run config)."""

    num_shares: int = 5
    threshold: int = 3
    clipping_range: float = 8.0
    quantization_range: int = 2**22

    @property
    def step(self) -> float:
        """One quantisation step, ``2c / Q``: the bound on the error of a weighted mean, per coordinate."""
        return 2.0 * self.clipping_range / self.quantization_range

    def check(self, max_total_weight: int) -> None:
        """Refuse settings the protocol cannot run with, naming the value and what to do."""
        check_params(self.num_shares, self.threshold, self.clipping_range, self.quantization_range, max_total_weight)


# ---- the neighbour graph (SecAgg+: each client masks with and shares to its ring neighbours only) ---------------
def neighbours(nodes: list[int], num_shares: int, rng: random.Random | None = None) -> dict[int, list[int]]:
    """Each node's neighbourhood (itself included, sorted): ``num_shares`` consecutive nodes of a shuffled ring,
    or every node when there are no more than ``num_shares``."""
    order = sorted(set(nodes))
    (rng or random.SystemRandom()).shuffle(order)
    n, half = len(order), num_shares // 2
    if n <= num_shares:
        return {u: sorted(order) for u in order}
    return {u: sorted(order[(i + off) % n] for off in range(-half, half + 1)) for i, u in enumerate(order)}


# ---- keys, shares, envelopes: Flower's primitives --------------------------------------------------------------
def key_pair() -> tuple[bytes, bytes]:
    """A fresh (private, public) ECDH key pair as PEM bytes (Flower's P-384 keys)."""
    from flwr.supercore.primitives.asymmetric import generate_key_pairs, private_key_to_bytes, public_key_to_bytes

    sk, pk = generate_key_pairs()
    return private_key_to_bytes(sk), public_key_to_bytes(pk)


def public_of(private_pem: bytes) -> bytes:
    """The public key (PEM) of a private key (PEM): checks that a reconstructed key is the one advertised."""
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, public_key_to_bytes

    return public_key_to_bytes(bytes_to_private_key(private_pem).public_key())


def check_public_key(pem: object) -> bytes:
    """``pem`` if it is a loadable P-384 public key in PEM form, else ``ValueError``."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.supercore.primitives.asymmetric import bytes_to_public_key

    if not isinstance(pem, bytes) or not 0 < len(pem) <= 1024:
        raise ValueError("a public key is PEM bytes of at most 1 KiB")
    key = bytes_to_public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise ValueError("a public key must be an EC key on secp384r1")
    return pem


def agree(private_pem: bytes, public_pem: bytes) -> bytes:
    """The key two parties share (ECDH + HKDF-SHA256, Flower's ``generate_shared_key``; Fernet's base64 form)."""
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    return generate_shared_key(bytes_to_private_key(private_pem), bytes_to_public_key(public_pem))


def split(secret: bytes, threshold: int, num: int) -> list[bytes]:
    """``num`` Shamir shares of ``secret``, any ``threshold`` of which rebuild it (Flower's ``create_shares``)."""
    from flwr.common.secure_aggregation.crypto.shamir import create_shares

    return create_shares(secret, threshold, num)


def combine(shares: list[bytes]) -> bytes:
    """The secret behind ``shares`` (Flower's ``combine_shares``); ``ValueError`` when they do not fit."""
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares

    if not shares or len({len(s) for s in shares}) != 1 or (len(shares[0]) - 4) % 16:
        raise ValueError("shares of one secret have one length: 4 index bytes and 16-byte chunks")
    return combine_shares(shares)


def seal(key: bytes, src: int, dst: int, seed_share: bytes, key_share: bytes) -> bytes:
    """The envelope carrying ``src``'s two shares to ``dst`` through the server (Fernet under their shared key)."""
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import encrypt
    from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_concat

    return encrypt(key, share_keys_plaintext_concat(src, dst, seed_share, key_share))


def open_envelope(key: bytes, ciphertext: bytes, src: int, dst: int) -> tuple[bytes, bytes]:
    """The (seed share, key share) an envelope carries, after checking it was sealed by ``src`` for ``dst``."""
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt
    from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_separate

    actual_src, actual_dst, seed_share, key_share = share_keys_plaintext_separate(decrypt(key, ciphertext))
    if (actual_src, actual_dst) != (src, dst):
        raise ValueError(f"an envelope from node {src} to node {dst} says it is from {actual_src} to {actual_dst}")
    return seed_share, key_share


# ---- masks ------------------------------------------------------------------------------------------------------
def prg(seed: bytes, size: int) -> np.ndarray:
    """``size`` uniform words of Z_(2^64) from ``seed``: the AES-256-CTR key stream under SHA-256(seed)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = hashlib.sha256(b"uaap-secagg-mask\x00" + seed).digest()
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(8 * size))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


def pair_sign(own: int, other: int) -> int:
    """+1 when ``own`` adds the pair's mask, -1 when it subtracts it (Flower's rule: the larger node id adds)."""
    return 1 if own > other else -1


def apply_mask(vector: np.ndarray, seed: bytes, sign: int) -> np.ndarray:
    """``vector +/- prg(seed)`` in Z_(2^64) (wrapping uint64 arithmetic)."""
    mask = prg(seed, vector.size)
    out: np.ndarray = vector + mask if sign > 0 else vector - mask
    return out


# ---- encoding ---------------------------------------------------------------------------------------------------
def encode(delta: np.ndarray, weight: int, params: Params) -> tuple[np.ndarray, int]:
    """``(n_k * q, then n_k)`` as uint64 (see the module notes) and how many coordinates were clipped to [-c, c]."""
    from flwr.common.secure_aggregation.quantization import quantize

    if not (isinstance(weight, int) and weight >= 1):
        raise ValueError(f"a SecAgg+ weight is a whole number >= 1, got {weight!r}")
    values = np.asarray(delta, dtype=np.float64).ravel()
    if not np.isfinite(values).all():
        raise ValueError("the update has non-finite values")
    clipped = int(np.count_nonzero(np.abs(values) > params.clipping_range))
    (levels,) = quantize([values], params.clipping_range, params.quantization_range)
    out = np.empty(values.size + 1, dtype=np.uint64)
    out[:-1] = levels.astype(np.uint64) * np.uint64(weight)
    out[-1] = weight
    return out, clipped


def decode(total: np.ndarray, params: Params) -> tuple[np.ndarray, int]:
    """The survivors' weighted SUM of values (float64) and their total weight, from the unmasked ring sum."""
    weight = int(total[-1])
    sums = total[:-1].astype(np.float64) * params.step - params.clipping_range * weight
    return sums, weight


def error_bound(params: Params, weight: int, denominator: float) -> float:
    """The largest error per coordinate of ``sum / denominator`` (``weight``: the summed weights)."""
    return params.step * weight / denominator
