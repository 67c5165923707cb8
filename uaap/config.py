"""One validated run configuration for every entry point, as a pydantic schema that documents itself.

Every field carries its type, default, constraints, a one-line description, its group (data, model,
training, federation, secure aggregation, privacy, tracking) and where it applies (central training or only
a federation). CLI flags, ``[tool.flwr.app.config]``, ``docs/configuration.md`` and the error messages are all
generated from it (:func:`settings`). Flower run config keys and flags are kebab-case (``num-rounds``); Python
and the JSON in checkpoints and messages use the snake_case field names (``num_rounds``).

Length: over 500 lines because the schema is one class: every setting's type, range, group, scope and
description sit in one place, which is what lets every surface be generated from it.
"""

from __future__ import annotations

import contextvars
import difflib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Final

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from uaap.errors import ConfigError
from uaap.models.registry import (
    BOOSTING_STRATEGIES,
    FAMILIES,
    HIST_STRATEGIES,
    MEAN_STRATEGIES,
    ROBUST_STRATEGIES,
    SUM_STRATEGIES,
    TREE_STRATEGIES,
    WEIGHT_STRATEGIES,
    check_combination,
)
from uaap.models.registry import names as model_names

DATASETS = ("digits", "breast_cancer", "wine", "diabetes", "friedman", "synthetic", "series", "csv")
TASKS = ("auto", "classification", "regression", "anomaly", "forecast")
IMPUTE = ("median", "mean", "constant", "ffill", "knn", "iterative")
OUTLIERS = ("clip-iqr", "clip-z", "none")
ENCODINGS = ("onehot", "ordinal", "hashing")
SCALINGS = ("standard", "minmax", "robust", "none")
TEXT_COLUMNS = ("error", "hashing", "tfidf", "drop")
FORECASTERS = ("seasonal_naive", "arima", "ets", "prophet")  # uaap.forecast.models.STATISTICAL: per series
# over parameters, fedstats, and Flower's XGBoost strategies (uaap.models.registry)
STRATEGIES = WEIGHT_STRATEGIES + SUM_STRATEGIES + BOOSTING_STRATEGIES + TREE_STRATEGIES + HIST_STRATEGIES
STRAGGLER_POLICIES = ("auto", "drop", "partial")
ATTACKS = ("sign-flip", "scaled", "noise")
PARTITIONS = ("iid", "dirichlet", "pathological")
OPTIMIZERS = ("sgd", "adam")
SVM_KERNELS = ("rbf", "poly", "sigmoid", "linear")
SECURE_AGGREGATION = ("none", "ckks", "secagg+")
MODELS = model_names()  # uaap.models.registry: `uaap models` prints where each runs
ACCOUNTANTS = ("rdp", "prv")

# The groups, in the order help, files and docs show them.
GROUPS: Final = (
    "data",
    "preprocessing",
    "model",
    "training",
    "federation",
    "secure aggregation",
    "privacy",
    "tracking",
)
# Where a field applies: everywhere (central training included) or only where clients federate.
ANY: Final = "any"
FEDERATED: Final = "federated"


def _setting(
    default: Any,
    description: str,
    *,
    group: str,
    scope: str = FEDERATED,
    choices: tuple[str, ...] = (),
    aliases: tuple[str, ...] = (),
    metavar: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
) -> Any:
    """A schema field: pydantic's ``Field`` plus the group, scope, choices and flag aliases the surfaces use."""
    extra: dict[str, Any] = {"group": group, "scope": scope}
    if choices:
        extra["choices"] = list(choices)
    if aliases:
        extra["aliases"] = list(aliases)
    if metavar:
        extra["metavar"] = metavar
    return Field(default, description=description, ge=ge, gt=gt, le=le, json_schema_extra=extra)


