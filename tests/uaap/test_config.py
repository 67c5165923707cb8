"""RunConfig: one schema for Flower run config and CLI flags, with helpful errors."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from tests.conftest import REPO
from uaap.config import RunConfig
from uaap.errors import ConfigError


def test_pyproject_run_config_defaults_match_the_schema() -> None:
    flwr_config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    defaults = RunConfig().to_flower()
    assert flwr_config, "pyproject must carry run config defaults for `flwr run .`"
    for key, value in flwr_config.items():
        assert key in defaults, f"pyproject key {key} is not a RunConfig field"
        assert defaults[key] == value, f"{key}: pyproject {value!r} != RunConfig {defaults[key]!r}"


def test_kebab_case_flower_keys_and_string_values_are_coerced() -> None:
    cfg = RunConfig.from_mapping({"num-rounds": "3", "fraction-train": "0.5", "dp-local": "true", "model": "cnn"})
    assert (cfg.num_rounds, cfg.fraction_train, cfg.dp_local, cfg.model) == (3, 0.5, True, "cnn")


def test_round_trip_through_json_and_flower_mapping() -> None:
    cfg = RunConfig(num_rounds=4, strategy="fedavg", dirichlet_alpha=0.1)
    assert RunConfig.from_json(cfg.to_json()) == cfg
    assert RunConfig.from_mapping(cfg.to_flower()) == cfg


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"dataset": "mnist"}, "choose one of: digits, breast_cancer, wine, synthetic, csv"),
        ({"model": "resnet"}, "choose one of: logreg, mlp, cnn"),
        ({"strategy": "fedadam"}, "choose one of: fedavg, fedprox"),
        ({"fraction_train": 0.0}, "fraction-train=0.0 is outside (0, 1]"),
        ({"fraction_train": 1.5}, "fraction-train=1.5 is outside (0, 1]"),
        ({"num_clients": 1}, "num-clients=1 is outside [2, inf]"),
        ({"num_rounds": "two"}, "--num-rounds='two' is not a valid int"),
        ({"dataset": "csv"}, "needs data-path and target"),
        ({"num-round": 3}, "unknown config key 'num-round'"),
    ],
)
def test_bad_values_name_the_value_and_what_is_allowed(values: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping(values)
    assert expected in str(err.value)


def test_config_is_immutable_and_hashable() -> None:
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_rounds = 3  # type: ignore[misc]  # the assignment the test expects to fail
    assert hash(cfg) == hash(RunConfig())
