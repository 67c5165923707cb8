"""The preprocessing pipeline: a federated fit equals the pooled fit, and both equal independent references
(numpy and scikit-learn on the pooled rows)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from uaap.data.messy import messy_table
from uaap.data.preprocess import (
    FederatedFit,
    PreprocessOptions,
    Preprocessor,
    check_statistics,
    fit_parties,
    histogram_quantile,
    local_statistics,
    merge,
)
from uaap.errors import DataError

FEATURES = ["age", "income", "score", "city", "plan", "visit", "notes"]
HASHED = PreprocessOptions(text="hashing")


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return messy_table(2000, seed=3)


def _non_iid(frame: pd.DataFrame, parts: int = 5) -> list[pd.DataFrame]:
    """Rows sorted by city and income: each party sees other categories and another range of values."""
    ordered = frame.sort_values(["city", "income"], na_position="last")
    cuts = np.linspace(0, len(ordered), parts + 1).astype(int)
    return [ordered.iloc[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def test_federated_fit_equals_the_pooled_fit(table: pd.DataFrame) -> None:
    pooled = Preprocessor(HASHED).fit(table[FEATURES])
    federated = fit_parties(_non_iid(table[FEATURES]), FEATURES, HASHED)
    assert [p.kind for p in federated.plan_] == ["numeric"] * 3 + ["categorical"] * 2 + ["datetime", "text"]
    for a, b in zip(pooled.plan_, federated.plan_, strict=True):
        assert a.vocabulary == b.vocabulary and a.fill == b.fill
        for field in ("impute", "low", "high", "center", "scale"):
            left, right = getattr(a, field), getattr(b, field)
            assert left.keys() == right.keys()
            np.testing.assert_allclose([left[k] for k in left], [right[k] for k in left], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(pooled.transform(table), federated.transform(table), rtol=1e-6, atol=1e-6)


def test_statistics_match_numpy_and_scikit_learn_on_the_pooled_rows(table: pd.DataFrame) -> None:
    from sklearn.preprocessing import StandardScaler

    pre = fit_parties(_non_iid(table[FEATURES]), FEATURES, HASHED)
    age = pre.plan_[0]
    raw = table["age"].to_numpy(dtype=float)
    present = raw[~np.isnan(raw)]
    q1, median, q3 = np.percentile(present, [25, 50, 75])
    width = pre.resolution_["age"]
    assert width == pytest.approx((present.max() - present.min()) / 4096)
    assert abs(age.impute["age"] - median) <= width  # the stated error of a histogram median
    assert abs(age.low["age"] - (q1 - 1.5 * (q3 - q1))) <= 4 * width
    assert abs(age.high["age"] - (q3 + 1.5 * (q3 - q1))) <= 4 * width
    # the scaler is fitted after imputation and clipping: the same rows through numpy, then StandardScaler
    cleaned = np.clip(np.where(np.isnan(raw), age.impute["age"], raw), age.low["age"], age.high["age"])
    reference = StandardScaler().fit(cleaned[:, None])
    assert age.center["age"] == pytest.approx(reference.mean_[0], rel=1e-12)
    assert age.scale["age"] == pytest.approx(reference.scale_[0], rel=1e-9)
    city = pre.plan_[3]
    counts = table["city"].value_counts()
    assert sorted(city.vocabulary) == sorted(counts.index)  # 8 cities, under max_categories: all kept
    assert city.fill == counts.idxmax()


def test_quantiles_from_a_histogram_are_within_one_bin() -> None:
    rng = np.random.default_rng(0)
    for values in (rng.normal(0, 1, 5001), rng.exponential(3, 777), rng.integers(0, 5, 1000).astype(float)):
        low, high = values.min(), values.max()
        hist = np.histogram(values, bins=256, range=(low, high))[0].astype(float)
        for q in (0.25, 0.5, 0.75):
            assert abs(histogram_quantile(hist, low, high, q) - np.quantile(values, q)) <= (high - low) / 256 + 1e-12


def test_one_hot_keeps_the_most_frequent_and_buckets_the_rest_and_the_unseen() -> None:
    frame = pd.DataFrame({"c": list("aaaaabbbbcccdde") + [None], "x": np.arange(16.0)})
    pre = Preprocessor(PreprocessOptions(max_categories=3, scaling="none", outliers="none")).fit(frame)
    assert pre.plan_[0].vocabulary == ["a", "b"] and pre.plan_[0].fill == "a"
    assert list(pre.get_feature_names_out()) == ["c=a", "c=b", "c=infrequent", "x"]
    out = pre.transform(pd.DataFrame({"c": ["b", "e", "never-seen", None], "x": [1.0, 2.0, 3.0, np.nan]}))
    np.testing.assert_array_equal(out[:, :3], [[0, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0]])
    assert out[3, 3] == pytest.approx(7.5, abs=16 / 4096)  # the median of 0..15 fills the hole


def test_datetimes_expand_into_calendar_parts_and_cycles() -> None:
    frame = pd.DataFrame({"when": ["2024-03-15T14:00", "2023-12-31T23:30", None, "2024-06-01T00:00"]})
    pre = Preprocessor(PreprocessOptions(scaling="none", impute="constant", fill_value=-1)).fit(frame)
    names = list(pre.get_feature_names_out())
    out = dict(zip(names, pre.transform(frame[:1]).T, strict=True))
    assert (out["when.year"][0], out["when.month"][0], out["when.day"][0]) == (2024, 3, 15)
    assert (out["when.weekday"][0], out["when.hour"][0]) == (4, 14)  # a Friday
    assert out["when.month_sin"][0] == pytest.approx(np.sin(2 * np.pi * 3 / 12), abs=1e-6)
    assert out["when.hour_cos"][0] == pytest.approx(np.cos(2 * np.pi * 14 / 24), abs=1e-6)
    assert pre.transform(frame[2:3])[0, names.index("when.year")] == -1  # a missing date takes fill-value


def test_free_text_is_refused_hashed_or_dropped(table: pd.DataFrame) -> None:
    refused = r"column 'notes' holds free text.*--text-columns hashing.*--drop-columns notes"
    with pytest.raises(DataError, match=refused):
        Preprocessor().fit(table[FEATURES])
    hashed = Preprocessor(PreprocessOptions(text="hashing", hash_buckets=8)).fit(table[FEATURES])
    words = hashed.transform(pd.DataFrame([{**table[FEATURES].iloc[0], "notes": "pain pain fever"}]))[0, -8:]
    assert sorted(np.round(np.expm1(words)).astype(int)[np.nonzero(words)]) == [1, 2]  # fever once, pain twice
    dropped = Preprocessor(PreprocessOptions(text="drop")).fit(table[FEATURES])
    assert "notes" not in dropped.input_columns and not any("notes" in n for n in dropped.get_feature_names_out())


def test_bad_columns_get_clear_errors() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "empty": [None, None, None]})
    with pytest.raises(DataError, match=r"'empty' is empty in all 3 rows; leave it out \(--drop-columns empty\)"):
        Preprocessor().fit(frame)
    with pytest.raises(DataError, match=r"drop names 'nope'"):
        Preprocessor(PreprocessOptions(drop=("nope",))).fit(frame)
    pre = Preprocessor(PreprocessOptions(drop=("empty",))).fit(frame)
    with pytest.raises(DataError, match=r"lack columns 'x'.*expects: x"):
        pre.transform(pd.DataFrame({"y": [1.0]}))
    with pytest.raises(DataError, match=r"max-categories=1 is below 2"):
        PreprocessOptions(max_categories=1)


def test_the_fitted_plan_travels_as_json(table: pd.DataFrame) -> None:
    pre = Preprocessor(HASHED).fit(table[FEATURES])
    text = pre.dumps()
    again = Preprocessor.loads(json.loads(json.dumps(text)))
    np.testing.assert_array_equal(pre.transform(table), again.transform(table))
    assert list(again.get_feature_names_out()) == list(pre.get_feature_names_out())
    with pytest.raises(DataError, match="not a fitted preprocessor"):
        Preprocessor.loads('{"plan": []}')


def test_it_composes_in_a_scikit_learn_pipeline(table: pd.DataFrame) -> None:
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(Preprocessor(HASHED), LogisticRegression(max_iter=500))
    X, y = table[FEATURES], table["label"]
    model.fit(X[:1500], y[:1500])
    assert model.score(X[1500:], y[1500:]) > 0.75  # the dirty columns carry the signal
    assert clone(model).get_params()["preprocessor__options"] == HASHED


def test_each_stage_asks_only_for_what_it_needs(table: pd.DataFrame) -> None:
    fit = FederatedFit(["age", "city"], PreprocessOptions(impute="mean", outliers="none", scaling="none"))
    stages = []
    while (req := fit.request()) is not None:
        stages.append(req["stage"])
        fit.absorb(merge([local_statistics(table, json.loads(json.dumps(req)))]))
    assert stages == ["schema", "moments"]  # no histogram, no scaling pass
    assert fit.preprocessor().plan_[0].impute["age"] == pytest.approx(table["age"].mean(), rel=1e-12)


def test_the_target_is_fitted_across_parties_too(table: pd.DataFrame) -> None:
    columns = [*FEATURES, "label", "cost"]
    parties = _non_iid(table[columns])
    label = fit_parties(parties, [*FEATURES, "cost"], HASHED, target="label")
    assert (label.task, label.target_.classes if label.target_ else None) == ("classification", ["no", "yes"])
    y = label.encode_target(table["label"])
    np.testing.assert_array_equal(y, (table["label"] == "yes").to_numpy())
    cost = fit_parties(parties, [*FEATURES, "label"], HASHED, target="cost")
    assert cost.task == "regression" and cost.n_outputs == 1 and cost.target_ is not None
    assert cost.target_.mean == pytest.approx(table["cost"].mean(), rel=1e-12)
    assert cost.target_.std == pytest.approx(table["cost"].std(ddof=0), rel=1e-9)
    assert "cost" not in cost.input_columns and "label" in cost.input_columns  # another column, a feature here
    again = Preprocessor.loads(cost.dumps())
    assert again.target_ == cost.target_


def test_numeric_class_labels_keep_one_spelling_and_numeric_order() -> None:
    parties = [pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [2, 10, 1]}), pd.DataFrame({"x": [4.0, 5.0], "y": [1.0, 2.0]})]
    pre = fit_parties(parties, ["x", "y"], target="y")
    assert pre.target_ is not None and pre.target_.classes == ["1", "2", "10"]
    np.testing.assert_array_equal(pre.encode_target(pd.Series([10, 1.0, "2"])), [2, 0, 1])
    with pytest.raises(DataError, match=r"classes \['7'\] that the federation did not fit"):
        pre.encode_target(pd.Series([7]))


def test_bad_targets_get_clear_errors() -> None:
    frame = pd.DataFrame({"x": np.arange(60.0), "y": np.linspace(0, 1, 60), "t": ["a"] * 60})
    with pytest.raises(DataError, match=r"target column 't' has a single class 'a'"):
        fit_parties([frame], ["x", "y", "t"], target="t")
    with pytest.raises(DataError, match=r"'t' holds 60 values that are not numbers, but task=regression"):
        fit_parties([frame], ["x", "y", "t"], target="t", task="regression")
    holes = frame.assign(y=frame["y"].where(frame.index % 7 > 0))
    with pytest.raises(DataError, match=r"target column 'y' has 9 empty values"):
        fit_parties([holes], ["x", "y"], target="y")
    assert fit_parties([frame], ["x", "y"], target="y").task == "regression"  # 60 distinct fractions
    assert fit_parties([frame], ["x", "y"], target="y", task="classification").n_outputs == 60


def _answers(table: pd.DataFrame, options: PreprocessOptions) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every stage's request with one party's honest answer as it crosses the wire (JSON)."""
    from uaap.data.preprocess import statistics_to_json

    fit = FederatedFit([*FEATURES, "cost"], options, target="label")
    out = []
    while (req := fit.request()) is not None:
        answer = json.loads(statistics_to_json(local_statistics(table, req)))
        out.append((req, answer))
        fit.absorb(merge([check_statistics(answer, req)]))
    return out