class RunConfig(BaseModel):
    """Everything one federated (or central) run needs; immutable once validated."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True, defer_build=True
    )

    # ---- data -----------------------------------------------------------------------------------
    dataset: str = _setting(
        "digits",
        "bundled dataset (classification: digits, breast_cancer, wine, synthetic; regression: diabetes, friedman; "
        "forecast: series, generated monthly series with trend, seasonality and noise, one per client), or csv for "
        "your own table (--data FILE --target COLUMN)",
        group="data",
        scope=ANY,
        choices=DATASETS,
    )
    data_path: str = _setting(
        "",
        "your table when dataset=csv: a .csv/.tsv/.json/.jsonl/.parquet file, an http(s) or file URL, "
        "or a SQLAlchemy database URL (with data-table or data-query)",
        group="data",
        scope=ANY,
        aliases=("--data",),
        metavar="SOURCE",
    )
    target: str = _setting("", "label column of data-path", group="data", scope=ANY, metavar="COLUMN")
    task: str = _setting(
        "auto",
        "what the model predicts: auto infers it from the target (numbers with many distinct values: regression, "
        "MSE loss, one output, metrics MSE/RMSE/MAE/R2; text or few distinct values: classification), or force "
        "classification or regression; anomaly (model=autoencoder) takes a two-class target whose rarer class is "
        "the anomaly; forecast predicts the next horizon values of the time series in target (time-column orders "
        "them, series-column tells series apart)",
        group="data",
        scope=ANY,
        choices=TASKS,
    )
    data_table: str = _setting(
        "", "table to read when data-path is a database URL", group="data", scope=ANY, metavar="NAME"
    )
    data_query: str = _setting(
        "", "SQL query to read when data-path is a database URL (instead of data-table)", group="data", scope=ANY,
        metavar="SQL",
    )  # fmt: skip
    data_sep: str = _setting(
        "",
        "delimiter of a text table (empty: sniffed from a .csv, tab for .tsv)",
        group="data",
        scope=ANY,
        metavar="SEP",
    )
    data_encoding: str = _setting("utf-8", "text encoding of a text table", group="data", scope=ANY, metavar="NAME")
    data_decimal: str = _setting(
        ".", "decimal mark of a text table (',' for 3,14)", group="data", scope=ANY, choices=(".", ","), metavar="MARK"
    )
    partition: str = _setting("dirichlet", "how the rows are split across clients", group="data", choices=PARTITIONS)
    dirichlet_alpha: float = _setting(
        0.5, "label skew of the Dirichlet split: smaller is more non-IID", group="data", gt=0.0
    )
    classes_per_client: int = _setting(2, "labels each client holds under the pathological split", group="data", ge=1)
    synthetic_alpha: float = _setting(
        1.0, "model heterogeneity of the synthetic dataset (FedProx's alpha)", group="data", ge=0.0
    )
    synthetic_beta: float = _setting(
        1.0, "feature heterogeneity of the synthetic dataset (FedProx's beta)", group="data", ge=0.0
    )
    synthetic_size: int = _setting(
        0,
        "examples per client of the synthetic dataset: 0 keeps FedProx's power law (50 to 1000 each); "
        "n gives each client n/2 to 3n/2 (a cross-device population: tens each)",
        group="data",
        ge=0,
    )
    synthetic_shared_model: bool = _setting(
        False,
        "label every client of the synthetic dataset with one W, b (synthetic-alpha unused; FedProx's Synthetic "
        "IID when synthetic-beta is 0): one global model fits all clients",
        group="data",
    )
    test_fraction: float = _setting(
        0.2, "share of the rows held out for testing", group="data", scope=ANY, gt=0.0, le=1.0
    )
    time_column: str = _setting(
        "", "task=forecast: the column of timestamps of your table (parsed as dates; regular, one step apart)",
        group="data", scope=ANY, metavar="COLUMN",
    )  # fmt: skip
    series_column: str = _setting(
        "", "task=forecast: the column naming each row's series (empty: the table is one series); series are dealt "
        "to the clients in turn, one per client when there are as many as clients",
        group="data", scope=ANY, metavar="COLUMN",
    )  # fmt: skip
    horizon: int = _setting(
        12, "task=forecast: steps ahead each series is forecast (the last horizon points are held out)",
        group="data", scope=ANY, ge=1,
    )  # fmt: skip
    lags: int = _setting(
        24, "task=forecast: past values a window holds (the input of model=lstm or gru)", group="data", scope=ANY,
        ge=1,
    )  # fmt: skip
    seasonal_period: int = _setting(
        12, "task=forecast: steps in one season (12 for monthly data; 1: no seasonality), for seasonal naive, SARIMA, "
        "exponential smoothing and the MASE scale", group="data", scope=ANY, ge=1,
    )  # fmt: skip
    series_length: int = _setting(
        120, "dataset=series: points in each generated series", group="data", scope=ANY, ge=8,
    )  # fmt: skip
    forecast_target: str = _setting(
        "seasonal", "task=forecast: what model=lstm or gru learns to predict: the next value's change from the value "
        "one season earlier (seasonal: a correction to seasonal naive; needs lags >= seasonal-period), or the next "
        "value minus its window's mean (level)", group="data", scope=ANY, choices=("seasonal", "level"),
    )  # fmt: skip
    forecast_models: str = _setting(
        ",".join(FORECASTERS), "task=forecast: the per-series models every series is also forecast by, beside the "
        "network, comma-separated (seasonal_naive, arima, ets, prophet; each fits on one series alone, on its client)",
        group="data", scope=ANY, metavar="NAME,NAME",
    )  # fmt: skip
    # ---- preprocessing (your table: dataset=csv; fitted from the clients' summed statistics) ----------
    impute: str = _setting(
        "median",
        "value a missing number takes: the median (from summed histograms), the mean (from summed sums), "
        "fill-value, or from each client's own rows (nothing merged): ffill (the previous row's value, for "
        "time-ordered rows), knn (5 nearest rows), iterative (MICE), with the median where they leave a hole; a "
        "missing category takes the most frequent one",
        group="preprocessing",
        scope=ANY,
        choices=IMPUTE,
    )
    fill_value: float = _setting(0.0, "the value of a missing number when impute=constant", group="preprocessing",
                                 scope=ANY)  # fmt: skip
    outliers: str = _setting(
        "clip-iqr",
        "numbers beyond the IQR fence [q1 - 1.5 IQR, q3 + 1.5 IQR] (clip-iqr) or beyond mean +- 3 std (clip-z) are "
        "clipped to it, or left as they are (none)",
        group="preprocessing",
        scope=ANY,
        choices=OUTLIERS,
    )
    encoding: str = _setting(
        "onehot",
        "categories as one-hot columns (the most frequent max-categories, the rest and unseen values in one "
        "'infrequent' column), ordinal codes, or hashing (no vocabulary: the server learns no category names)",
        group="preprocessing",
        scope=ANY,
        choices=ENCODINGS,
    )
    max_categories: int = _setting(
        20, "one-hot columns per categorical feature, the 'infrequent' column included", group="preprocessing",
        scope=ANY, ge=2,
    )  # fmt: skip
    scaling: str = _setting(
        "standard",
        "numbers scaled to mean 0 and std 1 (standard), to [0, 1] (minmax), by median and IQR (robust), or not",
        group="preprocessing",
        scope=ANY,
        choices=SCALINGS,
    )
    text_columns: str = _setting(
        "error",
        "a free-text or identifier column (over 50 distinct strings): refused with its name (error), its words "
        "hashed into 32 count columns (hashing), TF-IDF of its 1000 most common words (tfidf: central runs only, "
        "the vocabulary would disclose the clients' words), or left out (drop)",
        group="preprocessing",
        scope=ANY,
        choices=TEXT_COLUMNS,
    )
    polynomial: bool = _setting(
        False, "add the products of every pair of numeric columns and their squares (after scaling)",
        group="preprocessing", scope=ANY,
    )  # fmt: skip
    drop_columns: str = _setting(
        "", "columns of your table to leave out, comma-separated", group="preprocessing", scope=ANY,
        metavar="COL,COL",
    )  # fmt: skip
    # ---- model ----------------------------------------------------------------------------------
    model: str = _setting(
        "mlp",
        "model family (`uaap models` shows where each runs; cnn needs image data such as digits)",
        group="model",
        scope=ANY,
        choices=MODELS,
    )
    n_clusters: int = _setting(
        8, "clusters of model=kmeans (its centroids are seeded by k-means++ on the server's held-out rows)",
        group="model", scope=ANY, ge=1,
    )  # fmt: skip
    n_components: int = _setting(
        2, "principal components model=pca keeps (at most the number of features)", group="model", scope=ANY,
        ge=1,
    )  # fmt: skip
    trees_per_client: int = _setting(
        20, "model=random_forest: trees each client grows per round (fedtrees; the global forest keeps every "
        "client's), or trees the server grows per round from the clients' summed histograms (fedhist)",
        group="model", scope=ANY, ge=1, le=1000,
    )  # fmt: skip
    tree_max_depth: int = _setting(
        8, "depth limit of each tree (model=random_forest; bounds how narrow a region one leaf describes)",
        group="model", scope=ANY, ge=1, le=64,
    )  # fmt: skip
    tree_min_samples_leaf: int = _setting(
        5, "rows every leaf describes at least (model=random_forest; no leaf speaks of fewer of a client's rows)",
        group="model", scope=ANY, ge=1,
    )  # fmt: skip
    tree_bins: int = _setting(
        256, "strategy=fedhist: most bins per feature, cut at the quantiles of the clients' summed histograms (a "
        "feature with fewer distinct values gets a bin each, as in XGBoost's hist method)",
        group="model", scope=ANY, ge=2, le=1024,
    )  # fmt: skip
    anomaly_quantile: float = _setting(
        0.95, "task=anomaly: the threshold is this quantile of the normal validation rows' reconstruction errors "
        "(summed histograms when federated), so about 1 - q of normal rows are flagged",
        group="model", scope=ANY, gt=0.5, le=1.0,
    )  # fmt: skip
    # ---- training -------------------------------------------------------------------------------
    local_epochs: int = _setting(5, "epochs each client trains per round", group="training", ge=1)
    batch_size: int = _setting(16, "examples per gradient step", group="training", scope=ANY, ge=1)
    learning_rate: float = _setting(0.05, "optimizer step size", group="training", scope=ANY, gt=0.0)
    optimizer: str = _setting("sgd", "local optimizer", group="training", scope=ANY, choices=OPTIMIZERS)
    momentum: float = _setting(0.9, "SGD momentum (ignored by adam)", group="training", scope=ANY, ge=0.0, le=1.0)
    xgb_local_rounds: int = _setting(
        1, "boosting rounds each client adds per federated round (model=xgboost)", group="training", ge=1, le=100
    )
    xgb_max_depth: int = _setting(
        4, "depth of each tree (model=xgboost, lightgbm, catboost)", group="training", scope=ANY, ge=1, le=12
    )
    xgb_eta: float = _setting(
        0.3, "shrinkage of each tree, the boosting learning rate (model=xgboost, lightgbm, catboost)",
        group="training", scope=ANY, gt=0.0, le=1.0,
    )  # fmt: skip
    boost_rounds: int = _setting(
        100, "boosting rounds uaap train grows (model=lightgbm, catboost: central only)", group="training",
        scope=ANY, ge=1, le=5000,
    )  # fmt: skip
    svm_c: float = _setting(
        1.0, "inverse regularisation C of the kernel SVM (model=kernel_svm)", group="training", scope=ANY, gt=0.0,
        le=1e6,
    )  # fmt: skip
    svm_kernel: str = _setting(
        "rbf", "kernel of the kernel SVM (model=kernel_svm; gamma 'scale')", group="training", scope=ANY,
        choices=SVM_KERNELS,
    )  # fmt: skip
    seed: int = _setting(42, "seed of data splits, model initialisation and sampling", group="training", scope=ANY)
    # ---- federation -----------------------------------------------------------------------------
    strategy: str = _setting(
        "fedprox",
        "aggregation algorithm, Flower's own: fedavg, fedprox (adds a proximal term); server optimisers fedadam, "
        "fedyogi, fedadagrad, fedavgm; robust aggregators fedmedian, fedtrimmedavg, krum, multikrum, bulyan "
        "(plaintext only: secure aggregation and dp-central take fedavg or fedprox); fedstats sums the statistics "
        "of model=kmeans and pca (exact, also under secure aggregation); fedtrees keeps every client's trees "
        "(model=random_forest); fedhist grows trees from the clients' summed histograms (model=xgboost, "
        "random_forest: the trees of the pooled rows)",
        group="federation",
        choices=STRATEGIES,
    )
    proximal_mu: float = _setting(
        0.01, "weight of FedProx's proximal term (0 behaves like fedavg)", group="federation", ge=0.0
    )
    server_learning_rate: float = _setting(
        0.0,
        "server step size of fedadam, fedyogi, fedadagrad (eta) and fedavgm (0: Flower's default, 0.1 and 1.0)",
        group="federation",
        ge=0.0,
    )
    server_momentum: float = _setting(0.9, "server momentum of fedavgm", group="federation", ge=0.0, le=1.0)
    trim_fraction: float = _setting(
        0.2, "share of the updates fedtrimmedavg cuts from each end, per coordinate (Flower's beta)",
        group="federation", ge=0.0, le=0.49,
    )  # fmt: skip
    byzantine_clients: int = _setting(
        0,
        "malicious clients per round that krum, multikrum and bulyan tolerate (f; bulyan needs at least 4f + 3 "
        "clients per round, multikrum averages the n - f updates it selects)",
        group="federation",
        ge=0,
    )
    num_rounds: int = _setting(10, "federated rounds", group="federation", ge=1, aliases=("--rounds",))
    num_clients: int = _setting(
        10, "clients (simulated, or partitions of the data)", group="federation", ge=2, aliases=("--clients",)
    )
    fraction_train: float = _setting(
        1.0, "share of the clients sampled to train each round", group="federation", gt=0.0, le=1.0
    )
    fraction_evaluate: float = _setting(
        1.0, "share of the clients sampled to evaluate each round (0: none)", group="federation", ge=0.0, le=1.0
    )
    min_clients: int = _setting(
        2,
        "clients that must be connected before the first round; a later round waits up to 60 s for that many, "
        "then goes on with the clients online",
        group="federation",
        ge=1,
    )
    straggler_fraction: float = _setting(
        0.0,
        "share of clients that stop early each round (a random number of steps short of local-epochs, as in the "
        "FedProx paper); straggler-policy says what the server does with their work",
        group="federation",
        ge=0.0,
        le=1.0,
    )
    straggler_policy: str = _setting(
        "auto",
        "drop: stragglers' replies are left out of the aggregate (the FedProx paper's FedAvg); partial: their "
        "partial work is aggregated (FedProx); auto: partial under fedprox, drop under every other strategy",
        group="federation",
        choices=STRAGGLER_POLICIES,
    )
    malicious_fraction: float = _setting(
        0.0,
        "share of the simulated clients that poison every update they send (testing robust strategies; `uaap "
        "simulate` only: deployed clients ignore it)",
        group="federation",
        ge=0.0,
        le=0.99,
    )
    attack: str = _setting(
        "sign-flip",
        "what a malicious client sends: sign-flip (-k times its update), scaled (k times its update) or noise "
        "(Gaussian noise k times its update's scale), k = attack-scale",
        group="federation",
        choices=ATTACKS,
    )
    attack_scale: float = _setting(4.0, "k of the attack", group="federation", gt=0.0)
    round_timeout: float = _setting(
        600.0,
        "seconds the server waits for a round's replies (and for min-clients); a client whose node went offline is "
        "not waited for",
        group="federation",
        gt=0.0,
    )
    central_eval: bool = _setting(
        True, "the server also tests the global model on the held-out split (plaintext runs)", group="federation"
    )
    max_num_examples: int = _setting(
        100_000,
        "largest num-examples (and he-weight) a reply may claim; a reply claiming more is rejected, "
        "so one client cannot outweigh the rest by its claim",
        group="federation",
        ge=1,
    )
    min_contributors: int = _setting(
        2,
        "an aggregate of fewer accepted replies is not released; the global model stays as it was "
        "(a lone client's model would be readable by every key holder)",
        group="federation",
        ge=1,
    )
    # ---- secure aggregation ---------------------------------------------------------------------
    secure_aggregation: str = _setting(
        "none",
        "ckks: clients send CKKS ciphertexts, the server only adds them; secagg+: clients send pairwise-masked, "
        "quantised updates (SecAgg+), the server learns only their sum",
        group="secure aggregation",
        choices=SECURE_AGGREGATION,
        aliases=("--he",),
    )
    he_public_context: str = _setting(
        "",
        "public CKKS context (server side; simulate makes per-run keys when empty)",
        group="secure aggregation",
        metavar="FILE",
    )
    he_secret_context: str = _setting(
        "", "secret CKKS context (clients only; file mode 0600)", group="secure aggregation", metavar="FILE"
    )
    secagg_num_shares: int = _setting(
        5,
        "secagg+: each client shares its secrets with itself and its ring neighbours, this many in all (odd, >= 3)",
        group="secure aggregation",
        ge=3,
    )
    secagg_threshold: int = _setting(
        3,
        "secagg+: shares that rebuild a secret (more than half of secagg-num-shares; num-shares - threshold dropouts "
        "per neighbourhood are survived)",
        group="secure aggregation",
        ge=2,
    )
    secagg_clipping_range: float = _setting(
        8.0,
        "secagg+: each update value (w_k - w) is clipped to [-c, c] before quantisation",
        group="secure aggregation",
        gt=0,
    )
    secagg_quantization_range: int = _setting(
        4_194_304,
        "secagg+: quantisation levels over [-c, c]; the aggregate's error per coordinate is below 2c / levels "
        "(3.8e-6 by default)",
        group="secure aggregation",
        ge=2,
    )
    # ---- privacy --------------------------------------------------------------------------------
    dp_local: bool = _setting(False, "example-level DP: Opacus DP-SGD on every client", group="privacy")
    dp_target_epsilon: float = _setting(
        8.0, "example-level epsilon DP-SGD spends over the whole run", group="privacy", gt=0.0
    )
    dp_delta: float = _setting(1e-5, "delta of both DP levels", group="privacy", gt=0.0, le=1.0)
    dp_clip_norm: float = _setting(1.0, "DP-SGD per-example gradient clip norm", group="privacy", gt=0.0)
    dp_central: bool = _setting(
        False, "client-level DP: clients clip updates, the server adds Gaussian noise", group="privacy"
    )
    dp_noise_multiplier: float = _setting(
        1.0, "central DP noise: standard deviation over the clip norm", group="privacy", ge=0.0
    )
    dp_central_clip_norm: float = _setting(1.0, "central DP clip norm of each client's update", group="privacy", gt=0.0)
    dp_accountant: str = _setting("rdp", "privacy accountant (Opacus)", group="privacy", choices=ACCOUNTANTS)
    max_epsilon: float = _setting(
        0.0, "stop before a round that would spend more epsilon than this (0: no limit)", group="privacy", ge=0.0
    )
    # ---- tracking -------------------------------------------------------------------------------
    run_id: str = _setting(
        "", "run folder and MLflow run name (empty: a new id)", group="tracking", scope=ANY, metavar="ID"
    )
    experiment: str = _setting("uaap", "MLflow experiment", group="tracking", scope=ANY, metavar="NAME")
    continue_from: str = _setting(
        "",
        "continual training: start a new run from this finished run's final model on new data (same model, shape "
        "and preprocessing; its privacy ledger's totals carry over, so epsilon accumulates across phases)",
        group="tracking",
        metavar="RUN",
    )
    encrypt_checkpoints: bool = _setting(
        False,
        "store the per-round checkpoints AES-256-GCM encrypted with the at-rest key ($UAAP_MODEL_KEY, else the "
        "workspace's keys/model-at-rest.key, made 0600 on first use); a resume decrypts them in memory",
        group="tracking",
    )

    # ---- validation ---------------------------------------------------------------------------------
    if not TYPE_CHECKING:  # keep the typed keyword signature pydantic gives type checkers

        def __init__(self, **values: Any) -> None:
            """Validate ``values``; a bad one raises :class:`ConfigError` (one line per bad field)."""
            try:
                super().__init__(**values)
            except ValidationError as exc:
                raise ConfigError(explain(exc, values, _ORIGIN.get())) from None

    @field_validator("*", mode="after")
    @classmethod
    def _one_of(cls, value: Any, info: ValidationInfo) -> Any:
        choices = setting(str(info.field_name)).choices
        if choices and value not in choices:
            raise PydanticCustomError("choice", "not one of the choices", {"choices": choices})
        return value

    @model_validator(mode="before")
    @classmethod
    def _family_strategy(cls, values: Any) -> Any:
        """A family that federates by boosting or by trees gets its own first strategy when the run names none (the
        default, fedprox, is a strategy over weights); a strategy named explicitly is kept, and checked where a
        federation starts."""
        if isinstance(values, dict) and "strategy" not in values:
            fam = FAMILIES.get(str(values.get("model", "")))
            if fam is not None and fam.capabilities.federated in ("boosting", "trees"):
                return {**values, "strategy": fam.capabilities.strategies[0]}
        return values

    @model_validator(mode="before")
    @classmethod
    def _forecast_default_model(cls, values: Any) -> Any:
        """A forecast run that names no model gets the global forecaster, lstm (the default, mlp, does not
        forecast); `uaap automl --task forecast` ranks the per-series models and names none."""
        if isinstance(values, dict) and values.get("task") == "forecast" and "model" not in values:
            return {**values, "model": "lstm"}
        return values

    @model_validator(mode="before")
    @classmethod
    def _summed_defaults(cls, values: Any) -> Any:
        """K-Means and PCA, fitted from summed statistics, take their strategy (fedstats) when the run names none,
        and PCA, complete after one round, one round; what the run names is kept, and checked where a federation
        starts."""
        fam = FAMILIES.get(str(values.get("model", ""))) if isinstance(values, dict) else None
        if fam is None or fam.capabilities.federated != "statistics":
            return values
        rounds = {"num_rounds": fam.capabilities.rounds} if fam.capabilities.rounds else {}
        return {"strategy": fam.capabilities.strategies[0], **rounds, **values}

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.dataset == "series" and self.task != "forecast":
            raise ValueError(
                f"dataset='series' holds time series: pass --task forecast (not task={self.task!r}), or another dataset"
            )
        if self.task == "forecast" and self.dataset not in ("series", "csv"):
            raise ValueError(
                f"task='forecast' needs time series, not dataset={self.dataset!r}: pass --dataset series "
                "(generated) or --data FILE --target VALUE-COLUMN --time-column COLUMN"
            )
        unknown = [m for m in self.forecast_models.split(",") if m.strip() and m.strip() not in FORECASTERS]
        if unknown:
            raise ValueError(
                f"forecast-models names {unknown[0]!r}, not a per-series forecaster; choose from: "
                f"{', '.join(FORECASTERS)}"
            )
        if self.task == "forecast" and self.forecast_target == "seasonal" and self.lags < self.seasonal_period:
            raise ValueError(
                f"forecast-target='seasonal' reads the value one season back from each window: lags={self.lags} is "
                f"shorter than seasonal-period={self.seasonal_period}; raise --lags or use --forecast-target level"
            )
        if self.task == "forecast" and self.dataset == "csv" and not self.time_column:
            raise ValueError("task='forecast' on your table needs time-column: pass --time-column COLUMN")
        if self.dataset == "csv" and not (self.data_path and self.target):
            raise ValueError("dataset='csv' needs data-path and target: pass --data FILE.csv --target COLUMN")
        if self.data_path and self.dataset != "csv":
            raise ValueError(
                f"data-path={self.data_path!r} is read only with dataset=csv, not dataset={self.dataset!r}: "
                "drop one of them (a data file alone implies dataset=csv)"
            )
        self.check_family("any")  # what the family can do; the strategy is checked where a federation starts
        self.check_strategy()
        self.check_secagg()
        for name in ("min_clients", "min_contributors"):
            if getattr(self, name) > self.num_clients:
                key = name.replace("_", "-")
                raise ValueError(
                    f"{key}={getattr(self, name)} exceeds num-clients={self.num_clients}: lower {key} or add clients"
                )
        return self

    # ---- construction and conversions ---------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], origin: Callable[[str], str] | None = None) -> RunConfig:
        """Build from Flower run config (kebab-case) or keyword (snake_case) values.

        ``origin(key)`` names where a value came from (``--num-rounds``, ``run.toml``...) in error messages.
        """
        known = field_names()
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(unknown_key_message(key, origin(key) if origin else ""))
            kwargs[name] = value
        return cls.validated(kwargs, origin)

    @classmethod
    def validated(cls, values: Mapping[str, Any], origin: Callable[[str], str] | None = None) -> RunConfig:
        """Validate snake_case ``values``; a bad one raises :class:`ConfigError`, one line per bad field."""
        token = _ORIGIN.set(origin)
        try:
            return cls(**values)
        finally:
            _ORIGIN.reset(token)

    def to_flower(self) -> dict[str, Any]:
        """The kebab-case mapping Flower's run config uses."""
        return {k.replace("_", "-"): v for k, v in self.model_dump().items()}

    def to_json(self) -> str:
        """Serialise for checkpoints and messages (snake_case keys, as since the first release)."""
        return json.dumps(self.model_dump(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        """Inverse of :meth:`to_json` (older run folders, which lack newer fields, get their defaults)."""
        return cls.from_mapping(json.loads(text))

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with some fields changed."""
        return type(self).from_mapping({**self.model_dump(), **changes})

    def to_toml(self, names: tuple[str, ...] | None = None, note: Callable[[str], str] | None = None) -> str:
        """A config file (``--config``) holding ``names`` (default: all), by group; ``note(name)`` adds a comment."""
        lines: list[str] = []
        for group in GROUPS:
            rows = [s for s in settings() if s.group == group and (names is None or s.name in names)]
            if not rows:
                continue
            lines.append(f"{'' if not lines else chr(10)}# ---- {group}")
            for s in rows:
                line = f"{s.key} = {toml_value(getattr(self, s.name))}"
                comment = note(s.name) if note else ""
                lines.append(f"{line:<40} # {comment}" if comment else line)
        return "\n".join(lines) + "\n"

    def check_family(self, where: str) -> None:
        """Refuse a run the model family cannot do ``where`` ("central", "federated" or "any"), before it starts."""
        if where == "federated" and self.text_columns == "tfidf":
            raise ConfigError(
                "text-columns='tfidf' runs centrally only: TF-IDF needs one vocabulary shared by every client, and "
                "that vocabulary (each word's document count) would tell the server the clients' words. Federated text "
                "uses --text-columns hashing (words hashed into buckets on each client; no word leaves it), or train "
                "centrally with uaap train"
            )
        check_combination(
            self.model,
            task=self.task,
            where=where,
            strategy=self.strategy,
            secure_aggregation=self.secure_aggregation,
            dp_local=self.dp_local,
            dp_central=self.dp_central,
            num_rounds=self.num_rounds,
        )

    def check_strategy(self) -> None:
        """Refuse a strategy that cannot run with this run's secure aggregation, central DP or clients per round."""
        if self.strategy not in MEAN_STRATEGIES + SUM_STRATEGIES and self.secure:
            raise ValueError(
                f"strategy={self.strategy!r} cannot run under secure-aggregation='ckks': the server only adds "
                "ciphertexts, which computes a weighted mean and nothing else; "
                + ("a robust aggregator needs each plaintext update" if self.strategy in ROBUST_STRATEGIES else
                   "a server optimiser multiplies the aggregate by its learning rate and momentum (fedadam, fedyogi "
                   "and fedadagrad also square it and take square roots), which the add-only CKKS chain cannot "
                   "compute and the server, holding no key, cannot decrypt")
                + ". Use strategy fedavg or fedprox, or secure-aggregation none"
            )  # fmt: skip
        if self.strategy not in MEAN_STRATEGIES and self.dp_central:
            raise ValueError(
                f"strategy={self.strategy!r} cannot run with dp-central: central DP releases its own noisy mean of "
                "the clipped updates (its guarantee is for that sum), so the strategy's aggregate would be "
                "silently replaced. Use strategy fedavg or fedprox with dp-central, or dp-local (DP-SGD on the "
                "clients composes with every strategy)"
            )
        per_round = max(int(self.num_clients * self.fraction_train), self.min_clients)
        if self.strategy == "bulyan" and per_round < 4 * self.byzantine_clients + 3:
            raise ValueError(
                f"strategy='bulyan' with byzantine-clients={self.byzantine_clients} needs at least "
                f"{4 * self.byzantine_clients + 3} clients per round (4f + 3); this run samples {per_round}: add "
                "clients, raise fraction-train or lower byzantine-clients"
            )
        if self.strategy in ("krum", "multikrum") and per_round <= 2 * self.byzantine_clients + 2:
            raise ValueError(
                f"strategy={self.strategy!r} with byzantine-clients={self.byzantine_clients} needs more than "
                f"{2 * self.byzantine_clients + 2} clients per round (2f + 2); this run samples {per_round}: add "
                "clients, raise fraction-train or lower byzantine-clients"
            )

    @property
    def drops_stragglers(self) -> bool:
        """Whether stragglers' replies are left out of the aggregate (straggler-policy, auto resolved)."""
        if self.straggler_policy == "auto":
            return self.strategy != "fedprox"
        return self.straggler_policy == "drop"

    def check_secagg(self) -> None:
        """Refuse SecAgg+ settings and combinations that cannot work (strategies.secagg), before anything starts."""
        if self.secure_aggregation != "secagg+":
            return
        if self.strategy not in ("fedavg", "fedprox"):
            raise ValueError(
                f"strategy={self.strategy!r} cannot run under secure-aggregation='secagg+': the server sees only the "
                "sum of the masked updates, which gives FedAvg's weighted mean and nothing else (robust aggregators "
                "and server optimisers need each update or more than the mean; fedstats, fedhist, fedtrees and "
                "XGBoost send no model update). Use strategy fedavg or fedprox, or secure-aggregation none or ckks"
            )
        if self.straggler_fraction > 0 and self.drops_stragglers:
            raise ValueError(
                "straggler-policy drop cannot run under secure-aggregation='secagg+': the server cannot take one "
                "masked update out of the sum; use --straggler-policy partial (or no stragglers)"
            )
        per_round = self.num_clients if self.dp_central else self.num_clients * self.max_num_examples
        check_secagg_params(
            self.secagg_num_shares,
            self.secagg_threshold,
            self.secagg_clipping_range,
            self.secagg_quantization_range,
            per_round,
        )
        if self.dp_central and self.secagg_clipping_range < self.dp_central_clip_norm:
            raise ValueError(
                f"secagg-clipping-range={self.secagg_clipping_range:g} is below dp-central-clip-norm="
                f"{self.dp_central_clip_norm:g}: clipped updates (plus their noise) must fit in [-c, c]; raise "
                "secagg-clipping-range"
            )

    @property
    def secagg(self) -> bool:
        """Whether updates are summed under SecAgg+ pairwise masks."""
        return self.secure_aggregation == "secagg+"

    @property
    def secure(self) -> bool:
        """Whether updates travel as CKKS ciphertexts."""
        return self.secure_aggregation == "ckks"

    def with_absolute_paths(self) -> RunConfig:
        """File settings (data table, CKKS contexts) made absolute against the current directory.

        Launchers call it before anything starts: the ServerApp and ClientApps run in other directories (Flower
        starts them from its own), and a run folder's config.toml must mean the same files from anywhere. URLs
        and database addresses (``scheme://...``) are left as they are.
        """
        from pathlib import Path

        changes = {
            name: str(Path(value).expanduser().resolve())
            for name in ("data_path", "he_public_context", "he_secret_context")
            if (value := getattr(self, name)) and "://" not in value
        }
        return self.replace(**changes) if changes else self


def check_secagg_params(
    num_shares: int, threshold: int, clipping_range: float, quantization_range: int, max_total_weight: int
) -> None:
    """Raise :class:`ConfigError` unless the SecAgg+ settings can run (``max_total_weight``: the largest sum of the
    clients' weights a round can carry: clients per round times max-num-examples, or clients under central DP)."""
    if num_shares < 3 or num_shares % 2 == 0:
        raise ConfigError(
            f"secagg-num-shares={num_shares}: expected an odd number >= 3 (each client shares its secrets with itself "
            "and (num-shares - 1) / 2 neighbours on each side of a ring; Flower skips rounds silently with an even "
            "one); use 3, 5, 7..."
        )
    if not num_shares // 2 < threshold <= num_shares:
        raise ConfigError(
            f"secagg-threshold={threshold} with secagg-num-shares={num_shares}: expected a value in "
            f"[{num_shares // 2 + 1}, {num_shares}] (more than half of the shares, so that the server can never "
            "collect both a client's self-mask seed and its masking key; num-shares - threshold dropouts per "
            "neighbourhood are survived)"
        )
    if not (math.isfinite(clipping_range) and clipping_range > 0):
        raise ConfigError(f"secagg-clipping-range={clipping_range}: expected a positive finite number (e.g. 8.0)")
    if not 2 <= quantization_range <= 2**30:
        raise ConfigError(
            f"secagg-quantization-range={quantization_range}: expected a whole number in [2, 2^30] (e.g. 4194304)"
        )
    if max_total_weight * quantization_range >= 2**64:
        raise ConfigError(
            f"secagg-quantization-range={quantization_range} times the largest total weight of a round "
            f"({max_total_weight}: clients per round x max-num-examples) reaches 2^64, where sums of the "
            "masked vectors would wrap; lower secagg-quantization-range or max-num-examples"
        )


# Where the values being validated came from, for the messages (set by RunConfig.validated).
_ORIGIN: contextvars.ContextVar[Callable[[str], str] | None] = contextvars.ContextVar(
    "uaap_config_origin", default=None
)


# ---- the schema as data, for the CLI, the docs and the messages ----------------------------------------


@dataclass(frozen=True)
class Setting:
    """One field of :class:`RunConfig` as every surface shows it."""

    name: str
    type: type
    default: Any
    description: str
    group: str
    scope: str
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    metavar: str = ""
    low: float | None = None
    low_open: bool = False
    high: float | None = None

    @property
    def key(self) -> str:
        """Kebab-case: Flower run config key, config-file key, and the flag without its dashes."""
        return self.name.replace("_", "-")

    @property
    def flag(self) -> str:
        """The command-line flag."""
        return "--" + self.key

    @property
    def env(self) -> str:
        """The environment variable that sets it."""
        return "UAAP_" + self.name.upper()

    @property
    def kind(self) -> str:
        """What a value must be, in words."""
        return {bool: "true or false", int: "a whole number", float: "a number"}.get(self.type, "text")

    def range_text(self) -> str:
        """``[0, 1]``-style interval, or empty when unbounded."""
        if self.low is None and self.high is None:
            return ""
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open else '['}{lo}, {hi}]"

    def bounds(self) -> str:
        """The range, short: ``>= 1``, ``> 0`` or ``(0, 1]``; empty when unbounded."""
        if self.low is not None and self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return self.range_text()

    def default_text(self) -> str:
        """The default as a user writes it (``true``, ``0.05``, ``unset`` for empty text)."""
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return "unset" if self.default == "" else str(self.default)

    def allowed(self) -> str:
        """What is allowed, for help texts and docs."""
        if self.choices:
            return "one of: " + ", ".join(self.choices)
        if self.range_text():
            return f"{self.kind} in {self.range_text()}"
        return self.kind


