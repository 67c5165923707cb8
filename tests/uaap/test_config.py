"""RunConfig: one pydantic schema for Flower run config, CLI flags and checkpoints, with helpful errors."""

from __future__ import annotations

import json
import math
import tomllib

import pytest
from pydantic import ValidationError

from tests.conftest import REPO
from uaap.config import GROUPS, RunConfig, settings
from uaap.errors import ConfigError


def test_pyproject_run_config_is_the_schema_in_order() -> None:
    flwr_config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    defaults = RunConfig().to_flower()
    expected = RunConfig().to_toml().replace("# ---- ", "# ")
    hint = f"\n[tool.flwr.app.config] in pyproject.toml should read:\n{expected}"
    assert list(flwr_config) == list(defaults), "pyproject keys differ from the schema's (or their order)" + hint
    for key, value in flwr_config.items():
        assert defaults[key] == value, f"{key}: pyproject {value!r} != RunConfig {defaults[key]!r}" + hint


def test_every_field_is_documented_and_grouped() -> None:
    for s in settings():
        assert s.description and not s.description.endswith("."), s.name
        assert s.group in GROUPS, s.name
        assert s.type in (bool, int, float, str), s.name
        assert isinstance(s.default, s.type), s.name
    assert [s.group for s in settings()] == sorted((s.group for s in settings()), key=GROUPS.index)


def test_kebab_case_flower_keys_and_string_values_are_coerced() -> None:
    cfg = RunConfig.from_mapping(
        {"num-rounds": "3", "fraction-train": "0.5", "dp-local": "true", "model": "cnn", "target": 5}
    )
    assert (cfg.num_rounds, cfg.fraction_train, cfg.dp_local, cfg.model, cfg.target) == (3, 0.5, True, "cnn", "5")


def test_round_trip_through_json_and_flower_mapping() -> None:
    cfg = RunConfig(num_rounds=4, strategy="fedavg", dirichlet_alpha=0.1, min_contributors=3)
    assert RunConfig.from_json(cfg.to_json()) == cfg
    assert RunConfig.from_mapping(cfg.to_flower()) == cfg
    assert RunConfig.from_mapping(tomllib.loads(cfg.to_toml())) == cfg


def test_checkpoint_json_keeps_its_shape_and_old_run_folders_still_load() -> None:
    """Snake_case keys, sorted, as the dataclass wrote them; a config.json from before the new fields loads."""
    data = json.loads(RunConfig().to_json())
    assert list(data) == sorted(data) and "num_rounds" in data
    old = {k: v for k, v in data.items() if k not in ("max_num_examples", "min_contributors")}
    old["num_rounds"] = 7
    cfg = RunConfig.from_json(json.dumps(old))
    assert cfg.num_rounds == 7 and (cfg.max_num_examples, cfg.min_contributors) == (100_000, 2)


def test_new_federation_fields() -> None:
    assert (RunConfig().max_num_examples, RunConfig().min_contributors) == (100_000, 2)
    for key in ("max-num-examples", "min-contributors"):
        with pytest.raises(ConfigError, match=rf"{key}=0 is outside \[1, inf\]"):
            RunConfig.from_mapping({key: 0})
    with pytest.raises(ConfigError, match="min-contributors=6 exceeds num-clients=5"):
        RunConfig(num_clients=5, min_contributors=6)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"dataset": "mnist"},
            "dataset='mnist' is not supported; choose one of: digits, breast_cancer, wine, diabetes, friedman, "
            "synthetic",
        ),
        ({"model": "resnet"}, "choose one of: logreg, svm, mlp, cnn"),
        ({"strategy": "fedprx"}, "(did you mean fedprox?); choose one of: fedavg, fedprox"),
        ({"fraction_train": 0.0}, "fraction-train=0.0 is outside (0, 1]; pick a value in that range"),
        ({"fraction_train": 1.5}, "fraction-train=1.5 is outside (0, 1]"),
        ({"num_clients": 1}, "num-clients=1 is outside [2, inf]"),
        ({"num_rounds": "two"}, "num-rounds='two' is not a whole number; give a whole number in [1, inf]"),
        ({"batch_size": 2.5}, "batch-size=2.5 is not a whole number"),
        ({"dp_local": "maybe"}, "dp-local='maybe' is not true or false"),
        ({"dataset": "csv"}, "needs data-path and target"),
        ({"min_clients": 11}, "min-clients=11 exceeds num-clients=10"),
        ({"num-round": 3}, "unknown config key 'num-round' (did you mean num-rounds?)"),
        ({"max-epsilon": "nan"}, "max-epsilon='nan' is not a finite number; give a number in [0, inf]"),
        ({"max_epsilon": math.inf}, "max-epsilon=inf is not a finite number"),
        ({"dp_delta": -math.inf}, "dp-delta=-inf is not a finite number"),
        ({"learning_rate": float("nan")}, "learning-rate=nan is not a finite number"),
    ],
)
def test_bad_values_name_the_value_and_what_is_allowed(values: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping(values)
    assert expected in str(err.value)


def test_every_float_field_refuses_nan_and_infinity() -> None:
    for s in settings():
        if s.type is float:
            for bad in (math.nan, math.inf, -math.inf, "nan", "inf"):
                with pytest.raises(ConfigError, match=f"{s.key}=.* is not a finite number"):
                    RunConfig.from_mapping({s.name: bad})


def test_one_line_per_bad_field_with_its_origin() -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({"num-rounds": 0, "model": "x", "seed": "s"}, origin=lambda key: f"run.toml ({key})")
    lines = str(err.value).splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("model='x' (from run.toml (model)) is not supported")
    assert any(line.startswith("num-rounds=0 (from run.toml (num-rounds)) is outside [1, inf]") for line in lines)


def test_replace_validates() -> None:
    cfg = RunConfig()
    assert cfg.replace(num_rounds=3).num_rounds == 3
    with pytest.raises(ConfigError, match="num-rounds=0 is outside"):
        cfg.replace(num_rounds=0)
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        cfg.replace(nope=1)


def test_config_is_immutable_and_hashable() -> None:
    cfg = RunConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.num_rounds = 3  # type: ignore[misc]  # the assignment the test expects to fail
    assert cfg.num_rounds == RunConfig.model_fields["num_rounds"].default  # the refused assignment left nothing
    assert hash(cfg) == hash(RunConfig())
    assert cfg.replace(seed=1) != cfg
