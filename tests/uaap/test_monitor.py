"""Fairness and drift of a trained run (uaap.monitor): federated sums against the pooled references, computed
independently here (fairlearn's MetricFrame and metrics; numpy histograms and scipy's tests on the raw values), the
`uaap fairness` / `uaap monitor` commands end to end (files, MLflow, exit codes) and their bad input.

One central run is trained once for the module (a random forest on a generated table of ten features: eight
numbers, two categories; the label depends on x0, x1 and the category c0, which is also the sensitive column)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from uaap.cli import main
from uaap.config import RunConfig
from uaap.data.preprocess import fit_parties, merge, statistics_to_json
from uaap.monitor import drift
from uaap.monitor import fairness as fair
from uaap.monitor.runmodel import RunModel, load_run_model

RUN = "audited"
FEATURES = [*(f"x{i}" for i in range(8)), "c0", "c1"]
SHIFTED = ["x3", "c1"]  # the known shift of the new rows


def table(rows: int, seed: int, *, shift: bool = False) -> pd.DataFrame:
    """Ten features and a yes/no label; ``shift`` moves x3 by half its std and reweights c1's categories."""
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {f"x{i}": rng.normal(i, 1 + i / 4, rows) for i in range(8)}
    data["c0"] = rng.choice(["north", "south", "east"], rows, p=[0.5, 0.3, 0.2])
    data["c1"] = rng.choice(["u", "v", "w", "z"], rows, p=[0.1, 0.2, 0.3, 0.4] if shift else [0.25] * 4)
    if shift:
        data["x3"] = np.asarray(data["x3"]) + 0.5 * (1 + 3 / 4)
    frame = pd.DataFrame(data)
    signal = frame.x0 + 0.5 * (frame.x1 - 1) + 0.9 * (frame.c0 == "north") + rng.normal(0, 0.7, rows)
    return frame.assign(label=np.where(signal > 0.4, "yes", "no"))


@pytest.fixture(scope="module")
def run(module_home: Path) -> Iterator[tuple[Path, RunModel]]:
    from uaap.centralized import train_central

    table(3000, 0).to_csv(module_home / "train.csv", index=False)
    table(3000, 1).to_csv(module_home / "new.csv", index=False)
    table(3000, 2, shift=True).to_csv(module_home / "shifted.csv", index=False)
    cfg = RunConfig(dataset="csv", data_path=str(module_home / "train.csv"), target="label", model="random_forest",
                    trees_per_client=10, num_clients=2, run_id=RUN, experiment="tests-monitor", seed=1)  # fmt: skip
    train_central(cfg)
    yield module_home, load_run_model(RUN)


def _files(home: Path) -> set[Path]:
    folder = home / "runs" / RUN / "monitor"
    return set(folder.iterdir()) if folder.is_dir() else set()


# ---- fairness ---------------------------------------------------------------------------------------------------


def test_federated_fairness_equals_fairlearn_metricframe_on_the_pooled_predictions(
    run: tuple[Path, RunModel],
) -> None:
    from fairlearn.metrics import (
        MetricFrame,
        demographic_parity_difference,
        demographic_parity_ratio,
        equalized_odds_difference,
        equalized_odds_ratio,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )
    from sklearn.metrics import accuracy_score

    home, model = run
    frame = pd.read_csv(home / "new.csv").sort_values("x0", kind="stable").reset_index(drop=True)
    parts = [frame.iloc[:500], frame.iloc[500:2200], frame.iloc[2200:]]  # non-IID: split along the strongest feature
    answers = []
    for part in parts:  # what each client sends: its rows' counts per group, as JSON over the wire
        audit = fair.audit_rows(model, part, "c0")
        answers.append(
            json.loads(statistics_to_json(fair.fairness_counts(audit.y_true, audit.y_pred, audit.groups, 2)))
        )
    federated = fair.federated_report(answers, model.classes, "yes")

    y_true = (frame.label == "yes").to_numpy().astype(int)  # pooled, independently: the model's labels on all rows
    y_pred = (model.predict(frame) == "yes").astype(int)
    groups = frame.c0.to_numpy()
    metrics = {"accuracy": accuracy_score, "selection_rate": selection_rate, "tpr": true_positive_rate,
               "fpr": false_positive_rate}  # fmt: skip
    frame_metrics = MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=groups)
    assert sorted(federated["groups"]) == ["east", "north", "south"]
    for group, row in federated["groups"].items():
        for name in fair.METRICS:
            assert row[name] == frame_metrics.by_group.loc[group, name], (group, name)  # exactly
        assert row["count"] == (groups == group).sum()
    for name in fair.METRICS:
        assert federated["overall"][name] == frame_metrics.overall[name]
    kw = {"sensitive_features": groups}
    assert federated["demographic_parity_difference"] == demographic_parity_difference(y_true, y_pred, **kw)
    assert federated["demographic_parity_ratio"] == demographic_parity_ratio(y_true, y_pred, **kw)
    assert federated["equalized_odds_difference"] == equalized_odds_difference(y_true, y_pred, **kw)
    assert federated["equalized_odds_ratio"] == equalized_odds_ratio(y_true, y_pred, **kw)
    assert federated["demographic_parity_difference"] > 0.2  # c0 drives the label: the audit has something to find


