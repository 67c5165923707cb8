"""The central-only families: LightGBM, CatBoost and kernel SVM (``uaap train``, AutoML, ONNX export).

Each is the library's own estimator with the run's settings, so a test (or a user) can fit the same thing
with the library alone and get the same predictions. None federates here: a kernel SVM's support vectors are
client rows, and LightGBM / CatBoost would need their own tree protocols (XGBoost's is the boosting family that
federates). Trees: ``boost-rounds`` trees (one per class and round for several classes) of depth
``xgb-max-depth`` with shrinkage ``xgb-eta``; LightGBM grows up to ``2**depth`` leaves, so depth is the bound as
in XGBoost. The kernel SVM classifies with Platt-scaled probabilities: ``CalibratedClassifierCV(SVC(),
ensemble=False)``, what scikit-learn 1.9 puts in place of ``SVC(probability=True)``.

lightgbm and catboost are optional (``pip install 'uaap[lightgbm,catboost]'``) and imported only here, inside
the builders.
"""

from __future__ import annotations

from typing import Any

from uaap.config import RunConfig
from uaap.errors import ConfigError

FAMILIES = ("lightgbm", "catboost", "kernel_svm")
MAX_LEAVES = 131072  # LightGBM's own bound on num_leaves


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"model family {module!r} needs the {module} package: pip install 'uaap[{module}]' (or make install)"
        ) from exc


def lightgbm(regression: bool, *, n_estimators: int, max_depth: int, learning_rate: float, seed: int) -> Any:
    """LightGBM's ``LGBMClassifier`` / ``LGBMRegressor``: ``max_depth`` bounds each tree (``2**depth`` leaves)."""
    lgb = _require("lightgbm")
    kind = lgb.LGBMRegressor if regression else lgb.LGBMClassifier
    return kind(
        n_estimators=int(n_estimators),
        max_depth=int(max_depth),
        num_leaves=min(2 ** int(max_depth), MAX_LEAVES),
        learning_rate=float(learning_rate),
        random_state=seed,
        n_jobs=1,
        verbose=-1,
    )


def catboost(regression: bool, *, n_estimators: int, max_depth: int, learning_rate: float, seed: int) -> Any:
    """CatBoost's ``CatBoostClassifier`` / ``CatBoostRegressor`` (oblivious trees of ``max_depth``), silent and
    writing no ``catboost_info/`` folder."""
    if not 1 <= int(max_depth) <= 16:
        raise ConfigError(f"catboost depth={max_depth} is out of range: CatBoost grows trees of depth 1 to 16")
    cb = _require("catboost")
    kind = cb.CatBoostRegressor if regression else cb.CatBoostClassifier
    return kind(
        iterations=int(n_estimators),
        depth=int(max_depth),
        learning_rate=float(learning_rate),
        random_seed=seed,
        thread_count=1,
        verbose=False,
        allow_writing_files=False,
    )


def kernel_svm(regression: bool, *, C: float, kernel: str, gamma: str | float = "scale") -> Any:
    """scikit-learn's ``SVR``, or ``SVC`` with Platt scaling fitted on 5-fold predictions (deterministic)."""
    from sklearn.svm import SVC, SVR

    if regression:
        return SVR(C=float(C), kernel=kernel, gamma=gamma)
    from sklearn.calibration import CalibratedClassifierCV

    return CalibratedClassifierCV(SVC(C=float(C), kernel=kernel, gamma=gamma), method="sigmoid", ensemble=False)


def from_run(cfg: RunConfig, n_classes: int) -> Any:
    """The unfitted estimator of ``cfg.model`` with the run's settings (``n_classes`` 1: a regressor)."""
    regression = n_classes == 1
    if cfg.model in ("lightgbm", "catboost"):
        build = lightgbm if cfg.model == "lightgbm" else catboost
        return build(
            regression,
            n_estimators=cfg.boost_rounds,
            max_depth=cfg.xgb_max_depth,
            learning_rate=cfg.xgb_eta,
            seed=cfg.seed,
        )
    if cfg.model == "kernel_svm":
        return kernel_svm(regression, C=cfg.svm_c, kernel=cfg.svm_kernel)
    raise ConfigError(f"model={cfg.model!r} is not a central-only family; those are: {', '.join(FAMILIES)}")
