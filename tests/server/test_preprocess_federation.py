"""A raw table's preprocessing fitted across the federation (Flower query messages, the real ClientApp through
tests.LocalGrid): the plan equals the pooled fit of the same rows, plain and under CKKS; a regression target; a
client that forges its statistics is left out; a resumed run keeps its plan."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from server.federation import run_federation
from tests.flower_helpers import LocalGrid
from uaap import crypto, workspace
from uaap.config import RunConfig
from uaap.data.messy import messy_table
from uaap.data.preprocess import Preprocessor
from uaap.data.tables import fit, raw_parts, read_config_table, split_rows
from uaap.protocol import CONFIG, PREPROCESS_STATS

if TYPE_CHECKING:
    from flwr.app import Message


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("preprocess-fed")
    messy_table(900, seed=5).to_csv(home / "messy.csv", index=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UAAP_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield home


def _cfg(home: Path, run_id: str, **changes: object) -> RunConfig:
    base = RunConfig(
        dataset="csv",
        data_path=str(home / "messy.csv"),
        target="label",
        text_columns="hashing",
        num_clients=3,
        min_clients=3,
        num_rounds=2,
        local_epochs=2,
        strategy="fedavg",
        central_eval=True,
        seed=4,
        run_id=run_id,
        experiment="tests-preprocess",
    )
    return base.replace(**changes)


def _pooled(cfg: RunConfig) -> Preprocessor:
    """The plan of the train rows pooled in one table: what a central fit of the same rows gives."""
    raw = read_config_table(cfg)
    train, _ = split_rows(raw, cfg.test_fraction, cfg.seed, cfg.task)
    return fit([raw.subset(train)], cfg)


def _plan(rd: workspace.RunDir) -> Preprocessor:
    return Preprocessor.loads((rd.path / "preprocessor.json").read_text())


def _same_plan(a: Preprocessor, b: Preprocessor) -> None:
    assert a.feature_names_out_ == b.feature_names_out_ and a.target_ == b.target_
    for left, right in zip(a.plan_, b.plan_, strict=True):
        assert (left.kind, left.vocabulary, left.fill) == (right.kind, right.vocabulary, right.fill)
        for field in ("impute", "low", "high", "center", "scale"):
            x, y = getattr(left, field), getattr(right, field)
            assert x.keys() == y.keys()
            np.testing.assert_allclose([x[k] for k in x], [y[k] for k in x], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("secure", ["none", "ckks"])
def test_the_federation_fits_the_plan_of_the_pooled_rows_and_learns(home: Path, secure: str) -> None:
    cfg = _cfg(home, f"fed-{secure}", secure_aggregation=secure)
    cfg = crypto.ensure_simulation_keys(cfg)
    grid = LocalGrid(3)
    rd = run_federation(grid, cfg, num_partitions=3)
    plan = _plan(rd)
    _same_plan(plan, _pooled(cfg))
    stages = [json.loads(str(m.content.config_records[CONFIG]["preprocess-request"]))["stage"]
              for m in grid.pushed if m.metadata.message_type == "query.preprocess"]  # fmt: skip
    assert stages == ["schema"] * 3 + ["moments"] * 3 + ["quantiles"] * 3 + ["scaling"] * 3  # one per client
    assert rd.events("end")[-1]["status"] == "completed"
    final = rd.events("round")[-1]
    assert final["evaluate"]["accuracy"] > 0.75, final  # the dirty columns carry the signal
    if secure == "none":  # the saved model carries its plan: raw rows in
        _, meta = workspace.load_model(rd.model_file)
        assert meta["preprocessor"] == json.loads(plan.dumps())


def test_a_regression_target_is_fitted_and_learned(home: Path) -> None:
    cfg = _cfg(home, "fed-cost", target="cost", local_epochs=5, learning_rate=0.01)
    rd = run_federation(LocalGrid(3), cfg, num_partitions=3)
    plan = _plan(rd)
    assert plan.task == "regression" and "label" in plan.input_columns  # the other target is a feature here
    _same_plan(plan, _pooled(cfg))
    assert rd.events("round")[-1]["evaluate"]["r2"] > 0.5


def test_a_client_that_forges_its_statistics_is_left_out(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    def lie(reply: Message) -> Message:
        record = reply.content.config_records.get(CONFIG)
        if record is not None and PREPROCESS_STATS in record:  # training and evaluation replies stay honest
            stats = json.loads(str(record[PREPROCESS_STATS]))
            record[PREPROCESS_STATS] = json.dumps({**stats, "age:n": [1.0, 1e12, 0.0]})  # no sum allows that
            if "age:n" not in stats:
                record[PREPROCESS_STATS] = json.dumps({**stats, "age:schema": [1.0, 5.0, 5.0, 0.0]})
        return reply

    cfg = _cfg(home, "fed-liar")
    rd = run_federation(LocalGrid(3, tamper={3: lie}), cfg, num_partitions=3)
    assert rd.events("end")[-1]["status"] == "completed"
    assert "client 3's answer left out" in caplog.text and "is impossible" in caplog.text
    honest = list(raw_parts(cfg, 3)[0][:2])  # the plan of the two honest clients' rows, the liar's left out
    _same_plan(_plan(rd), fit(honest, cfg))


def test_a_resumed_run_keeps_its_plan(home: Path) -> None:
    cfg = _cfg(home, "fed-resume", num_rounds=1)
    rd = run_federation(LocalGrid(3), cfg, num_partitions=3)
    before = (rd.path / "preprocessor.json").read_text()
    grid = LocalGrid(3)
    run_federation(grid, cfg.replace(num_rounds=2), num_partitions=3)
    assert not any(m.metadata.message_type.startswith("query") for m in grid.pushed)  # nothing asked again
    assert (rd.path / "preprocessor.json").read_text() == before
    assert [e["round"] for e in rd.events("round") if e["round"] > 0] == [1, 2]
