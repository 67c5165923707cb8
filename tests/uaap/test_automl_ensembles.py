"""Voting and stacking over AutoML's best families (uaap.automl.ensembles): every score, single or ensemble, is of
the same held-out rows, checked against scikit-learn's ensembles and metrics called directly here; the comparator's
gain table reads the metrics back."""

from __future__ import annotations

from typing import Any

import pytest
from sklearn.ensemble import RandomForestClassifier, StackingClassifier, VotingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import StratifiedKFold

from uaap.automl.ensembles import best_per_family, ensemble_metrics, ensemble_scores, ensemble_table
from uaap.config import RunConfig
from uaap.data import load_split
from uaap.errors import UaapError

BOARD: list[dict[str, Any]] = [  # a leaderboard, best first, as uaap.automl.search.leaderboard writes it
    {"family": "random_forest", "params": {"n_estimators": 30, "max_depth": 4}, "status": "completed", "score": 0.96},
    {"family": "random_forest", "params": {"n_estimators": 10}, "status": "completed", "score": 0.95},
    {"family": "xgboost", "params": {}, "status": "error", "score": None},
    {"family": "logreg", "params": {"C": 0.3}, "status": "completed", "score": 0.94},
]


def test_ensembles_score_on_the_singles_held_out_rows() -> None:
    split = load_split(RunConfig(dataset="breast_cancer", seed=3))
    train, test = split.train, split.test
    members = best_per_family(BOARD)
    assert [(m["family"], m["params"]) for m in members] == [
        ("random_forest", {"n_estimators": 30, "max_depth": 4}),
        ("logreg", {"C": 0.3}),
    ]
    result = ensemble_scores(members, train, test, "accuracy", seed=3, folds=3)

    forest = RandomForestClassifier(n_estimators=30, max_depth=4, max_features=0.3, random_state=3, n_jobs=1)
    logreg = LogisticRegression(C=0.3, max_iter=2000, random_state=3)
    singles = {
        "random_forest": accuracy_score(test.y, forest.fit(train.X, train.y).predict(test.X)),
        "logreg": accuracy_score(test.y, logreg.fit(train.X, train.y).predict(test.X)),
    }
    estimators = [("random_forest", forest), ("logreg", logreg)]
    voting = VotingClassifier(estimators, voting="soft").fit(train.X, train.y)
    stacking = StackingClassifier(
        estimators, final_estimator=LogisticRegression(max_iter=2000),
        cv=StratifiedKFold(3, shuffle=True, random_state=3), stack_method="predict_proba",
    ).fit(train.X, train.y)  # fmt: skip
    assert result["test_rows"] == len(test.y) == 114  # the held-out split of every model here
    assert result["singles"] == pytest.approx(singles, abs=1e-12)
    assert result["voting"] == pytest.approx(accuracy_score(test.y, voting.predict(test.X)), abs=1e-12)
    assert result["stacking"] == pytest.approx(accuracy_score(test.y, stacking.predict(test.X)), abs=1e-12)
    best = max(singles.values())
    assert result["best_single"] == max(singles, key=lambda f: singles[f])
    assert result["gain"] == pytest.approx({"voting": result["voting"] - best, "stacking": result["stacking"] - best})
    metrics = ensemble_metrics(result)
    assert metrics["ensemble_best_single_test"] == pytest.approx(best)
    assert "(best single)" in str(ensemble_table(result).columns[0]._cells)

    with pytest.raises(UaapError, match="two families at least"):
        ensemble_scores(members[:1], train, test, "accuracy")


def test_the_comparator_shows_the_gain() -> None:
    from rich.console import Console

    from uaap.compare import RunRow, ensemble_gain_table

    ensembles = {"ensemble_best_single_test": 0.95, "ensemble_voting_test": 0.97, "ensemble_stacking_test": 0.96,
                 "ensemble_voting_gain": 0.02, "ensemble_stacking_gain": 0.01}  # fmt: skip
    row = RunRow("automl-1", "m", "automl", "automl", "breast_cancer", "random_forest", "none", 0.95, None, 0, None,
                 "completed", "seed 3", ensembles=ensembles)  # fmt: skip
    console = Console(width=200, record=True)
    console.print(ensemble_gain_table([row]))
    text = console.export_text()
    assert "automl-1" in text and "+0.0200" in text and "+0.0100" in text
    assert (
        ensemble_gain_table([RunRow("c", "m", "central", "c", "d", "mlp", "none", 0.9, None, 0, None, "x", "s")])
        is None
    )
