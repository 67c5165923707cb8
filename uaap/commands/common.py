"""Flags shared by commands: every RunConfig field is a ``--kebab-case`` flag."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from uaap.config import RunConfig

ALIASES = {
    "num_rounds": ["--rounds"],
    "num_clients": ["--clients"],
    "data_path": ["--data"],
    "secure_aggregation": ["--he"],
}


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per RunConfig field (validated later by RunConfig, so errors list allowed values)."""
    group = parser.add_argument_group("run configuration (defaults: uaap.config.RunConfig)")
    for f in dataclasses.fields(RunConfig):
        if f.name in skip:
            continue
        flags = ["--" + f.name.replace("_", "-"), *ALIASES.get(f.name, [])]
        choices = f.metadata.get("choices")
        helptext = f"default: {f.default!r}" + (f"; one of {', '.join(choices)}" if choices else "")
        group.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, metavar=f.name.upper(), help=helptext)


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """RunConfig from the flags given (others keep ``base`` values or the defaults)."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names}
    if given.get("data_path") and "dataset" not in given:
        given["dataset"] = "csv"
    if base is None:
        return RunConfig.from_mapping(given)
    return RunConfig.from_mapping({**dataclasses.asdict(base), **given})