@cache
def settings() -> tuple[Setting, ...]:
    """Every field of :class:`RunConfig`, in schema order."""
    out = []
    for name, info in RunConfig.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        low: float | None = None
        high: float | None = None
        low_open = False
        for m in info.metadata:
            if isinstance(m, annotated_types.Ge):
                low = float(m.ge)  # type: ignore[arg-type]  # SupportsGe: ours are numbers
            elif isinstance(m, annotated_types.Gt):
                low, low_open = float(m.gt), True  # type: ignore[arg-type]  # SupportsGt: ours are numbers
            elif isinstance(m, annotated_types.Le):
                high = float(m.le)  # type: ignore[arg-type]  # SupportsLe: ours are numbers
        annotation = info.annotation if isinstance(info.annotation, type) else str
        out.append(
            Setting(
                name=name,
                type=annotation,
                default=info.default,
                description=str(info.description),
                group=str(extra["group"]),
                scope=str(extra["scope"]),
                choices=tuple(extra.get("choices", ())),  # type: ignore[arg-type]  # list[str], see _setting
                aliases=tuple(extra.get("aliases", ())),  # type: ignore[arg-type]  # list[str], see _setting
                metavar=str(extra.get("metavar", "")),
                low=low,
                low_open=low_open,
                high=high,
            )
        )
    return tuple(out)


