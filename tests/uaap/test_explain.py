"""`uaap explain` (uaap.explain.shapley): SHAP values of a run's model per raw column, compared with shap's own
explainers called directly here on the same model and rows, and the additivity SHAP promises (values + base value
== the model's output). Two central runs are trained once for the module on a messy generated table (numbers,
categories, dates): a random forest (TreeExplainer) and a torch MLP (PermutationExplainer)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shap

from uaap.cli import main
from uaap.config import RunConfig
from uaap.data.messy import messy_table
from uaap.explain.shapley import explain
from uaap.monitor.runmodel import RunModel, load_run_model


@pytest.fixture(scope="module")
def runs(module_home: Path) -> Iterator[tuple[Path, RunModel, RunModel]]:
    from uaap.centralized import train_central

    messy_table(800, seed=3, text=False).to_csv(module_home / "visits.csv", index=False)
    base = RunConfig(dataset="csv", data_path=str(module_home / "visits.csv"), target="label", drop_columns="cost",
                     experiment="tests-explain", seed=2)  # fmt: skip
    train_central(base.replace(model="random_forest", trees_per_client=10, num_clients=2, run_id="forest"))
    train_central(base.replace(model="mlp", run_id="mlp"), epochs=2)
    yield module_home, load_run_model("forest"), load_run_model("mlp")


def _by_column(values: np.ndarray, features: list[str], columns: list[str]) -> np.ndarray:
    """Feature values summed per raw column, by name: ``city=Paris`` and ``visit.month_sin`` belong to theirs."""
    out = np.zeros((len(values), len(columns)))
    for j, column in enumerate(columns):
        mine = [i for i, f in enumerate(features) if f == column or f.startswith((f"{column}=", f"{column}."))]
        assert mine, column
        out[:, j] = values[:, mine].sum(axis=1)
    return out


def test_tree_shap_equals_shaps_tree_explainer_and_adds_up(runs: tuple[Path, RunModel, RunModel]) -> None:
    home, forest, _ = runs
    frame = pd.read_csv(home / "visits.csv").iloc[:200]
    ours = explain(forest, frame)
    X = forest.preprocessor.transform(frame)
    direct = shap.TreeExplainer(forest.model).shap_values(X)[:, :, 1]  # the class 'yes'
    assert ours.explainer == "tree" and ours.output == "P(yes)"
    assert np.max(np.abs(ours.values - direct)) <= 1e-8
    assert ours.columns == ["age", "income", "score", "city", "plan", "visit"]  # raw columns, the target and cost out
    np.testing.assert_allclose(ours.grouped, _by_column(direct, ours.features, ours.columns), rtol=0, atol=1e-8)
    proba = forest.model.predict_proba(X)[:, 1]
    assert np.max(np.abs(ours.grouped.sum(axis=1) + ours.base - proba)) <= 1e-6
    assert ours.additivity_error <= 1e-6


def test_torch_shap_equals_shaps_permutation_explainer_and_adds_up(
    runs: tuple[Path, RunModel, RunModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    from uaap.threads import torch_threads
    from uaap.training import predict_proba

    monkeypatch.setenv("UAAP_TORCH_THREADS", "1")  # one thread both ways: the same float32 sums in the same order
    home, _, mlp = runs
    frame = pd.read_csv(home / "visits.csv")
    rows, background = frame.iloc[100:115], frame.iloc[:10]
    ours = explain(mlp, rows, background=background, background_rows=10, max_evals=100, seed=4)
    assert ours.explainer == "permutation" and ours.note == ""

    def f(X: np.ndarray) -> np.ndarray:
        return predict_proba(mlp.model, X.astype(np.float32))[:, 1].astype(np.float64)

    pre = mlp.preprocessor
    masker = shap.maskers.Independent(pre.transform(background).astype(np.float64), max_samples=10)
    with torch_threads():
        direct = shap.PermutationExplainer(f, masker, seed=4)(pre.transform(rows).astype(np.float64), max_evals=100,
                                                             silent=True)  # fmt: skip
    assert np.max(np.abs(ours.values - direct.values)) <= 1e-8
    np.testing.assert_allclose(ours.grouped, _by_column(direct.values, ours.features, ours.columns), rtol=0, atol=1e-8)
    output = f(pre.transform(rows))
    assert np.max(np.abs(ours.grouped.sum(axis=1) + ours.base - output)) <= 1e-6


def test_the_explain_command_writes_plots_json_and_mlflow(
    runs: tuple[Path, RunModel, RunModel], capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient

    from uaap.tracking import tracking_uri

    home, _, _ = runs
    assert main(["explain", "forest", "--data", str(home / "visits.csv"), "--row", "2", "--max-rows", "150"]) == 0
    out = capsys.readouterr().out
    folder = home / "runs" / "forest" / "explain"
    report = json.loads((folder / "shap.json").read_text())
    assert report["explainer"] == "tree" and report["rows"] == 150 and report["additivity_error"] <= 1e-6
    assert set(report["mean_abs_shap"]) == {"age", "income", "score", "city", "plan", "visit"}
    assert report["row"]["index"] == 2 and sum(report["row"]["values"].values()) + report[
        "base_value"
    ] == pytest.approx(report["row"]["output"], abs=1e-6)
    for name in ("shap-summary.png", "shap-bar.png", "shap-waterfall.png"):
        assert (folder / name).stat().st_size > 10_000
    assert "150 of 800 rows drawn at random" in out
    client = MlflowClient(tracking_uri())
    [run] = client.search_runs([client.get_experiment_by_name("tests-explain").experiment_id],
                               "tags.`uaap.run_id` = 'forest'")  # fmt: skip
    assert run.data.metrics["shap.score.mean_abs"] == pytest.approx(report["mean_abs_shap"]["score"])


def test_rows_without_the_models_columns_are_refused_before_anything_is_written(
    runs: tuple[Path, RunModel, RunModel], capsys: pytest.CaptureFixture[str]
) -> None:
    home, _, _ = runs
    pd.read_csv(home / "visits.csv").drop(columns=["city"]).to_csv(home / "no-city.csv", index=False)
    assert main(["explain", "mlp", "--data", str(home / "no-city.csv")]) == 2
    assert re.search(r"lack columns 'city' that the model was trained on", capsys.readouterr().err)
    assert not (home / "runs" / "mlp" / "explain").exists()
    assert main(["explain", "mlp", "--data", str(home / "visits.csv"), "--row", "900", "--max-rows", "20"]) == 2
    assert "--row 900 is outside the 20 rows" in capsys.readouterr().err
    assert not (home / "runs" / "mlp" / "explain").exists()


def test_boosted_trees_are_explained_in_log_odds(runs: tuple[Path, RunModel, RunModel]) -> None:
    from uaap.centralized import train_central

    home, forest, _ = runs
    cfg = forest.run.read_config().replace(model="xgboost", boost_rounds=15, run_id="boosted")
    train_central(cfg)
    booster = load_run_model("boosted")
    frame = pd.read_csv(home / "visits.csv").iloc[:150]
    ours = explain(booster, frame, target_class="no")
    X = booster.preprocessor.transform(frame)
    direct = shap.TreeExplainer(booster.model).shap_values(X)  # log-odds of class 1 ('yes')
    assert ours.output == "log-odds of 'no'" and np.max(np.abs(ours.values + direct)) <= 1e-8
    margin = booster.model.predict(X, output_margin=True)
    assert np.max(np.abs(ours.grouped.sum(axis=1) + ours.base + margin)) <= 1e-5  # XGBoost sums in float32


@pytest.mark.parametrize(
    ("family", "said"),
    [
        (
            "random_forest",
            "shap's TreeExplainer cannot read this random_forest model (InvalidModelError): permutation used",
        ),
        ("kernel_svm", "family 'kernel_svm' has no tree explainer: permutation used"),
    ],
)
def test_a_model_the_tree_explainer_cannot_read_falls_back_to_permutation_and_says_so(
    runs: tuple[Path, RunModel, RunModel], family: str, said: str
) -> None:
    """The stated fallbacks: a tree family shap cannot read, and a family with no tree explainer, are explained by
    the permutation explainer (equal to shap's, called directly) with a note that says so; a background larger than
    --background-rows is sampled, and the note says that too."""
    from dataclasses import replace

    from sklearn.neighbors import KNeighborsClassifier

    home, forest, _ = runs
    frame = pd.read_csv(home / "visits.csv")
    pre = forest.preprocessor
    X = pre.transform(frame).astype(np.float64)
    knn = KNeighborsClassifier(5).fit(X, forest.model.predict(X))  # no tree for shap to read
    model = replace(forest, model=knn, meta={**forest.meta, "family": family})
    rows, background = frame.iloc[200:210], frame.iloc[:40]
    ours = explain(model, rows, background=background, background_rows=8, max_evals=60, seed=5)
    assert ours.explainer == "permutation"
    assert set(ours.note.split("; ")) == {said, "background: 8 of 40 rows drawn at random (--background-rows)"}
    drawn = pre.transform(background).astype(np.float64)
    drawn = drawn[np.sort(np.random.default_rng(5).choice(40, 8, replace=False))]
    masker = shap.maskers.Independent(drawn, max_samples=8)
    direct = shap.PermutationExplainer(lambda A: knn.predict_proba(A)[:, 1], masker, seed=5)(
        pre.transform(rows).astype(np.float64), max_evals=60, silent=True
    )
    assert np.max(np.abs(ours.values - direct.values)) <= 1e-8
    assert ours.additivity_error <= 1e-6


def test_deep_shap_of_a_network_equals_shaps_deep_explainer_and_adds_up(runs: tuple[Path, RunModel, RunModel]) -> None:
    """--explainer deep: shap's DeepExplainer on the network with its softmax appended (built here on its own),
    against the same background rows; per raw column, additive to float32 precision, and refused for a forest."""
    import torch

    from uaap.errors import DataError

    home, forest, mlp = runs
    frame = pd.read_csv(home / "visits.csv")
    rows, background = frame.iloc[100:160], frame.iloc[:30]
    ours = explain(mlp, rows, background=background, background_rows=30, explainer_name="deep")
    assert ours.explainer == "deep" and ours.output == "P(yes)" and ours.note == ""
    pre = mlp.preprocessor
    net = torch.nn.Sequential(mlp.model, torch.nn.Softmax(dim=1)).eval()
    direct = shap.DeepExplainer(net, torch.from_numpy(pre.transform(background).astype(np.float32)))
    values = np.asarray(direct.shap_values(torch.from_numpy(pre.transform(rows).astype(np.float32))))[:, :, 1]
    assert np.max(np.abs(ours.values - values)) <= 1e-8
    np.testing.assert_allclose(ours.grouped, _by_column(values, ours.features, ours.columns), rtol=0, atol=1e-8)
    print(f"deep SHAP additivity error {ours.additivity_error:.1e}")
    assert ours.additivity_error <= 1e-5
    with pytest.raises(DataError, match=r"explained by auto, tree, permutation"):
        explain(forest, rows, explainer_name="deep")


def test_the_dependence_plot_zooms_past_a_few_far_values_and_says_how_many() -> None:
    from uaap.explain.shapley import _zoom

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(size=300), [25.0, -25.0, 24.0], [np.nan] * 4])
    zoom, words = _zoom(values)
    low, high = np.percentile(values[np.isfinite(values)], [1, 99])
    pad = 0.05 * (high - low)
    assert zoom == pytest.approx({"xmin": low - pad, "xmax": high + pad})
    finite = values[np.isfinite(values)]
    hidden = int(np.sum((finite < low - pad) | (finite > high + pad)))
    assert 3 <= hidden <= 8 and words == f" ({hidden} far values outside the 1st-99th percentile shown)"
    assert _zoom(rng.normal(size=300)) == ({}, "")  # no far values: the whole range
    assert _zoom(np.array([1.0, 2.0, np.nan])) == ({}, "")  # too few to call any value far


def test_the_explain_command_takes_the_deep_explainer_for_a_network(
    runs: tuple[Path, RunModel, RunModel], capsys: pytest.CaptureFixture[str]
) -> None:
    home, _, _ = runs
    assert main(["explain", "mlp", "--data", str(home / "visits.csv"), "--explainer", "deep", "--max-rows", "80",
                 "--background-rows", "40"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("deep explainer, output P(yes)")
    report = json.loads((home / "runs" / "mlp" / "explain" / "shap.json").read_text())
    assert report["explainer"] == "deep" and report["rows"] == 80 and report["additivity_error"] <= 1e-5
    assert "background: 40 of 80 rows drawn at random" in report["note"]
    assert main(["explain", "mlp", "--federated", "--explainer", "deep"]) == 2  # not silently ignored
    assert "--explainer deep picks the SHAP explainer of a central explanation" in capsys.readouterr().err
    # refused before any row is read: the missing file is never reached
    assert main(["explain", "forest", "--data", str(home / "nowhere.csv"), "--explainer", "deep"]) == 2
    assert (
        "--explainer deep: this random_forest model is explained by auto, tree, permutation" in capsys.readouterr().err
    )