def test_honest_answers_pass_the_check_and_forged_ones_are_named(table: pd.DataFrame) -> None:
    answers = _answers(table, HASHED)
    assert [req["stage"] for req, _ in answers] == ["schema", "moments", "quantiles", "scaling"]
    moments_req, moments = answers[1]
    quantiles_req, quantiles = answers[2]
    forged: list[tuple[dict[str, Any], dict[str, Any], str]] = [
        (moments, {"age:n": [1.0, 2.0]}, r"'age:n' must be 3 numbers"),
        (moments, {"age:n": [10.0, 100.0, 5.0]}, r"'age:n' \(count, sum, sum of squares\) is impossible"),
        (moments, {"age:n": [-1.0, 0.0, 0.0]}, r"is impossible"),
        (moments, {"age:min": [float("nan")]}, r"'age:min' is NaN"),
        (moments, {"income:n": [1.0, float("inf"), 1.0]}, r"'income:n' is not finite"),
        (moments, {"city:counts": {"Paris": -3}}, r"counts 'Paris' -3 times"),
        (moments, {"city:counts": {"Paris": 1.5}}, r"counts 'Paris' 1.5 times"),
        (moments, {"city:counts": {"x" * 300: 1}}, r"category name that is not text"),
        (moments, {"city:counts": {str(i): 1 for i in range(10_001)}}, r"at most 10000 categories"),
        (moments, {"surprise": [1.0]}, r"carry unexpected \['surprise'\]"),
        (quantiles, {"age:hist": [1.0] * 10}, r"'age:hist' must be 4096 numbers"),
        (quantiles, {"age:hist": [0.5] * 4096}, r"whole non-negative counts"),
        (answers[0][1], {"age:schema": [10.0, 20.0, 5.0, 0.0]}, r"more present or typed values than rows"),
    ]
    for honest, change, message in forged:
        req = moments_req if honest is moments else quantiles_req if honest is quantiles else answers[0][0]
        with pytest.raises(DataError, match=message):
            check_statistics({**honest, **change}, req)
    lacking = dict(moments)
    lacking.pop("age:n")
    with pytest.raises(DataError, match=r"lack \['age:n'\]"):
        check_statistics(lacking, moments_req)
    with pytest.raises(DataError, match="must be a mapping"):
        check_statistics([1, 2], moments_req)


