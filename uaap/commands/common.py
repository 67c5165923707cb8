"""Run-setting flags for the commands that take them, generated from :mod:`uaap.config`'s schema.

Each command shows only the groups and fields it honours (:data:`uaap.config_sources.PROFILES`), each with its
description, default and allowed values, and takes ``--config FILE``; :func:`config_from_args` merges the
flags with the file, the ``UAAP_*`` environment and the defaults.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from uaap.config import ANY, GROUPS, RunConfig, Setting, setting, settings
from uaap.config_sources import PRECEDENCE, Profile, Resolved, profile, resolve

_PROFILE_DEST = "_uaap_config_command"


def precedence_note(command: str, width: int = 78) -> str:
    """The ``--help`` epilog: where settings come from, and what this command does not take."""
    import textwrap

    prof = profile(command)
    paragraphs = [
        f"Run settings, highest precedence first: {PRECEDENCE}. "
        "`--seed 7` on the command line is `seed = 7` in a --config file and UAAP_SEED=7 in the environment. "
        "`uaap config show` prints the resolved settings and where each came from; "
        "docs/configuration.md lists every key.",
    ]
    if prof.only:
        paragraphs.append(
            f"{prof.command} takes only these run settings; it searches models and their training itself."
        )
    elif prof.scope == ANY:
        paragraphs.append(
            f"{prof.command} trains one model on the pooled data: federation, secure aggregation and privacy "
            "settings are not taken here (run `uaap simulate` for a federation)."
        )
    if prof.sets_itself:
        paragraphs.append(f"{prof.command} sets {', '.join(setting(n).key for n in prof.sets_itself)} itself.")
    return "\n\n".join(textwrap.fill(p, width, break_on_hyphens=False, break_long_words=False) for p in paragraphs)


def help_text(s: Setting) -> str:
    """A flag's help: the description, the default and what is allowed."""
    allowed = "one of: " + ", ".join(s.choices) if s.choices else s.bounds()
    parts = [f"default: {s.default_text()}"] + ([allowed] if allowed else [])
    return f"{s.description} ({'; '.join(parts)})".replace("%", "%%")


def metavar(s: Setting) -> str:
    """What a value looks like in ``--help``."""
    if s.metavar:
        return s.metavar
    if s.choices:
        return "NAME"
    return {bool: "BOOL", int: "N", float: "X"}.get(s.type, "TEXT")


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), *, command: str = "simulate") -> None:
    """``--config FILE`` and one flag per setting ``command`` honours, grouped as the schema groups them.

    Flags are validated later by :class:`RunConfig` (so errors name the allowed values); boolean flags
    take an optional value (``--dp-local`` means ``--dp-local true``).
    """
    prof = profile(command)
    parser.set_defaults(**{_PROFILE_DEST: command})
    if parser.epilog is None:
        parser.epilog = precedence_note(command)
        parser.formatter_class = argparse.RawDescriptionHelpFormatter  # the epilog comes wrapped
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="run settings from a TOML (or YAML, JSON) file of `key = value` lines; flags and UAAP_* variables "
        "override it (`uaap config show > run.toml` writes one)",
    )
    for group in GROUPS:
        rows = [s for s in settings() if s.group == group and prof.applies(s) and s.name not in skip]
        if not rows:
            continue
        g = parser.add_argument_group(group)
        for s in rows:
            extra: dict[str, Any] = {"nargs": "?", "const": "true"} if s.type is bool else {}
            g.add_argument(
                s.flag,
                *s.aliases,
                dest=s.name,
                default=argparse.SUPPRESS,
                metavar=metavar(s),
                help=help_text(s),
                **extra,
            )


def resolve_args(
    args: argparse.Namespace,
    base: RunConfig | None = None,
    base_label: str = "",
    *,
    command: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Resolved:
    """The resolved settings of a parsed command line (file, environment and flags; ``base`` for a resume)."""
    resolved = resolve(
        command or str(getattr(args, _PROFILE_DEST, "simulate")),
        environ=environ,
        config_file=getattr(args, "config", None),
        flags=vars(args),
        base=base,
        base_label=base_label or ("resumed run" if base is not None else ""),
    )
    for warning in resolved.warnings:
        print(f"uaap: warning: {warning}", file=sys.stderr)
    return resolved


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """RunConfig from the flags, file and environment given (others keep ``base`` values or the defaults)."""
    return resolve_args(args, base).config


def explain_unknown_flags(command: str, extras: list[str]) -> str | None:
    """Why ``command`` does not take these run-setting flags, or None when none of them is one."""
    from uaap.config_sources import PROFILES

    prof: Profile | None = PROFILES.get(command)
    flags = {f: s for s in settings() for f in (s.flag, *s.aliases)}
    known = list(dict.fromkeys(flags[e.split("=", 1)[0]] for e in extras if e.split("=", 1)[0] in flags))
    if not known:
        return None
    names = ", ".join(s.flag for s in known)
    if prof is None:
        return f"{names}: `uaap {command}` takes no run settings"
    return f"{names} {'does' if len(known) == 1 else 'do'} not apply: {prof.reason(known[0])}"


# Floors above the library that a library command calls into, by the name of a `uaap.floors` entry point
# (pyproject.toml), as the CLI finds commands of those floors: the library never names an upper package.
FLOORS_GROUP = "uaap.floors"


def floor(name: str) -> Any:
    """The module behind the ``uaap.floors`` entry point ``name`` (e.g. ``audits``: federated audits on Flower)."""
    from importlib import metadata

    from uaap.errors import ConfigError

    for ep in metadata.entry_points(group=FLOORS_GROUP, name=name):
        return ep.load()
    raise ConfigError(
        f"no {name!r} entry point in group {FLOORS_GROUP!r}: this installation lacks the floor above the library "
        "that runs it; reinstall the project (make install, or pip install -e '.[all]')"
    )
