"""Run settings on the command line: flags from the schema, config files, environment, precedence, errors."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from uaap.cli import build_parser, main
from uaap.commands.common import config_from_args, resolve_args
from uaap.commands.config import reference
from uaap.config import ANY, GROUPS, RunConfig, settings
from uaap.config_sources import PROFILES, resolve
from uaap.errors import ConfigError

DOCS = REPO / "docs" / "configuration.md"
SIMULATE_ONLY = {"simulate", "tune-federated"}  # federated commands on the uaap CLI


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _every_parser() -> dict[str, argparse.ArgumentParser]:
    """`uaap` and each of its commands and subcommands, plus the flower-server and flower-client launchers."""
    from client.launcher import build_parser as client_parser
    from server.launcher import build_parser as server_parser

    found: dict[str, argparse.ArgumentParser] = {}
    todo = [("uaap", build_parser())]
    while todo:
        name, parser = todo.pop()
        found[name] = parser
        todo += [(f"{name} {sub}", p) for sub, p in _subparsers(parser).items()]
    found["flower-server"] = server_parser()
    found["flower-client"] = client_parser()
    return found


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def _parse(command: str, *argv: str) -> argparse.Namespace:
    return build_parser().parse_args([command, *argv])


# ---- the parsers ------------------------------------------------------------------------------------


def test_every_option_of_every_command_says_what_it_does() -> None:
    parsers = _every_parser()
    assert {"uaap simulate", "uaap train", "uaap config show", "uaap tune-federated", "flower-server"} <= set(parsers)
    missing = [
        f"{name} {action.option_strings[0]}"
        for name, parser in parsers.items()
        for action in _options(parser)
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS
    ]
    assert missing == [], f"options without a description: {missing}"


def test_train_offers_no_federation_secure_aggregation_or_privacy_option() -> None:
    train = _every_parser()["uaap train"]
    dests = {a.dest for a in _options(train)}
    flags = {f for a in _options(train) for f in a.option_strings}
    federated = {s.name for s in settings() if s.scope != ANY}
    assert not dests & federated, sorted(dests & federated)
    for flag in (
        "--num-clients",
        "--clients",
        "--rounds",
        "--strategy",
        "--secure-aggregation",
        "--he",
        "--dp-central",
    ):
        assert flag not in flags
    for s in settings():
        if s.group in ("federation", "secure aggregation", "privacy"):
            assert s.flag not in flags, s.flag
    assert {"--dataset", "--model", "--learning-rate", "--seed", "--config"} <= flags


@pytest.mark.parametrize("command", ["simulate", "train", "tune-federated", "automl", "flower-server"])
def test_help_shows_the_groups_a_command_uses_in_order(command: str) -> None:
    if command == "flower-server":
        from server.launcher import build_parser as server_parser

        parser = server_parser()
    else:
        parser = _every_parser()[f"uaap {command}"]
    text = parser.format_help()
    titles = [g.title for g in parser._action_groups if g.title in GROUPS]
    prof = PROFILES[command]
    expected = [g for g in GROUPS if any(s.group == g and prof.applies(s) for s in settings())]
    assert titles == expected
    positions = [text.index(f"\n{g}:\n") for g in titles]
    assert positions == sorted(positions)
    assert "flags > UAAP_* environment > --config file > defaults" in " ".join(text.split())
    assert "(default: 0.2; (0, 1])" in " ".join(text.split())


def test_every_setting_has_its_flag_where_it_applies() -> None:
    parsers = _every_parser()
    for command in ("simulate", "train", "tune-federated", "automl"):
        flags = {f for a in _options(parsers[f"uaap {command}"]) for f in a.option_strings}
        for s in settings():
            assert (s.flag in flags) == PROFILES[command].applies(s), (command, s.flag)


# ---- the reference page ---------------------------------------------------------------------------------


def test_configuration_reference_is_generated_and_current() -> None:
    text = DOCS.read_text()
    assert text == reference(), "docs/configuration.md is stale: run `uaap config docs --out docs/configuration.md`"
    for s in settings():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{s.key}`")), None)
        assert row is not None, f"{s.key} is missing from docs/configuration.md"
        assert s.description.replace("|", "/") in row and s.type.__name__ in row


def test_reference_command_blocks_run(tmp_path: Path, uaap_home: Path) -> None:
    """The commands the reference page shows work as shown (in a scratch folder)."""
    block = DOCS.read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    for line in block.strip().splitlines():
        command = line.split("#", 1)[0].strip()
        assert command.startswith("uaap ")
        proc = subprocess.run(
            f"{Path(sys.executable).parent / 'uaap'} {command[5:]}",
            shell=True,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, (command, proc.stderr)


# ---- sources and precedence ---------------------------------------------------------------------------


def test_precedence_defaults_file_environment_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each source overrides the ones below it: flags > environment > file > defaults."""
    run = tmp_path / "run.toml"
    run.write_text("num-rounds = 3\nseed = 3\nlearning-rate = 0.3\n")
    monkeypatch.setenv("UAAP_SEED", "4")
    monkeypatch.setenv("UAAP_LEARNING_RATE", "0.4")
    args = _parse("simulate", "--config", str(run), "--learning-rate", "0.5")
    resolved = resolve_args(args)
    cfg = resolved.config
    assert (cfg.batch_size, cfg.num_rounds, cfg.seed, cfg.learning_rate) == (16, 3, 4, 0.5)
    assert resolved.sources["batch_size"] == "default"
    assert resolved.sources["num_rounds"] == str(run)
    assert resolved.sources["seed"] == "UAAP_SEED"
    assert resolved.sources["learning_rate"] == "--learning-rate"


