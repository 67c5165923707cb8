"""LIME and importances of a run's model (uaap.explain.lime, uaap.explain.importance), compared with the libraries
called directly here: lime's tabular and text explainers with the same seed, scikit-learn's permutation_importance
on a Pipeline of the run's preprocessor and model with the same random_state, and the forest's own importances.
One random forest (with a free-text column) and one torch MLP are trained once for the module."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from uaap.cli import main
from uaap.config import RunConfig
from uaap.data.messy import messy_table
from uaap.errors import DataError
from uaap.monitor.runmodel import RunModel, load_run_model

NUMERIC, CATEGORICAL = ["age", "income", "score"], ["city", "plan"]


@pytest.fixture(scope="module")
def runs(module_home: Path) -> Iterator[tuple[Path, RunModel, RunModel]]:
    from uaap.centralized import train_central

    messy_table(400, seed=5).to_csv(module_home / "visits.csv", index=False)
    base = RunConfig(dataset="csv", data_path=str(module_home / "visits.csv"), target="label", drop_columns="cost",
                     text_columns="hashing", experiment="tests-explain-lime", seed=1)  # fmt: skip
    train_central(base.replace(model="random_forest", trees_per_client=10, num_clients=2, run_id="forest"))
    train_central(base.replace(model="mlp", run_id="mlp"), epochs=1)
    yield module_home, load_run_model("forest"), load_run_model("mlp")


def _direct_encoding(frame: pd.DataFrame) -> tuple[np.ndarray, dict[int, list[str]]]:
    """The matrix lime perturbs, written again here: numbers (median for a missing one), category codes."""
    Z = np.zeros((len(frame), 5))
    names: dict[int, list[str]] = {}
    for j, c in enumerate(NUMERIC):
        numbers = pd.to_numeric(frame[c], errors="coerce")
        Z[:, j] = numbers.fillna(numbers.median())
    for j, c in enumerate(CATEGORICAL, start=3):
        cells = frame[c].astype(object).where(frame[c].notna(), "(missing)").astype(str)
        names[j] = sorted(set(cells))
        Z[:, j] = cells.map({v: i for i, v in enumerate(names[j])})
    return Z, names


def test_lime_equals_lime_called_directly(runs: tuple[Path, RunModel, RunModel]) -> None:
    from lime.lime_tabular import LimeTabularExplainer  # type: ignore[import-untyped]

    from uaap.explain.lime import explain_row

    home, forest, _ = runs
    frame = pd.read_csv(home / "visits.csv").iloc[:200].reset_index(drop=True)
    ours = explain_row(forest, frame, 7, background_rows=500, num_samples=600, seed=3)

    Z, names = _direct_encoding(frame)
    row = frame.iloc[[7]].reset_index(drop=True)

    def predict(M: np.ndarray) -> np.ndarray:
        raw = pd.DataFrame({c: M[:, j] for j, c in enumerate(NUMERIC)})
        for j, c in enumerate(CATEGORICAL, start=3):
            cells = np.asarray(names[j], dtype=object)[np.clip(np.rint(M[:, j]).astype(int), 0, len(names[j]) - 1)]
            raw[c] = [None if v == "(missing)" else v for v in cells]
        for c in ("visit", "notes"):
            raw[c] = [row[c].iloc[0]] * len(M)
        return forest.predict_proba(raw)

    direct = LimeTabularExplainer(
        Z, mode="classification", feature_names=NUMERIC + CATEGORICAL, categorical_features=[3, 4],
        categorical_names=names, class_names=forest.classes, discretize_continuous=True, random_state=3,
    ).explain_instance(Z[7], predict, labels=(1,), num_features=5, num_samples=600)  # fmt: skip
    assert ours.output == "P(yes)"
    assert [c for c, _ in ours.weights] == [c for c, _ in direct.as_list(label=1)]
    np.testing.assert_allclose(
        [w for _, w in ours.weights], [w for _, w in direct.as_list(label=1)], rtol=0, atol=1e-12
    )
    assert ours.intercept == pytest.approx(direct.intercept[1], abs=1e-12)
    assert ours.model_prediction == pytest.approx(float(forest.predict_proba(frame.iloc[[7]])[0, 1]), abs=1e-12)
    assert "visit, notes" in ours.note  # dates and text stay at the row's value, and the report says so

    # the row's free text, word by word, with lime's text explainer
    from lime.lime_text import LimeTextExplainer  # type: ignore[import-untyped]

    def predict_text(docs: list[str]) -> np.ndarray:
        rows = row.loc[[0] * len(docs)].reset_index(drop=True)
        rows["notes"] = [d if re.search(r"\w", d) else None for d in docs]
        return forest.predict_proba(rows)

    text = LimeTextExplainer(class_names=forest.classes, random_state=3).explain_instance(
        row["notes"].iloc[0], predict_text, labels=(1,), num_features=10, num_samples=600
    )
    assert ours.text["column"] == "notes"
    assert ours.text["weights"] == [(w, pytest.approx(v, abs=1e-12)) for w, v in text.as_list(label=1)]
    assert {w for w, _ in ours.text["weights"]} <= set(row["notes"].iloc[0].split())


def test_permutation_importance_equals_sklearn_on_the_pipeline(runs: tuple[Path, RunModel, RunModel]) -> None:
    from sklearn.inspection import permutation_importance
    from sklearn.pipeline import Pipeline

    from uaap.data.preprocess import label_text
    from uaap.explain.importance import gain, permutation

    home, forest, mlp = runs
    frame = pd.read_csv(home / "visits.csv").iloc[200:].reset_index(drop=True)
    baseline, mean, std = permutation(forest, frame, repeats=3, seed=5)
    X = frame[forest.preprocessor.input_columns]
    y = frame["label"].map(label_text).map({c: i for i, c in enumerate(forest.classes)}).to_numpy()
    pipe = Pipeline([("pre", forest.preprocessor), ("model", forest.model)])
    direct = permutation_importance(pipe, X, y, scoring="accuracy", n_repeats=3, random_state=5)
    assert list(mean) == list(X.columns) == ["age", "income", "score", "city", "plan", "visit", "notes"]
    np.testing.assert_allclose(list(mean.values()), direct.importances_mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(list(std.values()), direct.importances_std, rtol=0, atol=1e-12)
    assert baseline == pytest.approx(pipe.score(X, y), abs=1e-12)

    # gain: the forest's own importances, summed per raw column (by name here), as shares
    shares, note = gain(forest)
    names = list(forest.preprocessor.feature_names_out_)
    raw = forest.model.feature_importances_
    for column, share in shares.items():
        mine = [
            i for i, f in enumerate(names) if f == column or f.startswith((f"{column}=", f"{column}.", f"{column}#"))
        ]
        assert mine and share == pytest.approx(raw[mine].sum() / raw.sum(), abs=1e-12), column
    assert note == "" and sum(shares.values()) == pytest.approx(1.0)
    assert gain(mlp) == ({}, "gain importance is a tree model's; family 'mlp' has none")


def test_explain_methods_from_the_cli(
    runs: tuple[Path, RunModel, RunModel], capsys: pytest.CaptureFixture[str]
) -> None:
    home, forest, _ = runs
    data = str(home / "visits.csv")
    assert main(["explain", "forest", "--data", data, "--method", "lime", "--row", "450"]) != 0
    assert "--row 450 is outside the 400 rows explained (0..399)" in capsys.readouterr().err
    assert main(["explain", "forest", "--data", data, "--method", "lime", "--row", "350", "--max-rows", "100",
                 "--background-rows", "50"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "LIME, row 350: P(yes)" in out and "100 of 400 rows drawn at random (--max-rows), row 350 among them" in out
    assert "LIME's statistics from 50 of 100 rows drawn at random (--background-rows)" in out
    report: dict[str, Any] = json.loads((forest.run.path / "explain" / "lime.json").read_text())
    assert report["row"] == 350 and report["weights"] and (forest.run.path / "explain" / "lime-row-350.png").is_file()

    assert main(["explain", "forest", "--data", data, "--method", "importance", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "400 rows, accuracy" in out and "gain share" in out
    assert (forest.run.path / "explain" / "importance.png").is_file()

    unlabelled = home / "unlabelled.csv"
    pd.read_csv(data).drop(columns=["label"]).to_csv(unlabelled, index=False)
    with pytest.raises(DataError, match="--data has no column 'label'"):
        from uaap.explain.importance import explain_importance

        explain_importance("forest", str(unlabelled))

    assert main(["explain", "forest", "--data", data, "--max-rows", "100", "--row", "3"]) == 0
    out = capsys.readouterr().out
    for name in ("shap-force.png", "shap-dependence.png", "shap-waterfall.png"):
        assert f"explain/{name}" in out.replace("\n", "")


def test_a_text_only_model_falls_back_to_lime_text_and_says_so(module_home: Path) -> None:
    from lime.lime_text import LimeTextExplainer

    from uaap.centralized import train_central
    from uaap.explain.lime import explain_lime

    topics = str(Path(__file__).parents[1] / "fixtures" / "text" / "topics.csv")
    train_central(RunConfig(dataset="csv", data_path=topics, target="topic", text_columns="hashing", model="logreg",
                            experiment="tests-explain-lime", run_id="topics"), epochs=3)  # fmt: skip
    done = explain_lime("topics", topics, row=4, max_rows=50, seed=2)
    report = done.report
    assert report["weights"] == [] and report["local_prediction"] is None
    assert "no numeric or categorical column to perturb: lime's text explainer only" in report["note"]
    model = load_run_model("topics")
    row = pd.read_csv(topics).iloc[[4]].reset_index(drop=True)

    def predict(docs: list[str]) -> np.ndarray:
        rows = row.loc[[0] * len(docs)].reset_index(drop=True)
        rows["text"] = [d if re.search(r"\w", d) else None for d in docs]  # no word left: a missing text
        return model.predict_proba(rows)

    k = len(model.classes) - 1  # the last of three classes, as --target-class defaults
    direct = LimeTextExplainer(class_names=model.classes, random_state=2).explain_instance(
        row["text"].iloc[0], predict, labels=(k,), num_features=10, num_samples=1000
    )
    assert report["text"]["column"] == "text"
    assert [w for w, _ in report["text"]["weights"]] == [w for w, _ in direct.as_list(label=k)]
    np.testing.assert_allclose([v for _, v in report["text"]["weights"]], [v for _, v in direct.as_list(label=k)],
                               rtol=0, atol=1e-12)  # fmt: skip
    assert (model.run.path / "explain" / "lime-row-4.png").is_file()
