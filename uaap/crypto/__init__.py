"""Secure aggregation by homomorphic encryption (TenSEAL CKKS): keys, wire format, encrypted sums.

The package, by job: :mod:`~uaap.crypto.params` (CKKS parameters and packing), :mod:`~uaap.crypto.keys`
(key files and contexts), :mod:`~uaap.crypto.seal` (raw SEAL encode/encrypt/decrypt),
:mod:`~uaap.crypto.wire` (the encrypted-record wire format) and :mod:`~uaap.crypto.aggregate` (the
server's encrypted sum). Callers use the names re-exported here (``from uaap import crypto``). Decrypting
a finished run's model for a key holder is ``uaap keys decrypt-model`` (:mod:`uaap.commands.keys`).

Design
------
One CKKS context per federation, made on the data owners' side (``uaap keys init --out DIR``):

* ``DIR/secret.ckks`` (mode 0600): the secret context, held by every client. Never sent, logged or committed
  (``DIR/.gitignore`` ignores it);
* ``DIR/public.ckks``: the same context without the secret key, for the server;
* ``DIR/fingerprint.txt``: SHA-256 of the serialised *public* context. Both sides compute it from the
  context they load and every ciphertext carries it, so a client keyed for another federation is refused.

A round under ``secure-aggregation = "ckks"``: each client flattens its new weights, pre-weights them
(``he-weight`` = num-examples, or 1 under central DP), encrypts and sends ciphertext only. The server adds
ciphertexts with the public context (:class:`EncryptedSum`) and returns the encrypted SUM plus the plaintext
total weight; clients decrypt and divide. The server never multiplies, so the modulus chain stays add-only.
Round 1's global model is plaintext (a seeded random initialisation is not private); later rounds are
ciphertext, and checkpoints keep them so (``uaap keys decrypt-model`` makes the plaintext model for a key
holder).

Security notes
--------------
* The server holds only the public context; it refuses a context that carries a secret key
  (:class:`uaap.errors.KeyMaterialError`) and cannot decrypt what it adds.
* All clients share one secret key (single-key CKKS). A client colluding with the server can therefore
  decrypt every other client's update: secure aggregation here protects against an honest-but-curious
  server, not against a server plus a client. Threshold or multi-key HE (or SecAgg+ masking) closes that.
* Decrypted values never return to the server: clients send back only fresh ciphertexts and metrics.
  Returning exact CKKS decryptions would allow key recovery (Li & Micciancio, EUROCRYPT 2021).
* The server cannot check that a ciphertext encrypts a sensible update (a malicious client can poison the
  sum); it checks the fingerprint, the layout and that every coefficient is below q.
* In simulations (``uaap simulate`` without key paths) keys are generated under ``<UAAP_HOME>/keys/<run-id>/``:
  one machine holds both contexts, which is fine for a simulation and never for a deployment.
"""

from __future__ import annotations

from uaap.crypto.aggregate import EncryptedSum, add_plain
from uaap.crypto.keys import (
    HEContext,
    KeyFiles,
    client_context,
    ensure_simulation_keys,
    fingerprint_of,
    generate_keys,
    inspect_context,
    load_context,
    read_key_file,
    server_context,
)
from uaap.crypto.params import (
    COEFF_MOD_BIT_SIZES,
    CT_PER_CHUNK,
    FILE_MAGIC,
    FINGERPRINT_FILE,
    FORMAT,
    MAX_ABS_SUM,
    POLY_MODULUS_DEGREE,
    PUBLIC_FILE,
    SCALE_BITS,
    SECRET_FILE,
    SLOTS,
    VALUES_PER_CT,
    CiphertextError,
)
from uaap.crypto.seal import SealTools, decrypt_vector, encode_vector, encrypt_vector
from uaap.crypto.wire import (
    Encrypted,
    decrypt_global,
    decrypt_sum,
    encrypt_weights,
    is_encrypted,
    parse_record,
    read_header,
    record_fingerprint,
    record_shapes,
    total_weight,
)
from uaap.errors import KeyMaterialError

__all__ = [
    "COEFF_MOD_BIT_SIZES",
    "CT_PER_CHUNK",
    "FILE_MAGIC",
    "FINGERPRINT_FILE",
    "FORMAT",
    "MAX_ABS_SUM",
    "POLY_MODULUS_DEGREE",
    "PUBLIC_FILE",
    "SCALE_BITS",
    "SECRET_FILE",
    "SLOTS",
    "VALUES_PER_CT",
    "CiphertextError",
    "Encrypted",
    "EncryptedSum",
    "HEContext",
    "KeyFiles",
    "KeyMaterialError",
    "SealTools",
    "add_plain",
    "client_context",
    "decrypt_global",
    "decrypt_sum",
    "decrypt_vector",
    "encode_vector",
    "encrypt_vector",
    "encrypt_weights",
    "ensure_simulation_keys",
    "fingerprint_of",
    "generate_keys",
    "inspect_context",
    "is_encrypted",
    "load_context",
    "parse_record",
    "read_key_file",
    "read_header",
    "record_fingerprint",
    "record_shapes",
    "server_context",
    "total_weight",
]
