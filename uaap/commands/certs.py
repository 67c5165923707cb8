"""``uaap certs``: TLS certificates and SuperNode keys for a federation."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``certs`` command group."""
    p = sub.add_parser("certs", help="TLS certificates and SuperNode authentication keys")
    csub = p.add_subparsers(dest="certs_command", required=True, metavar="SUBCOMMAND")
    init = csub.add_parser("init", help="create a CA, a server certificate and client (SuperNode) keys")
    init.add_argument("--out", required=True, help="folder to write into (created, mode 0700)")
    init.add_argument(
        "--host",
        action="append",
        default=[],
        help="a name or IP address clients use to reach the server (repeatable; localhost is always included)",
    )
    init.add_argument("--clients", type=int, default=3, help="SuperNode key pairs to create (default 3)")
    init.add_argument("--days", type=int, default=365, help="certificate validity in days (default 365)")
    init.add_argument("--force", action="store_true", help="replace an existing CA in --out")
    init.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    """Write the files and say which goes where (never print key material)."""
    from rich.console import Console

    from uaap.certs import init_certs

    made = init_certs(args.out, hosts=args.host, clients=args.clients, days=args.days, overwrite=args.force)
    console = Console()
    console.print(f"wrote certificates and keys to [bold]{made.out}[/] (private keys mode 0600)")
    console.print(f"  server:  --ssl-certfile {made.server_cert.name} --ssl-keyfile {made.server_key.name}")
    console.print(f"  clients: --root-certificates {made.ca_cert.name} and one client-<i>.key each")
    console.print(f"  keep {made.ca_key.name} offline; never commit this folder")
    return 0
