"""Model families AutoML searches over: their hyperparameter spaces, grids and estimators.

Every family builds a scikit-learn-compatible classifier (``fit`` / ``predict_proba``), or for a regression
target (``n_classes`` 1) a regressor (``fit`` / ``predict``), so cross-validation, refitting and saving are one
code path. Classification searches logreg, random_forest, xgboost, lightgbm, catboost, kernel_svm and mlp;
regression ridge (linear least squares with an L2 penalty) and the same others. The kernel SVM's fit grows with
the square of the rows: leave it out (--families) of a search over many thousands of rows. The torch MLP is the
registry model (:mod:`uaap.models` ``'mlp'``) trained by :func:`uaap.training.local_train`, wrapped as an estimator.

Search-space names are ``<family>__<param>`` so one conditional (define-by-run) space can hold all
families without name clashes; :func:`family_params` strips the prefix again.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from uaap.automl.torch_mlp import TorchMLPClassifier as TorchMLPClassifier  # re-exported: its home until now
from uaap.automl.torch_mlp import TorchMLPRegressor as TorchMLPRegressor
from uaap.config import FORECASTERS
from uaap.errors import ConfigError

SEP = "__"


@dataclass(frozen=True)
class Param:
    """One hyperparameter: a float/int range (optionally log-scaled) or a categorical choice."""

    name: str
    kind: str  # "float", "int" or "cat"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()
    step: int = 1


@dataclass(frozen=True)
class Family:
    """A model family: its searchable parameters, a small grid and its defaults."""

    name: str
    params: tuple[Param, ...]
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)


# The registry's torch networks train with the one loop's settings.
TORCH_PARAMS = (
    Param("learning_rate", "float", 1e-3, 0.3, log=True),
    Param("epochs", "int", 10, 80),
    Param("batch_size", "cat", choices=(16, 32, 64, 128)),
    Param("optimizer", "cat", choices=("sgd", "adam")),
)

FAMILIES: dict[str, Family] = {
    "logreg": Family(
        "logreg",
        (Param("C", "float", 1e-3, 1e2, log=True),),
        grid={"C": (0.01, 0.1, 0.3, 1.0, 3.0, 10.0)},
        defaults={"C": 1.0},
    ),
    "ridge": Family(
        "ridge",
        (Param("alpha", "float", 1e-3, 1e3, log=True),),
        grid={"alpha": (0.01, 0.1, 1.0, 10.0, 100.0)},
        defaults={"alpha": 1.0},
    ),
    "random_forest": Family(
        "random_forest",
        (
            Param("n_estimators", "int", 50, 400, step=50),
            Param("max_depth", "int", 3, 32, log=True),
            Param("max_features", "float", 0.05, 1.0),
            Param("min_samples_leaf", "int", 1, 8),
        ),
        grid={"n_estimators": (100, 300), "max_depth": (8, 32), "max_features": (0.1, 0.3)},
        defaults={"n_estimators": 100, "max_depth": 32, "max_features": 0.3, "min_samples_leaf": 1},
    ),
    "xgboost": Family(
        "xgboost",
        (
            Param("n_estimators", "int", 50, 400, step=50),
            Param("max_depth", "int", 2, 8),
            Param("learning_rate", "float", 0.01, 0.5, log=True),
            Param("subsample", "float", 0.5, 1.0),
            Param("colsample_bytree", "float", 0.3, 1.0),
            Param("reg_lambda", "float", 1e-3, 10.0, log=True),
        ),
        grid={"n_estimators": (100, 300), "max_depth": (3, 6), "learning_rate": (0.05, 0.2)},
        defaults={"n_estimators": 100, "max_depth": 6, "learning_rate": 0.3, "subsample": 1.0},
    ),
    "lightgbm": Family(
        "lightgbm",
        (
            Param("n_estimators", "int", 50, 400, step=50),
            Param("max_depth", "int", 2, 8),
            Param("learning_rate", "float", 0.01, 0.5, log=True),
            Param("min_child_samples", "int", 5, 50),
            Param("reg_lambda", "float", 1e-3, 10.0, log=True),
        ),
        grid={"n_estimators": (100, 300), "max_depth": (3, 6), "learning_rate": (0.05, 0.2)},
        defaults={"n_estimators": 100, "max_depth": 6, "learning_rate": 0.1, "min_child_samples": 20},
    ),
    "catboost": Family(
        "catboost",
        (
            Param("n_estimators", "int", 50, 400, step=50),
            Param("depth", "int", 2, 8),
            Param("learning_rate", "float", 0.01, 0.5, log=True),
            Param("l2_leaf_reg", "float", 1.0, 10.0, log=True),
        ),
        grid={"n_estimators": (100, 300), "depth": (4, 6), "learning_rate": (0.05, 0.2)},
        defaults={"n_estimators": 100, "depth": 6, "learning_rate": 0.1, "l2_leaf_reg": 3.0},
    ),
    "kernel_svm": Family(
        "kernel_svm",
        (
            Param("C", "float", 1e-2, 1e3, log=True),
            Param("gamma", "float", 1e-4, 1.0, log=True),
        ),
        grid={"C": (0.3, 1.0, 3.0, 10.0, 30.0)},
        defaults={"C": 1.0},  # gamma: scikit-learn's "scale" unless searched
    ),
    "mlp": Family(
        "mlp",
        TORCH_PARAMS,
        grid={"learning_rate": (0.01, 0.05), "epochs": (20, 50), "optimizer": ("sgd", "adam")},
        defaults={"learning_rate": 0.05, "epochs": 30, "batch_size": 32, "optimizer": "sgd"},
    ),
    # The registry's linear SVM (the hinge loss through the one training loop), as the federation trains it.
    "svm": Family(
        "svm",
        TORCH_PARAMS,
        grid={"learning_rate": (0.01, 0.05), "epochs": (20, 50)},
        defaults={"learning_rate": 0.05, "epochs": 30, "batch_size": 32, "optimizer": "sgd"},
    ),
}


CLASSIFICATION_FAMILIES = ("logreg", "random_forest", "xgboost", "lightgbm", "catboost", "kernel_svm", "mlp")
REGRESSION_FAMILIES = ("ridge", "random_forest", "xgboost", "lightgbm", "catboost", "kernel_svm", "mlp")


# Searched when named (--families), not by default: the linear SVM draws the same kind of boundary as logreg.
ON_REQUEST = {False: ("svm",), True: ()}


def task_families(families: tuple[str, ...], regression: bool) -> tuple[str, ...]:
    """``families`` (the task's defaults when empty), refusing one that does not fit the task."""
    defaults = REGRESSION_FAMILIES if regression else CLASSIFICATION_FAMILIES
    if not families:
        return defaults
    allowed = defaults + ON_REQUEST[regression]
    wrong = [f for f in families if f not in allowed]
    if wrong:
        task = "regression" if regression else "classification"
        raise ConfigError(f"model family {wrong[0]!r} does not fit a {task} target; choose from: {', '.join(allowed)}")
    return families


def check_families(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Validate family names (non-empty, known, no duplicates)."""
    names = tuple(n.strip() for n in names if n.strip())
    if not names:
        raise ConfigError(f"no model family given; choose from: {', '.join(FAMILIES)}")
    unknown = [n for n in names if n not in FAMILIES and n not in FORECASTERS]  # forecasters: --task forecast
    if unknown:
        raise ConfigError(f"model family {unknown[0]!r} is not supported; choose from: {', '.join(FAMILIES)}")
    return tuple(dict.fromkeys(names))


class ConditionalSpace:
    """A conditional Optuna space (``space(trial)``): pick a family, then only its parameters.

    A class, not a closure: Tune pickles the searcher (and this space) with its experiment state.
    """

    def __init__(self, families: tuple[str, ...]) -> None:
        self.families = tuple(families)

    def __call__(self, trial: Any) -> None:
        """Suggest one candidate on ``trial`` (an Optuna trial)."""
        family = trial.suggest_categorical("family", list(self.families))
        for p in FAMILIES[family].params:
            key = f"{family}{SEP}{p.name}"
            if p.kind == "float":
                trial.suggest_float(key, p.low, p.high, log=p.log)
            elif p.kind == "int":
                step = 1 if p.log else p.step
                trial.suggest_int(key, int(p.low), int(p.high), step=step, log=p.log)
            else:
                trial.suggest_categorical(key, list(p.choices))


def define_by_run(families: tuple[str, ...]) -> ConditionalSpace:
    """The conditional space over ``families`` (see :class:`ConditionalSpace`)."""
    return ConditionalSpace(families)


def grid_points(families: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every point of every family's small grid (other parameters keep their defaults)."""
    points = []
    for name in families:
        fam = FAMILIES[name]
        keys = list(fam.grid)
        for values in itertools.product(*(fam.grid[k] for k in keys)):
            point: dict[str, Any] = {"family": name}
            point.update({f"{name}{SEP}{k}": v for k, v in fam.defaults.items()})
            point.update({f"{name}{SEP}{k}": v for k, v in zip(keys, values, strict=True)})
            points.append(point)
    return points


def family_params(config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Split a trial config into its family and that family's (unprefixed) parameters."""
    family = config.get("family")
    if family not in FAMILIES:
        raise ConfigError(f"trial config has family={family!r}; expected one of: {', '.join(FAMILIES)}")
    prefix = f"{family}{SEP}"
    params = {k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)}
    known = {p.name for p in FAMILIES[family].params}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"parameter {prefix}{unknown[0]} is not a {family} parameter; known: "
            + ", ".join(f"{prefix}{k}" for k in sorted(known))
        )
    return family, params


def family_defaults(families: tuple[str, ...], n_features: int, regression: bool = False) -> list[dict[str, Any]]:
    """The default configuration of each family: every search tries them, and the winner is reported against
    them on the held-out split (a tuned winner that loses to a default there has found nothing real).

    Logistic regression and random forests take scikit-learn's own defaults (``max_features`` of sqrt(n) / n
    is what ``'sqrt'`` means), XGBoost its library defaults, the MLP the settings ``uaap train`` uses. For
    regression: ``Ridge()`` and the regression forest's default of every feature per split. LightGBM and
    CatBoost: their learning rate 0.1 and leaves, 100 trees (CatBoost's own 1000 cost ten times as much); the
    kernel SVM: C 1 and scikit-learn's gamma "scale" (on standardised rows).
    """
    extra = ({"family": "logreg", "logreg__C": 0.1}, {"family": "ridge", "ridge__alpha": 10.0})
    return [c for c in warm_start_points(families, n_features, regression) if c not in extra]


def warm_start_points(families: tuple[str, ...], n_features: int, regression: bool = False) -> list[dict[str, Any]]:
    """Known-good starting candidates, cheapest first (as FLAML and auto-sklearn warm-start their searches).

    They are each family's defaults (:func:`family_defaults`) plus a more regularised logistic regression, so
    the search starts at least where the defaults are and spends its budget improving on them; the sampler then
    explores from there.
    """
    sqrt_share = max(0.05, min(1.0, float(np.sqrt(n_features)) / n_features))
    candidates: list[dict[str, Any]] = [
        {"family": "logreg", "logreg__C": 1.0},
        {"family": "logreg", "logreg__C": 0.1},
        {"family": "ridge", "ridge__alpha": 1.0},
        {"family": "ridge", "ridge__alpha": 10.0},
        {
            "family": "mlp",
            "mlp__learning_rate": 0.01,
            "mlp__epochs": 30,
            "mlp__batch_size": 32,
            "mlp__optimizer": "adam",
        },
        {
            "family": "xgboost",
            "xgboost__n_estimators": 100,
            "xgboost__max_depth": 6,
            "xgboost__learning_rate": 0.3,
            "xgboost__subsample": 1.0,
            "xgboost__colsample_bytree": 1.0,
            "xgboost__reg_lambda": 1.0,
        },
        {
            "family": "lightgbm",
            "lightgbm__n_estimators": 100,
            "lightgbm__max_depth": 5,  # 32 leaves: LightGBM's default is 31
            "lightgbm__learning_rate": 0.1,
            "lightgbm__min_child_samples": 20,
        },
        {
            "family": "catboost",
            "catboost__n_estimators": 100,
            "catboost__depth": 6,
            "catboost__learning_rate": 0.1,
            "catboost__l2_leaf_reg": 3.0,
        },
        {  # gamma "scale" is 1 / (n_features x the features' variance), 1 / n_features on standardised rows
            "family": "kernel_svm",
            "kernel_svm__C": 1.0,
            "kernel_svm__gamma": max(1e-4, min(1.0, 1.0 / n_features)),
        },
        {
            "family": "random_forest",
            "random_forest__n_estimators": 100,
            "random_forest__max_depth": 32,
            "random_forest__max_features": 1.0 if regression else sqrt_share,
            "random_forest__min_samples_leaf": 1,
        },
    ]
    return [c for c in candidates if c["family"] in families]


def check_point(point: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the keys of a user-supplied configuration (values are checked by the estimator)."""
    family, params = family_params(point)
    return {"family": family, **{f"{family}{SEP}{k}": v for k, v in params.items()}}


def build_estimator(family: str, params: Mapping[str, Any], *, n_classes: int, seed: int = 0) -> Any:
    """A fresh, unfitted classifier of ``family`` with ``params`` (missing ones take family defaults); a regressor
    when ``n_classes`` is 1 (a regression target)."""
    values = {**FAMILIES[family].defaults, **params} if family in FAMILIES else dict(params)
    if n_classes == 1:
        return _regressor(family, values, seed)
    if family == "ridge":
        raise ConfigError("model family 'ridge' fits regression targets; for classes use logreg")
    if family == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=float(values["C"]), max_iter=2000, random_state=seed)
    if family == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(
            n_estimators=int(values["n_estimators"]),
            max_depth=int(values["max_depth"]),
            max_features=float(values["max_features"]),
            min_samples_leaf=int(values["min_samples_leaf"]),
            n_jobs=1,
            random_state=seed,
        )
    if family == "xgboost":
        from xgboost import XGBClassifier

        return XGBClassifier(
            **{k: values[k] for k in values},
            tree_method="hist",
            n_jobs=1,
            random_state=seed,
            verbosity=0,
        )
    if family in ("lightgbm", "catboost", "kernel_svm"):
        return _central_family(family, values, seed, regression=False)
    if family in ("mlp", "svm"):  # the registry's network of that name, trained by uaap.training.local_train
        return TorchMLPClassifier(
            epochs=int(values["epochs"]),
            batch_size=int(values["batch_size"]),
            learning_rate=float(values["learning_rate"]),
            optimizer=str(values["optimizer"]),
            n_classes=n_classes,
            model=family,
            seed=seed,
        )
    raise ConfigError(f"model family {family!r} is not supported; choose from: {', '.join(FAMILIES)}")


def _regressor(family: str, values: dict[str, Any], seed: int) -> Any:
    if family == "ridge":
        from sklearn.linear_model import Ridge

        return Ridge(alpha=float(values["alpha"]), random_state=seed)
    if family == "random_forest":
        from sklearn.ensemble import RandomForestRegressor

        return RandomForestRegressor(
            n_estimators=int(values["n_estimators"]),
            max_depth=int(values["max_depth"]),
            max_features=float(values["max_features"]),
            min_samples_leaf=int(values["min_samples_leaf"]),
            n_jobs=1,
            random_state=seed,
        )
    if family == "xgboost":
        from xgboost import XGBRegressor

        return XGBRegressor(**values, tree_method="hist", n_jobs=1, random_state=seed, verbosity=0)
    if family in ("lightgbm", "catboost", "kernel_svm"):
        return _central_family(family, values, seed, regression=True)
    if family == "mlp":
        return TorchMLPRegressor(
            epochs=int(values["epochs"]),
            batch_size=int(values["batch_size"]),
            learning_rate=float(values["learning_rate"]),
            optimizer=str(values["optimizer"]),
            seed=seed,
        )
    raise ConfigError(
        f"model family {family!r} does not fit a regression target; choose from: {', '.join(REGRESSION_FAMILIES)}"
    )


def _central_family(family: str, values: dict[str, Any], seed: int, regression: bool) -> Any:
    """LightGBM, CatBoost or a kernel SVM as :mod:`uaap.models.central` builds them, with the search's values on
    top (one thread each: Tune runs trials side by side)."""
    from uaap.models import central

    if family == "kernel_svm":
        gamma = values.get("gamma", "scale")
        return central.kernel_svm(regression, C=float(values["C"]), kernel="rbf", gamma=gamma)
    depth = int(values.get("max_depth", values.get("depth", 6)))
    build = central.lightgbm if family == "lightgbm" else central.catboost
    est = build(
        regression,
        n_estimators=int(values["n_estimators"]),
        max_depth=depth,
        learning_rate=float(values["learning_rate"]),
        seed=seed,
    )
    rest = {k: v for k, v in values.items() if k not in ("n_estimators", "max_depth", "depth", "learning_rate")}
    return est.set_params(**rest)


def baseline_estimators(seed: int = 0, regression: bool = False) -> dict[str, Any]:
    """scikit-learn's defaults the search has to beat: ``LogisticRegression()`` and ``RandomForestClassifier()``
    (regression: ``LinearRegression()`` and ``RandomForestRegressor()``)."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression

    if regression:
        return {
            "default LinearRegression": LinearRegression(),
            "default RandomForest": RandomForestRegressor(random_state=seed),
        }
    return {
        "default LogisticRegression": LogisticRegression(),
        "default RandomForest": RandomForestClassifier(random_state=seed),
    }


def aligned_proba(estimator: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` with one column per class 0..n_classes-1 (a fold may lack a class); for a regression
    target (``n_classes`` 1) the predictions, as one column."""
    if n_classes == 1:
        return np.asarray(estimator.predict(X), dtype=np.float64).reshape(len(X), 1)
    proba = np.asarray(estimator.predict_proba(X), dtype=np.float64)
    classes = np.asarray(getattr(estimator, "classes_", np.arange(proba.shape[1])), dtype=np.int64)
    if proba.shape[1] == n_classes and np.array_equal(classes, np.arange(n_classes)):
        return proba
    out = np.zeros((len(X), n_classes), dtype=np.float64)
    out[:, classes] = proba
    return out
