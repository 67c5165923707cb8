"""AutoML: Ray Tune search (Optuna TPE, random, grid) with ASHA over cross-validated model families.

See :mod:`uaap.automl.search` for the driver, :mod:`uaap.automl.families` for the spaces and
estimators, :mod:`uaap.automl.cv` for folds and scoring. Ray, Optuna, XGBoost and MLflow are imported
inside the functions that use them.
"""

from uaap.automl.cv import CV_METHODS, METRICS, make_folds
from uaap.automl.families import FAMILIES, TorchMLPClassifier, build_estimator
from uaap.automl.results import AutoMLResult
from uaap.automl.search import SCHEDULERS, SEARCHES, AutoMLSettings, TrialRecord, run_automl

__all__ = [
    "CV_METHODS",
    "FAMILIES",
    "METRICS",
    "SCHEDULERS",
    "SEARCHES",
    "AutoMLResult",
    "AutoMLSettings",
    "TorchMLPClassifier",
    "TrialRecord",
    "build_estimator",
    "make_folds",
    "run_automl",
]
