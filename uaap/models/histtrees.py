"""Trees grown from histograms summed over clients (``fedhist``): the trees one pooled table would give.

Ensembling trees that each client grows alone (``fedtrees``, Flower's FedXgbBagging/Cyclic) gives every tree one
client's rows: on small or label-skewed partitions each tree is weaker than a pooled one, and the ensemble does
not recover it (digits, 5 clients: 5 points below a central forest). Here the server grows every tree, level by
level, from the clients' *summed* statistics, the horizontal histogram scheme of FedTree / SecureBoost:

1. **Bins.** Clients send each feature's minimum and maximum (merged by min/max), then a fine fixed-width
   histogram of each feature over that range (summed). The server places at most ``max_bins - 1`` cuts per
   feature at the quantiles of the summed histogram, on fine-bin boundaries. A feature with fewer distinct
   values than bins gets a cut at each value, as XGBoost's ``hist`` method does; continuous features are cut to
   within one fine bin of the pooled quantile.
2. **Levels.** For every open node of the trees being grown, each client sends, per candidate feature and bin,
   the sums of its rows' statistics: gradient and hessian of the loss (boosting), class counts or (n, sum y,
   sum y^2) (forest), weighted by a Poisson(1) bootstrap draw of its own for each forest tree. The server adds
   them, picks each node's best split (XGBoost's gain and leaf weight; Gini or squared-error decrease for a
   forest) and opens the children. A level is one message exchange; a boosting round (one tree per class) takes
   ``max_depth`` of them, a forest batch as many as its deepest tree.

The sums equal the pooled table's sums, so the federated tree equals the tree the same code grows on the pooled
rows (tested exactly), and for features of few distinct values the tree XGBoost grows (tested on digits).

What the server learns: each feature's range and a fine histogram of its values over all clients; per node and
candidate split, the sums above over all clients; every client's own contribution too, since these sums are sent
in the clear (secure aggregation would hide them, but the server must read the total to choose a split, which
CKKS under our trust model does not allow). Compared with ``fedtrees``, no tree is fitted to one client's rows
alone; ``min_samples_leaf`` (forest) and ``min_child_weight`` (boosting) bound the smallest group a leaf speaks of.

Everything travels as numpy arrays in one ``ArrayRecord`` (the growth state: bins, trees so far, open nodes),
which is also what a checkpoint stores, so a run resumes mid-tree. Trees use :class:`uaap.models.forest.
ForestArrays`'s layout with thresholds ``x <= t`` (``t`` the largest float32 below the cut, so scikit-learn,
XGBoost's ``x < cut`` and the float32 exporters decide every row alike). A finished forest becomes a
scikit-learn forest (:mod:`uaap.models.forest`), a finished booster XGBoost's own JSON (:func:`to_booster_json`).

Length: one protocol in one file: the request the server writes, the statistics a client computes for it and
the split the server picks from their sum must agree on every index.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.errors import ConfigError
from uaap.models.forest import ForestArrays

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

    from uaap.config import RunConfig

# Stages of a run's state.
RANGES, SKETCH, GROW = 0, 1, 2
SKETCH_BINS = 4096  # fine bins per feature the cut points are chosen from
BASE_SCORE = 0.5  # the booster's fixed intercept, as uaap.models.boosting's
K_RT_EPS = 1e-6  # XGBoost's smallest loss change worth a split
TREE_FIELDS = ("offsets", "children", "feature", "threshold", "value", "cover", "depth")
MAX_HIST_VALUES = 50_000_000  # a level whose histograms would hold more numbers is refused (grow fewer trees)


class HistError(ValueError):
    """A reply that does not answer the request it was sent (the message says what differs)."""


@dataclass(frozen=True)
class HistSpec:
    """What every party of a ``fedhist`` run grows: the trees' kind, the data's shape and the settings."""

    kind: str  # "boosting" (XGBoost's softmax/logistic boosting) or "forest" (a random forest)
    task: str  # classification | regression (forest only)
    n_features: int
    n_classes: int
    max_depth: int
    max_bins: int = 256
    eta: float = 0.3  # boosting: shrinkage
    reg_lambda: float = 1.0  # boosting: L2 on leaf weights
    min_child_weight: float = 1.0  # boosting: hessian a child needs
    trees_per_round: int = 20  # forest: trees grown per round
    min_samples_leaf: int = 1  # forest
    bootstrap: bool = True  # forest: Poisson(1) row weights per tree
    seed: int = 0

    @property
    def regression(self) -> bool:
        """Whether a forest predicts a number."""
        return self.task == "regression"

    @property
    def outputs(self) -> int:
        """Values a leaf holds: class frequencies (forest classifier), one mean or one boosting weight."""
        return self.n_classes if self.kind == "forest" and not self.regression else 1

    @property
    def groups(self) -> int:
        """Boosting: trees per round (one per class; one logit for two classes)."""
        return 1 if self.n_classes <= 2 else self.n_classes

    @property
    def n_stats(self) -> int:
        """Numbers a row contributes to a histogram bin."""
        if self.kind == "boosting":
            return 2  # gradient, hessian
        return 3 if self.regression else self.n_classes

    @property
    def features_per_node(self) -> int:
        """Candidate features of a node: all for boosting, sqrt(n) for a forest classifier, n/3 for a regressor."""
        if self.kind == "boosting":
            return self.n_features
        share = self.n_features / 3 if self.regression else math.sqrt(self.n_features)
        return max(1, min(self.n_features, int(share)))


def spec(cfg: RunConfig, n_features: int, n_classes: int, task: str) -> HistSpec:
    """The run's histogram-tree settings for its family (xgboost or random_forest) and data."""
    if cfg.model == "xgboost":
        if task != "classification" or n_classes < 2:
            raise ConfigError("model=xgboost strategy=fedhist boosts classifiers (2 or more classes)")
        return HistSpec("boosting", task, n_features, n_classes, cfg.xgb_max_depth, cfg.tree_bins, eta=cfg.xgb_eta,
                        seed=cfg.seed)  # fmt: skip
    if cfg.model == "random_forest":
        return HistSpec("forest", task, n_features, n_classes, cfg.tree_max_depth, cfg.tree_bins,
                        trees_per_round=cfg.trees_per_client, min_samples_leaf=cfg.tree_min_samples_leaf,
                        seed=cfg.seed)  # fmt: skip
    raise ConfigError(f"strategy=fedhist grows model=xgboost or random_forest, not {cfg.model!r}")


