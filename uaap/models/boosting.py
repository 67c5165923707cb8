"""XGBoost grown round by round across clients (Flower's FedXgbBagging / FedXgbCyclic): the booster as bytes.

A client loads the global booster, adds ``xgb-local-rounds`` boosting rounds on its own rows and sends back either
those new trees only (bagging: the server appends every client's trees) or the whole booster (cyclic: the next
client continues from it). On the wire a booster is XGBoost's own JSON in one uint8 array (Flower's layout:
``ArrayRecord([bytes])``, key ``"0"``); the global model of round 1 is empty.

Every booster that arrives is checked before it is used (:func:`check_booster`): bounded size, XGBoost's JSON of a
``gbtree`` with this run's objective, classes, features and fixed intercept, exactly the number of trees the round
expects, each tree well formed (children, split features in range, finite values), and under cyclic training the
global model's trees unchanged in front of the new ones.

Two choices the federation needs, that plain XGBoost does not:

* the intercept is fixed (``base_score`` 0.5: margin 0 for two classes, the same margin for every class of K, which
  softmax ignores): XGBoost 3 estimates it from the labels by default, and under bagging the first client's local
  estimate (of its skewed labels) would become the global one;
* Flower's ``aggregate_bagging`` appends ``num_parallel_tree`` trees per reply and files them under class 0, which is
  right for one output and one local round only. A reply of R local rounds over K classes holds K x R trees:
  :func:`as_one_group` makes it say so before Flower appends it, and :func:`restore_classes` gives the aggregate
  back XGBoost's layout (one tree per class per round).

Evaluation is from summed counts (:func:`uaap.metrics.classification_counts`), as for every family.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.errors import ConfigError

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

    from uaap.config import RunConfig
    from uaap.data import Dataset

BASE_SCORE = 0.5
KEY = "0"  # Flower's FedXgb strategies read and write the booster under this array name
BYTES_PER_NODE = 512  # XGBoost writes ~100 bytes of JSON per node (depth-6 trees); generous, still bounded
BYTES_PER_TREE = 1024
BYTES_OVERHEAD = 16 * 1024
_NODE_ARRAYS = (
    "base_weights",
    "default_left",
    "left_children",
    "loss_changes",
    "parents",
    "right_children",
    "split_conditions",
    "split_indices",
    "split_type",
    "sum_hessian",
)


class BoosterError(ValueError):
    """A booster that is not what this round expects (the message says what differs)."""


@dataclass(frozen=True)
class BoostSettings:
    """What every client of a run boosts with: the data's shape and the run's XGBoost settings."""

    n_features: int
    n_classes: int
    max_depth: int = 4
    eta: float = 0.3
    local_rounds: int = 1
    seed: int = 0

    @property
    def groups(self) -> int:
        """Trees per boosting round: one per class, or one for two classes (a single logit)."""
        return 1 if self.n_classes <= 2 else self.n_classes

    @property
    def objective(self) -> str:
        """XGBoost's objective for this many classes."""
        return "binary:logistic" if self.n_classes <= 2 else "multi:softprob"

    def params(self) -> dict[str, Any]:
        """XGBoost's training parameters (one thread: simulated clients share the machine's cores)."""
        out: dict[str, Any] = {
            "objective": self.objective,
            "tree_method": "hist",
            "max_depth": self.max_depth,
            "eta": self.eta,
            "base_score": BASE_SCORE,
            "nthread": 1,
            "seed": self.seed,
            "verbosity": 0,
        }
        if self.n_classes > 2:
            out["num_class"] = self.n_classes
        return out

    @property
    def max_nodes(self) -> int:
        """Nodes a tree of ``max_depth`` can have."""
        return int(2 ** (self.max_depth + 1)) - 1

    def max_bytes(self, trees: int) -> int:
        """The largest JSON a booster of ``trees`` trees of this depth can need."""
        return BYTES_OVERHEAD + trees * (BYTES_PER_TREE + self.max_nodes * BYTES_PER_NODE)


def settings(cfg: RunConfig, n_features: int, n_classes: int) -> BoostSettings:
    """The run's boosting settings for data of ``n_features`` columns and ``n_classes`` classes."""
    if n_classes < 2:
        raise ConfigError("model=xgboost federates classification only (2 or more classes); this target has one")
    return BoostSettings(
        n_features=n_features,
        n_classes=n_classes,
        max_depth=cfg.xgb_max_depth,
        eta=cfg.xgb_eta,
        local_rounds=cfg.xgb_local_rounds,
        seed=cfg.seed,
    )


