"""What gets exported: a registry torch model or a fitted estimator, with held-out rows to verify on.

``MODEL`` is a run id (``runs/<id>/model.npz`` or ``model.skops`` in the workspace) or a file path.
Held-out rows come from the model's own dataset test split (its run config when there is one, else
``RunConfig(dataset=meta['dataset'])``) or from ``--data FILE --target COL`` (rows taken as the model's
input, unscaled). Verification runs on a seeded sample of them stratified by class, or spread over the
target's range for regression (:func:`uaap.sampling.representative_rows`), never on the first rows: tables are
often sorted by label.

A regression model (``task: regression`` in its metadata) was trained on standardised targets; its source here
is the same network with the target's scaling folded into its last linear layer (``w * std``, ``b * std +
mean``), so every export outputs predictions in the target's own units and needs no post-processing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ExportError
from uaap.config import RunConfig
from uaap.data import Dataset
from uaap.errors import WorkspaceError
from uaap.sampling import describe, representative_rows

HELDOUT_ROWS = 200
PARITY_SEED = 0
TORCH_FILE = "model.npz"
ESTIMATOR_FILE = "model.skops"
LEGACY_ESTIMATOR_FILE = "model.joblib"  # pickle: only with --trust-pickle


@dataclass
class Source:
    """A model to export plus everything the exporters and verifiers need to know about it."""

    kind: str  # "torch" or "estimator"
    family: str  # logreg | mlp | cnn | logistic_regression | decision_tree | random_forest | extra_trees | xgboost |
    # lightgbm | catboost | kernel_svm
    model: Any
    meta: dict[str, Any]
    n_features: int
    n_classes: int
    heldout: Dataset  # the parity sample: what every export is run on
    train: Dataset | None = None
    path: Path | None = None
    out_dir: Path | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    compression: dict[str, Any] = field(default_factory=dict)
    heldout_all: Dataset | None = None  # the whole held-out split (or --data file) the sample was drawn from
    sample: dict[str, Any] = field(default_factory=dict)  # how the sample was drawn and what it holds
    task: str = "classification"  # or "regression": one output, in the target's units

    @property
    def regression(self) -> bool:
        """Whether the model predicts a real-valued target (one output, no softmax)."""
        return self.task == "regression"

    @property
    def output_name(self) -> str:
        """The exported graphs' output: ``probabilities``, ``prediction`` for regression, or ``anomaly_score`` (each
        row's reconstruction error; flag it above ``meta["threshold"]``) for anomaly detection."""
        if self.task == "anomaly":
            return "anomaly_score"
        return "prediction" if self.regression else "probabilities"

    @property
    def target_scale(self) -> float:
        """What regression parity is measured against: the target's standard deviation (the model's training
        scaling, else the train split's or the held-out rows' spread; 1.0 for classification)."""
        if not self.regression:
            return 1.0
        if self.meta.get("target_std"):
            return float(self.meta["target_std"])
        rows = self.train if self.train is not None and len(self.train.y) > 1 else self.full_heldout
        std = float(np.std(np.asarray(rows.y, dtype=np.float64))) if len(rows.y) > 1 else 0.0
        return std if std > 0 else 1.0

    @property
    def full_heldout(self) -> Dataset:
        """The whole held-out split (the parity sample when the source was built without it)."""
        return self.heldout_all if self.heldout_all is not None else self.heldout

    def accuracy(self, data: Dataset, model: Any = None) -> float:
        """Accuracy of the source model (or ``model``, same kind) on ``data``; R2 for a regression model."""
        source = self if model is None else replace(self, model=model)
        if not len(data.y):
            return 0.0
        if self.task == "anomaly":  # the flags above the saved threshold against the anomaly labels
            flags = source.predict_proba(data.X)[:, 0] > float(self.meta["threshold"])
            return float(np.mean(flags == (data.y == 1)))
        if self.regression:
            from uaap.metrics import regression_metrics

            return regression_metrics(data.y, source.predict_proba(data.X)[:, 0])["r2"]
        return float(np.mean(source.predict_proba(data.X).argmax(axis=1) == data.y))

    def metrics(self, data: Dataset) -> dict[str, float]:
        """The source model's test metrics on ``data`` (regression: MSE, RMSE, MAE, R2 in the target's units)."""
        from uaap.metrics import classification_counts, metrics_from_counts, regression_counts

        out = self.predict_proba(data.X)
        if self.regression:
            return metrics_from_counts(regression_counts(data.y, out[:, 0]))
        return metrics_from_counts(classification_counts(data.y, out))

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Input column names, in order."""
        return self.heldout.feature_names

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) of image inputs (the exported models still take flat rows)."""
        shape = self.meta.get("image_shape")
        if not shape:
            return None
        channels, height, width = (int(d) for d in shape)
        return channels, height, width

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Reference class probabilities (float64) from the source framework; for regression the predictions
        in the target's units, as one column."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if self.task == "anomaly":  # an autoencoder's anomaly score: the reconstruction error, as one column
            from uaap.training import reconstruction_errors

            return reconstruction_errors(self.model, X)[:, None]
        if self.regression:
            if self.kind == "torch":
                from uaap.training import predict_values

                return predict_values(self.model, X, 0.0, 1.0)[:, None]  # the scaling is folded into the model
            return np.asarray(self.model.predict(X), dtype=np.float64).reshape(-1, 1)
        if self.kind == "torch":
            from uaap.training import predict_proba

            return predict_proba(self.model, X).astype(np.float64)
        return np.asarray(self.model.predict_proba(X), dtype=np.float64)

    def with_model(self, model: Any, family: str, **compression: Any) -> Source:
        """A copy that exports ``model`` (a compressed version of this one) instead."""
        return replace(self, model=model, family=family, compression={**self.compression, **compression})


