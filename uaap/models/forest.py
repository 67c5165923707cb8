"""Random forests federated by ensembling: each client grows trees on its own rows, the server keeps them all.

A forest travels as six flat arrays (:class:`ForestArrays`): per-node children, split feature, threshold,
leaf value and cover, and per-tree node offsets, so merging clients' forests is a concatenation and checking a
reply is a handful of vectorised comparisons; nothing is pickled. :func:`to_sklearn` rebuilds a genuine
scikit-learn ``RandomForestClassifier``/``RandomForestRegressor``, so prediction, SHAP's TreeExplainer and the
edge exporters take it as they take a central forest.

What a tree reveals about its client's rows: each split threshold lies between two of the client's values of
that feature (scikit-learn splits at the midpoint of neighbouring sorted values), each leaf value is the class
frequencies (or the mean target) of the rows that reach it, and each node's cover counts those rows.
``min_samples_leaf`` bounds the smallest group a leaf describes (no leaf speaks of fewer rows) and ``max_depth``
bounds how many thresholds a path combines, i.e. how narrow a region of feature space a leaf can single out.
Trees are not sums, so they cannot travel under CKKS, and no DP mechanism applies to them here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from uaap.errors import ConfigError

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

    from uaap.data import Dataset

FIELDS = ("offsets", "children", "feature", "threshold", "value", "cover")
MAX_NODES = 1 << 22  # a reply describing more nodes than this is refused (about 200 MB of node arrays)


@dataclass(frozen=True)
class ForestArrays:
    """A forest as flat arrays: ``offsets`` (trees + 1), and per node ``children`` (n, 2; -1 at a leaf; indices
    local to the node's tree),
    ``feature`` and ``threshold`` (the split; -2 / nan at a leaf), ``value`` (n, outputs: class frequencies or the
    mean target) and ``cover`` (rows that reach the node)."""

    offsets: np.ndarray
    children: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray
    cover: np.ndarray

    @property
    def n_trees(self) -> int:
        """Number of trees."""
        return len(self.offsets) - 1

    def tree(self, k: int) -> ForestArrays:
        """Tree ``k`` alone (node indices local to it)."""
        a, b = int(self.offsets[k]), int(self.offsets[k + 1])
        return ForestArrays(
            np.array([0, b - a], dtype=np.int64), self.children[a:b], self.feature[a:b], self.threshold[a:b],
            self.value[a:b], self.cover[a:b],
        )  # fmt: skip


def empty(n_outputs: int) -> ForestArrays:
    """A forest of no trees (the global model before the first round)."""
    return ForestArrays(
        np.zeros(1, dtype=np.int64), np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64),
        np.zeros(0), np.zeros((0, n_outputs)), np.zeros(0),
    )  # fmt: skip


def from_sklearn(forest: Any) -> ForestArrays:
    """The arrays of a fitted scikit-learn forest (or a list of fitted decision trees)."""
    trees = getattr(forest, "estimators_", forest)
    parts = []
    for est in trees:
        t = est.tree_
        nodes = t.__getstate__()["nodes"]
        value = np.asarray(t.value, dtype=np.float64)[:, 0, :]  # (nodes, classes) or (nodes, 1)
        parts.append(
            (
                np.stack([nodes["left_child"], nodes["right_child"]], axis=1).astype(np.int64),
                nodes["feature"].astype(np.int64),
                np.where(nodes["left_child"] < 0, np.nan, nodes["threshold"]).astype(np.float64),
                value,
                nodes["weighted_n_node_samples"].astype(np.float64),
            )
        )
    if not parts:
        raise ConfigError("the forest has no trees")
    sizes = [len(p[1]) for p in parts]
    return ForestArrays(
        np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        *(np.concatenate([p[i] for p in parts]) for i in range(5)),
    )


def merge(forests: list[ForestArrays]) -> ForestArrays:
    """One forest holding every tree of ``forests``, in order."""
    kept = [f for f in forests if f.n_trees]
    if not kept:
        raise ConfigError("no client sent a tree")
    starts = np.cumsum([0] + [int(f.offsets[-1]) for f in kept])
    offsets = np.concatenate([[0]] + [f.offsets[1:] + s for f, s in zip(kept, starts, strict=False)])
    return ForestArrays(
        offsets.astype(np.int64),
        *(np.concatenate([getattr(f, name) for f in kept]) for name in FIELDS[1:]),
    )


def check(
    arrays: ForestArrays, n_features: int, n_outputs: int, *, regression: bool, max_nodes: int = MAX_NODES
) -> None:
    """Refuse a forest that is not a well-formed set of binary trees over ``n_features`` inputs.

    Every tree's children point forward inside that tree (so no cycle, no node shared between trees), leaves
    have no split and splits a finite threshold on an existing feature, and leaf values are finite (class
    frequencies in [0, 1] summing to 1 for a classifier). Raises ``ValueError`` naming the first problem.
    """
    off, ch, feat, thr = arrays.offsets, arrays.children, arrays.feature, arrays.threshold
    n = int(off[-1]) if off.ndim == 1 and len(off) else -1
    if off.ndim != 1 or len(off) < 2 or off[0] != 0 or np.any(np.diff(off) < 1):
        raise ValueError("offsets must start at 0 and grow by at least one node per tree")
    if n > max_nodes:
        raise ValueError(f"{n} nodes exceed the limit of {max_nodes}")
    if ch.shape != (n, 2) or feat.shape != (n,) or thr.shape != (n,) or arrays.cover.shape != (n,):
        raise ValueError(f"node arrays must hold {n} nodes: children (n, 2), feature, threshold, cover (n,)")
    if arrays.value.shape != (n, n_outputs):
        raise ValueError(f"value has shape {arrays.value.shape}; expected ({n}, {n_outputs})")
    tree_of = np.repeat(np.arange(len(off) - 1), np.diff(off))
    sizes, index = np.diff(off)[tree_of], np.arange(n) - off[:-1][tree_of]  # node indices are local to a tree
    leaf = ch[:, 0] < 0
    if np.any(leaf != (ch[:, 1] < 0)):
        raise ValueError("a node has exactly one child")
    inner = ~leaf
    if np.any((ch[inner] <= index[inner, None]) | (ch[inner] >= sizes[inner, None])):
        raise ValueError("a child points outside its tree or backwards")
    if np.any((feat[inner] < 0) | (feat[inner] >= n_features)) or not np.all(np.isfinite(thr[inner])):
        raise ValueError(f"a split uses a feature outside 0..{n_features - 1} or a non-finite threshold")
    if not np.all(np.isfinite(arrays.value)) or not np.all(np.isfinite(arrays.cover)) or np.any(arrays.cover < 0):
        raise ValueError("values and covers must be finite (covers non-negative)")
    if not regression and (np.any(arrays.value < 0) or not np.allclose(arrays.value.sum(1), 1.0, atol=1e-6)):
        raise ValueError("a classifier's node values must be class frequencies summing to 1")


def to_record(arrays: ForestArrays) -> ArrayRecord:
    """The forest as a Flower ``ArrayRecord`` (one array per field)."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({name: Array(np.ascontiguousarray(getattr(arrays, name))) for name in FIELDS})


def from_record(record: ArrayRecord) -> ForestArrays:
    """Inverse of :func:`to_record`; a record without exactly these fields raises ``ValueError``."""
    if sorted(record.keys()) != sorted(FIELDS):
        raise ValueError(f"a forest record holds {sorted(FIELDS)}; got {sorted(record.keys())}")
    types = {"offsets": np.int64, "children": np.int64, "feature": np.int64}
    return ForestArrays(**{k: record[k].numpy().astype(types.get(k, np.float64), copy=False) for k in FIELDS})


def to_sklearn(arrays: ForestArrays, n_features: int, n_classes: int) -> Any:
    """A fitted scikit-learn random forest holding these trees (``n_classes`` 1: a regressor)."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor
    from sklearn.tree._tree import NODE_DTYPE, Tree

    regression = n_classes == 1
    classes = np.arange(n_classes)
    trees = []
    for k in range(arrays.n_trees):
        t = arrays.tree(k)
        n = int(t.offsets[-1])
        nodes = np.zeros(n, dtype=NODE_DTYPE)
        nodes["left_child"], nodes["right_child"] = t.children[:, 0], t.children[:, 1]
        nodes["feature"] = np.where(t.children[:, 0] < 0, -2, t.feature)
        nodes["threshold"] = np.where(t.children[:, 0] < 0, -2.0, t.threshold)
        if not regression:  # Gini impurity follows from the class frequencies: gain importances work
            nodes["impurity"] = 1.0 - np.sum(t.value**2, axis=1)
        nodes["n_node_samples"] = np.rint(t.cover).astype(np.int64)
        nodes["weighted_n_node_samples"] = t.cover
        depth = _depth(t.children)
        tree = Tree(n_features, np.array([1 if regression else n_classes], dtype=np.intp), 1)
        tree.__setstate__({"max_depth": depth, "node_count": n, "nodes": nodes, "values": t.value[:, None, :].copy()})
        est = DecisionTreeRegressor() if regression else DecisionTreeClassifier()
        est.tree_, est.n_features_in_, est.n_outputs_, est.max_features_ = tree, n_features, 1, n_features
        if not regression:
            est.classes_, est.n_classes_ = classes, n_classes
        trees.append(est)
    forest = RandomForestRegressor() if regression else RandomForestClassifier()
    forest.estimators_, forest.n_features_in_, forest.n_outputs_ = trees, n_features, 1
    forest.estimator_ = DecisionTreeRegressor() if regression else DecisionTreeClassifier()
    forest.n_estimators = len(trees)
    if regression:
        return forest
    forest.classes_, forest.n_classes_ = classes, n_classes
    return FederatedForestClassifier.from_forest(forest, class_support(arrays))


def class_support(arrays: ForestArrays) -> np.ndarray:
    """Each tree's rows per class at its root (trees x classes): the class counts of the client that grew it, as
    its bootstrap sample drew them. Nothing beyond the tree itself: root value times root cover."""
    roots = arrays.offsets[:-1]
    return np.asarray(arrays.value[roots] * arrays.cover[roots, None], dtype=np.float64)


class FederatedForestClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]  # sklearn: untyped
    """A forest of trees grown by different clients, each class voted on by the trees that saw it.

    Averaging every tree's class frequencies (a plain random forest) lets a client that never saw class ``c``
    vote against it wherever its trees reach: under label skew (clients holding few classes) that costs about
    ten accuracy points on digits. Here class ``c``'s score is the average of the trees' frequency of ``c``
    weighted by how many rows of ``c`` each tree was grown on (:func:`class_support`), and the scores are then
    normalised. With the same class mix on every client this is the plain forest's average.

    ``forest_`` holds the trees as a scikit-learn forest (gain importances, tree explainers), ``class_weight_``
    the (trees x classes) weights, each column summing to 1.
    """

    def __init__(self) -> None:
        pass

    @classmethod
    def from_forest(cls, forest: Any, support: np.ndarray) -> FederatedForestClassifier:
        """The class-weighted vote of ``forest``'s trees with ``support`` (trees x classes) rows per class."""
        est = cls()
        totals = support.sum(axis=0)
        est.class_weight_ = support / np.where(totals > 0, totals, 1.0)
        est.forest_, est.classes_ = forest, forest.classes_
        est.n_classes_, est.n_features_in_ = forest.n_classes_, forest.n_features_in_
        return est

    @property
    def estimators_(self) -> list[Any]:
        """The trees (scikit-learn decision trees)."""
        return list(self.forest_.estimators_)

    @property
    def feature_importances_(self) -> np.ndarray:
        """Gain (mean decrease in Gini impurity) importances of the trees."""
        return np.asarray(self.forest_.feature_importances_, dtype=np.float64)

    def scores(self, X: Any) -> np.ndarray:
        """Unnormalised class scores: sum over trees of weight x leaf frequency."""
        X = np.asarray(X, dtype=np.float32)
        out = np.zeros((len(X), int(self.n_classes_)))
        for tree, weight in zip(self.forest_.estimators_, self.class_weight_, strict=True):
            out += tree.predict_proba(X) * weight
        return out

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities: the scores, normalised per row."""
        s = self.scores(X)
        total = s.sum(axis=1, keepdims=True)
        return np.where(total > 0, s / np.where(total > 0, total, 1.0), 1.0 / s.shape[1])

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class."""
        classes: np.ndarray = np.asarray(self.classes_)
        return np.asarray(classes[self.predict_proba(X).argmax(axis=1)])

    def evaluate(self, X: Any, y: Any) -> dict[str, float]:
        """The classification metrics (:mod:`uaap.metrics`) on rows ``X`` with labels ``y``."""
        from uaap.metrics import metrics_from_counts
        from uaap.models.estimators import evaluate_counts as counts

        return metrics_from_counts(counts(self, np.asarray(X), np.asarray(y), int(self.n_classes_)))

    def weighted_trees(self) -> Any:
        """A multi-output scikit-learn forest regressor whose average is :meth:`scores` (each leaf's class
        frequencies times trees x weight): what the ONNX exporter converts before it normalises (a classifier's
        converter would renormalise every leaf)."""
        from sklearn.ensemble import RandomForestRegressor
        from sklearn.tree import DecisionTreeRegressor
        from sklearn.tree._tree import Tree

        k, n = int(self.n_classes_), len(self.forest_.estimators_)
        trees = []
        for est, weight in zip(self.forest_.estimators_, self.class_weight_, strict=True):
            state = est.tree_.__getstate__()
            values = np.asarray(state["values"])[:, 0, :] * (n * weight)  # (nodes, classes)
            tree = Tree(int(self.n_features_in_), np.ones(k, dtype=np.intp), k)
            tree.__setstate__({**state, "values": np.ascontiguousarray(values[:, :, None])})
            reg = DecisionTreeRegressor()
            reg.tree_, reg.n_features_in_, reg.n_outputs_, reg.max_features_ = (
                tree,
                self.n_features_in_,
                k,
                self.n_features_in_,
            )
            trees.append(reg)
        forest = RandomForestRegressor()
        forest.estimators_, forest.n_features_in_, forest.n_outputs_ = trees, self.n_features_in_, k
        forest.estimator_, forest.n_estimators = DecisionTreeRegressor(), n
        return forest


def _depth(children: np.ndarray) -> int:
    depth = np.zeros(len(children), dtype=np.int64)
    for i in range(len(children)):  # children point forward: a parent's depth is final before its children's
        if children[i, 0] >= 0:
            depth[children[i]] = depth[i] + 1
    return int(depth.max()) if len(depth) else 0


def local_forest(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    n_estimators: int,
    max_depth: int,
    min_samples_leaf: int,
    seed: int,
) -> ForestArrays:
    """This client's trees, grown on its own rows (every class of the federation a column of the leaf values)."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    common = {
        "n_estimators": n_estimators,
        "max_depth": max_depth or None,
        "min_samples_leaf": min_samples_leaf,
        "random_state": seed,
        "n_jobs": 1,
    }
    if n_classes == 1:
        return from_sklearn(RandomForestRegressor(**common).fit(X, y))
    forest = RandomForestClassifier(**common).fit(X, y)
    arrays = from_sklearn(forest)
    full = np.zeros((len(arrays.value), n_classes))  # a client may lack classes: place its columns
    full[:, forest.classes_.astype(np.int64)] = arrays.value
    return ForestArrays(arrays.offsets, arrays.children, arrays.feature, arrays.threshold, full, arrays.cover)


def predictions(model: object, data: Dataset) -> np.ndarray:
    """Class probabilities, or predicted targets, of a scikit-learn forest on ``data``'s rows."""
    X = np.asarray(data.X, dtype=np.float32)
    out = model.predict(X) if data.regression else model.predict_proba(X)  # type: ignore[attr-defined]
    return np.asarray(out, dtype=np.float64)


def evaluate_counts(model: object, data: Dataset) -> dict[str, Any]:
    """The summable evaluation counts of ``model`` on ``data`` (what the server adds up)."""
    from uaap.metrics import anomaly_counts, classification_counts, regression_counts

    if data.task == "anomaly":  # an isolation forest's scores, binned like an autoencoder's errors
        return anomaly_counts(data.y, anomaly_scores(model, data.X))
    if data.regression:
        return regression_counts(data.y, predictions(model, data), center=data.target_mean)
    return classification_counts(data.y, predictions(model, data))


# ---- isolation forests: the same trees on the wire, anomaly scores from their path lengths -----------------------


def local_isolation_forest(X: np.ndarray, *, n_estimators: int, max_samples: int, seed: int) -> ForestArrays:
    """This client's isolation trees, grown on its (normal) rows; leaves carry no value, covers their rows.

    Each tree isolates a subsample of ``min(max_samples, rows)`` rows with random splits; a row's depth to its leaf,
    plus the expected depth of the rows it shares the leaf with (from the cover), is its path length.
    """
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(
        n_estimators=n_estimators, max_samples=min(max_samples, len(X)), random_state=seed, n_jobs=1
    ).fit(X)
    arrays = from_sklearn(forest)
    return ForestArrays(
        arrays.offsets, arrays.children, arrays.feature, arrays.threshold, np.zeros((len(arrays.cover), 1)),
        arrays.cover,
    )  # fmt: skip


def to_isolation_forest(arrays: ForestArrays, n_features: int, max_samples: int | None = None) -> Any:
    """A fitted scikit-learn ``IsolationForest`` holding these trees, normalising path lengths by ``max_samples``
    (default: the largest subsample a tree was grown on, its root's cover: 256 once every client has that many rows;
    a smaller client's trees are shallower and their rows' paths shorter, a bias the score accepts).

    Its ``score_samples`` is scikit-learn's: ``-2 ** (-mean path length / c(max_samples))``; :func:`anomaly_scores`
    turns it into a score that grows with abnormality. ``offset_`` is scikit-learn's ``contamination="auto"``
    (-0.5); UAAP's threshold is chosen on validation rows instead (``anomaly-quantile``).
    """
    from sklearn.ensemble import IsolationForest
    from sklearn.ensemble._iforest import _average_path_length
    from sklearn.tree import ExtraTreeRegressor

    if max_samples is None:
        max_samples = max(1, int(round(float(arrays.cover[arrays.offsets[:-1]].max()))))
    trees = to_sklearn(arrays, n_features, 1).estimators_
    extra = []
    for tree in trees:  # the same fitted tree, as the class an IsolationForest holds
        est = ExtraTreeRegressor(max_features=1)
        est.__dict__.update(tree.__dict__)
        extra.append(est)
    forest = IsolationForest(n_estimators=len(extra), max_samples=max_samples)
    forest.estimators_, forest.estimators_features_ = extra, [np.arange(n_features) for _ in extra]
    forest.estimator_ = ExtraTreeRegressor(max_features=1)
    forest.n_features_in_, forest.max_samples_, forest._max_samples = n_features, max_samples, max_samples
    forest._max_features = n_features  # every tree may split on every feature
    forest._seeds = np.zeros(len(extra), dtype=np.int64)
    forest.offset_ = -0.5
    forest._average_path_length_per_tree = tuple(_average_path_length(t.tree_.n_node_samples) for t in extra)
    forest._decision_path_lengths = tuple(t.tree_.compute_node_depths() for t in extra)
    return forest


def anomaly_scores(model: Any, X: Any) -> np.ndarray:
    """Each row's anomaly score in (0, 1]: 2 ** (-mean path length / c(n)), higher for rows isolated sooner."""
    return np.asarray(-model.score_samples(np.asarray(X, dtype=np.float32)), dtype=np.float64)


def outputs(task: str, n_classes: int) -> int:
    """Leaf-value columns: the classes, or 1 for a regression target or an isolation forest."""
    return n_classes if task == "classification" else 1


def model_of(arrays: ForestArrays, model: str, n_features: int, task: str, n_classes: int) -> Any:
    """The scikit-learn estimator of a forest's arrays: an ``IsolationForest`` for ``model="isolation_forest"``,
    else the class-weighted :class:`FederatedForestClassifier` or a ``RandomForestRegressor``."""
    if model == "isolation_forest":
        return to_isolation_forest(arrays, n_features)
    return to_sklearn(arrays, n_features, outputs(task, n_classes))
