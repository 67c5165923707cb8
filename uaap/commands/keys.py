"""``uaap keys``: CKKS key material for secure aggregation (init, inspect, decrypt-model).

Run on the data owners' side. ``init`` writes the secret context (mode 0600, for clients only), the public
context (for the server) and the fingerprint; ``inspect`` never prints key material.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``keys`` command group."""
    p = sub.add_parser("keys", help="CKKS keys for secure aggregation (init, inspect, decrypt-model)")
    keys = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    init = keys.add_parser("init", help="make one federation's CKKS contexts (secret, public, fingerprint)")
    init.add_argument("--out", required=True, metavar="DIR", help="folder for secret.ckks, public.ckks, fingerprint")
    init.add_argument("--force", action="store_true", help="replace existing keys (clients then need the new ones)")
    init.set_defaults(func=run_init)

    insp = keys.add_parser("inspect", help="what a context file holds (no key material is printed)")
    insp.add_argument("file", metavar="FILE", help="secret.ckks or public.ckks")
    insp.add_argument("--json", action="store_true", help="print JSON")
    insp.set_defaults(func=run_inspect)

    dec = keys.add_parser(
        "decrypt-model",
        help="decrypt an HE run's last checkpoint into runs/<id>/model.npz (or model.skops)",
    )
    dec.add_argument("run_id", metavar="RUN", help="run id (see `uaap runs`)")
    dec.add_argument("--secret-context", required=True, metavar="FILE", help="the federation's secret.ckks")
    dec.set_defaults(func=run_decrypt_model)


def run_init(args: argparse.Namespace) -> int:
    """Write the key files and say where each one goes."""
    from uaap.crypto import generate_keys

    files = generate_keys(args.out, overwrite=args.force)
    print(f"secret context (clients only, mode 0600): {files.secret}")
    print(f"public context (server):                  {files.public}")
    print(f"fingerprint:                              {files.fingerprint}")
    print("never commit or send secret.ckks to the server; a .gitignore in the folder ignores it")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    """Print a context's kind, parameters and fingerprint."""
    from uaap.crypto import inspect_context

    info = inspect_context(args.file)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def run_decrypt_model(args: argparse.Namespace) -> int:
    """Decrypt the final encrypted model of a run for a key holder."""
    path = decrypt_model(args.run_id, args.secret_context)
    print(f"plaintext model: {path}")
    return 0


def decrypt_model(run_id: str, secret_context: str | Path) -> Path:
    """Decrypt the last checkpoint of an HE run into ``runs/<id>/model.npz`` (``model.skops`` for K-Means and PCA,
    whose checkpoint holds summed statistics), for a key holder."""
    from flwr.app import Array, ArrayRecord

    from uaap import crypto, workspace
    from uaap.anomaly import threshold_meta
    from uaap.data import describe, target_meta
    from uaap.errors import KeyMaterialError, WorkspaceError
    from uaap.models.summed import rounds_of

    rd = workspace.existing_run(run_id)
    ckpt = rd.latest_checkpoint()
    if ckpt is None:
        raise WorkspaceError(f"run {run_id!r} has no checkpoint yet; nothing to decrypt")
    record = ArrayRecord({k: Array(v) for k, v in ckpt.arrays.items()})
    if not crypto.is_encrypted(record):
        raise WorkspaceError(f"run {run_id!r} is not encrypted; its plaintext model is {rd.model_file}")
    hctx = crypto.load_context(secret_context)
    if not hctx.has_secret_key:
        raise KeyMaterialError(f"{secret_context} is a public context; decrypting needs {crypto.SECRET_FILE}")
    theirs = crypto.record_fingerprint(record)
    if theirs != hctx.fingerprint:
        raise KeyMaterialError(
            f"run {run_id!r} was encrypted under key fingerprint {theirs[:16]}, but {secret_context} has "
            f"{hctx.short}: use the secret context of that federation (see the run's he-secret-context)"
        )
    cfg = rd.read_config()
    meta = describe(cfg)
    if rounds_of(cfg.model) is not None:  # K-Means, PCA: the decrypted totals give a scikit-learn estimator
        from uaap.models.summed import decrypt_totals
        from uaap.models.summed import save_model as save_summed

        fields = {"decrypted_from_round": ckpt.round, "he_fingerprint": hctx.fingerprint}
        return save_summed(rd, cfg, decrypt_totals(record, hctx), ckpt.round, meta, **fields)
    weights = crypto.decrypt_global(record, hctx)
    return workspace.save_model(
        rd.model_file,
        cfg.model,
        weights,
        n_features=meta.n_features,
        n_classes=meta.n_classes,
        image_shape=meta.image_shape,
        extra={
            "run_id": rd.run_id,
            "dataset": cfg.dataset,
            "decrypted_from_round": ckpt.round,
            "he_fingerprint": hctx.fingerprint,
            **target_meta(meta),
            **threshold_meta(rd, meta.task),  # anomaly: chosen in the clear from the clients' summed histograms
        },
    )
