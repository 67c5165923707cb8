"""Where a run's settings come from: defaults < ``--config`` file < ``UAAP_*`` environment < flags.

:func:`resolve` merges the four sources (or a resumed run's stored config instead of the defaults), refuses
an unknown key with the close match, a file that does not parse with its line and column, and a value the
command cannot honour with the reason; then :class:`~uaap.config.RunConfig` validates the result. Nothing
here starts a process or writes a file, so every bad input fails before Ray, Flower or the workspace.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from uaap.config import ANY, FEDERATED, RunConfig, Setting, field_names, setting, settings, unknown_key_message
from uaap.errors import ConfigError

PRECEDENCE: Final = "flags > UAAP_* environment > --config file > defaults"
DEFAULT: Final = "default"
# UAAP_* variables that are not run settings (workspace, ledger, dashboard, edge export).
OTHER_ENV: Final = frozenset(
    {"UAAP_HOME", "UAAP_LEDGER_URL", "UAAP_DASHBOARD_REFRESH", "UAAP_N_CLASSES", "UAAP_N_FEATURES"}
)


@dataclass(frozen=True)
class Profile:
    """What a command honours: every setting of its scope (or only those listed) except those it sets itself."""

    command: str
    scope: str
    sets_itself: tuple[str, ...] = ()
    only: tuple[str, ...] = ()

    def applies(self, s: Setting) -> bool:
        """Whether the command honours ``s``."""
        if self.only and s.name not in self.only:
            return False
        return s.name not in self.sets_itself and (self.scope == FEDERATED or s.scope == ANY)

    def reason(self, s: Setting) -> str:
        """Why the command does not honour ``s``."""
        if s.name in self.sets_itself:
            return f"{self.command} sets {s.key} itself"
        if self.only:
            keys = ", ".join(setting(n).key for n in self.only)
            return f"{self.command} searches model families and their training settings itself; it takes only {keys}"
        return (
            f"{self.command} trains one model on the pooled data (no clients, no secure aggregation, no DP); "
            "run `uaap simulate` for a federation"
        )


# The commands that take run settings, by the name `uaap config show --command` accepts.
PROFILES: Final = {
    "simulate": Profile("uaap simulate", FEDERATED),
    "train": Profile("uaap train", ANY, ("run_id",)),
    "tune-federated": Profile("uaap tune-federated", FEDERATED, ("run_id",)),
    "flower-server": Profile("flower-server", FEDERATED),
    "automl": Profile(  # the data and its preprocessing; the search picks the model and its training settings
        "uaap automl",
        ANY,
        only=(
            *("dataset", "data_path", "target", "task", "data_table", "data_query", "data_sep", "data_encoding"),
            *("data_decimal", "impute", "fill_value", "outliers", "encoding", "max_categories", "scaling"),
            *("text_columns", "polynomial", "drop_columns", "test_fraction", "seed", "experiment", "run_id"),
            *("time_column", "series_column", "horizon", "seasonal_period", "series_length", "forecast_models"),
        ),
    ),
}


def profile(command: str) -> Profile:
    """The :class:`Profile` of ``command``."""
    try:
        return PROFILES[command]
    except KeyError:
        raise ConfigError(f"command {command!r} takes no run settings; choose one of: {', '.join(PROFILES)}") from None


@dataclass(frozen=True)
class Resolved:
    """A validated config, where each value came from, and warnings worth a line on stderr."""

    config: RunConfig
    sources: dict[str, str]
    warnings: tuple[str, ...] = field(default=())


# ---- the sources ---------------------------------------------------------------------------------


def read_file(path: str | Path) -> dict[str, Any]:
    """A config file's values by snake_case name: TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON.

    Keys may be kebab-case (``num-rounds``) or snake_case; the file is flat (``key = value`` lines).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file; give a TOML file (`uaap config show > run.toml`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc}); give a readable UTF-8 file") from None
    raw = _parse(p, text)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config file holds `key = value` pairs, got a {type(raw).__name__}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if isinstance(value, dict | list):
            raise ConfigError(f"{path}: {key} holds a {type(value).__name__}; config files are flat: `{key} = value`")
        if name not in field_names():
            raise ConfigError(unknown_key_message(str(key), str(path)))
        values[name] = value
    return values