def test_each_source_alone_sets_a_value(tmp_path: Path) -> None:
    run = tmp_path / "run.yaml"
    run.write_text("num-rounds: 3\ndp_local: true\n")
    assert resolve().config == RunConfig()
    assert resolve(config_file=run).config == RunConfig(num_rounds=3, dp_local=True)
    assert resolve(environ={"UAAP_NUM_ROUNDS": "5", "UAAP_HOME": "/x"}).config == RunConfig(num_rounds=5)
    assert resolve(flags={"num_rounds": "6", "config": None}).config == RunConfig(num_rounds=6)


def test_show_then_run_with_the_printed_file_gives_the_same_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run.toml"
    run.write_text("num-clients = 6\nstrategy = 'fedavg'\ndata-path = ''\n")
    monkeypatch.setenv("UAAP_DP_LOCAL", "yes")
    assert main(["config", "show", "--config", str(run), "--rounds", "4", "--he", "ckks"]) == 0
    shown = capsys.readouterr().out
    assert re.search(r"^num-rounds = 4 +# --num-rounds$", shown, re.MULTILINE)
    assert re.search(r"^dp-local = true +# UAAP_DP_LOCAL$", shown, re.MULTILINE)
    assert re.search(rf"^num-clients = 6 +# {re.escape(str(run))}$", shown, re.MULTILINE)
    assert re.search(r"^seed = 42 +# default$", shown, re.MULTILINE)
    expected = config_from_args(_parse("simulate", "--config", str(run), "--rounds", "4", "--he", "ckks"))

    printed = tmp_path / "printed.toml"
    printed.write_text(shown)
    monkeypatch.delenv("UAAP_DP_LOCAL")
    again = config_from_args(_parse("simulate", "--config", str(printed)))
    assert again == expected
    assert again.num_rounds == 4 and again.dp_local and again.secure and again.strategy == "fedavg"


def test_train_show_prints_only_what_train_takes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["config", "show", "--command", "train", "--seed", "7"]) == 0
    shown = capsys.readouterr().out
    keys = re.findall(r"^([a-z-]+) = ", shown, re.MULTILINE)
    assert keys == [s.key for s in settings() if PROFILES["train"].applies(s)]
    printed = tmp_path / "train.toml"
    printed.write_text(shown)
    assert config_from_args(_parse("train", "--config", str(printed))) == RunConfig(seed=7)


def test_a_file_for_simulate_loads_in_train_when_its_federated_values_are_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "show", "--seed", "8"]) == 0
    run = tmp_path / "sim.toml"
    run.write_text(capsys.readouterr().out)
    assert config_from_args(_parse("train", "--config", str(run))).seed == 8
    run.write_text(run.read_text().replace('secure-aggregation = "none"', 'secure-aggregation = "ckks"'))
    with pytest.raises(ConfigError, match=r"secure-aggregation='ckks' \(from .*sim.toml\) does not apply: uaap train"):
        config_from_args(_parse("train", "--config", str(run)))


def test_the_run_folder_keeps_a_config_file_that_repeats_the_run(uaap_home: Path) -> None:
    from uaap import workspace

    cfg = RunConfig(run_id="r1", num_rounds=3, secure_aggregation="ckks", dp_delta=1e-6, experiment="e x")
    rd = workspace.run_dir("r1")
    rd.write_config(cfg)
    again = resolve(config_file=rd.path / "config.toml", environ={}).config
    assert again == cfg.replace(run_id="")
    assert RunConfig.from_json(rd.config_file.read_text()) == cfg


# ---- bad input: one line each, before anything starts ----------------------------------------------------