def test_forged_fairness_counts_are_refused(run: tuple[Path, RunModel]) -> None:
    with pytest.raises(fair.DataError, match="whole non-negative"):
        fair.check_fairness_counts({"group=a": [1, 2, -1, 0]}, 2)
    with pytest.raises(fair.DataError, match="must be 4 numbers"):
        fair.check_fairness_counts({"group=a": [1, 2, 3]}, 2)
    with pytest.raises(fair.DataError, match="must start with"):
        fair.check_fairness_counts({"age:n": [1, 2, 3, 4]}, 2)


def test_the_fairness_command_writes_the_report_plots_and_mlflow_metrics(
    run: tuple[Path, RunModel], capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient

    from uaap.tracking import tracking_uri

    home, _ = run
    args = ["fairness", RUN, "--sensitive", "c0", "--data", str(home / "new.csv"), "--mitigate", "demographic_parity"]
    assert main(args) == 0
    out = capsys.readouterr().out
    folder = home / "runs" / RUN / "monitor"
    result = json.loads((folder / "fairness-c0.json").read_text())
    assert (folder / "fairness-c0.png").stat().st_size > 10_000
    assert (folder / "fairness-c0-mitigation.png").stat().st_size > 10_000
    assert "north" in out and "demographic parity difference" in out
    before, after = result["mitigation"]["before"], result["mitigation"]["after"]
    assert before["overall"]["count"] == after["overall"]["count"] == 1500  # the held-out half, both times
    assert after["demographic_parity_difference"] < before["demographic_parity_difference"] / 2
    client = MlflowClient(tracking_uri())
    [mlflow_run] = client.search_runs(
        [client.get_experiment_by_name("tests-monitor").experiment_id], "tags.`uaap.run_id` = 'audited'"
    )
    logged = mlflow_run.data.metrics
    assert logged["fairness.c0.demographic_parity_difference"] == pytest.approx(result["demographic_parity_difference"])
    assert "fairness.c0.mitigated.equalized_odds_ratio" in logged


@pytest.mark.parametrize(
    ("column", "message"),
    [("sex", r"'sex' is not in the data; its columns are: x0, x1, .*c0, c1, label"), ("one", r"single group 'a'")],
)
def test_a_bad_sensitive_column_is_refused_and_nothing_is_written(
    run: tuple[Path, RunModel], capsys: pytest.CaptureFixture[str], column: str, message: str
) -> None:
    home, _ = run
    pd.read_csv(home / "new.csv").assign(one="a").to_csv(home / "one-group.csv", index=False)
    before = _files(home)
    assert main(["fairness", RUN, "--sensitive", column, "--data", str(home / "one-group.csv")]) == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert _files(home) == before


# ---- drift ------------------------------------------------------------------------------------------------------


def test_federated_drift_equals_the_pooled_statistics_on_the_same_bins() -> None:
    reference, current = table(2400, 5), table(2000, 6, shift=True)
    plans = drift.monitored_plan(fit_parties([reference], FEATURES + ["label"]))
    ref_parts = [reference.iloc[:300], reference.iloc[300:1700], reference.iloc[1700:]]
    cur_parts = [current.iloc[:1200], current.iloc[1200:]]
    federated = drift.federated_drift(ref_parts, cur_parts, plans)
    pooled = drift.federated_drift([reference], [current], plans)
    for name, row in pooled["features"].items():
        for key, value in row.items():
            if isinstance(value, float):
                assert federated["features"][name][key] == pytest.approx(value, rel=1e-12, abs=1e-12), (name, key)
    assert federated["drifted"] == pooled["drifted"] == SHIFTED

    # The same numbers from the pooled rows, independently: numpy's histogram on the reference's range, scipy's tests.
    ranges = drift.reference_sketch(ref_parts, plans)["ranges"]
    sums = merge(drift.current_statistics(part, plans, ranges) for part in cur_parts)
    for name in (f"x{i}" for i in range(8)):
        low, high = ranges[name]
        edges = np.linspace(low, high, drift.BINS + 1)
        assert (low, high) == (reference[name].min(), reference[name].max())
        np.testing.assert_array_equal(sums[f"{name}:hist"], np.histogram(current[name], bins=edges)[0])
        r = np.histogram(reference[name], bins=edges)[0]
        c = np.concatenate([[(current[name] < low).sum()], np.histogram(current[name], bins=edges)[0],
                            [(current[name] > high).sum()]])  # fmt: skip
        r = np.concatenate([[0], r, [0]])
        ks = np.abs(np.cumsum(r) / r.sum() - np.cumsum(c) / c.sum()).max()
        assert federated["features"][name]["ks"] == pytest.approx(ks, rel=1e-12)
        exact = stats.ks_2samp(reference[name], current[name]).statistic  # on the raw values
        assert ks <= exact + 1e-12 and exact - ks <= 0.01
        w = stats.wasserstein_distance(reference[name], current[name])
        assert abs(federated["features"][name]["wasserstein"] - w) <= (high - low) / drift.BINS
    for name in ("c0", "c1"):
        crosstab = pd.crosstab(
            np.r_[np.zeros(len(reference)), np.ones(len(current))], np.r_[reference[name], current[name]]
        )
        chi2 = stats.chi2_contingency(crosstab.to_numpy())
        assert federated["features"][name]["chi2"] == pytest.approx(chi2.statistic, rel=1e-12)
        assert federated["features"][name]["chi2_pvalue"] == pytest.approx(chi2.pvalue, rel=1e-9, abs=1e-300)


def test_the_monitor_command_flags_exactly_the_two_shifted_features(
    run: tuple[Path, RunModel], capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient

    from uaap.tracking import tracking_uri

    home, _ = run
    assert main(["monitor", "--reference", RUN, "--data", str(home / "shifted.csv")]) == 0
    out = capsys.readouterr().out
    [report] = sorted((home / "runs" / RUN / "monitor").glob("drift-*.json"))
    result = json.loads(report.read_text())
    assert result["drifted"] == SHIFTED, {k: (v["psi"], v.get("ks", v.get("cramers_v"))) for k, v in
                                          result["features"].items()}  # fmt: skip
    assert sorted(result["features"]) == sorted(FEATURES)
    print("drift PSI:", {k: round(v["psi"], 3) for k, v in result["features"].items()}, "drifted:", result["drifted"])
    assert result["reference_rows"] == 2400 and result["current_rows"] == 3000  # the run's training split
    assert result["prediction"]["kind"] == "categorical" and "chi2_pvalue" in result["prediction"]
    assert report.with_suffix(".png").stat().st_size > 10_000
    assert "drifted: x3, c1" in out
    client = MlflowClient(tracking_uri())
    [mlflow_run] = client.search_runs(
        [client.get_experiment_by_name("tests-monitor").experiment_id], "tags.`uaap.run_id` = 'audited'"
    )
    assert mlflow_run.data.metrics["drift.features_drifted"] == 2
    assert mlflow_run.data.metrics["drift.x3.psi"] == pytest.approx(result["features"]["x3"]["psi"])


def test_new_rows_from_the_same_source_drift_nowhere(run: tuple[Path, RunModel]) -> None:
    home, model = run
    from uaap.monitor.reports import training_rows

    reference = training_rows(model)
    current = pd.read_csv(home / "new.csv")
    plans = drift.monitored_plan(model.preprocessor, model.task)
    result = drift.federated_drift(
        [drift.with_predictions(reference, model.predict(reference))],
        [drift.with_predictions(current, model.predict(current))],
        plans,
    )
    assert result["drifted"] == [] and not result["prediction_drifted"]


def test_new_rows_with_other_columns_are_refused_by_name(
    run: tuple[Path, RunModel], capsys: pytest.CaptureFixture[str]
) -> None:
    home, _ = run
    pd.read_csv(home / "new.csv").drop(columns=["x5"]).rename(columns={"c1": "colour"}).to_csv(
        home / "other.csv", index=False
    )
    before = _files(home)
    assert main(["monitor", "--reference", RUN, "--data", str(home / "other.csv")]) == 2
    err = capsys.readouterr().err
    assert "lack 'c1', 'x5'" in err and "carry 'colour'" in err
    assert _files(home) == before


def test_multiclass_fairness_is_one_class_against_the_rest_with_multiclass_accuracy() -> None:
    from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
    from sklearn.metrics import accuracy_score

    rng = np.random.default_rng(3)
    y_true, y_pred = rng.integers(0, 3, 900), rng.integers(0, 3, 900)
    groups = rng.choice(["a", "b"], 900)
    parts = [fair.fairness_counts(y_true[i::2], y_pred[i::2], groups[i::2], 3) for i in range(2)]
    result = fair.federated_report(parts, ["low", "mid", "high"], fair.choose_positive(["low", "mid", "high"], "mid"))
    metrics = {"selection_rate": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate}
    binary = {"y_true": (y_true == 1).astype(int), "y_pred": (y_pred == 1).astype(int)}  # 'mid' against the rest
    rates = MetricFrame(metrics=metrics, sensitive_features=groups, **binary)
    accuracy = MetricFrame(metrics=accuracy_score, y_true=y_true, y_pred=y_pred, sensitive_features=groups)
    for g in ("a", "b"):
        for name in ("selection_rate", "tpr", "fpr"):
            assert result["groups"][g][name] == rates.by_group.loc[g, name]
        assert result["groups"][g]["accuracy"] == accuracy.by_group.loc[g]
    with pytest.raises(fair.DataError, match="--positive CLASS"):
        fair.choose_positive(["low", "mid", "high"])


def test_a_regression_models_predictions_drift_as_a_numeric_column() -> None:
    reference, current = table(2000, 7), table(2000, 8)
    pre = fit_parties([reference], FEATURES + ["label"])
    plans = drift.monitored_plan(pre, "regression")
    rng = np.random.default_rng(0)
    same = drift.federated_drift([drift.with_predictions(reference, rng.normal(10, 2, 2000))],
                                 [drift.with_predictions(current, rng.normal(10, 2, 2000))], plans)  # fmt: skip
    moved = drift.federated_drift([drift.with_predictions(reference, rng.normal(10, 2, 2000))],
                                  [drift.with_predictions(current, rng.normal(11, 2, 2000))], plans)  # fmt: skip
    assert same["prediction"]["kind"] == moved["prediction"]["kind"] == "numeric"
    assert not same["prediction_drifted"] and moved["prediction_drifted"]
    assert moved["prediction"]["wasserstein_std"] == pytest.approx(0.5, abs=0.1)
    assert same["drifted"] == moved["drifted"] == []  # the features themselves did not move


def test_an_undefined_ratio_is_nan_as_in_fairlearn_and_null_in_the_json(tmp_path: Path) -> None:
    from fairlearn.metrics import demographic_parity_ratio

    y_true, y_pred, groups = np.array([0, 1, 0, 1]), np.zeros(4, dtype=np.int64), np.array(["a", "a", "b", "b"])
    result = fair.fairness_from_counts(fair.fairness_counts(y_true, y_pred, groups, 2), ["no", "yes"], "yes")
    assert np.isnan(result["demographic_parity_ratio"])  # no group selects anyone: 0 / 0
    assert np.isnan(demographic_parity_ratio(y_true, y_pred, sensitive_features=groups))
    written = json.loads(fair.write_json(result, tmp_path / "r.json").read_text())
    assert written["demographic_parity_ratio"] is None and written["demographic_parity_difference"] == 0.0


def test_a_forged_drift_sketch_is_refused_before_it_is_summed() -> None:
    reference, current = table(600, 9), table(400, 10)
    plans = drift.monitored_plan(fit_parties([reference], FEATURES + ["label"]))
    ranges = drift.reference_sketch([reference], plans)["ranges"]
    honest = json.loads(statistics_to_json(drift.current_statistics(current, plans, ranges)))  # as over the wire
    assert drift.check_sketch(honest, plans, ranges, current=True).keys() == honest.keys()
    inflated = {**honest, "x2:hist": [h * 2 for h in honest["x2:hist"]]}  # twice the mass it counted
    with pytest.raises(drift.DataError, match=r"'x2': \d+ binned values for \d+ values counted"):
        drift.check_sketch(inflated, plans, ranges, current=True)
    with pytest.raises(drift.DataError, match="whole non-negative"):
        drift.check_sketch({**honest, "x0:outside": [-1, 0.0, 0, 0.0]}, plans, ranges, current=True)
    with pytest.raises(drift.DataError, match=r"carries unexpected \['x9:hist'\]"):
        drift.check_sketch({**honest, "x9:hist": [1]}, plans, ranges, current=True)
    with pytest.raises(drift.DataError, match="must be 1024 numbers"):
        drift.check_sketch({**honest, "x1:hist": honest["x1:hist"][:10]}, plans, ranges, current=True)
