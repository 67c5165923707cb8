"""A finished run's model with its fitted preprocessor: raw rows in, predictions out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.errors import DataError, WorkspaceError

if TYPE_CHECKING:
    import pandas as pd

    from uaap.data.preprocess import Preprocessor
    from uaap.workspace import RunDir


@dataclass(frozen=True)
class RunModel:
    """A run's saved model (a scikit-learn-compatible estimator or a torch network) and its preprocessing plan."""

    run: RunDir
    model: Any
    meta: dict[str, Any]
    preprocessor: Preprocessor
    torch: bool

    @property
    def task(self) -> str:
        """``classification`` or ``regression``."""
        return str(self.preprocessor.task)

    @property
    def classes(self) -> list[str]:
        """The class labels (as text, the spelling :func:`uaap.data.preprocess.label_text` gives), in model order."""
        target = self.preprocessor.target_
        return list(target.classes) if target is not None else []

    @property
    def target(self) -> str:
        """The target column's name."""
        target = self.preprocessor.target_
        return target.name if target is not None else ""

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Class probabilities of raw rows (columns as :attr:`classes`)."""
        X = self.preprocessor.transform(frame)
        if self.task != "classification":
            raise DataError(f"run {self.run.run_id!r} is a {self.task} model: it gives values, not class probabilities")
        if self.torch:
            from uaap.training import predict_proba

            return np.asarray(predict_proba(self.model, X), dtype=np.float64)
        return np.asarray(self.model.predict_proba(X), dtype=np.float64)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predictions for raw rows: class labels as text (classification) or values in the target's units."""
        if self.task == "classification":
            labels: np.ndarray = np.asarray(self.classes, dtype=object)[self.predict_proba(frame).argmax(axis=1)]
            return labels
        X = self.preprocessor.transform(frame)
        if self.torch:
            from uaap.training import predict_values

            mean, std = float(self.meta.get("target_mean", 0.0)), float(self.meta.get("target_std", 1.0))
            return predict_values(self.model, X, mean, std)
        return np.asarray(self.model.predict(X), dtype=np.float64).reshape(-1)


def load_run_model(run_id: str, *, trust_pickle: bool = False) -> RunModel:
    """The model run ``run_id`` saved, with the preprocessing plan it was trained through (raw rows in)."""
    from uaap import workspace
    from uaap.data.preprocess import Preprocessor

    rd = workspace.existing_run(run_id)
    estimator_file = rd.path / workspace.ESTIMATOR_FILE
    legacy = rd.path / workspace.LEGACY_ESTIMATOR_FILE
    if estimator_file.is_file() or legacy.is_file():
        path: Path = estimator_file if estimator_file.is_file() else legacy
        model, meta = workspace.load_estimator(path, trust_pickle=trust_pickle)
        torch = False
    elif rd.model_file.is_file():
        model, meta = workspace.load_model(rd.model_file)
        torch = True
    else:
        raise WorkspaceError(
            f"run {run_id!r} has no saved model ({workspace.ESTIMATOR_FILE} or {rd.model_file.name}) in {rd.path}; "
            "audit a run that finished (`uaap runs` lists them)"
        )
    plan = meta.get("preprocessor")
    if not plan:
        raise DataError(
            f"run {run_id!r} was trained on the bundled data set {meta.get('dataset', '?')!r}, not on a table: "
            "fairness and drift read raw columns through the run's fitted preprocessor; train on your table "
            "(--dataset csv --data-path FILE --target COLUMN)"
        )
    pre = Preprocessor.from_dict(plan)
    if pre.task not in ("classification", "regression"):
        raise DataError(f"run {run_id!r} has task {pre.task or 'none'!r}; expected classification or regression")
    return RunModel(rd, model, dict(meta), pre, torch)