# ---- the state on the wire ----------------------------------------------------------------------------------


def initial_state(s: HistSpec) -> dict[str, np.ndarray]:
    """Round 1's state: no bins, no trees."""
    return {
        "stage": np.array([RANGES], dtype=np.int64),
        "low": np.zeros(s.n_features),
        "high": np.zeros(s.n_features),
        "cuts": np.zeros(0),
        "cut_offsets": np.zeros(s.n_features + 1, dtype=np.int64),
        "offsets": np.zeros(1, dtype=np.int64),
        "children": np.zeros((0, 2), dtype=np.int64),
        "feature": np.zeros(0, dtype=np.int64),
        "threshold": np.zeros(0),
        "value": np.zeros((0, s.outputs)),
        "cover": np.zeros(0),
        "depth": np.zeros(0, dtype=np.int64),
        "growing": np.zeros(1, dtype=np.int64),  # index of the first tree still growing (= trees finished)
        "open": np.zeros((0, 2), dtype=np.int64),  # (tree, node local to it) awaiting its split
        "candidates": np.zeros((0, s.features_per_node), dtype=np.int64),  # each open node's candidate features
    }


def to_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    """The state as Flower arrays."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The state (or a reply's statistics) from Flower arrays."""
    return {k: record[k].numpy() for k in record}


def stage(state: dict[str, np.ndarray]) -> int:
    """Which statistics the state asks for: RANGES, SKETCH or GROW."""
    return int(state["stage"][0])


def trees(state: dict[str, np.ndarray]) -> ForestArrays:
    """Every tree of the state (the growing ones included) as forest arrays."""
    return ForestArrays(*(state[k] for k in TREE_FIELDS[:-1]))


def finished(state: dict[str, np.ndarray]) -> ForestArrays:
    """The finished trees only (a checkpoint taken mid-round also holds half-grown ones)."""
    return finished_prefix(state, int(state["growing"][0]))


def busy(state: dict[str, np.ndarray]) -> bool:
    """Whether the round's work is unfinished: bins still to fit or nodes still open."""
    return stage(state) < GROW or len(state["open"]) > 0


def _cuts(state: dict[str, np.ndarray], f: int) -> np.ndarray:
    off = state["cut_offsets"]
    return np.asarray(state["cuts"][off[f] : off[f + 1]])


