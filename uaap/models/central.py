"""The central-only families: LightGBM, CatBoost and kernel SVM (``uaap train``, AutoML, ONNX export).

Each is the library's own estimator with the run's settings, so a test (or a user) can fit the same thing
with the library alone and get the same predictions. None federates here: a kernel SVM's support vectors are
client rows, and LightGBM / CatBoost would need their own tree protocols (XGBoost's is the boosting family that
federates). Trees: ``boost-rounds`` trees (one per class and round for several classes) of depth
``xgb-max-depth`` with shrinkage ``xgb-eta``; LightGBM grows up to ``2**depth`` leaves, so depth is the bound as
in XGBoost. The kernel SVM classifies with Platt-scaled probabilities: ``CalibratedClassifierCV(SVC(),
ensemble=False)``, what scikit-learn 1.9 puts in place of ``SVC(probability=True)``.

lightgbm and catboost are optional (``pip install 'uaap[lightgbm,catboost]'``) and imported only here, inside
the builders. The estimators are the libraries' classes with :class:`uaap.models.evaluation.Evaluates` mixed in,
under their own names (``uaap.models.central.LGBMClassifier``, ...), so they keep the one estimator contract and
skops finds them when it loads a model: this module makes each class the first time it is asked for.
"""

from __future__ import annotations

from typing import Any

from uaap.config import RunConfig
from uaap.errors import ConfigError

FAMILIES = ("lightgbm", "catboost", "kernel_svm")
MAX_LEAVES = 131072  # LightGBM's own bound on num_leaves
# Our class name -> (library module, its class): made on first use by __getattr__ (PEP 562).
_LIBRARY = {
    "LGBMClassifier": ("lightgbm", "LGBMClassifier"),
    "LGBMRegressor": ("lightgbm", "LGBMRegressor"),
    "CatBoostClassifier": ("catboost", "CatBoostClassifier"),
    "CatBoostRegressor": ("catboost", "CatBoostRegressor"),
    "SVR": ("sklearn.svm", "SVR"),
}


def __getattr__(name: str) -> type:
    """``LGBMClassifier``, ``CatBoostRegressor``, ...: the library class with ``evaluate``, made on first use."""
    if name == "KernelSVC":
        return _kernel_svc()
    if name not in _LIBRARY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from uaap.models.evaluation import Evaluates

    module, base = _LIBRARY[name]
    library = _require(module) if module != "sklearn.svm" else __import__(module, fromlist=[base])
    doc = f"{module}'s {base}, with :meth:`uaap.models.evaluation.Evaluates.evaluate`."
    mixins = (Evaluates, _LabelVector) if name == "CatBoostClassifier" else (Evaluates,)
    cls = type(name, (*mixins, getattr(library, base)), {"__module__": __name__, "__doc__": doc})
    globals()[name] = cls
    return cls


class _LabelVector:
    """``predict`` as one label per row: CatBoost's classifier returns a column for several classes."""

    def predict(self, X: Any, *args: Any, **kwargs: Any) -> Any:
        """The predicted labels, one per row (CatBoost's own ``predict`` with its column flattened)."""
        out = super().predict(X, *args, **kwargs)  # type: ignore[misc]  # the library class after this mixin
        return out.ravel() if getattr(out, "ndim", 1) == 2 and out.shape[1] == 1 else out


def _kernel_svc() -> type:
    """A Platt-calibrated ``SVC`` whose parameters are the SVC's own (C, kernel, gamma)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    from uaap.models.evaluation import Evaluates

    class KernelSVC(Evaluates, CalibratedClassifierCV):  # type: ignore[misc]  # sklearn: untyped
        """``CalibratedClassifierCV(SVC(C, kernel, gamma), method="sigmoid", ensemble=False)`` with ``evaluate``:
        one SVC on every row, its scores Platt-scaled on 5-fold predictions (deterministic)."""

        def __init__(self, C: float = 1.0, kernel: str = "rbf", gamma: str | float = "scale") -> None:
            self.C = C
            self.kernel = kernel
            self.gamma = gamma
            self._wrap()  # the wrapper's settings are fixed, not parameters (scikit-learn's tags read them)

        def _wrap(self) -> None:
            self.estimator = SVC(C=float(self.C), kernel=self.kernel, gamma=self.gamma)
            self.method, self.cv, self.n_jobs, self.ensemble = "sigmoid", None, None, False

        def fit(self, X: Any, y: Any, **fit_params: Any) -> Any:
            """Fit the SVC (with the parameters as they are now) and its calibration."""
            self._wrap()
            return super().fit(X, y, **fit_params)

    KernelSVC.__module__ = __name__
    KernelSVC.__qualname__ = "KernelSVC"
    globals()["KernelSVC"] = KernelSVC
    return KernelSVC


def estimator(name: str, regression: bool, **params: Any) -> Any:
    """The unfitted estimator of family ``name`` with the library's own parameter names (the estimator contract,
    :func:`uaap.models.estimators.estimator`)."""
    if name == "lightgbm":
        return __getattr__("LGBMRegressor" if regression else "LGBMClassifier")(**params)
    if name == "catboost":
        return __getattr__("CatBoostRegressor" if regression else "CatBoostClassifier")(**params)
    if name == "kernel_svm":
        return __getattr__("SVR" if regression else "KernelSVC")(**params)
    raise ConfigError(f"model={name!r} is not a central-only family; those are: {', '.join(FAMILIES)}")


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
    return estimator(
        "lightgbm",
        regression,
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
    return estimator(
        "catboost",
        regression,
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
    return estimator("kernel_svm", regression, C=float(C), kernel=kernel, gamma=gamma)


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
