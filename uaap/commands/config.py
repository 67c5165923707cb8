"""``uaap config``: show the resolved run settings and their sources, validate a file, write the reference.

``uaap config show [--command C] [--config F] [flags]`` prints the settings ``uaap C`` would run with, as a
config file whose comments say where each value came from (``uaap C --config`` that file repeats them);
``uaap config validate F`` checks a file without running anything; ``uaap config docs`` prints
``docs/configuration.md`` from the schema (a test keeps the committed page in sync).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from uaap.commands.common import add_config_flags, resolve_args
from uaap.config_sources import PRECEDENCE, PROFILES


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``config`` with its ``show``, ``validate`` and ``docs`` subcommands."""
    p = sub.add_parser("config", help="show the resolved run settings and where each came from; validate a file")
    inner = p.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")

    show = inner.add_parser(
        "show",
        help="print the resolved settings as a config file, with where each value came from",
        description="Print the settings a command would run with, as a TOML config file; each line's comment "
        f"says where its value came from ({PRECEDENCE}). `uaap COMMAND --config` the printed file repeats them.",
    )
    _command_flag(show)
    add_config_flags(show, command="simulate")
    show.set_defaults(func=run_show)

    validate = inner.add_parser(
        "validate", help="check a config file without running anything", description="Check a config file alone."
    )
    validate.add_argument("file", metavar="FILE", help="TOML (or .yaml, .json) file of `key = value` lines")
    _command_flag(validate)
    validate.set_defaults(func=run_validate)

    docs = inner.add_parser("docs", help="print the configuration reference (docs/configuration.md) from the schema")
    docs.add_argument("--out", metavar="FILE", default=None, help="write it to FILE instead of standard output")
    docs.set_defaults(func=run_docs)


def _command_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--command",
        dest="for_command",
        choices=tuple(PROFILES),
        default="simulate",
        help="the command whose settings to resolve (default: simulate); others refuse what it cannot honour",
    )


def run_show(args: argparse.Namespace) -> int:
    """Resolve file, environment and flags for ``--command``; print them as a config file with their sources."""
    resolved = resolve_args(args, command=args.for_command)
    print(render(args.for_command, resolved.config, resolved.sources), end="")
    return 0


def render(command: str, cfg: object, sources: dict[str, str]) -> str:
    """The config file ``uaap config show`` prints: header, then one commented line per setting."""
    from uaap.config import RunConfig, settings

    assert isinstance(cfg, RunConfig)
    prof = PROFILES[command]
    names = tuple(s.name for s in settings() if prof.applies(s))
    header = (
        f"# {prof.command} settings, resolved ({PRECEDENCE}).\n"
        f"# Repeat them with: {prof.command} --config THIS_FILE\n\n"
    )
    return header + cfg.to_toml(names, note=lambda name: sources[name])


def run_validate(args: argparse.Namespace) -> int:
    """Resolve the file alone (no environment, no flags) and say what it sets."""
    from uaap.config_sources import read_file, resolve

    values = read_file(args.file)
    resolve(args.for_command, config_file=args.file, environ={})
    prof = PROFILES[args.for_command]
    print(f"{args.file}: valid for {prof.command} ({len(values)} settings given, the others default)")
    return 0


def run_docs(args: argparse.Namespace) -> int:
    """Print (or write) the reference page."""
    text = reference()
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0


def reference() -> str:
    """``docs/configuration.md``: every key with its flag, type, default, allowed values and description."""
    from uaap.config import ANY, GROUPS, settings

    central = [s.key for s in settings() if PROFILES["train"].applies(s)]
    automl = [s.key for s in settings() if PROFILES["automl"].applies(s)]
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from uaap/config.py by `uaap config docs --out docs/configuration.md`; "
        "tests/uaap/test_config_cli.py fails when it is stale. -->",
        "",
        "Every run of `uaap simulate`, `uaap tune-federated`, `uaap train`, `uaap automl` and `flower-server` is",
        "described by one validated schema, `uaap.config.RunConfig`. Each setting below has a key (Flower run",
        "config, config files), a flag and an environment variable:",
        "",
        "| where | how | example |",
        "| --- | --- | --- |",
        "| command line | `--key value` (booleans: `--key` alone means true) | `--num-rounds 3` |",
        "| environment | `UAAP_` + the key in capitals, `-` as `_` | `UAAP_NUM_ROUNDS=3` |",
        "| config file | `key = value` lines (TOML; `.yaml`/`.yml` and `.json` work too) | `num-rounds = 3` |",
        "| Flower | `[tool.flwr.app.config]`, `flwr run . -c 'key=value'` | `-c 'num-rounds=3'` |",
        "",
        f"Precedence, highest first: **{PRECEDENCE}**. With `--resume RUN`, the run's stored settings",
        "take the place of the defaults and the file.",
        "",
        "```bash",
        "uaap config show --num-rounds 3 > run.toml    # the resolved settings, each with where it came from",
        "uaap config validate run.toml                 # check a file without running anything",
        "uaap config show --command train --seed 7     # what `uaap train --seed 7` would run with",
        "```",
        "",
        "`uaap simulate --config run.toml` then runs with exactly those settings. Every run folder keeps its",
        "settings as `runs/<run-id>/config.toml` (without the run id), so `uaap simulate --config",
        "runs/<run-id>/config.toml` repeats a run under a new id. A bad value, an unknown key (with the close",
        "match), a file that does not parse (with its line and column) or a setting the command cannot honour",
        "fails in one line per problem before Ray or Flower start.",
        "",
        "**Where each applies.** `uaap train` trains one model on the pooled data and takes only the settings",
        f"marked *all* ({', '.join(f'`{k}`' for k in central)}; it sets `run-id` itself), `uaap automl` only the",
        f"data, seed and tracking ones ({', '.join(f'`{k}`' for k in automl)}); federated commands take every",
        "setting. A value a command cannot honour is refused unless it is the default, so a file written for",
        "`uaap simulate` also loads in `uaap train`; a `UAAP_*` variable it cannot honour is left out with a",
        "warning (it holds for the whole shell session).",
        "",
    ]
    for group in GROUPS:
        rows = [s for s in settings() if s.group == group]
        out += [f"## {group.capitalize()}", ""]
        out += [
            "| key / flag | type | default | allowed | applies | description |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for s in rows:
            flags = ", ".join(f"`{f}`" for f in s.aliases)
            key = f"`{s.key}`" + (f" ({flags})" if flags else "")
            allowed = ", ".join(f"`{c}`" for c in s.choices) if s.choices else (s.range_text() or "any")
            default = f"`{s.default_text()}`" if s.default != "" else "unset"
            applies = "all" if s.scope == ANY else "federated"
            out.append(
                f"| {key} | {s.type.__name__} | {default} | {allowed} | {applies} | {s.description.replace('|', '/')} |"
            )
        out.append("")
    out += [
        "Environment variables other than these (`UAAP_HOME`, `UAAP_LEDGER_URL`, ...) are not run settings;",
        "a `UAAP_` variable that is close to a setting's name draws a warning.",
        "",
    ]
    return "\n".join(out)