def _parse(p: Path, text: str) -> Any:
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{p}: YAML needs PyYAML (pip install pyyaml); or write the file as TOML") from None
        try:
            return yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{p}{at}: not valid YAML: {problem}; fix that line") from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}; fix that line") from None
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        at = f":{m.group(1)}:{m.group(2)}" if m else ""
        reason = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", msg)
        hint = "" if suffix == ".toml" else " (name YAML files .yaml, JSON files .json)"
        raise ConfigError(f"{p}{at}: not valid TOML: {reason}; fix that line{hint}") from None


def from_environment(environ: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """``UAAP_<FIELD>`` values by snake_case name, and a warning for each near miss (``UAAP_NUM_ROUND``)."""
    env = os.environ if environ is None else environ
    by_env = {s.env: s for s in settings()}
    values: dict[str, str] = {}
    warnings: list[str] = []
    for var, value in env.items():
        if not var.startswith("UAAP_") or var in OTHER_ENV:
            continue
        if var in by_env:
            values[by_env[var].name] = value
            continue
        import difflib

        close = difflib.get_close_matches(var, list(by_env), n=1, cutoff=0.85)
        if close:
            warnings.append(f"{var} is not a run setting (did you mean {close[0]}?); it is ignored")
    return values, warnings


# ---- merging ---------------------------------------------------------------------------------------


def resolve(
    command: str = "simulate",
    *,
    config_file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    base: RunConfig | None = None,
    base_label: str = "",
) -> Resolved:
    """Merge defaults (or ``base``, a resumed run's config), the file, the environment and the flags.

    ``flags`` are snake_case values the command line gave. A value ``command`` does not honour is refused
    unless it is the default (so a file written for another command still loads); a key nobody knows is
    refused with the close match. ``UAAP_*`` variables are the exception: they hold for a whole shell session
    (``export UAAP_NUM_ROUNDS=3`` before a simulation and a central baseline), so one the command does not honour
    is left out with a warning instead.
    """
    prof = profile(command)
    layers: list[tuple[dict[str, Any], dict[str, str]]] = []
    if config_file:
        from_file = read_file(config_file)
        layers.append((from_file, dict.fromkeys(from_file, str(config_file))))
    env_values, warnings = from_environment(environ)
    for k in [k for k, v in env_values.items() if not prof.applies(setting(k)) and not _is_default(setting(k), v)]:
        warnings.append(f"{setting(k).env}={env_values.pop(k)} does not apply to uaap {command}; it is ignored here")
    layers.append((dict(env_values), {k: setting(k).env for k in env_values}))
    given = {k: v for k, v in (flags or {}).items() if k in field_names()}
    layers.append((given, {k: setting(k).flag for k in given}))

    refused: dict[str, list[str]] = {}  # reason -> "key=value (from where)"
    for values, labels in layers:
        for k, v in values.items():
            s = setting(k)
            if not prof.applies(s) and not _is_default(s, v):
                refused.setdefault(prof.reason(s), []).append(f"{s.key}={v!r} (from {labels[k]})")
    if refused:
        lines = [
            f"{', '.join(keys)} {'does' if len(keys) == 1 else 'do'} not apply: {why}" for why, keys in refused.items()
        ]
        raise ConfigError("\n".join(lines))

    start = base.model_dump() if base is not None else {}
    sources = dict.fromkeys(field_names(), base_label if base is not None else DEFAULT)
    merged: dict[str, Any] = {}
    for values, labels in layers:
        merged.update(values)
        sources.update(labels)
    if merged.get("data_path") and "dataset" not in merged:
        merged["dataset"] = "csv"
        sources["dataset"] = f"{sources['data_path']} (a data file means dataset=csv)"

    def origin(key: str) -> str:
        label = sources[key.replace("-", "_")]
        return "" if label == DEFAULT else label

    cfg = RunConfig.validated({**start, **merged}, origin=origin)
    return Resolved(cfg, sources, tuple(warnings))


def _is_default(s: Setting, value: Any) -> bool:
    from pydantic import TypeAdapter, ValidationError

    try:
        return bool(TypeAdapter(s.type).validate_python(value) == s.default)
    except ValidationError:
        return False
