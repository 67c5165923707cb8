"""Voting and stacking over AutoML's best families (central), scored beside each of them on the held-out rows.

After a search, the best completed configuration of each family (the leaderboard's first row of that family, up to
``top`` families) is refitted on the whole training split, alone and in two ensembles of scikit-learn's:

* **voting**: ``VotingClassifier(voting="soft")`` averages the members' class probabilities (``VotingRegressor``
  their predictions);
* **stacking**: ``StackingClassifier`` fits a logistic regression on the members' out-of-fold probabilities
  (``StackingRegressor``: a ridge regression on their out-of-fold predictions), the folds of the search's own kind.

Every model, single or ensemble, is scored on the same held-out test rows with the search's metric, and the gain of
each ensemble is its score minus the best single family's (sign-flipped for a lower-is-better metric), so a
positive gain is an improvement. A family without class probabilities cannot vote softly and is left out of the
ensembles (said in ``left_out``).
"""

from __future__ import annotations

import warnings
from typing import Any

from uaap.automl.cv import score
from uaap.automl.families import aligned_proba, build_estimator
from uaap.errors import UaapError

LOWER_IS_BETTER = ("mse", "rmse", "mae", "log_loss", "loss")


def best_per_family(board: list[dict[str, Any]], top: int = 3) -> list[dict[str, Any]]:
    """The leaderboard's best completed row of each family (board order: best first), at most ``top`` families."""
    out: dict[str, dict[str, Any]] = {}
    for row in board:
        if row["status"] == "completed" and row["family"] not in out and len(out) < top:
            out[row["family"]] = row
    return list(out.values())


def ensemble_scores(
    members: list[dict[str, Any]], train: Any, test: Any, metric: str, *, seed: int = 0, folds: int = 5
) -> dict[str, Any]:
    """Fit each member and the two ensembles on ``train``; score all on ``test``'s rows (see the module)."""
    from sklearn.ensemble import StackingClassifier, StackingRegressor, VotingClassifier, VotingRegressor
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.model_selection import KFold, StratifiedKFold

    if len(members) < 2:
        raise UaapError(
            f"an ensemble needs the best configurations of two families at least; the search completed "
            f"{len(members)} family: search more families (--families) or give it more trials"
        )
    n_classes = train.n_classes
    regression = n_classes == 1
    singles: dict[str, float] = {}
    estimators: list[tuple[str, Any]] = []
    left_out: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a member may stop at its max_iter, as it did in the search
        for row in members:
            family, params = row["family"], row["params"]
            fitted = build_estimator(family, params, n_classes=n_classes, seed=seed).fit(train.X, train.y)
            singles[family] = score(metric, test.y, aligned_proba(fitted, test.X, n_classes))[metric]
            if regression or hasattr(fitted, "predict_proba"):
                estimators.append((family, build_estimator(family, params, n_classes=n_classes, seed=seed)))
            else:
                left_out.append(f"{family}: no class probabilities to vote with")
        if len(estimators) < 2:
            raise UaapError(f"fewer than two families can vote ({'; '.join(left_out)}); search other families")
        if regression:
            cv: Any = KFold(folds, shuffle=True, random_state=seed)
            voting: Any = VotingRegressor(estimators)
            stacking: Any = StackingRegressor(estimators, final_estimator=RidgeCV(), cv=cv)
        else:
            cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
            voting = VotingClassifier(estimators, voting="soft")
            stacking = StackingClassifier(
                estimators, final_estimator=LogisticRegression(max_iter=2000), cv=cv, stack_method="predict_proba"
            )
        scores = {}
        for name, ensemble in (("voting", voting), ("stacking", stacking)):
            ensemble.fit(train.X, train.y)
            scores[name] = score(metric, test.y, aligned_proba(ensemble, test.X, n_classes))[metric]
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    best = max(singles, key=lambda f: sign * singles[f])
    return {
        "metric": metric,
        "test_rows": len(test.y),
        "members": [f for f, _ in estimators],
        "singles": singles,
        "best_single": best,
        "voting": float(scores["voting"]),
        "stacking": float(scores["stacking"]),
        "gain": {k: float(sign * (scores[k] - singles[best])) for k in ("voting", "stacking")},
        "left_out": left_out,
    }


def ensemble_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The MLflow metrics of :func:`ensemble_scores` (what ``uaap compare`` reads back)."""
    out = {f"ensemble_{k}_test": float(result[k]) for k in ("voting", "stacking")}
    out |= {f"ensemble_{k}_gain": float(v) for k, v in result["gain"].items()}
    out["ensemble_best_single_test"] = float(result["singles"][result["best_single"]])
    return out


def ensemble_table(result: dict[str, Any]) -> Any:
    """A rich table: each member and each ensemble on the held-out rows, with the ensembles' gains."""
    from rich.table import Table

    metric = result["metric"]
    table = Table(title=f"ensembles of the best families, {metric} on the {result['test_rows']} held-out rows")
    for col in ("model", metric, "gain over the best single"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for family, value in sorted(result["singles"].items(), key=lambda kv: kv[0] != result["best_single"]):
        table.add_row(family + (" (best single)" if family == result["best_single"] else ""), f"{value:.4f}", "")
    for name in ("voting", "stacking"):
        table.add_row(f"{name} ({', '.join(result['members'])})", f"{result[name]:.4f}", f"{result['gain'][name]:+.4f}")
    if result["left_out"]:
        table.caption = "left out of the ensembles: " + "; ".join(result["left_out"])
    return table
