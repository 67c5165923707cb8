"""``uaap register``, ``uaap serve`` and ``uaap api-keys``: the serving floor's commands.

Registered with the library's ``uaap`` CLI through the ``uaap.commands`` entry-point group (see
``pyproject.toml`` and :mod:`uaap.cli`), so ``uaap`` never imports serving/. MLflow, FastAPI, uvicorn and
onnxruntime load inside the command functions only.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register_register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``register`` command."""
    p = sub.add_parser(
        "register",
        help="register a finished run's model in the MLflow model registry (for `uaap serve`)",
        description="Register a run's model as a new version of NAME in MLflow's model registry, with its input "
        "schema of raw columns, fitted preprocessing, metrics, privacy epsilon and (when `uaap export RUN --to onnx` "
        "made one) its ONNX export, which the API then runs with onnxruntime.",
    )
    p.add_argument("run_id", metavar="RUN", help="run id (`uaap runs` lists them)")
    p.add_argument("--name", required=True, help="registered model name (letters, digits, _ . -)")
    p.add_argument("--alias", default=None, help="point this alias at the new version (e.g. champion)")
    p.add_argument(
        "--encrypt",
        action="store_true",
        help="store the artefacts AES-256-GCM encrypted (key from $UAAP_MODEL_KEY or --key-file; a key file is "
        "made, mode 0600, when neither exists)",
    )
    p.add_argument(
        "--key-file", type=Path, default=None, help="at-rest key file (default <workspace>/keys/model-at-rest.key)"
    )
    p.set_defaults(func=run_register)


def run_register(args: argparse.Namespace) -> int:
    """Register and print the new version."""
    from serving.registry import register_run

    done = register_run(args.run_id, args.name, alias=args.alias, encrypt=args.encrypt, key_file=args.key_file)
    alias = f", alias @{done.alias}" if done.alias else ""
    enc = ", encrypted at rest" if done.encrypted else ""
    print(f"registered {done.name} version {done.version} from run {done.run_id} (runtime {done.runtime}{alias}{enc})")
    return 0


