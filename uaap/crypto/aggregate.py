"""The server's side of secure aggregation: sum encrypted records, add plaintext noise to a sum.

Both need only the public context. Sums are taken on the raw ciphertext coefficients in NumPy with lazy
modular reduction; the server never multiplies, so the modulus chain stays add-only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.crypto.keys import HEContext, load_context
from uaap.crypto.params import MAX_ABS_SUM, CiphertextError
from uaap.crypto.seal import encode_vector
from uaap.crypto.wire import Encrypted, build_record, parse_record
from uaap.errors import ConfigError
from uaap.protocol import HE_WEIGHT

if TYPE_CHECKING:
    from flwr.app import ArrayRecord


def add_plain(record: ArrayRecord, vector: np.ndarray, context: HEContext | str | Path) -> ArrayRecord:
    """``record`` with a plaintext float64 vector added to what it encrypts (see :meth:`EncryptedSum.add_plain`).

    The total weight, header and fingerprint are kept; a public context (or its path) suffices.
    """
    acc = EncryptedSum(context if isinstance(context, HEContext) else load_context(context))
    enc = acc.add(record)
    acc.add_plain(vector)
    out = acc.result(weight=enc.weight)
    assert out is not None  # the sum holds ``record``
    return out


class EncryptedSum:
    """Server-side sum of encrypted records (public context only); lazy modular reduction in NumPy."""

    _LAZY = 15  # 15 * q < 2**64 for a 60-bit q

    def __init__(self, hctx: HEContext, shapes: list[tuple[int, ...]] | None = None) -> None:
        self.hctx = hctx
        self.shapes = shapes  # the model every record must encrypt (the server's own), when known
        self.header: dict[str, Any] | None = None
        self.acc: list[np.ndarray] = []
        self.count = 0
        self.total = 0.0
        self._pending = 0

    def add(self, record: ArrayRecord, weight: float | None = None) -> Encrypted:
        """Validate ``record`` completely, then add it; on any error the sum is untouched (raises)."""
        enc = parse_record(record, self.hctx, shapes=self.shapes)
        if weight is not None and not np.isclose(weight, enc.weight, rtol=1e-12, atol=0.0):
            raise CiphertextError(f"reply metric {HE_WEIGHT}={weight} disagrees with its record's {enc.weight}")
        if self.header is None:
            self.header = enc.header
            self.acc = [np.array(c, dtype=np.uint64) for c in enc.chunks]
        else:
            mine = (self.header["n_values"], self.header["shapes"])
            if (enc.header["n_values"], enc.header["shapes"]) != mine:
                raise CiphertextError(
                    f"reply encrypts {enc.header['n_values']} values {enc.header['shapes']}; "
                    f"the others encrypt {mine[0]} values {mine[1]}"
                )
            if self._pending == self._LAZY - 1:
                self._reduce()
            for acc, chunk in zip(self.acc, enc.chunks, strict=True):
                np.add(acc, chunk, out=acc)
            self._pending += 1
        self.count += 1
        self.total += enc.weight
        return enc

    def add_plain(self, vector: np.ndarray) -> None:
        """Add a plaintext float64 vector (e.g. central-DP noise, in units of the weighted SUM) to the sum.

        The vector is CKKS-encoded (no key needed) and added to each ciphertext's first polynomial, as SEAL's
        add_plain does. Count and total weight do not change.
        """
        if self.header is None:
            raise CiphertextError("the encrypted sum is empty: add a ciphertext before a plaintext")
        vec = np.asarray(vector, dtype=np.float64).ravel()
        if vec.size != int(self.header["n_values"]):
            raise ConfigError(
                f"plaintext vector has {vec.size} values; the encrypted sum has {self.header['n_values']}"
            )
        if vec.size and not float(np.abs(vec).max()) < MAX_ABS_SUM:
            raise ConfigError(
                f"plaintext vector peaks at {np.abs(vec).max():.4g}, beyond the CKKS range {MAX_ABS_SUM:g}"
            )
        plain = encode_vector(vec, self.hctx)
        self._reduce()
        q = np.uint64(self.hctx.modulus)
        pos = 0
        for acc in self.acc:
            k = acc.shape[0]
            c0 = acc[:, 0, :]
            np.add(c0, plain[pos : pos + k], out=c0)  # both < q < 2**60: no uint64 overflow
            np.subtract(c0, q, out=c0, where=c0 >= q)
            pos += k

    def _reduce(self) -> None:
        q = np.uint64(self.hctx.modulus)
        for acc in self.acc:
            np.remainder(acc, q, out=acc)
        self._pending = 0

    def result(self, weight: float | None = None) -> ArrayRecord | None:
        """The encrypted sum as a record, or None if empty.

        Its total weight is the sum of the weights added, or ``weight`` when the caller fixes the divisor
        (central DP's fixed-denominator estimator publishes 1: the sum already is the model).
        """
        if self.header is None:
            return None
        self._reduce()
        return build_record(self.header, self.acc, self.total if weight is None else weight, self.hctx.fingerprint)