# ---- the booster on the wire -----------------------------------------------------------------------------


def empty_record() -> ArrayRecord:
    """Round 1's global model: no booster yet (Flower's FedXgb strategies start from empty bytes)."""
    return to_record(b"")


def to_record(raw: bytes) -> ArrayRecord:
    """A booster's bytes as Flower's FedXgb strategies carry them: one uint8 array named ``"0"``."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({KEY: Array(np.frombuffer(raw, dtype=np.uint8).copy())})


def from_record(record: ArrayRecord, max_bytes: int | None = None) -> bytes:
    """The booster's bytes in a record of :func:`to_record`'s layout (``max_bytes`` bounds them before copying)."""
    if list(record.keys()) != [KEY]:
        raise BoosterError(f"a booster travels as one array named {KEY!r}; got {sorted(record.keys())[:5]}")
    array = record[KEY]
    if array.dtype != "uint8" or len(array.shape) != 1:
        raise BoosterError(f"a booster is a 1-D uint8 array; got {array.dtype} {tuple(array.shape)}")
    if max_bytes is not None and len(array.data) > max_bytes:
        raise BoosterError(f"the booster carries {len(array.data)} bytes; at most {max_bytes} fit this round's trees")
    return bytes(array.numpy().tobytes())


def load(raw: bytes, settings: BoostSettings) -> Any:
    """An ``xgboost.Booster`` from a booster's bytes."""
    import xgboost as xgb

    booster = xgb.Booster(params=settings.params())
    booster.load_model(bytearray(raw))
    return booster


def trees_of(raw: bytes) -> list[dict[str, Any]]:
    """The trees of a booster's JSON, as XGBoost writes them (none for the empty model)."""
    return list(_model(json.loads(raw))["trees"]) if raw else []


def count_trees(raw: bytes) -> int:
    """Trees in a booster's JSON (0 for the empty model)."""
    return len(trees_of(raw))


# ---- local boosting and evaluation ------------------------------------------------------------------------


def local_boost(global_raw: bytes, data: Dataset, settings: BoostSettings, *, new_only: bool) -> tuple[bytes, float]:
    """Add ``settings.local_rounds`` boosting rounds on ``data`` to the global booster (empty: start one).

    Returns the booster to send (``new_only``: just the rounds added here, for bagging; else the whole booster,
    for cyclic training) and the log loss of the whole local booster on ``data``.
    """
    import xgboost as xgb

    dtrain = xgb.DMatrix(np.ascontiguousarray(data.X, dtype=np.float32), label=data.y)
    booster = xgb.Booster(params=settings.params(), cache=[dtrain])
    if global_raw:
        booster.load_model(bytearray(global_raw))
        booster.set_param(settings.params())
    start = booster.num_boosted_rounds() if global_raw else 0
    for i in range(settings.local_rounds):
        booster.update(dtrain, start + i)
    proba = _proba(booster.predict(dtrain), settings.n_classes)
    loss = float(-np.log(proba[np.arange(len(data.y)), data.y] + 1e-12).mean())
    end = booster.num_boosted_rounds()
    sent = booster[start:end] if new_only else booster
    return bytes(sent.save_raw("json")), loss


def predict_proba(raw: bytes, X: np.ndarray, settings: BoostSettings) -> np.ndarray:
    """Class probabilities (rows sum to 1) of a booster; the empty model predicts every class alike."""
    if not raw:
        return np.full((len(X), settings.n_classes), 1.0 / settings.n_classes)
    import xgboost as xgb

    booster = load(raw, settings)
    return _proba(booster.predict(xgb.DMatrix(np.ascontiguousarray(X, dtype=np.float32))), settings.n_classes)


def evaluate_counts(raw: bytes, data: Dataset, settings: BoostSettings) -> dict[str, Any]:
    """The summable counts of a booster on ``data`` (a client sends these, never its own ratios)."""
    from uaap.metrics import classification_counts

    return classification_counts(data.y, predict_proba(raw, data.X, settings))


