"""Tree ensembles (scikit-learn trees/forests, XGBoost boosters) as flat node tables.

Every split is stored as ``go left iff x[feature] < threshold`` on float32 inputs. scikit-learn
compares ``float32(x) <= t`` with a float64 ``t``: the largest float32 ``<= t`` rounded up by one
ulp gives the same decision with ``<`` for every float32 ``x`` (emlearn's 6-digit ``<`` thresholds
get this wrong near a split). XGBoost already splits with ``x < t`` in float32.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edge.errors import ExportError, NotApplicable

TREE_FAMILIES = ("decision_tree", "random_forest", "extra_trees", "xgboost")
FEDERATED_FOREST = "federated_forest"  # uaap.models.forest.FederatedForestClassifier: a class-weighted vote
C_TREE_FAMILIES = (*TREE_FAMILIES, FEDERATED_FOREST)  # what the C exporter writes (Core ML: the library's own)


@dataclass(frozen=True)
class Tree:
    """One tree: node arrays (leaves have ``feature == -1``) and one value row per node."""

    feature: np.ndarray  # int32
    threshold: np.ndarray  # float32, go left iff x < threshold
    left: np.ndarray  # int32
    right: np.ndarray  # int32
    value: np.ndarray  # float64 (n_nodes, width): class probabilities (sklearn) or a margin (XGBoost, width 1)
    target: int  # class the tree adds to (XGBoost), -1 when it carries a full class vector


@dataclass(frozen=True)
class Ensemble:
    """Trees plus how their leaves combine into class probabilities."""

    trees: list[Tree]
    n_features: int
    n_classes: int
    aggregate: str  # "mean" (average of class vectors) or "sum" (margins, then link)
    link: str  # "none", "sigmoid" (binary margin), "softmax" or "l1" (class scores divided by their sum)
    bias: np.ndarray  # added to the summed margins

    @property
    def n_nodes(self) -> int:
        """Total number of nodes."""
        return int(sum(len(t.feature) for t in self.trees))

    def margins(self, X: np.ndarray) -> np.ndarray:
        """Summed (or averaged) leaf values per output, before the link (float64)."""
        X = np.asarray(X, dtype=np.float32)
        width = self.n_classes if self.aggregate == "mean" else (1 if self.link == "sigmoid" else self.n_classes)
        out = np.zeros((len(X), width))
        for tree in self.trees:
            leaves = leaf_index(tree, X)
            if tree.target < 0:
                out += tree.value[leaves]
            else:
                out[:, tree.target] += tree.value[leaves, 0]
        if self.aggregate == "mean":
            out /= len(self.trees)
        return out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (float64), the reference the C and Core ML exports are compared with."""
        m = self.margins(X) + self.bias
        if self.link == "sigmoid":
            p = 1.0 / (1.0 + np.exp(-m[:, 0]))
            return np.column_stack([1.0 - p, p])
        if self.link == "softmax":
            e = np.exp(m - m.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        if self.link == "l1":
            return m / m.sum(axis=1, keepdims=True)
        return m


def leaf_index(tree: Tree, X: np.ndarray) -> np.ndarray:
    """The leaf each float32 row reaches."""
    node = np.zeros(len(X), dtype=np.int64)
    rows = np.arange(len(X))
    for _ in range(len(tree.feature)):
        feat = tree.feature[node]
        inner = feat >= 0
        if not inner.any():
            break
        go_left = X[rows, np.where(inner, feat, 0)] < tree.threshold[node]
        node = np.where(inner, np.where(go_left, tree.left[node], tree.right[node]), node)
    return node


def strict_threshold(t: np.ndarray) -> np.ndarray:
    """float32 ``s`` with ``x < s  <=>  x <= t`` for every float32 ``x`` (``t`` float64)."""
    t = np.asarray(t, dtype=np.float64)
    down = t.astype(np.float32)
    down = np.where(down.astype(np.float64) > t, np.nextafter(down, np.float32(-np.inf)), down)
    return np.nextafter(down, np.float32(np.inf)).astype(np.float32)


def ensemble(model: Any, family: str, X: np.ndarray | None = None) -> Ensemble:
    """Flatten a fitted tree model; ``X`` (held-out rows) fixes XGBoost's intercept exactly."""
    if family == "decision_tree":
        return _sklearn([model], model.n_features_in_, len(model.classes_))
    if family in ("random_forest", "extra_trees"):
        return _sklearn(list(model.estimators_), model.n_features_in_, len(model.classes_))
    if family == FEDERATED_FOREST:  # leaves carry trees x weight x frequency; the class scores are normalised
        plain = _sklearn(list(model.estimators_), model.n_features_in_, len(model.classes_))
        n = len(plain.trees)
        weighted = [replace(t, value=t.value * (n * w)) for t, w in zip(plain.trees, model.class_weight_, strict=True)]
        return Ensemble(weighted, plain.n_features, plain.n_classes, "mean", "l1", plain.bias)
    if family == "xgboost":
        if X is None:
            raise ExportError("an XGBoost export needs sample rows to pin its intercept (base_score)")
        return _xgboost(model, X)
    raise NotApplicable(f"model family {family!r} is not a tree ensemble")


def _sklearn(trees: list[Any], n_features: int, n_classes: int) -> Ensemble:
    out = []
    for est in trees:
        t = est.tree_
        value = np.asarray(t.value[:, 0, :], dtype=np.float64)
        sums = value.sum(axis=1, keepdims=True)
        value = value / np.where(sums == 0, 1.0, sums)
        feature = np.where(t.children_left < 0, -1, t.feature).astype(np.int32)
        out.append(
            Tree(
                feature,
                strict_threshold(t.threshold),
                t.children_left.astype(np.int32),
                t.children_right.astype(np.int32),
                value,
                -1,
            )
        )
    return Ensemble(out, int(n_features), int(n_classes), "mean", "none", np.zeros(n_classes))


def _xgboost(model: Any, X: np.ndarray) -> Ensemble:
    booster = model.get_booster()
    doc = json.loads(bytes(booster.save_raw("json")))
    gb = doc["learner"]["gradient_booster"]
    if gb.get("name") != "gbtree":
        raise NotApplicable(f"XGBoost booster {gb.get('name')!r} is not supported; only gbtree trees export")
    objective = doc["learner"]["objective"]["name"]
    n_classes = len(model.classes_)
    if objective == "binary:logistic":
        link = "sigmoid"
    elif objective in ("multi:softprob", "multi:softmax"):
        link = "softmax"
    else:
        raise NotApplicable(f"XGBoost objective {objective!r} is not supported; use binary:logistic or multi:softprob")
    trees = []
    for tree_doc, group in zip(gb["model"]["trees"], gb["model"]["tree_info"], strict=True):
        left = np.asarray(tree_doc["left_children"], dtype=np.int32)
        if int(tree_doc["tree_param"].get("size_leaf_vector", "1")) > 1:
            raise NotApplicable("XGBoost multi-output (vector-leaf) trees are not supported")
        cond = np.asarray(tree_doc["split_conditions"], dtype=np.float32)
        feature = np.where(left < 0, -1, np.asarray(tree_doc["split_indices"], dtype=np.int32))
        value = cond.astype(np.float64)[:, None]
        trees.append(
            Tree(
                feature.astype(np.int32),
                cond,
                left,
                np.asarray(tree_doc["right_children"], dtype=np.int32),
                value,
                int(group) if link == "softmax" else 0,
            )
        )
    width = 1 if link == "sigmoid" else n_classes
    ens = Ensemble(trees, int(model.n_features_in_), n_classes, "sum", link, np.zeros(width))
    # XGBoost 3 stores base_score per objective/version in ways converters misread: measure it instead.
    import xgboost

    sample = np.asarray(X, dtype=np.float32)
    margin = booster.predict(xgboost.DMatrix(sample), output_margin=True).reshape(len(sample), -1)
    diff = margin.astype(np.float64) - ens.margins(sample)
    bias = diff.mean(axis=0)
    if np.abs(diff - bias).max() > 1e-4:
        raise ExportError(
            f"XGBoost margins differ from the parsed trees by a non-constant {np.abs(diff - bias).max():.2e}; "
            "the booster has features (missing values, categorical splits, dart) this exporter does not handle"
        )
    return Ensemble(trees, ens.n_features, n_classes, "sum", link, bias)