def estimator_family(estimator: Any) -> str:
    """Our name for a fitted estimator's family (what the exporters dispatch on)."""
    name = type(estimator).__name__
    families = {
        "LogisticRegression": "logistic_regression",
        "LinearRegression": "linear_regression",
        "Ridge": "linear_regression",
        "DecisionTreeRegressor": "decision_tree",
        "RandomForestRegressor": "random_forest",
        "ExtraTreesRegressor": "extra_trees",
        "XGBRegressor": "xgboost",
        "DecisionTreeClassifier": "decision_tree",
        "RandomForestClassifier": "random_forest",
        "FederatedForestClassifier": "federated_forest",
        "ExtraTreesClassifier": "extra_trees",
        "XGBClassifier": "xgboost",
        "LGBMClassifier": "lightgbm",
        "LGBMRegressor": "lightgbm",
        "CatBoostClassifier": "catboost",
        "CatBoostRegressor": "catboost",
        "SVC": "kernel_svm",
        "KernelSVC": "kernel_svm",  # uaap.models.central: a Platt-calibrated SVC
        "SVR": "kernel_svm",
    }
    if name == "CalibratedClassifierCV":  # the kernel SVM classifier: an SVC with Platt scaling
        name = type(getattr(estimator, "estimator", None)).__name__
        return "kernel_svm" if name == "SVC" else f"calibrated_{families.get(name, name)}"
    return families.get(name, name)