def max_bins_of(state: dict[str, np.ndarray]) -> int:
    """Bins of the feature with the most (the histograms' padded width)."""
    return int(np.diff(state["cut_offsets"]).max(initial=0)) + 1


def bin_rows(state: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Each value's bin (n, features): the number of its feature's cuts at or below it."""
    X32 = np.asarray(X, dtype=np.float32)
    out = np.empty(X32.shape, dtype=np.int64)
    for f in range(X32.shape[1]):
        out[:, f] = np.searchsorted(_cuts(state, f).astype(np.float32), X32[:, f], side="right")
    return out


# ---- what a client computes -------------------------------------------------------------------------------


def client_statistics(
    s: HistSpec, state: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray, party: int
) -> dict[str, np.ndarray]:
    """This party's answer to the state's request, computed from its rows ``X``, ``y`` (``party``: its own
    bootstrap seed; no two parties may share one)."""
    X32 = np.asarray(X, dtype=np.float32)
    st = stage(state)
    if st == RANGES:
        return {"low": X32.min(axis=0).astype(np.float64), "high": X32.max(axis=0).astype(np.float64)}
    if st == SKETCH:
        return {"sketch": sketch(X32, state["low"], state["high"])}
    if not len(state["open"]):
        raise HistError("the state has no open node: nothing to send")
    return {"hist": histograms(s, state, X32, np.asarray(y), party)}


def sketch(X: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Counts of each feature's values in SKETCH_BINS equal bins over [low, high] (features, SKETCH_BINS)."""
    out = np.zeros((X.shape[1], SKETCH_BINS))
    for f in range(X.shape[1]):
        out[f] = np.bincount(_fine_bin(X[:, f], low[f], high[f]), minlength=SKETCH_BINS)
    return out


def _fine_bin(x: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(len(x), dtype=np.int64)
    width = (high - low) / SKETCH_BINS
    return np.clip(np.floor((np.asarray(x, dtype=np.float64) - low) / width), 0, SKETCH_BINS - 1).astype(np.int64)


def histograms(s: HistSpec, state: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray, party: int) -> np.ndarray:
    """Sums of the rows' statistics per open node, candidate feature and bin: (open, candidates, bins, stats)."""
    bins = bin_rows(state, X)
    width = max_bins_of(state)
    open_ = state["open"]
    cand = state["candidates"]
    m = cand.shape[1]
    out = np.zeros(len(open_) * m * width * s.n_stats)
    forest = trees(state)
    first = int(state["growing"][0])
    stats = _row_stats(s, state, X, y, first) if s.kind == "boosting" else None
    slot_of = {(int(t), int(j)): i for i, (t, j) in enumerate(open_)}
    for t in sorted({int(t) for t in open_[:, 0]}):
        node = route(forest.tree(t), X)
        slots = np.array([slot_of.get((t, int(j)), -1) for j in range(int(forest.offsets[t + 1] - forest.offsets[t]))])
        row_slot = slots[node]
        rows = np.flatnonzero(row_slot >= 0)
        if not len(rows):
            continue
        if stats is not None:  # boosting: this tree's class column of (gradient, hessian)
            w = stats[rows, (t - first) % s.groups, :]
        else:
            w = _forest_stats(s, y[rows], _bootstrap(s, t, party, len(y))[rows])
        slot = row_slot[rows]
        feats = cand[slot]  # (rows, m)
        b = bins[rows[:, None], feats]  # (rows, m)
        cell = ((slot[:, None] * m + np.arange(m)[None, :]) * width + b).reshape(-1)
        for k in range(s.n_stats):
            out[k :: s.n_stats] += np.bincount(cell, weights=np.repeat(w[:, k], m), minlength=len(open_) * m * width)
    return out.reshape(len(open_), m, width, s.n_stats)


def _bootstrap(s: HistSpec, tree: int, party: int, n: int) -> np.ndarray:
    if not s.bootstrap:
        return np.ones(n)
    return np.random.default_rng([s.seed, tree, party, 7]).poisson(1.0, n).astype(np.float64)


def _forest_stats(s: HistSpec, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    if s.regression:
        yf = np.asarray(y, dtype=np.float64)
        return np.stack([w, w * yf, w * yf * yf], axis=1)
    out = np.zeros((len(y), s.n_classes))
    out[np.arange(len(y)), np.asarray(y, dtype=np.int64)] = w
    return out


def _row_stats(s: HistSpec, state: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray, n_trees: int) -> np.ndarray:
    """Boosting: each row's gradient and hessian per class under the finished trees (rows, groups, 2)."""
    margin = margins(s, finished_prefix(state, n_trees), X)
    yi = np.asarray(y, dtype=np.int64)
    if s.groups == 1:
        p = 1.0 / (1.0 + np.exp(-margin[:, 0]))
        g = p - (yi == 1)
        h = np.maximum(p * (1.0 - p), 1e-16)
        return np.stack([g, h], axis=1)[:, None, :]
    z = margin - margin.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(yi)), yi] = 1.0
    return np.stack([p - onehot, np.maximum(2.0 * p * (1.0 - p), 1e-16)], axis=2)


def finished_prefix(state: dict[str, np.ndarray], n: int) -> ForestArrays:
    """The first ``n`` trees of the state."""
    forest = trees(state)
    end = int(forest.offsets[n])
    return ForestArrays(forest.offsets[: n + 1], *(getattr(forest, k)[:end] for k in TREE_FIELDS[1:-1]))


def route(tree: ForestArrays, X: np.ndarray) -> np.ndarray:
    """The node (local to the tree) each row of ``X`` ends in: a leaf or a node still open."""
    X32 = np.asarray(X, dtype=np.float32)
    node = np.zeros(len(X32), dtype=np.int64)
    rows = np.arange(len(X32))
    while True:
        inner = tree.children[node, 0] >= 0
        if not inner.any():
            return node
        r, n = rows[inner], node[inner]
        go_left = X32[r, tree.feature[n]] <= tree.threshold[n]
        node[inner] = np.where(go_left, tree.children[n, 0], tree.children[n, 1])


def margins(s: HistSpec, forest: ForestArrays, X: np.ndarray) -> np.ndarray:
    """Boosting: the raw margins (rows, groups) of a booster's trees, tree ``t`` adding to class ``t % groups``."""
    base = 0.0 if s.groups == 1 else BASE_SCORE  # logit(0.5) for one logit; softmax ignores a common shift
    out = np.full((len(X), s.groups), base)
    leaves = _leaves(forest, X)
    for t in range(forest.n_trees):
        out[:, t % s.groups] += forest.value[forest.offsets[t] + leaves[:, t], 0]
    return out


def _leaves(forest: ForestArrays, X: np.ndarray) -> np.ndarray:
    """Every tree's leaf for every row at once (rows, trees), node indices local to each tree."""
    X32 = np.asarray(X, dtype=np.float32)
    n_trees = forest.n_trees
    node = np.zeros((len(X32), n_trees), dtype=np.int64)
    base = forest.offsets[:-1][None, :]
    rows = np.arange(len(X32))[:, None]
    for _ in range(64):
        g = base + node
        left = forest.children[g, 0]
        inner = left >= 0
        if not inner.any():
            return node
        feat = np.where(inner, forest.feature[g], 0)
        go_left = X32[rows, feat] <= np.where(inner, forest.threshold[g], 0.0)
        node = np.where(inner, np.where(go_left, left, forest.children[g, 1]), node)
    raise HistError("a tree deeper than 64 levels")


def predict_proba(s: HistSpec, forest: ForestArrays, X: np.ndarray) -> np.ndarray:
    """Class probabilities (classification) of the trees: softmax/logistic of a booster's margins, or the mean
    of a forest's leaf frequencies."""
    if s.kind == "boosting":
        m = margins(s, forest, X)
        if s.groups == 1:
            p1 = 1.0 / (1.0 + np.exp(-m[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        z = np.exp(m - m.max(axis=1, keepdims=True))
        return np.asarray(z / z.sum(axis=1, keepdims=True))
    leaves = _leaves(forest, X)
    idx = forest.offsets[:-1][None, :] + leaves
    return np.asarray(forest.value[idx].mean(axis=1))


def predictions(s: HistSpec, forest: ForestArrays, X: np.ndarray) -> np.ndarray:
    """Class probabilities (classification) or predicted targets (a forest regressor) of the trees; before any
    tree, every class alike (or 0)."""
    if not forest.n_trees:
        return np.zeros(len(X)) if s.regression else np.full((len(X), s.n_classes), 1.0 / s.n_classes)
    if s.regression:
        leaves = _leaves(forest, X)
        return np.asarray(forest.value[forest.offsets[:-1][None, :] + leaves, 0].mean(axis=1))
    return predict_proba(s, forest, X)


def evaluate_counts(s: HistSpec, state: dict[str, np.ndarray], data: Any) -> dict[str, Any]:
    """The summable evaluation counts of the state's finished trees on ``data`` (a :class:`uaap.data.Dataset`)."""
    from uaap.metrics import classification_counts, regression_counts

    out = predictions(s, finished(state), data.X)
    if data.regression:
        return regression_counts(data.y, out, center=data.target_mean)
    return classification_counts(data.y, out)


# ---- what the server does with the sums -------------------------------------------------------------------


def merge(st: int, replies: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The replies' statistics combined: ranges by min/max, sketches and histograms by addition."""
    if not replies:
        raise HistError("no reply to merge")
    if st == RANGES:
        return {
            "low": np.min([r["low"] for r in replies], axis=0),
            "high": np.max([r["high"] for r in replies], axis=0),
        }
    key = "sketch" if st == SKETCH else "hist"
    return {key: np.sum([r[key] for r in replies], axis=0)}


def check_reply(s: HistSpec, state: dict[str, np.ndarray], reply: dict[str, np.ndarray]) -> None:
    """Refuse a reply that does not answer the state's request: keys, shapes, finite values, no negative count or
    hessian, ranges in order."""
    st = stage(state)
    want: dict[str, tuple[int, ...]]
    if st == RANGES:
        want = {"low": (s.n_features,), "high": (s.n_features,)}
    elif st == SKETCH:
        want = {"sketch": (s.n_features, SKETCH_BINS)}
    else:
        want = {"hist": (len(state["open"]), s.features_per_node, max_bins_of(state), s.n_stats)}
    got = {k: tuple(v.shape) for k, v in reply.items()}
    if got != want:
        raise HistError(f"expected arrays {want} for this stage; got {got}")
    for k, v in reply.items():
        if not np.all(np.isfinite(v)):
            raise HistError(f"{k!r} holds a value that is not finite")
    if st == RANGES and np.any(reply["low"] > reply["high"]):
        raise HistError("a feature's minimum exceeds its maximum")
    if st == SKETCH and np.any(reply["sketch"] < 0):
        raise HistError("a negative count in the sketch")
    if st == GROW:
        h = reply["hist"]
        nonneg = h[..., 1] if s.kind == "boosting" else (h[..., 0] if s.regression else h)
        if np.any(nonneg < 0):
            raise HistError("a negative count or hessian in the histograms")


def advance(s: HistSpec, state: dict[str, np.ndarray], merged: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The next state from the merged statistics: bins fitted, or each open node split (or closed as a leaf)."""
    out = dict(state)
    st = stage(state)
    if st == RANGES:
        out["low"], out["high"] = merged["low"].astype(np.float64), merged["high"].astype(np.float64)
        out["stage"] = np.array([SKETCH], dtype=np.int64)
        return out
    if st == SKETCH:
        cuts = [quantile_cuts(merged["sketch"][f], out["low"][f], out["high"][f], s.max_bins) for f in
                range(s.n_features)]  # fmt: skip
        out["cuts"] = np.concatenate(cuts) if cuts else np.zeros(0)
        out["cut_offsets"] = np.concatenate([[0], np.cumsum([len(c) for c in cuts])]).astype(np.int64)
        out["stage"] = np.array([GROW], dtype=np.int64)
        return start_round(s, out)  # the round that fitted the bins goes on to grow its trees
    return _split_level(s, out, merged["hist"])


def quantile_cuts(counts: np.ndarray, low: float, high: float, max_bins: int) -> np.ndarray:
    """At most ``max_bins - 1`` cuts (float32 values, increasing) from a feature's fine histogram: one at the
    lower edge of every occupied fine bin after the first when that many fit (each distinct value its own bin),
    else at the fine-bin edges where the cumulative count crosses each ``1/max_bins`` quantile."""
    occupied = np.flatnonzero(counts > 0)
    if len(occupied) <= 1 or high <= low:
        return np.zeros(0)
    width = (high - low) / SKETCH_BINS
    if len(occupied) <= max_bins:
        chosen = occupied[1:]
    else:
        cum = np.cumsum(counts)
        targets = cum[-1] * np.arange(1, max_bins) / max_bins
        chosen = np.unique(np.searchsorted(cum, targets, side="right"))
        chosen = chosen[(chosen > occupied[0]) & (chosen <= occupied[-1])]
    edges = np.unique((low + chosen * width).astype(np.float32))
    return edges.astype(np.float64)


def start_round(s: HistSpec, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Open the roots of the round's trees (one per class for boosting, ``trees_per_round`` for a forest) when
    nothing is growing; a state with open nodes (a round cut short) goes on growing them."""
    if stage(state) < GROW or len(state["open"]):
        return state
    out = dict(state)
    forest = trees(state)
    new = s.groups if s.kind == "boosting" else s.trees_per_round
    first = forest.n_trees
    out["growing"] = np.array([first], dtype=np.int64)
    out["offsets"] = np.concatenate([forest.offsets, forest.offsets[-1] + np.arange(1, new + 1)]).astype(np.int64)
    out["children"] = np.concatenate([forest.children, np.full((new, 2), -1, dtype=np.int64)])
    out["feature"] = np.concatenate([forest.feature, np.full(new, -2, dtype=np.int64)])
    out["threshold"] = np.concatenate([forest.threshold, np.full(new, np.nan)])
    out["value"] = np.concatenate([forest.value, np.zeros((new, s.outputs))])
    out["cover"] = np.concatenate([forest.cover, np.zeros(new)])
    out["depth"] = np.concatenate([state["depth"], np.zeros(new, dtype=np.int64)])
    out["open"] = np.stack([first + np.arange(new), np.zeros(new, dtype=np.int64)], axis=1).astype(np.int64)
    out["candidates"] = np.stack([_candidates(s, first + t, 0) for t in range(new)]).astype(np.int64)
    return out


def _candidates(s: HistSpec, tree: int, node: int) -> np.ndarray:
    """A node's candidate features: all (boosting) or a seeded draw without replacement (forest)."""
    if s.kind == "boosting":
        return np.arange(s.n_features)
    rng = np.random.default_rng([s.seed, tree, node, 11])
    return np.sort(rng.choice(s.n_features, size=s.features_per_node, replace=False))


def _split_level(s: HistSpec, state: dict[str, np.ndarray], hist: np.ndarray) -> dict[str, np.ndarray]:
    """Split every open node at its best candidate (or close it as a leaf); children below max_depth open."""
    forest = trees(state)
    offsets = forest.offsets.copy()
    per_tree: dict[int, dict[str, list[Any]]] = {}
    for t in range(int(state["growing"][0]), forest.n_trees):
        a, b = int(offsets[t]), int(offsets[t + 1])
        per_tree[t] = {
            "children": [list(c) for c in forest.children[a:b]],
            "feature": list(forest.feature[a:b]),
            "threshold": list(forest.threshold[a:b]),
            "value": [np.asarray(v) for v in forest.value[a:b]],
            "cover": list(forest.cover[a:b]),
            "depth": list(state["depth"][a:b]),
        }
    new_open: list[tuple[int, int]] = []
    for slot, (t, j) in enumerate(state["open"]):
        t, j = int(t), int(j)
        tree = per_tree[t]
        total = hist[slot, 0].sum(axis=0)  # every candidate's bins add up to the node's total
        tree["value"][j], tree["cover"][j] = _leaf(s, total), _cover(s, total)
        if tree["depth"][j] >= s.max_depth or not _may_split(s, total):
            continue
        best = _best_split(s, state, hist[slot], state["candidates"][slot], total)
        if best is None:
            continue
        feature, cut, left = best
        right = total - left
        first_child = len(tree["feature"])
        tree["children"][j] = [first_child, first_child + 1]
        tree["feature"][j] = feature
        tree["threshold"][j] = float(np.nextafter(np.float32(cut), np.float32(-np.inf)))
        for stats in (left, right):
            tree["children"].append([-1, -1])
            tree["feature"].append(-2)
            tree["threshold"].append(np.nan)
            tree["value"].append(_leaf(s, stats))
            tree["cover"].append(_cover(s, stats))
            tree["depth"].append(tree["depth"][j] + 1)
            child = len(tree["feature"]) - 1
            if tree["depth"][child] < s.max_depth and _may_split(s, stats):
                new_open.append((t, child))
    return _rebuild(s, state, per_tree, new_open)


def _rebuild(
    s: HistSpec,
    state: dict[str, np.ndarray],
    per_tree: dict[int, dict[str, list[Any]]],
    new_open: list[tuple[int, int]],
) -> dict[str, np.ndarray]:
    first = int(state["growing"][0])
    keep = finished_prefix(state, first)
    end = int(keep.offsets[-1])
    sizes = [len(per_tree[t]["feature"]) for t in sorted(per_tree)]
    out = dict(state)
    out["offsets"] = np.concatenate([keep.offsets, end + np.cumsum(sizes)]).astype(np.int64)
    ordered = [per_tree[t] for t in sorted(per_tree)]
    out["children"] = np.concatenate([keep.children, *[np.array(p["children"], dtype=np.int64) for p in ordered]])
    out["feature"] = np.concatenate([keep.feature, *[np.array(p["feature"], dtype=np.int64) for p in ordered]])
    out["threshold"] = np.concatenate([keep.threshold, *[np.array(p["threshold"], dtype=np.float64) for p in ordered]])
    out["value"] = np.concatenate([keep.value, *[np.array(p["value"], dtype=np.float64).reshape(-1, s.outputs)
                                                 for p in ordered]])  # fmt: skip
    out["cover"] = np.concatenate([keep.cover, *[np.array(p["cover"], dtype=np.float64) for p in ordered]])
    out["depth"] = np.concatenate([state["depth"][:end], *[np.array(p["depth"], dtype=np.int64) for p in ordered]])
    out["open"] = np.array(new_open, dtype=np.int64).reshape(-1, 2)
    out["candidates"] = np.array([_candidates(s, t, j) for t, j in new_open], dtype=np.int64).reshape(
        -1, s.features_per_node
    )
    if not new_open:  # the round's trees are finished
        out["growing"] = np.array([len(out["offsets"]) - 1], dtype=np.int64)
    return out


def _leaf(s: HistSpec, stats: np.ndarray) -> np.ndarray:
    """A node's value from its summed statistics: XGBoost's shrunk leaf weight, class frequencies or the mean."""
    if s.kind == "boosting":
        g, h = float(stats[0]), float(stats[1])
        weight = 0.0 if h < s.min_child_weight else -g / (h + s.reg_lambda)
        return np.array([float(np.float32(s.eta * weight))])
    if s.regression:
        return np.array([stats[1] / stats[0] if stats[0] > 0 else 0.0])
    n = stats.sum()
    return stats / n if n > 0 else np.full(s.n_classes, 1.0 / s.n_classes)


def _cover(s: HistSpec, stats: np.ndarray) -> float:
    """Hessian (boosting) or (bootstrap-weighted) rows of a node."""
    if s.kind == "boosting":
        return float(stats[1])
    return float(stats[0] if s.regression else stats.sum())


def _may_split(s: HistSpec, stats: np.ndarray) -> bool:
    if s.kind == "boosting":
        return float(stats[1]) >= 2 * s.min_child_weight
    n = float(stats[0] if s.regression else stats.sum())
    if n < 2 * s.min_samples_leaf:
        return False
    if s.regression:
        return float(stats[2] - stats[1] ** 2 / n) > 1e-12 * max(n, 1.0)  # some spread left
    return int(np.count_nonzero(stats)) > 1  # not pure


def _best_split(
    s: HistSpec, state: dict[str, np.ndarray], hist: np.ndarray, candidates: np.ndarray, total: np.ndarray
) -> tuple[int, float, np.ndarray] | None:
    """The best (feature, cut, left statistics) of a node over its candidates' bins, or None when no split
    gains. Ties go to the lower feature, then the lower cut, as in XGBoost."""
    found: list[tuple[float, int, int, np.ndarray]] = []  # (gain, feature, cut index, left sums) per feature
    for k, f in enumerate(candidates):
        cuts = _cuts(state, int(f))
        if not len(cuts):
            continue
        left = np.cumsum(hist[k, : len(cuts)], axis=0)  # split at cut i: bins 0..i go left
        gain = _gains(s, left, total - left, total)
        top = float(gain.max())
        i = int(np.flatnonzero(gain >= top - _tie(top))[0])
        found.append((float(gain[i]), int(f), i, left[i]))
    if not found:
        return None
    top = max(g for g, *_ in found)
    if top <= (K_RT_EPS if s.kind == "boosting" else 1e-12):
        return None
    _, f, i, left = min((x for x in found if x[0] >= top - _tie(top)), key=lambda x: x[1])
    return f, float(_cuts(state, f)[i]), left


def _tie(gain: float) -> float:
    """Gains this close are one gain: sums added in another order (clients' replies arrive in any) differ in the
    last bits, and a tie must break the same way (lowest feature, then lowest cut) whatever the order."""
    return 1e-9 * max(1.0, abs(gain)) if math.isfinite(gain) else 0.0


def _gains(s: HistSpec, left: np.ndarray, right: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Every cut's gain; -inf where a child breaks the leaf constraints."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if s.kind == "boosting":
            lam = s.reg_lambda

            def score(st: np.ndarray) -> np.ndarray:
                return np.asarray(st[..., 0] ** 2 / (st[..., 1] + lam))

            gain = score(left) + score(right) - float(total[0] ** 2 / (total[1] + lam))
            ok = (left[:, 1] >= s.min_child_weight) & (right[:, 1] >= s.min_child_weight)
        elif s.regression:  # decrease of the summed squared error
            nl, nr = left[:, 0], right[:, 0]
            gain = left[:, 1] ** 2 / nl + right[:, 1] ** 2 / nr - total[1] ** 2 / total[0]
            ok = (nl >= s.min_samples_leaf) & (nr >= s.min_samples_leaf)
        else:  # decrease of n x Gini impurity
            nl, nr = left.sum(axis=1), right.sum(axis=1)
            gain = (left**2).sum(axis=1) / nl + (right**2).sum(axis=1) / nr - float((total**2).sum() / total.sum())
            ok = (nl >= s.min_samples_leaf) & (nr >= s.min_samples_leaf)
    return np.where(ok & np.isfinite(gain), gain, -np.inf)


# ---- the finished model -----------------------------------------------------------------------------------


def to_booster_json(s: HistSpec, forest: ForestArrays) -> bytes:
    """A booster's trees as XGBoost's own JSON model (what ``xgboost.Booster.load_model`` reads), so the
    federated booster predicts, saves and exports as any XGBoost model."""
    import xgboost as xgb

    from uaap.models import boosting

    settings = boosting.BoostSettings(s.n_features, s.n_classes, s.max_depth, s.eta, seed=s.seed)
    rng = np.random.default_rng(0)
    X = rng.random((2 * s.n_classes, s.n_features)).astype(np.float32)
    template = xgb.train(settings.params(), xgb.DMatrix(X, label=np.arange(len(X)) % s.n_classes), 1)
    doc = json.loads(template.save_raw("json"))
    model = doc["learner"]["gradient_booster"]["model"]
    model["trees"] = [_xgb_tree(forest.tree(t), t, s.n_features) for t in range(forest.n_trees)]
    model["tree_info"] = [t % s.groups for t in range(forest.n_trees)]
    model["iteration_indptr"] = list(range(0, forest.n_trees + 1, s.groups))
    model["gbtree_model_param"]["num_trees"] = str(forest.n_trees)
    return json.dumps(doc).encode()


def _xgb_tree(tree: ForestArrays, tree_id: int, n_features: int) -> dict[str, Any]:
    n = len(tree.feature)
    leaf = tree.children[:, 0] < 0
    parents = [2147483647] * n
    for j in range(n):
        for c in tree.children[j]:
            if c >= 0:
                parents[int(c)] = j
    cond = [
        float(tree.value[j, 0]) if leaf[j] else float(np.nextafter(np.float32(tree.threshold[j]), np.float32(np.inf)))
        for j in range(n)
    ]
    return {
        "base_weights": [float(v) for v in tree.value[:, 0]],
        "categories": [], "categories_nodes": [], "categories_segments": [], "categories_sizes": [],
        "default_left": [0] * n,
        "id": tree_id,
        "left_children": [int(c) for c in tree.children[:, 0]],
        "loss_changes": [0.0] * n,
        "parents": parents,
        "right_children": [int(c) for c in tree.children[:, 1]],
        "split_conditions": cond,
        "split_indices": [int(f) if not leaf[j] else 0 for j, f in enumerate(tree.feature)],
        "split_type": [0] * n,
        "sum_hessian": [float(c) for c in tree.cover],
        "tree_param": {"num_deleted": "0", "num_feature": str(n_features), "num_nodes": str(n),
                       "size_leaf_vector": "1"},
    }  # fmt: skip


def grow_pooled(s: HistSpec, parts: list[tuple[np.ndarray, np.ndarray]], rounds: int) -> dict[str, np.ndarray]:
    """Grow ``rounds`` rounds of trees with every party in one process: the protocol without the network (the
    reference the federation is tested against; party ``i`` draws the bootstrap of partition ``i``)."""
    state = initial_state(s)
    for _ in range(rounds):
        state = start_round(s, state)
        while busy(state):
            replies = [client_statistics(s, state, X, y, party) for party, (X, y) in enumerate(parts)]
            state = advance(s, state, merge(stage(state), replies))
    return state
