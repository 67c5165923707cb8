"""The ``uaap`` command line: one entry point, commands from the library and from the floors above it.

One parser, two sources of commands:

* the library's own modules, ``uaap.commands.<module>`` (:data:`LIBRARY`), each with ``register(subparsers)``;
* the ``uaap.commands`` entry-point group (:data:`GROUP`) for commands that need a floor above the library
  (the simulation and edge-export floors, later serving/). The library never imports those floors: each
  floor declares its commands in ``pyproject.toml``, one entry point per command, named like the command,
  pointing at a ``register_<command>(subparsers) -> None`` function in ``<floor>/commands.py``::

      [project.entry-points."uaap.commands"]
      serve = "serving.commands:register_serve"

  then refreshes the installed metadata (``pip install -e .``; the Makefile does it when pyproject changes).

Commands are listed in :data:`ORDER`; names not listed there follow alphabetically. A command whose module
fails to import or register is reported on stderr in one line and skipped; the others still work. ``register``
functions only add flags: heavy imports (Ray, Flower, torch, TensorFlow, MLflow) stay inside the command
functions, so ``uaap --help`` starts in well under a second (``tests/uaap/test_cli.py`` checks that none loads).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import TYPE_CHECKING, Any

from uaap.errors import UaapError

if TYPE_CHECKING:
    from typing import TypeAlias

    Register: TypeAlias = Callable[[argparse._SubParsersAction[Any]], None]

GROUP = "uaap.commands"
# The library's command modules (uaap.commands.<module>), by the name that places them in ORDER.
LIBRARY = (
    "train", "data", "runs", "privacy", "keys", "certs", "automl", "config", "models", "explore", "fairness", "monitor",
    "explain",
)  # fmt: skip
# Order of `uaap --help`: the main job first, then training, bookkeeping, keys, demos, search.
ORDER = (
    "simulate",
    "train",
    "data",
    "explore",
    "fairness",
    "monitor",
    "explain",
    "config",
    "models",
    "runs",
    "privacy",
    "keys",
    "certs",
    "demo",
    "export",
    "automl",
    "tune-federated",
)


def _library_loader(module: str) -> Callable[[], Register]:
    def load() -> Register:
        register: Register = importlib.import_module(f"uaap.commands.{module}").register
        return register

    return load


def command_sources(
    entry_points: Iterable[metadata.EntryPoint],
) -> list[tuple[str, str, Callable[[], Register]]]:
    """Every registration source as ``(name, origin, load)``, in the order ``uaap --help`` lists them."""
    sources: list[tuple[str, str, Callable[[], Register]]] = [
        (name, f"uaap.commands.{name}", _library_loader(name)) for name in LIBRARY
    ]
    sources += [(ep.name, ep.value, ep.load) for ep in entry_points]
    return sorted(sources, key=lambda s: (ORDER.index(s[0]) if s[0] in ORDER else len(ORDER), s[0]))


def build_parser(entry_points: Iterable[metadata.EntryPoint] | None = None) -> argparse.ArgumentParser:
    """The full parser: library commands plus the ``uaap.commands`` entry points (installed ones by default).

    A source that fails to load or register is reported on stderr in one line and skipped.
    """
    parser = argparse.ArgumentParser(prog="uaap", description="Federated-first ML on Flower and Ray.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if entry_points is None:
        entry_points = metadata.entry_points(group=GROUP)
    for name, origin, load in command_sources(entry_points):
        try:
            load()(sub)
        except Exception as exc:  # one broken floor must not take the whole CLI down
            reason = (str(exc).strip().splitlines() or [""])[0]
            print(f"uaap: command {name!r} unavailable ({origin}): {type(exc).__name__}: {reason}", file=sys.stderr)
    _no_abbreviations(parser)
    return parser


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Flags are taken only as written (``--he`` must not mean ``--help``; a typo gets the close match)."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                _no_abbreviations(child)


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors print one clear line and exit with their code (2 bad input, 1 a failed run)."""
    from uaap.processes import raise_on_sigterm, stop_code

    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        _refuse(parser, str(args.command), extras)
    raise_on_sigterm()  # SIGTERM stops a command the way Ctrl-C does: its clean-up runs, then exit 143
    try:
        return int(args.func(args) or 0)
    except UaapError as exc:
        print(f"uaap: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        code = stop_code(exc)
        print(f"uaap: {'stopped (SIGTERM)' if code == 143 else 'interrupted'}", file=sys.stderr)
        _exit_if_threads_linger(code)
        return code


def _exit_if_threads_linger(code: int, grace: float = 3.0) -> None:
    """Exit now when threads a library started outlive the stop: Flower's simulation workers wait forever on a
    Ray that was shut down, and Python would wait for them at exit. The command's own clean-up already ran."""
    import os
    import threading
    import time

    deadline = time.monotonic() + grace
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _refuse(parser: argparse.ArgumentParser, command: str, extras: list[str]) -> None:
    """Exit 2 on arguments the command does not take: a run setting it cannot honour says why, a typo gets
    the close match."""
    import difflib

    from uaap.commands.common import explain_unknown_flags

    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    target: argparse.ArgumentParser = subparsers.choices.get(command, parser)
    reason = explain_unknown_flags(command, extras)
    if reason is None:
        flags = [e.split("=", 1)[0] for e in extras if e.startswith("--")]
        close = [m for f in flags for m in difflib.get_close_matches(f, list(target._option_string_actions), n=1)]
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        reason = f"unrecognized arguments: {' '.join(extras)}{hint}"
    target.error(reason)


if __name__ == "__main__":
    sys.exit(main())