def resolve(spec: str | Path) -> Path:
    """The model file behind a run id or a path (a run folder is looked into)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        for name in (TORCH_FILE, ESTIMATOR_FILE, LEGACY_ESTIMATOR_FILE):
            if (path / name).is_file():
                return path
        raise WorkspaceError(f"folder {str(path)!r} holds neither {TORCH_FILE} nor {ESTIMATOR_FILE}")
    if path.is_file():
        return path
    from uaap import workspace

    if "/" in str(spec) or str(spec).endswith((".npz", ".skops", ".joblib")):
        raise WorkspaceError(f"model file {str(spec)!r} does not exist; pass a run id or an existing model file")
    rd = workspace.run_dir(str(spec))
    for name in (TORCH_FILE, ESTIMATOR_FILE, LEGACY_ESTIMATOR_FILE):
        if (rd.path / name).is_file():
            return rd.path / name
    runs = workspace.list_runs()
    listing = ", ".join(runs[-5:]) if runs else "none yet"
    raise WorkspaceError(
        f"run {str(spec)!r} has no {TORCH_FILE} or {ESTIMATOR_FILE} in {rd.path} (encrypted runs keep no plaintext "
        f"model: decrypt it first); recent runs: {listing}"
    )


def load_source(
    spec: str | Path,
    *,
    data: str | Path | None = None,
    target: str | None = None,
    rows: int = HELDOUT_ROWS,
    seed: int = PARITY_SEED,
    trust_pickle: bool = False,
) -> Source:
    """Load the model behind ``spec`` with a ``rows``-row parity sample of its held-out split (and the train split).

    The sample is drawn with ``seed``, stratified by class, and is the whole split when that is smaller. A
    pickled estimator (``.joblib``) is loaded only with ``trust_pickle`` (:func:`uaap.workspace.load_estimator`).
    """
    from uaap import workspace

    path = resolve(spec)
    if path.is_dir():
        path = path / next(n for n in (TORCH_FILE, ESTIMATOR_FILE, LEGACY_ESTIMATOR_FILE) if (path / n).is_file())
    run_folder = path.parent if (path.parent / "config.json").is_file() else None
    if path.suffix == ".npz":
        model, meta = workspace.load_model(path)
        kind, family = "torch", str(meta["model"])
        n_features, n_classes = int(meta["n_features"]), int(meta["n_classes"])
    elif path.suffix in (".skops", ".joblib"):
        model, meta = workspace.load_estimator(path, trust_pickle=trust_pickle)
        kind, family = "estimator", estimator_family(model)
        n_features = int(meta.get("n_features") or getattr(model, "n_features_in_", 0))
        classes = getattr(model, "classes_", None)
        n_classes = int(meta.get("n_classes") or (len(classes) if classes is not None else 0))
    else:
        raise WorkspaceError(f"{path.name!r} is neither a UAAP model (.npz) nor an estimator (.skops)")

    task = str(meta.get("task") or ("regression" if kind == "estimator" and _is_regressor(model) else "classification"))
    if task == "regression" and kind == "torch":
        model = fold_target_scaling(model, float(meta.get("target_mean", 0.0)), float(meta.get("target_std", 1.0)))
    full, train, preprocessing = _heldout(meta, run_folder, data, target, task)
    if full.n_features != n_features:
        raise ExportError(
            f"held-out rows have {full.n_features} features but the model takes {n_features}; "
            "pass --data/--target with the columns the model was trained on"
        )
    by = "classification" if task == "anomaly" else task  # anomaly labels: stratified like two classes
    idx = representative_rows(full.y, rows, seed, task=by)
    how = "spread over the target's range" if task == "regression" else "stratified by class"
    sample = {
        "seed": seed,
        "method": "all held-out rows" if len(idx) == len(full.y) else f"seeded random sample, {how}",
        **describe(full.y, idx, task=by, n_classes=n_classes),
    }
    out_dir = (run_folder / "exports") if run_folder is not None else path.parent / f"{path.stem}-exports"
    return Source(
        kind,
        family,
        model,
        meta,
        n_features,
        n_classes,
        full.subset(idx),
        train,
        path,
        out_dir,
        preprocessing,
        heldout_all=full,
        sample=sample,
        task=task,
    )


def _is_regressor(model: Any) -> bool:
    from sklearn.base import is_regressor

    return bool(is_regressor(model))


def fold_target_scaling(model: Any, mean: float, std: float) -> Any:
    """A copy of a torch ``nn.Sequential`` whose last linear layer outputs ``out * std + mean`` (target units)."""
    import copy

    import torch
    from torch import nn

    folded = copy.deepcopy(model)
    last = [m for m in folded.modules() if isinstance(m, nn.Linear)]
    if not last or last[-1].out_features != 1:
        raise ExportError("a regression model must end in a linear layer with one output to fold its target scaling")
    with torch.no_grad():  # in float64, then rounded once to the layer's float32
        weight, bias = last[-1].weight.double(), last[-1].bias.double()
        last[-1].weight.copy_((weight * std).to(last[-1].weight.dtype))
        last[-1].bias.copy_((bias * std + mean).to(last[-1].bias.dtype))
    return folded.eval()


def _heldout(
    meta: dict[str, Any],
    run_folder: Path | None,
    data: str | Path | None,
    target: str | None,
    task: str = "classification",
) -> tuple[Dataset, Dataset | None, dict[str, Any]]:
    """The whole held-out table (the --data file or the run's test split), the train split and the scaling."""
    from uaap.data import load_split, load_table

    plan = json.dumps(meta["preprocessor"]) if meta.get("preprocessor") else ""  # a raw table's fitted pipeline
    if data is not None:
        if not target:
            raise ExportError("--data needs --target COLUMN (the label column of the held-out file)")
        kept = _preprocessing(meta["preprocessor"]) if plan else {"kind": "none"}
        return load_table(data, target, task=task, preprocessor=plan), None, kept
    cfg = _run_config(meta, run_folder)
    split = load_split(cfg, plan)
    return split.test, split.train, (_preprocessing(meta["preprocessor"]) if plan else _scaling(cfg))


def _preprocessing(plan: dict[str, Any]) -> dict[str, Any]:
    """What a device must do to raw rows before the exported model: the run's fitted preprocessing plan."""
    from uaap.data.preprocess import Preprocessor

    pre = Preprocessor.from_dict(plan)
    return {
        "kind": "uaap-preprocessor",
        "input_columns": pre.input_columns,
        "features": list(pre.feature_names_out_),
        "plan": plan,
        "note": "x_model = Preprocessor.from_dict(plan).transform(raw_rows) (python: uaap.data.preprocess), "
        "features in this order; the plan is the JSON a run keeps in preprocessor.json",
    }


def _run_config(meta: dict[str, Any], run_folder: Path | None) -> RunConfig:
    if run_folder is not None:
        try:
            return RunConfig.from_json((run_folder / "config.json").read_text())
        except (OSError, ValueError):
            pass
    dataset = meta.get("dataset")
    if not dataset or dataset == "synthetic":
        raise ExportError(
            f"the model's metadata names dataset={dataset!r}, which has no held-out table to verify on; "
            "pass --data FILE.csv --target COLUMN"
        )
    keys = {k: meta[k] for k in ("dataset", "data_path", "target", "task", "test_fraction", "seed") if k in meta}
    return RunConfig.from_mapping(keys)


def _scaling(cfg: RunConfig) -> dict[str, Any]:
    """The feature scaling uaap.data applied before training, so a device can apply it too."""
    from uaap.data import load_bundled, load_config_table, train_test

    if cfg.task == "forecast":  # each row is a window of one series, scaled on its own (uaap.forecast.series)
        return {
            "kind": "series-window",
            "note": "x_model = (window - mean(window)) / scale, scale = the series' mean |first difference| over its "
            "history; next value = output * scale + "
            + (
                f"window[-{cfg.seasonal_period}] (the value one season earlier: forecast-target seasonal)"
                if cfg.forecast_target == "seasonal" and cfg.seasonal_period > 1
                else "mean(window)"
            ),
        }
    if cfg.dataset == "digits":
        return {"kind": "standardize", "mean": 0.0, "std": 16.0, "note": "x_model = (x_raw - mean) / std"}
    raw = load_config_table(cfg) if cfg.dataset == "csv" else load_bundled(cfg.dataset)
    train = train_test(raw, cfg.test_fraction, cfg.seed).train.X
    std = train.std(axis=0)
    std = np.where(std < 1e-8, 1.0, std)
    return {
        "kind": "standardize",
        "mean": [float(v) for v in train.mean(axis=0)],
        "std": [float(v) for v in std],
        "note": "x_model = (x_raw - mean) / std, per feature",
    }
