"""The ``uaap`` command line: one entry point, one module per command group.

Each module in ``uaap.commands`` exposes ``register(subparsers)``; heavy imports happen inside the
command functions, so ``uaap --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from uaap.errors import UaapError

COMMANDS = (
    "uaap.commands.simulate",
    "uaap.commands.train",
    "uaap.commands.runs",
    "uaap.commands.privacy",
    "uaap.commands.keys",
    "uaap.commands.certs",
    "uaap.commands.demo",
    "uaap.commands.export",
    "uaap.commands.automl",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every command group registered."""
    parser = argparse.ArgumentParser(prog="uaap", description="Federated-first ML on Flower and Ray.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print one clear line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UaapError as exc:
        print(f"uaap: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("uaap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
