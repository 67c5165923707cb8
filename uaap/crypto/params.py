"""UAAP's CKKS parameters, key-file names and the error for unusable ciphertext; every crypto module uses them.

Parameters and packing (measured; see FIELD-NOTES and benchmarks/secure_aggregation.py)
---------------------------------------------------------------------------------------
``N = 8192``, ``coeff_mod_bit_sizes = [60, 60]``, scale ``2**40``. One 60-bit data prime plus the special
prime: log2 q = 120 <= 218, the HE standard's bound for 128-bit security at N = 8192 (SEAL enforces it,
``sec_level = tc128``). A ciphertext has N/2 = 4096 complex slots in 2 x 8192 coefficients of 8 bytes.
CKKS is linear over the complex numbers, so each slot carries two parameters (real and imaginary part):
8192 values per ciphertext, 16 bytes per parameter (TenSEAL's real ``ckks_vector`` packing costs 32; a
[60,40,60] chain that allows one server-side multiply ~58). Clients encrypt symmetrically with the secret
key they hold: half the work of public-key encryption, and ciphertexts of the same kind. Precision: the
decrypted sum of K fresh ciphertexts is off by ~1e-9 (max abs, K = 10), far below the float32 resolution
of the weights. Range: a coefficient of the decrypted sum must stay below 2**19 (scale 2**40 in a 60-bit
prime); it is bounded by the largest slot modulus, so :func:`uaap.crypto.encrypt_weights` refuses values
beyond ``2**18 / max_summands`` per parameter (a slot then stays below 2**18.5).

These live apart from :mod:`uaap.crypto.keys` because the SEAL layer (:mod:`uaap.crypto.seal`) needs them
and :mod:`uaap.crypto.keys` needs the SEAL layer.
"""

from __future__ import annotations

from uaap.errors import DataError

POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = (60, 60)
SCALE_BITS = 40
SLOTS = POLY_MODULUS_DEGREE // 2  # complex slots per ciphertext
VALUES_PER_CT = 2 * SLOTS  # two real values per slot: its real and its imaginary part
CT_PER_CHUNK = 64
MAX_ABS_SUM = 2.0**18  # per value; a slot's modulus then stays below 2**18.5 < 2**(60 - 40 - 1)
CT_BYTES = 2 * POLY_MODULUS_DEGREE * 8  # one ciphertext on the wire: 2 polynomials of N uint64 coefficients
FORMAT = "uaap-ckks/2"
FILE_MAGIC = b"UAAP-CKKS/1\n"

SECRET_FILE = "secret.ckks"
PUBLIC_FILE = "public.ckks"
FINGERPRINT_FILE = "fingerprint.txt"


class CiphertextError(DataError):
    """Ciphertext bytes that cannot be used (wrong layout, not deserialisable, out of range)."""