@pytest.mark.parametrize(
    ("file", "argv", "expected"),
    [
        ("num-round = 3\n", [], "unknown config key 'num-round' in {run} (did you mean num-rounds?)"),
        ("num-rounds = 'x'\n", [], "num-rounds='x' (from {run}) is not a whole number"),
        ("num-rounds = 0\n", [], "num-rounds=0 (from {run}) is outside [1, inf]"),
        ("max-epsilon = nan\n", [], "max-epsilon=nan (from {run}) is not a finite number"),
        ("num-rounds = \n", [], "run.toml:1:14: not valid TOML: Invalid value; fix that line"),
        ("[federation]\nnum-rounds = 3\n", [], "federation holds a dict; config files are flat"),
        ("", ["--min-clients", "11"], "min-clients=11 exceeds num-clients=10"),
        ("", ["--max-epsilon", "inf"], "max-epsilon='inf' (from --max-epsilon) is not a finite number"),
        ("", ["--dataset", "csv"], "dataset='csv' needs data-path and target"),
        (
            "",
            ["--dataset", "wine", "--data", "x.csv", "--target", "y"],
            "data-path='x.csv' is read only with dataset=csv",
        ),
    ],
)
def test_bad_input_fails_in_one_line_before_anything_runs(
    file: str, argv: list[str], expected: str, tmp_path: Path, uaap_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run.toml"
    run.write_text(file)
    assert main(["simulate", "--config", str(run), *argv]) == 2
    err = capsys.readouterr().err
    assert expected.format(run=run) in err
    assert len(err.strip().splitlines()) == 1, err
    assert not uaap_home.exists() or not any(uaap_home.iterdir()), "nothing is written to the workspace"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["train", "--num-clients", "7", "--he", "ckks"],
            "--num-clients, --secure-aggregation do not apply: uaap train",
        ),
        (["simulate", "--num-round", "3"], "unrecognized arguments: --num-round 3 (did you mean --num-rounds?)"),
        (["train", "--dp-central"], "--dp-central does not apply: uaap train trains one model on the pooled data"),
        (["train", "--run-id", "x"], "--run-id does not apply: uaap train sets run-id itself"),
        (["simulate", "--num-runds", "3"], "unrecognized arguments: --num-runds 3 (did you mean --num-rounds?)"),
        (["runs", "--num-rounds", "3"], "--num-rounds: `uaap runs` takes no run settings"),
        (["automl", "--model", "cnn"], "--model does not apply: uaap automl searches model families"),
    ],
)
def test_a_flag_the_command_does_not_take_is_refused_with_the_reason(
    argv: list[str], expected: str, uaap_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert not uaap_home.exists() or not any(uaap_home.iterdir())


def test_environment_values_the_command_cannot_honour_are_left_out_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, uaap_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A UAAP_* variable holds for a whole shell session (a simulation, then its central baseline): uaap train
    leaves out what it cannot honour, and says so; the same value as a flag is refused."""
    monkeypatch.setenv("UAAP_NUM_CLIENTS", "7")
    monkeypatch.setenv("UAAP_SEED", "3")
    assert config_from_args(_parse("train")) == RunConfig(seed=3)
    assert "UAAP_NUM_CLIENTS=7 does not apply to uaap train; it is ignored here" in capsys.readouterr().err
    monkeypatch.setenv("UAAP_NUM_CLIENTS", "10")  # the default: nothing to honour, nothing to say
    assert config_from_args(_parse("train")) == RunConfig(seed=3)
    assert capsys.readouterr().err == ""


def test_environment_near_miss_draws_a_warning(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("UAAP_NUM_ROUND", "3")
    assert config_from_args(_parse("simulate")) == RunConfig()
    assert "UAAP_NUM_ROUND is not a run setting (did you mean UAAP_NUM_ROUNDS?)" in capsys.readouterr().err


def test_validate_checks_a_file_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    good = tmp_path / "good.toml"
    good.write_text("num-rounds = 3\nhe = 1\n".replace("he = 1\n", ""))
    monkeypatch.setenv("UAAP_NUM_ROUNDS", "0")  # the environment is not part of the file
    assert main(["config", "validate", str(good)]) == 0
    assert "valid for uaap simulate (1 settings given" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("num-rounds: [1\n")
    assert main(["config", "validate", str(bad)]) == 2
    assert re.search(r"bad\.yaml:2:1: not valid YAML", capsys.readouterr().err)
    assert main(["config", "validate", str(tmp_path / "none.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_uaap_help_starts_in_under_a_second() -> None:
    """pydantic and the schema cost ~60 ms of it (the schema's validator is built on first use). Counted in CPU
    seconds of the child (user + system), not wall time: the suite runs on parallel workers of a 2-core machine,
    where the wall time of a start-up says more about the neighbours than about the imports."""
    import resource

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    best = float("inf")
    for _ in range(3):
        before = cpu()
        proc = subprocess.run([str(Path(sys.executable).parent / "uaap"), "--help"], capture_output=True, timeout=60)
        best = min(best, cpu() - before)
        assert proc.returncode == 0
    assert best < 1.0, f"uaap --help took {best:.2f} CPU seconds"
