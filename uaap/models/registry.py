"""Every model family a user can pick, and where each runs: one table that the CLI checks before starting.

A family is a name, a one-line summary and its :class:`Capabilities`: the tasks it serves, whether it trains
centrally, how it federates (``weights``: FedAvg/FedProx over parameters; ``boosting``: Flower's XGBoost
strategies; ``trees``: an ensemble of trees grown on each client; ``statistics``: exact, from summed sufficient
statistics), which strategies, secure aggregation (CKKS) and differential privacy apply, and the export
formats. ``uaap models`` prints the table; :func:`check_combination` refuses a run the family cannot do, naming
the combinations that exist, before Ray or Flower start.

This module is data only (no torch, no scikit-learn): :mod:`uaap.config` imports it to validate a run.
The estimators themselves are built by :func:`uaap.models.estimators.build`.
"""

from __future__ import annotations

from dataclasses import dataclass

from uaap.errors import ConfigError

# How a family federates, in the words `uaap models` uses.
FEDERATION = {
    "weights": "FedAvg/FedProx, a server optimiser or a robust aggregator over the parameters",
    "boosting": "XGBoost trees added round by round (Flower's FedXgbBagging / FedXgbCyclic), or grown by the server "
    "from the clients' summed gradient histograms (fedhist: the trees of the pooled rows)",
    "trees": "an ensemble of the trees each client grows, or trees grown by the server from the clients' summed "
    "class histograms (fedhist: the trees of the pooled rows)",
    "statistics": "exact: the server sums each client's sufficient statistics",
    "": "central only",
}
# Flower's strategies over parameters (flwr.serverapp.strategy, wrapped by strategies.base.build_strategy): the
# weighted means first (the only ones a CKKS sum or central DP's noisy sum can compute), then the server
# optimisers, then the robust aggregators.
MEAN_STRATEGIES = ("fedavg", "fedprox")
SERVER_OPTIMIZERS = ("fedadam", "fedyogi", "fedadagrad", "fedavgm")
ROBUST_STRATEGIES = ("fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
WEIGHT_STRATEGIES = MEAN_STRATEGIES + SERVER_OPTIMIZERS + ROBUST_STRATEGIES
EDGE_FORMATS = ("onnx", "tflite", "coreml", "c")
# Families fitted from summed sufficient statistics: the server adds the clients' statistics (strategies.statistics).
SUM_STRATEGIES = ("fedstats",)
# Flower's XGBoost strategies (flwr.serverapp.strategy, wrapped by strategies.boosting): trees, not weights.
BOOSTING_STRATEGIES = ("fedxgb-bagging", "fedxgb-cyclic")
# Families grown as trees on each client and ensembled on the server (strategies.forest).
TREE_STRATEGIES = ("fedtrees",)
# Trees the server grows level by level from the clients' summed histograms (strategies.histtrees).
HIST_STRATEGIES = ("fedhist",)
BOTH = ("classification", "regression")


@dataclass(frozen=True)
class Capabilities:
    """Where a family runs. ``federated`` is one of :data:`FEDERATION`'s keys ("" for central only)."""

    tasks: tuple[str, ...]
    central: bool = True
    federated: str = ""
    strategies: tuple[str, ...] = ()
    secure_aggregation: bool = False
    dp: bool = False
    export: tuple[str, ...] = ()
    rounds: int = 0  # 0: any number of rounds; else exactly this many (PCA's statistics are complete after one)


@dataclass(frozen=True)
class ModelFamily:
    """One family of the registry."""

    name: str
    summary: str
    capabilities: Capabilities


def _torch(name: str, summary: str, tasks: tuple[str, ...], export: tuple[str, ...] = EDGE_FORMATS) -> ModelFamily:
    caps = Capabilities(
        tasks, federated="weights", strategies=WEIGHT_STRATEGIES, secure_aggregation=True, dp=True, export=export
    )
    return ModelFamily(name, summary, caps)


def _summed(tasks: tuple[str, ...], rounds: int = 0) -> Capabilities:
    """Exact from summed statistics, in the clear or under CKKS; federated only (`uaap explore` runs them centrally)."""
    return Capabilities(
        tasks, central=False, federated="statistics", strategies=SUM_STRATEGIES, secure_aggregation=True, rounds=rounds
    )


FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in (
        _torch(
            "logreg",
            "linear model: logistic regression, or linear regression for a numeric target",
            ("classification", "regression"),
        ),  # fmt: skip
        _torch(
            "svm",
            "linear support vector machine: the multi-class hinge loss with an L2 margin term",
            ("classification",),
        ),  # fmt: skip
        _torch("mlp", "feed-forward network, two hidden layers of 64", ("classification", "regression")),
        _torch("cnn", "convolutional network for images of any shape (channels x height x width)", ("classification",)),
        _torch(
            "autoencoder",
            "autoencoder for anomaly detection (--task anomaly): trained on normal rows, a row is flagged when its "
            "reconstruction error exceeds a quantile (anomaly-quantile) of the normal validation rows' errors",
            ("anomaly",),
            export=("onnx",),
        ),
        _torch(
            "lstm",
            "recurrent network (Opacus' DP-capable LSTM, 32 hidden units) reading each row as a sequence, one value "
            "a step: classifier or regressor over fixed-length windows, and the global forecaster of --task forecast "
            "(lag windows, one step ahead, forecasts fed back for the horizon)",
            ("classification", "regression", "forecast"),
            export=("onnx",),
        ),
        _torch(
            "gru",
            "recurrent network (Opacus' DP-capable GRU, 32 hidden units), as lstm",
            ("classification", "regression", "forecast"),
            export=("onnx",),
        ),
        ModelFamily(
            "embedding_bag",
            "text classifier: each input column a token id (a hashed-word bucket, or a TF-IDF word centrally) weighted "
            "by its value, summed through torch's EmbeddingBag (32 wide), then ReLU and a linear layer; no DP (Opacus "
            "has no per-example gradients for a weighted EmbeddingBag)",
            Capabilities(
                ("classification",),
                federated="weights",
                strategies=WEIGHT_STRATEGIES,
                secure_aggregation=True,
                export=("onnx",),
            ),
        ),
        ModelFamily(
            "xgboost",
            "gradient-boosted trees (XGBoost): each round the clients add trees, appended together (bagging) or "
            "one client after the other (cyclic), or the server grows each round's trees from the clients' summed "
            "gradient histograms (fedhist)",
            Capabilities(
                ("classification",),
                federated="boosting",
                strategies=BOOSTING_STRATEGIES + HIST_STRATEGIES,
                export=("onnx", "c"),
            ),
        ),
        ModelFamily(
            "random_forest",
            "random forest: each round every client grows trees-per-client trees on its own rows and the global "
            "forest keeps them all (fedtrees), or the server grows trees-per-client trees a round from the clients' "
            "summed class histograms (fedhist); tree-max-depth and tree-min-samples-leaf bound what a leaf reveals",
            Capabilities(
                ("classification", "regression"),
                federated="trees",
                strategies=TREE_STRATEGIES + HIST_STRATEGIES,
                export=("onnx", "c"),
            ),  # fmt: skip
        ),
        ModelFamily(
            "lightgbm",
            "gradient-boosted trees (LightGBM), central only: boost-rounds trees of xgb-max-depth, shrinkage xgb-eta",
            Capabilities(BOTH, export=("onnx",)),
        ),
        ModelFamily(
            "catboost",
            "gradient-boosted oblivious trees (CatBoost), central only: boost-rounds, xgb-max-depth, xgb-eta",
            Capabilities(BOTH, export=("onnx",)),
        ),
        ModelFamily(
            "kernel_svm",
            "kernel support vector machine (scikit-learn SVC with Platt-scaled probabilities, SVR), central only: "
            "svm-kernel, svm-c",
            Capabilities(BOTH, export=("onnx",)),
        ),
        ModelFamily(
            "isolation_forest",
            "isolation forest for anomaly detection (--task anomaly): each client isolates its normal rows with "
            "trees-per-client random trees; a row isolated in few splits scores high",
            Capabilities(("anomaly",), federated="trees", strategies=TREE_STRATEGIES),
        ),
        ModelFamily(
            "kmeans",
            "K-Means clustering (n-clusters): one Lloyd iteration per round from summed per-centroid sums and counts",
            _summed(("clustering",)),
        ),
        ModelFamily(
            "pca",
            "principal components (n-components) from the summed rows, column sums and X^T X: the pooled covariance",
            _summed(("decomposition",), rounds=1),
        ),
    )
}