def test_z_clipping_and_scaling_hold_for_values_far_from_zero() -> None:
    """Years (2000 +- 0.5) through sums of squares would lose 7 digits to cancellation; shifted sums keep them."""
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"year": 2000 + rng.normal(0, 0.5, 3000)})
    frame.loc[rng.random(3000) < 0.01, "year"] = 2100.0  # far outliers
    options = PreprocessOptions(outliers="clip-z", impute="mean")
    parts = [frame.iloc[:700], frame.iloc[700:1900], frame.iloc[1900:]]
    fit = FederatedFit(["year"], options)
    stages = []
    while (req := fit.request()) is not None:
        stages.append(req["stage"])
        fit.absorb(merge(local_statistics(p, json.loads(json.dumps(req))) for p in parts))
    assert stages == ["schema", "moments", "spread", "scaling"]
    plan = fit.preprocessor().plan_[0]
    x = frame["year"].to_numpy()
    assert plan.high["year"] == pytest.approx(x.mean() + 3 * x.std(), rel=1e-13)
    clipped = np.clip(x, plan.low["year"], plan.high["year"])
    assert plan.center["year"] == pytest.approx(clipped.mean(), rel=1e-13)
    assert plan.scale["year"] == pytest.approx(clipped.std(), rel=1e-9)