@cache
def _by_name() -> dict[str, Setting]:
    return {s.name: s for s in settings()}


def setting(name: str) -> Setting:
    """The :class:`Setting` of one field (snake_case or kebab-case name)."""
    return _by_name()[name.replace("-", "_")]


def field_names() -> frozenset[str]:
    """The snake_case field names."""
    return frozenset(_by_name())


def close_keys(key: str) -> list[str]:
    """Known kebab-case keys close to ``key`` (for 'did you mean')."""
    keys = [s.key for s in settings()]
    return difflib.get_close_matches(key.replace("_", "-").lower(), keys, n=3, cutoff=0.6)


def unknown_key_message(key: str, origin: str = "") -> str:
    """One line for a key the schema does not have, with the close matches."""
    close = close_keys(key)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    where = f" in {origin}" if origin else ""
    return (
        f"unknown config key '{key}'{where}{hint}; every key is listed in docs/configuration.md and `uaap config show`"
    )


def toml_value(value: Any) -> str:
    """A scalar as TOML writes it (JSON string escapes are valid TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)


# ---- pydantic's errors, told the way every UAAP error is ------------------------------------------------

_TYPE_ERRORS = ("parsing", "_type", "from_float", "int_from", "bool_", "string_", "float_")


def explain(exc: ValidationError, values: Mapping[str, Any], origin: Callable[[str], str] | None = None) -> str:
    """One line per bad field: the value, where it came from, what is allowed and what to do."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        if not loc:  # a cross-field rule: its message already says all
            lines.append(str(err.get("ctx", {}).get("error", err["msg"])))
            continue
        name = loc[0]
        if name not in field_names():
            lines.append(unknown_key_message(name, origin(name) if origin else ""))
            continue
        s = setting(name)
        value = values.get(name, err.get("input"))
        where = origin(s.key) if origin else ""
        head = f"{s.key}={value!r}" + (f" (from {where})" if where else "")
        kind = err["type"]
        if kind == "choice":
            close = difflib.get_close_matches(str(value), s.choices, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            lines.append(f"{head} is not supported{hint}; choose one of: {', '.join(s.choices)}")
        elif kind in ("finite_number",):
            lines.append(f"{head} is not a finite number; give {s.allowed()}")
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            lines.append(f"{head} is outside {s.range_text()}; pick a value in that range")
        elif any(t in kind for t in _TYPE_ERRORS):
            lines.append(f"{head} is not {s.kind}; give {s.allowed()}")
        else:
            lines.append(f"{head}: {err['msg']}; give {s.allowed()}")
    return "\n".join(dict.fromkeys(lines))