def family(name: str) -> ModelFamily:
    """The family called ``name``; an unknown name is refused with the ones that exist."""
    if name not in FAMILIES:
        raise ConfigError(f"model={name!r} is not a model family; choose one of: {', '.join(FAMILIES)} (uaap models)")
    return FAMILIES[name]


def names() -> tuple[str, ...]:
    """Every family name, in the table's order."""
    return tuple(FAMILIES)


def check_combination(
    model: str,
    *,
    task: str = "auto",
    where: str = "any",
    strategy: str = "fedavg",
    secure_aggregation: str = "none",
    dp_local: bool = False,
    dp_central: bool = False,
    num_rounds: int = 0,
) -> None:
    """Refuse a run ``model`` cannot do, naming what it can (or which families can).

    ``where`` is "central" (``uaap train``), "federated" (a simulation or a deployment: the strategy is checked
    too) or "any" (the run config alone, which does not know yet where it will run).
    """
    caps = family(model).capabilities
    if task in ("classification", "regression", "anomaly", "forecast") and task not in caps.tasks:
        able = [f.name for f in FAMILIES.values() if task in f.capabilities.tasks]
        raise ConfigError(
            f"model={model!r} does not do {task}; it does {', '.join(caps.tasks)}. For {task}: {', '.join(able)}"
        )
    if caps.tasks == ("anomaly",) and task != "anomaly":
        raise ConfigError(
            f"model={model!r} detects anomalies only, not task={task!r}: pass --task anomaly with a two-class "
            "data set (the rarer class is the anomaly, e.g. breast_cancer's malignant rows)"
        )
    if secure_aggregation != "none" and strategy in HIST_STRATEGIES:
        raise ConfigError(
            f"strategy={strategy!r} cannot run under secure-aggregation={secure_aggregation!r}: the server adds the "
            "clients' histograms and must read their sum to choose each split, and under CKKS it holds no key. Use "
            "--secure-aggregation none (or a family that federates under CKKS)"
        )
    if secure_aggregation != "none" and not caps.secure_aggregation:
        able = [f.name for f in FAMILIES.values() if f.capabilities.secure_aggregation]
        raise ConfigError(
            f"model={model!r} cannot run under secure-aggregation={secure_aggregation!r}: what its clients send is "
            f"not a sum the server could add as ciphertexts. Families with secure aggregation: {', '.join(able)}; "
            "or use --secure-aggregation none"
        )
    if (dp_local or dp_central) and not caps.dp:
        flag = "--dp-local" if dp_local else "--dp-central"
        able = [f.name for f in FAMILIES.values() if f.capabilities.dp]
        raise ConfigError(
            f"model={model!r} has no differential privacy ({flag} true); families with DP: {', '.join(able)}; "
            f"or drop {flag}"
        )
    if where == "central" and not caps.central:
        raise ConfigError(f"model={model!r} trains only federated; run it with `uaap simulate` or flower-server")
    if where != "federated":
        return
    if not caps.federated:
        able = [f.name for f in FAMILIES.values() if f.capabilities.federated]
        raise ConfigError(
            f"model={model!r} trains only centrally (uaap train, uaap automl); federated families: {', '.join(able)}"
        )
    if strategy not in caps.strategies:
        raise ConfigError(
            f"model={model!r} federates as {FEDERATION[caps.federated]} and takes strategy "
            f"{' or '.join(caps.strategies)}, not strategy={strategy!r}"
        )
    if caps.rounds and num_rounds and num_rounds != caps.rounds:
        raise ConfigError(
            f"model={model!r} is exact after {caps.rounds} round(s) and takes num-rounds={caps.rounds}, not "
            f"num-rounds={num_rounds}: pass --num-rounds {caps.rounds}"
        )


def capability_table() -> list[dict[str, str]]:
    """One row per family, as `uaap models` prints it (Y / - for the yes-no columns)."""

    def yes(flag: bool) -> str:
        return "Y" if flag else "-"

    rows = []
    for f in FAMILIES.values():
        c = f.capabilities
        rows.append(
            {
                "family": f.name,
                "tasks": ", ".join(c.tasks),
                "central": yes(c.central),
                "federated": c.federated or "-",
                "strategies": ", ".join(c.strategies) or "-",
                "secure aggregation": yes(c.secure_aggregation),
                "dp": yes(c.dp),
                "export": ", ".join(c.export) or "-",
                "summary": f.summary,
            }
        )
    return rows