def test_local_imputers_fill_from_each_partys_own_rows() -> None:
    from sklearn.impute import KNNImputer

    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 200)
    frame = pd.DataFrame({"a": a, "b": 2 * a + rng.normal(0, 0.1, 200)})  # b follows a: neighbours know it
    frame.loc[[0, 5, 50, 51], "b"] = np.nan
    plain = PreprocessOptions(outliers="none", scaling="none")
    ffill = Preprocessor(PreprocessOptions(impute="ffill", outliers="none", scaling="none")).fit(frame)
    out = ffill.transform(frame)
    assert out[5, 1] == pytest.approx(frame["b"][4]) and out[51, 1] == pytest.approx(frame["b"][49])
    assert out[0, 1] == pytest.approx(ffill.plan_[1].impute["b"])  # a leading hole: the federation's median
    knn = Preprocessor(PreprocessOptions(impute="knn", outliers="none", scaling="none")).fit(frame)
    reference = KNNImputer(n_neighbors=5).fit_transform(frame.to_numpy())
    np.testing.assert_allclose(knn.transform(frame), reference, rtol=1e-6)
    mice = Preprocessor(PreprocessOptions(impute="iterative", outliers="none", scaling="none")).fit(frame)
    filled = mice.transform(frame)[[5, 50], 1]
    np.testing.assert_allclose(filled, 2 * frame["a"][[5, 50]], atol=0.3)  # modelled from a, not a median
    assert Preprocessor(plain).fit(frame).transform(frame)[5, 1] != pytest.approx(filled[0], abs=0.3)


def test_polynomial_features_are_products_of_the_scaled_numbers() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [0.0, 1.0, 0.0, 1.0], "c": list("abab")})
    pre = Preprocessor(PreprocessOptions(polynomial=True, outliers="none")).fit(frame)
    names = list(pre.get_feature_names_out())
    assert names[-3:] == ["x^2", "x*y", "y^2"]
    out = pre.transform(frame)
    x, y = out[:, names.index("x")], out[:, names.index("y")]
    np.testing.assert_allclose(out[:, -3:], np.column_stack([x * x, x * y, y * y]), rtol=1e-6)