def _proba(pred: np.ndarray, n_classes: int) -> np.ndarray:
    pred = np.asarray(pred, dtype=np.float64)
    if n_classes <= 2:
        p1 = pred.reshape(-1)
        return np.stack([1.0 - p1, p1], axis=1)
    return pred.reshape(-1, n_classes)


def to_estimator(raw: bytes, settings: BoostSettings) -> Any:
    """The booster as a fitted ``xgboost.XGBClassifier`` (what ``uaap export`` and the workspace store)."""
    from xgboost import XGBClassifier

    estimator = XGBClassifier(
        n_estimators=count_trees(raw) // settings.groups,
        max_depth=settings.max_depth,
        learning_rate=settings.eta,
        base_score=BASE_SCORE,
        n_jobs=1,
        tree_method="hist",
    )
    estimator.load_model(bytearray(raw))
    return estimator


# ---- checking a booster that arrives ------------------------------------------------------------------------


def check_booster(
    raw: bytes, settings: BoostSettings, *, trees: int, prefix: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Refuse a booster that is not this run's: returns its parsed JSON, or raises :class:`BoosterError`.

    ``trees``: exactly how many trees it must hold; ``prefix``: the trees it must start with, unchanged (the
    global model's, under cyclic training). The size is bounded before anything is parsed.
    """
    if len(raw) > settings.max_bytes(trees):
        raise BoosterError(f"the booster is {len(raw)} bytes; {trees} trees of depth {settings.max_depth} need less")
    try:
        doc: dict[str, Any] = json.loads(raw, parse_constant=_no_constant)
        learner = doc["learner"]
        param = learner["learner_model_param"]
        objective = learner["objective"]["name"]
        booster = learner["gradient_booster"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BoosterError(f"not an XGBoost JSON model ({exc.__class__.__name__}: {str(exc)[:80]})") from None
    if objective != settings.objective:
        raise BoosterError(f"objective {str(objective)[:40]!r}; this run boosts {settings.objective!r}")
    expected = {"num_feature": settings.n_features, "num_class": 0 if settings.n_classes <= 2 else settings.n_classes}
    for key, value in expected.items():
        if str(param.get(key)) != str(value):
            raise BoosterError(f"{key}={str(param.get(key))[:20]}; this run's model has {value}")
    intercept = _floats(param.get("base_score"), "base_score")
    if len(intercept) not in (1, settings.groups) or any(v != BASE_SCORE for v in intercept):
        raise BoosterError(f"base_score {str(param.get('base_score'))[:60]}; the federation fixes it at {BASE_SCORE}")
    if not isinstance(booster, dict) or booster.get("name") != "gbtree":
        raise BoosterError("only gbtree boosters federate (no dart, no linear booster)")
    model = _model(doc)
    found = model.get("trees")
    if not isinstance(found, list) or len(found) != trees:
        raise BoosterError(f"{len(found) if isinstance(found, list) else 'no'} trees; this round expects {trees}")
    groups = settings.groups
    info = model.get("tree_info")
    if info != [i % groups for i in range(trees)]:
        raise BoosterError("tree_info does not give each round one tree per class, in class order")
    if model.get("iteration_indptr") != list(range(0, trees + 1, groups)):
        raise BoosterError("iteration_indptr does not hold one tree per class per round")
    if str(model.get("gbtree_model_param", {}).get("num_parallel_tree")) != "1":
        raise BoosterError("num_parallel_tree must be 1 (one tree per class per round)")
    if prefix is not None and found[: len(prefix)] != prefix:
        raise BoosterError(f"the first {len(prefix)} trees differ from the global model's: they may not change")
    for i, tree in enumerate(found):
        _check_tree(tree, i, settings)
    try:
        load(raw, settings)  # what XGBoost itself accepts, last: the checks above bound what it is given
    except Exception as exc:  # noqa: BLE001 - XGBoostError or anything its parser raises
        raise BoosterError(f"XGBoost cannot load it: {str(exc).splitlines()[0][:120]}") from None
    return doc


def _check_tree(tree: Any, index: int, settings: BoostSettings) -> None:
    if not isinstance(tree, dict):
        raise BoosterError(f"tree {index} is not an object")
    try:
        n = int(tree["tree_param"]["num_nodes"])
        arrays = {k: tree[k] for k in _NODE_ARRAYS}
    except (KeyError, TypeError, ValueError) as exc:
        raise BoosterError(f"tree {index} lacks {exc}") from None
    if not 1 <= n <= settings.max_nodes:
        raise BoosterError(
            f"tree {index} has {n} nodes; depth {settings.max_depth} allows at most {settings.max_nodes}"
        )
    if str(tree["tree_param"].get("num_feature")) != str(settings.n_features):
        raise BoosterError(f"tree {index} declares {tree['tree_param'].get('num_feature')!r:.20} features")
    if any(not isinstance(v, list) or len(v) != n for v in arrays.values()):
        raise BoosterError(f"tree {index}: every node array must have {n} entries")
    if any(tree.get(k) for k in ("categories", "categories_nodes", "categories_segments", "categories_sizes")):
        raise BoosterError(f"tree {index} has categorical splits; this run's features are numbers")
    left, right = np.asarray(arrays["left_children"]), np.asarray(arrays["right_children"])
    if left.dtype.kind != "i" or right.dtype.kind != "i":
        raise BoosterError(f"tree {index}: children must be whole numbers")
    leaf = left == -1
    inner = ~leaf
    if np.any(leaf != (right == -1)) or np.any(
        (left[inner] < 1) | (left[inner] >= n) | (right[inner] < 1) | (right[inner] >= n)
    ):
        raise BoosterError(f"tree {index}: children must be nodes of the tree, or -1 on both sides for a leaf")
    seen, todo = {0}, [0]
    while todo:  # a tree: every node reached from the root once at most (no cycle, no shared child)
        node = todo.pop()
        if inner[node]:
            for child in (int(left[node]), int(right[node])):
                if child in seen:
                    raise BoosterError(f"tree {index}: node {child} is reached twice; not a tree")
                seen.add(child)
                todo.append(child)
    features = np.asarray(arrays["split_indices"])
    if features.dtype.kind != "i" or np.any((features[inner] < 0) | (features[inner] >= settings.n_features)):
        raise BoosterError(f"tree {index} splits on a feature outside 0..{settings.n_features - 1}")
    if any(v for v in arrays["split_type"]):
        raise BoosterError(f"tree {index} has categorical splits; this run's features are numbers")
    for key in ("base_weights", "split_conditions", "loss_changes", "sum_hessian"):
        values = np.asarray(arrays[key])
        if values.dtype.kind not in "if" or not np.all(np.isfinite(values)):
            raise BoosterError(f"tree {index}: {key} must be finite numbers")


def _model(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["learner"]["gradient_booster"]["model"]  # type: ignore[no-any-return]  # XGBoost's JSON


def _floats(text: Any, key: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).strip("[]").split(",")]
    except ValueError:
        raise BoosterError(f"{key}={str(text)[:40]!r} is not a list of numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise BoosterError(f"{key} must be finite")
    return values


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a booster may hold")


# ---- Flower's bagging with one tree per class -------------------------------------------------------------


def as_one_group(raw: bytes, settings: BoostSettings) -> bytes:
    """A bagging reply that tells Flower's ``aggregate_bagging`` to append all its trees (K per round, R rounds).

    Flower appends ``num_parallel_tree`` trees from each reply: the reply says K x R, so every tree of its local
    rounds (one per class each) is kept. :func:`restore_classes` undoes it on the aggregate.
    """
    if settings.groups * settings.local_rounds == 1:
        return raw
    doc = json.loads(raw)
    _model(doc)["gbtree_model_param"]["num_parallel_tree"] = str(settings.groups * settings.local_rounds)
    return json.dumps(doc).encode()


def restore_classes(raw: bytes, settings: BoostSettings) -> bytes:
    """The aggregate of :func:`as_one_group` replies in XGBoost's layout: trees cycle through the classes, one
    tree per class per round."""
    if settings.groups * settings.local_rounds == 1 or not raw:
        return raw
    doc = json.loads(raw)
    model = _model(doc)
    k = settings.groups
    n = len(model["trees"])
    model["gbtree_model_param"]["num_parallel_tree"] = "1"
    model["gbtree_model_param"]["num_trees"] = str(n)
    model["tree_info"] = [i % k for i in range(n)]
    model["iteration_indptr"] = list(range(0, n + 1, k))
    for i, tree in enumerate(model["trees"]):
        tree["id"] = i
    return json.dumps(doc).encode()
