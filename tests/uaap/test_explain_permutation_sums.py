"""Permutation-importance sums of a regression (squared error in the target's units), on a model fitted here: the
client-side sums (:func:`uaap.explain.federated.loss_sums`) against scikit-learn's mean_squared_error and the
test's own permutations, and the report the summed totals give. The classifier's path runs over Flower in
tests/server/test_audit_federation.py."""

from __future__ import annotations

import zlib
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_squared_error

from uaap.data.preprocess import fit_parties
from uaap.explain import federated as fx
from uaap.monitor.runmodel import RunModel

SEED, REPEATS = 11, 4


@pytest.fixture(scope="module")
def regression() -> tuple[RunModel, pd.DataFrame]:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.normal(0, 1, 120), "b": rng.normal(5, 2, 120), "c": rng.choice(["p", "q"], 120)})
    frame["y"] = 200 * frame.a + 3 * frame.b + 40 * (frame.c == "p") + rng.normal(0, 10, 120)
    pre = fit_parties([frame], ["a", "b", "c", "y"], target="y", task="regression")
    net = LinearRegression().fit(pre.transform(frame), frame.y)
    return RunModel(cast(Any, None), net, {}, pre, False), frame


def predict(model: RunModel, rows: pd.DataFrame) -> np.ndarray:
    """The model's values on the preprocessor's outputs in float64 (as every federated sum computes them)."""
    return np.asarray(model.model.predict(np.asarray(model.preprocessor.transform(rows), dtype=np.float64)))


def own_sums(model: RunModel, rows: pd.DataFrame) -> tuple[float, np.ndarray]:
    """The summed squared error and, per column and repeat, with the column permuted as the test permutes it."""
    X = rows.reset_index(drop=True)

    def sse(table: pd.DataFrame) -> float:
        return float(mean_squared_error(table.y, predict(model, table))) * len(table)

    permuted = np.zeros((3, REPEATS))
    for i, column in enumerate(["a", "b", "c"]):
        rng = np.random.default_rng([SEED, zlib.crc32(column.encode())])
        for r in range(REPEATS):
            permuted[i, r] = sse(X.assign(**{column: X[column].to_numpy()[rng.permutation(len(X))]}))
    return sse(X), permuted


def test_regression_loss_sums_are_squared_errors_in_the_target_units(regression: tuple[RunModel, pd.DataFrame]) -> None:
    model, frame = regression
    clients = [frame.iloc[:50], frame.iloc[50:]]
    total: dict[str, np.ndarray] = {fx.ROWS: np.array([120.0]), fx.LOSS: np.zeros(1),
                                    fx.LOSS_PERMUTED: np.zeros((3, REPEATS))}  # fmt: skip
    unit = float(np.var(frame.y))  # the clients sum squared errors over the target's variance (CKKS's range)
    assert fx.loss_unit(model) == pytest.approx(unit, rel=1e-9)
    for rows in clients:
        base, permuted = fx.loss_sums(model, rows, seed=SEED, repeats=REPEATS)
        own_base, own_permuted = (x / fx.loss_unit(model) for x in own_sums(model, rows))
        assert base[0] == pytest.approx(own_base, rel=1e-12)
        np.testing.assert_allclose(permuted, own_permuted, rtol=1e-12)
        again = fx.loss_sums(model, rows.copy(), seed=SEED, repeats=REPEATS)[1]  # same request: same permutations
        np.testing.assert_array_equal(again, permuted)
        total[fx.LOSS] += base
        total[fx.LOSS_PERMUTED] += permuted
    pooled = mean_squared_error(frame.y, predict(model, frame)) * 120
    assert total[fx.LOSS][0] * fx.loss_unit(model) == pytest.approx(pooled, rel=1e-12)  # the base loss is pooled
    report = fx.permutation_report(total, model)
    assert report["loss"] == "squared error" and report["base_loss"] == pytest.approx(pooled / 120, rel=1e-12)
    assert report["importance_ranking"][0] == "a" and report["permutation_importance"]["a"] > 1000  # 200 a: big
    expected = (total[fx.LOSS_PERMUTED].mean(axis=1) - total[fx.LOSS][0]) * fx.loss_unit(model) / 120
    assert list(report["permutation_importance"].values()) == sorted(expected, reverse=True)


def test_regression_loss_sums_have_no_upper_bound_but_stay_non_negative(
    regression: tuple[RunModel, pd.DataFrame],
) -> None:
    model, frame = regression
    shapes = fx.layout(model, {}, REPEATS)
    answer = {key: np.zeros(shape).tolist() for key, shape in shapes.items()} | {fx.ROWS: [2.0]}
    answer[fx.LOSS] = [1e9]  # a large squared error in the target's units is no lie
    assert fx.check_explain_sums(answer, shapes, classification=False)[fx.LOSS][0] == 1e9
    answer[fx.LOSS_PERMUTED] = (-np.ones((3, REPEATS))).tolist()
    with pytest.raises(ValueError, match="a sum of losses is negative"):
        fx.check_explain_sums(answer, shapes, classification=False)


def test_permutation_settings_the_clients_would_refuse_are_refused_first() -> None:
    from uaap.errors import ConfigError

    fx.check_permutations(fx.MAX_REPEATS, 2**32 - 1)
    for repeats, seed, said in ((0, 0, "--repeats 0"), (fx.MAX_REPEATS + 1, 0, "--repeats 101"), (5, -1, "--seed -1")):
        with pytest.raises(ConfigError, match=said):
            fx.check_permutations(repeats, seed)