def register_serve(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``serve`` command."""
    p = sub.add_parser(
        "serve",
        help="serve registered models over HTTP (FastAPI): predictions, model info, health, metrics",
        description="Serve the models of the MLflow registry: POST /v1/models/NAME[@ALIAS]/predict, GET /v1/models, "
        "/healthz, /readyz, /metrics; OpenAPI pages at /docs. Requests need an API key (`uaap api-keys create`).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--alias", default="champion", help="the alias a bare model name means (default champion)")
    p.add_argument("--cache-size", type=int, default=10_000, help="rows kept in the prediction cache (0: off)")
    p.add_argument("--max-batch", type=int, default=1_000, help="rows per request; more is refused with 413")
    p.add_argument(
        "--max-body-bytes", type=int, default=8 * 1024 * 1024, help="request body limit; more is refused with 413"
    )
    p.add_argument("--refresh", type=float, default=2.0, help="seconds between alias lookups (default 2)")
    p.add_argument("--preload", action="append", default=[], metavar="NAME[@ALIAS]", help="load before ready")
    p.add_argument("--key-file", type=Path, default=None, help="at-rest key file for encrypted models")
    p.add_argument("--api-keys", type=Path, default=None, help="API key store (default <workspace>/serving/)")
    p.add_argument("--ssl-certfile", default=None, help="TLS certificate (e.g. from `uaap certs`)")
    p.add_argument("--ssl-keyfile", default=None, help="TLS private key")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Start uvicorn with the API (blocks until stopped)."""
    import uvicorn

    from serving.app import Settings, configure_logging, create_app
    from uaap.errors import ConfigError

    if args.cache_size < 0 or args.max_batch < 1 or args.refresh < 0 or args.max_body_bytes < 1024:
        raise ConfigError(
            f"--cache-size {args.cache_size}, --max-batch {args.max_batch}, --refresh {args.refresh}, --max-body-bytes "
            f"{args.max_body_bytes}: the cache size and refresh must be >= 0, the batch limit >= 1 and the body limit "
            ">= 1024"
        )
    configure_logging()
    settings = Settings(
        alias=args.alias,
        cache_size=args.cache_size,
        max_batch=args.max_batch,
        max_body_bytes=args.max_body_bytes,
        refresh_seconds=args.refresh,
        key_file=args.key_file,
        api_keys=args.api_keys,
        preload=tuple(args.preload),
    )
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    return 0


def register_api_keys(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``api-keys`` command (create, list, revoke)."""
    p = sub.add_parser("api-keys", help="create, list and revoke the inference API's keys")
    ks = p.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)
    c = ks.add_parser("create", help="make a key and print its token once (only its hash is kept)")
    c.add_argument("--name", required=True, help="who or what uses the key")
    c.add_argument("--scopes", default="predict", help="comma-separated: predict, admin (default predict)")
    c.add_argument("--rate", type=int, default=600, help="requests per minute (default 600); more get 429")
    c.add_argument("--store", type=Path, default=None, help="key store (default <workspace>/serving/api-keys.json)")
    c.set_defaults(func=run_api_keys)
    ls = ks.add_parser("list", help="list keys (ids, scopes, rates, revoked), never tokens")
    ls.add_argument("--store", type=Path, default=None, help="key store")
    ls.set_defaults(func=run_api_keys)
    r = ks.add_parser("revoke", help="revoke a key by id (the API answers 403 to it from then on)")
    r.add_argument("key_id", metavar="ID", help="the key's id (`uaap api-keys list`)")
    r.add_argument("--store", type=Path, default=None, help="key store")
    r.set_defaults(func=run_api_keys)


def run_api_keys(args: argparse.Namespace) -> int:
    """Create, list or revoke keys."""
    import time

    from serving import keys

    if args.keys_command == "create":
        scopes = tuple(s.strip() for s in args.scopes.split(",") if s.strip())
        token, entry = keys.create(args.name, scopes, args.rate, args.store)
        print(f"created API key {entry.id} ({args.name}; scopes {','.join(entry.scopes)}; {entry.rate_per_minute}/min)")
        print("token (shown once, store it now):")
        print(token)
    elif args.keys_command == "list":
        rows = keys.list_keys(args.store)
        print(f"{'id':<14}{'name':<20}{'scopes':<16}{'rate/min':>9}  created              revoked")
        for k in rows:
            made = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(k.created))
            gone = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(k.revoked)) if k.revoked else "-"
            print(f"{k.id:<14}{k.name[:19]:<20}{','.join(k.scopes):<16}{k.rate_per_minute:>9}  {made}  {gone}")
        if not rows:
            print("(no keys yet: `uaap api-keys create --name NAME`)")
    else:
        done = keys.revoke(args.key_id, args.store)
        print(f"revoked API key {done.id} ({done.name})")
    return 0


def register_ui(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``ui`` command."""
    p = sub.add_parser(
        "ui",
        help="the workbench (Streamlit): data, train, runs and compare, explain, privacy, predict",
        description="Serve the workbench, one Streamlit app over the whole workflow: profile a table, train centrally "
        "or simulate a federation (HE and DP switches) with its output streamed, compare runs from MLflow, show and "
        "make `uaap explain` plots, the privacy-budget dashboard, and register a run and try predictions against a "
        "running `uaap serve`. Training, explaining and registering run as `uaap` subprocesses.",
    )
    p.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    p.set_defaults(func=run_ui)


def run_ui(args: argparse.Namespace) -> int:
    """Run Streamlit on the workbench in the foreground (Ctrl-C or SIGTERM stops it)."""
    import os

    from serving.workbench import ui_command
    from uaap import workspace
    from uaap.errors import ConfigError
    from uaap.processes import run_foreground

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a TCP port; give 1..65535 (default 8501)")
    env = dict(os.environ, UAAP_HOME=str(workspace.home()))
    print(f"workbench on http://{args.address}:{args.port} (Ctrl-C to stop)", flush=True)
    return run_foreground(ui_command(args.port, args.address), env)
