"""One preprocessing pipeline for raw tables, fitted from summed statistics: the same code fits one table or a
federation of clients without pooling a row.

The pipeline is the seed's Missing Handler -> Outlier Detector -> Feature Engineer: each column gets a kind
(numeric, datetime, categorical, free text), datetimes expand into calendar features (year, month, day,
weekday, hour and their cyclical sine/cosine), numbers are imputed (mean, median, constant), clipped
(IQR fence or z-score) and scaled (standard, min-max, robust), categories are one-hot encoded (the most
frequent ``max_categories``, the rest and unseen values in one ``infrequent`` column), ordinal or hashed,
and free text is hashed into word-count buckets, turned into TF-IDF (central only) or refused.

**Fitted in stages from statistics that add up.** :class:`FederatedFit` asks for one stage at a time
(:meth:`FederatedFit.request`); every party answers with :func:`local_statistics` of its own rows (counts,
sums, sums of squares, category counts, fixed-bin histograms; minima and maxima merge by min/max); the
merged answer (:func:`merge`) fits that stage (:meth:`FederatedFit.absorb`). Each request carries the plan
fitted so far, so parties keep no state between stages (a Flower ClientApp keeps none). A pooled fit
(:meth:`Preprocessor.fit`) is the same loop with one party, so a federated fit equals the pooled one:
means and variances to float rounding, category vocabularies exactly, and medians and IQR fences to the
histogram's resolution ((max - min) / ``bins``, stated in :attr:`Preprocessor.plan_`), both ways.

What a server learns from these statistics: each column's count, missing count, sum, sum of squares,
minimum, maximum and a histogram of its values, and each categorical column's category counts (the
vocabulary is a disclosure: ``encoding="hashing"`` fits no vocabulary and discloses none; for the same reason free
text is hashed in a federation, and ``text="tfidf"``, whose vocabulary is the words themselves, fits only on one
party's table, with scikit-learn's ``TfidfVectorizer``). KNN and MICE
imputation cannot be merged from sums, so they are not offered for federated fitting.

The fitted plan is plain JSON (:meth:`Preprocessor.to_dict`), never a pickle: it travels with the model in
the run folder, the checkpoint, the exports' manifests and the server's messages.

Length: one protocol in one file. Each stage's request, the statistics a party computes for it, their checks,
what the server fits from their sum and the transform that applies it must agree to the last detail (a name, a
shift, a bin), and the pooled fit is the same loop; split apart, they would import each other.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from uaap.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

Impute = Literal["median", "mean", "constant", "ffill", "knn", "iterative"]
LOCAL_IMPUTE = ("ffill", "knn", "iterative")  # filled from a party's own rows: nothing to merge
Outliers = Literal["clip-iqr", "clip-z", "none"]
Encoding = Literal["onehot", "ordinal", "hashing"]
Scaling = Literal["standard", "minmax", "robust", "none"]
Text = Literal["error", "hashing", "tfidf", "drop"]
TFIDF_WORDS = 1000  # text="tfidf": the most frequent words kept (scikit-learn's max_features)
TOKENS = r"(?u)\b\w+\b"  # a word, for hashing and TF-IDF alike: a run of letters, digits or underscores

DATETIME_PARTS = ("year", "month", "day", "weekday", "hour")
CYCLES = {"month": 12.0, "weekday": 7.0, "hour": 24.0}
INFREQUENT = "infrequent"
MISSING = "missing"
STAGES = ("schema", "moments", "spread", "quantiles", "scaling")
MAX_CLASSES = 50  # a whole-number target with more distinct values is a regression target
MAX_FLOAT_CLASSES = 20  # ... and a target with fractions, more than this
Stats = dict[str, Any]  # name -> float64 array (summed), or {category: count} (summed by key); ":min"/":max" by min/max


@dataclass(frozen=True)
class PreprocessOptions:
    """How raw columns become model inputs (RunConfig's ``impute``, ``outliers``, ``encoding``... fields)."""

    impute: Impute = "median"
    fill_value: float = 0.0  # impute="constant"
    outliers: Outliers = "clip-iqr"
    iqr_k: float = 1.5  # the fence: [q1 - k IQR, q3 + k IQR]
    z_limit: float = 3.0  # clip-z: [mean - z std, mean + z std]
    encoding: Encoding = "onehot"
    max_categories: int = 20  # one-hot columns per categorical feature, the ``infrequent`` bucket included
    scaling: Scaling = "standard"
    text: Text = "error"
    hash_buckets: int = 32  # columns per hashed categorical or free-text feature
    categorical_max: int = 50  # a string column with more distinct values (at any party) is free text
    bins: int = 4096  # histogram bins for medians and quartiles
    drop: tuple[str, ...] = ()  # columns left out
    polynomial: bool = False  # add the products of every pair of numeric columns (and their squares), scaled

    def __post_init__(self) -> None:
        for name, low in (("max_categories", 2), ("hash_buckets", 1), ("bins", 16), ("categorical_max", 1)):
            if int(getattr(self, name)) < low:
                raise DataError(f"{name.replace('_', '-')}={getattr(self, name)} is below {low}; raise it")
        for name in ("iqr_k", "z_limit"):
            if not float(getattr(self, name)) > 0:
                raise DataError(f"{name.replace('_', '-')}={getattr(self, name)} must be positive")


@dataclass
class ColumnPlan:
    """What happens to one raw column; filled stage by stage."""

    name: str
    kind: str = ""  # numeric | datetime | categorical | text
    # numeric and each datetime part: keyed by feature name (the column itself, or "col.month" ...)
    impute: dict[str, float] = field(default_factory=dict)
    low: dict[str, float] = field(default_factory=dict)  # clip bounds
    high: dict[str, float] = field(default_factory=dict)
    center: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    vocabulary: list[str] = field(default_factory=list)  # categorical, one-hot/ordinal: kept categories; tfidf: words
    idf: list[float] = field(default_factory=list)  # text, tfidf: each vocabulary word's inverse document frequency
    fill: str = ""  # categorical: the value a missing entry takes

    def numeric_names(self) -> list[str]:
        """The numeric features this column gives before encoding (datetime parts, or the column itself)."""
        if self.kind == "numeric":
            return [self.name]
        if self.kind == "datetime":
            return [f"{self.name}.{part}" for part in DATETIME_PARTS]
        return []


# ---- what each party computes ------------------------------------------------------------------------------


def local_statistics(frame: pd.DataFrame, request: Mapping[str, Any]) -> Stats:
    """One party's statistics of its own rows for the stage ``request`` names (from :meth:`FederatedFit.request`)."""
    stage = request["stage"]
    options = PreprocessOptions(**_options_from(request["options"]))
    plans = [ColumnPlan(**p) for p in request["plan"]]
    target = TargetPlan(**request["target"]) if request.get("target") else None
    if stage == "schema":
        out = _schema_stats(frame, request["columns"], options)
        if target is not None:
            out.update(_target_schema(frame, target.name))
        return out
    numbers = _numeric_parts(frame, plans)
    out = {}
    if stage == "moments":
        if target is not None:
            out.update(_target_moments(frame[target.name], target))
        for name, x in numbers.items():
            x = x[~np.isnan(x)]
            out[f"{name}:n"] = np.array([len(x), x.sum(), (x * x).sum()])
            out[f"{name}:min"] = np.array([x.min() if len(x) else np.inf])
            out[f"{name}:max"] = np.array([x.max() if len(x) else -np.inf])
        for plan in plans:
            if plan.kind == "categorical" and options.encoding != "hashing":
                values = _strings(frame[plan.name]).dropna()
                out[f"{plan.name}:counts"] = {str(k): int(v) for k, v in values.value_counts().items()}
        return out
    if stage == "quantiles":
        for name, x in numbers.items():
            low, high = request["ranges"][name]
            x = x[~np.isnan(x)]
            out[f"{name}:hist"] = np.histogram(x, bins=options.bins, range=(low, high))[0].astype(np.float64)
        return out
    if stage == "spread":  # squared deviations from the federation's mean: no cancellation in E[x^2] - mean^2
        for name, x in numbers.items():
            x = x[~np.isnan(x)] - request["shift"][name]
            out[f"{name}:m2"] = np.array([(x * x).sum()])
        return out
    if stage == "scaling":  # sums of the cleaned values, shifted by the raw mean for the same reason
        numbers = local_impute(numbers, options)
        for plan in plans:
            for name in plan.numeric_names():
                x = _impute_clip(numbers[name], plan, name)
                d = x - request["shift"][name]
                out[f"{name}:n"] = np.array([len(x), d.sum(), (d * d).sum()])
                out[f"{name}:min"] = np.array([x.min() if len(x) else np.inf])
                out[f"{name}:max"] = np.array([x.max() if len(x) else -np.inf])
        return out
    raise DataError(f"preprocessing stage {stage!r} is unknown; expected one of {', '.join(STAGES)}")


def merge(parts: Iterable[Stats]) -> Stats:
    """The statistics of all parties together: sums, category counts by key, minima and maxima."""
    out: Stats = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, Mapping):
                counts = out.setdefault(key, {})
                for category, n in value.items():
                    counts[category] = counts.get(category, 0) + int(n)
            elif key not in out:
                out[key] = np.asarray(value, dtype=np.float64).copy()
            elif key.endswith(":min"):
                out[key] = np.minimum(out[key], value)
            elif key.endswith(":max"):
                out[key] = np.maximum(out[key], value)
            else:
                out[key] = out[key] + np.asarray(value, dtype=np.float64)
    return out


TARGET = "__target__"  # the statistics' name for the target column (never a feature's name)


@dataclass
class TargetPlan:
    """The target column: its task, and the class labels (classification) or its mean and std (regression)."""

    name: str
    task: str = "auto"  # auto until the schema stage decides
    classes: list[str] = field(default_factory=list)
    mean: float = 0.0
    std: float = 1.0


def label_text(value: Any) -> str:
    """A class label as text, one spelling per value: 1, 1.0 and "1" are the same class."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if math.isfinite(number) and number == int(number) else str(value)


def _target_schema(frame: pd.DataFrame, name: str) -> Stats:
    import pandas as pd

    if name not in frame.columns:
        raise DataError(
            f"target column {name!r} is not in this table; its columns are: {', '.join(map(str, frame.columns))}"
        )
    series = frame[name]
    present = series.dropna()
    if pd.api.types.is_bool_dtype(series):  # yes/no: classes, never numbers
        numbers = pd.Series(np.nan, index=present.index)
    else:
        numbers = pd.to_numeric(present, errors="coerce")
    finite = numbers[np.isfinite(numbers.to_numpy(dtype=np.float64, na_value=np.nan))]
    whole = int((finite == finite.round()).sum())
    distinct = int(min(present.nunique(), MAX_CLASSES + 1))
    return {
        f"{TARGET}:schema": np.array([len(series), len(present), len(finite), whole], dtype=np.float64),
        f"{TARGET}:distinct:max": np.array([distinct], dtype=np.float64),
    }


def _target_moments(series: pd.Series, target: TargetPlan) -> Stats:
    import pandas as pd

    if target.task == "classification":
        return {f"{TARGET}:counts": {k: int(v) for k, v in series.dropna().map(label_text).value_counts().items()}}
    y = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    return {f"{TARGET}:n": np.array([len(y), y.sum(), (y * y).sum()])}


MAX_COUNT_KEYS = 10_000  # category or class counts one party may report for one column
MAX_KEY_LENGTH = 200


def expected_statistics(request: Mapping[str, Any]) -> dict[str, int]:
    """What a party's answer to ``request`` must hold: each name with its array length (0: a category-count map)."""
    stage = request["stage"]
    options = PreprocessOptions(**_options_from(request["options"]))
    plans = [ColumnPlan(**p) for p in request["plan"]]
    target = TargetPlan(**request["target"]) if request.get("target") else None
    out: dict[str, int] = {}
    if stage == "schema":
        for name in [*request["columns"], *([TARGET] if target else [])]:
            out[f"{name}:schema"], out[f"{name}:distinct:max"] = 4, 1
        return out
    numeric = [n for p in plans for n in p.numeric_names()]
    if stage in ("moments", "scaling"):
        for name in numeric:
            out[f"{name}:n"], out[f"{name}:min"], out[f"{name}:max"] = 3, 1, 1
    if stage == "moments":
        if options.encoding != "hashing":
            out.update({f"{p.name}:counts": 0 for p in plans if p.kind == "categorical"})
        if target is not None:
            out[f"{TARGET}:counts" if target.task == "classification" else f"{TARGET}:n"] = (
                0 if target.task == "classification" else 3
            )
    if stage == "quantiles":
        out.update({f"{name}:hist": options.bins for name in numeric})
    if stage == "spread":
        out.update({f"{name}:m2": 1 for name in numeric})
    return out


def check_statistics(answer: Any, request: Mapping[str, Any]) -> Stats:
    """A party's answer as statistics, or a DataError saying what is wrong with it (names, lengths, values).

    Counts must be whole and non-negative, sums finite, minima and maxima numbers (infinite for a party with
    no value), a sum of squares no smaller than the square of the sum allows; nothing else may be present.
    """
    expected = expected_statistics(request)
    if not isinstance(answer, Mapping):
        raise DataError(f"statistics must be a mapping of names to values, got {type(answer).__name__}")
    names = set(map(str, answer))
    if names != set(expected):
        missing, extra = sorted(set(expected) - names)[:3], sorted(names - set(expected))[:3]
        raise DataError(f"statistics for stage {request['stage']!r} lack {missing} or carry unexpected {extra}")
    out: Stats = {}
    for name, length in expected.items():
        value = answer[name]
        if length == 0:
            out[name] = _check_counts(name, value)
            continue
        if not isinstance(value, list | tuple | np.ndarray) or len(value) != length:
            raise DataError(f"statistic {name!r} must be {length} numbers")
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"statistic {name!r} holds something that is not a number") from exc
        if name.endswith((":min", ":max")):
            if np.isnan(array).any():
                raise DataError(f"statistic {name!r} is NaN")
        elif not np.isfinite(array).all():
            raise DataError(f"statistic {name!r} is not finite")
        if name.endswith((":schema", ":distinct:max", ":hist", ":m2")) and (
            (array < 0).any() or (array != np.round(array)).any()
        ):
            raise DataError(f"statistic {name!r} must hold whole non-negative counts")
        if name.endswith(":schema") and not array[0] >= array[1] >= max(array[2], array[3]):
            raise DataError(f"statistic {name!r} counts more present or typed values than rows")
        if name.endswith(":n"):
            n, total, squares = array
            if n < 0 or n != round(n) or squares < 0 or (n > 0 and squares < total * total / n * (1 - 1e-9) - 1e-9):
                raise DataError(f"statistic {name!r} (count, sum, sum of squares) is impossible")
        out[name] = array
    return out


def _check_counts(name: str, value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping) or len(value) > MAX_COUNT_KEYS:
        raise DataError(f"statistic {name!r} must map at most {MAX_COUNT_KEYS} categories to counts")
    out: dict[str, int] = {}
    for key, count in value.items():
        if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH:
            raise DataError(f"statistic {name!r} has a category name that is not text of at most {MAX_KEY_LENGTH}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise DataError(f"statistic {name!r} counts {key!r} {count!r} times; counts are whole, non-negative")
        out[key] = count
    return out


def statistics_to_json(stats: Stats) -> str:
    """A party's statistics as JSON (arrays as lists)."""
    return json.dumps({k: v if isinstance(v, Mapping) else np.asarray(v).tolist() for k, v in stats.items()})


def _schema_stats(frame: pd.DataFrame, columns: Sequence[str], options: PreprocessOptions) -> Stats:
    import pandas as pd

    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"columns {', '.join(map(repr, missing))} are not in this table; its columns are: "
            f"{', '.join(map(str, frame.columns))}"
        )
    out: Stats = {}
    for name in columns:
        series = frame[name]
        present = series.dropna()
        numeric = datetime = len(present)
        if not pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            numeric = int(pd.to_numeric(present, errors="coerce").notna().sum())
            if not pd.api.types.is_datetime64_any_dtype(series):
                datetime = _datetime_count(present) if numeric < len(present) else 0
        if pd.api.types.is_datetime64_any_dtype(series):
            numeric = 0
        distinct = int(min(present.nunique(), options.categorical_max + 1))
        out[f"{name}:schema"] = np.array([len(series), len(present), numeric, datetime], dtype=np.float64)
        out[f"{name}:distinct:max"] = np.array([distinct], dtype=np.float64)
    return out


def _datetime_count(values: pd.Series) -> int:
    """How many ``values`` parse as dates (a sample first: most string columns are not dates)."""
    if parse_dates(values.head(64)).notna().mean() < 0.9:
        return 0
    return int(parse_dates(values).notna().sum())


def parse_dates(series: pd.Series) -> pd.Series:
    """Timestamps (NaT where a value is not a date): ISO 8601 at C speed, any other spelling value by value."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(series):
        when = series
    else:
        text = series.astype("string")
        when = pd.to_datetime(text, errors="coerce", format="ISO8601")
        if when.isna().sum() > text.isna().sum():
            when = pd.to_datetime(text, errors="coerce", format="mixed")
    if getattr(when.dt, "tz", None) is not None:
        when = when.dt.tz_convert("UTC").dt.tz_localize(None)
    return when


def _strings(series: pd.Series) -> pd.Series:
    """Category values as strings (numbers read as text keep one spelling: 1.0 and 1 differ, as in the file)."""
    return series.astype("string").astype(object).where(series.notna(), None)


def _numeric_parts(frame: pd.DataFrame, plans: Sequence[ColumnPlan]) -> dict[str, np.ndarray]:
    """Every numeric feature before imputation (NaN where missing): numeric columns and datetime parts."""
    import pandas as pd

    out: dict[str, np.ndarray] = {}
    for plan in plans:
        if plan.kind == "numeric":
            out[plan.name] = pd.to_numeric(frame[plan.name], errors="coerce").to_numpy(dtype=np.float64)
        elif plan.kind == "datetime":
            out.update(_datetime_parts(frame[plan.name], plan.name))
    return out


def _datetime_parts(series: pd.Series, name: str) -> dict[str, np.ndarray]:
    when = parse_dates(series).dt
    attribute = {"weekday": "day_of_week"}  # pandas' current name; the feature keeps the familiar one
    return {
        f"{name}.{p}": getattr(when, attribute.get(p, p)).to_numpy(dtype=np.float64, na_value=np.nan)
        for p in DATETIME_PARTS
    }


def local_impute(numbers: dict[str, np.ndarray], options: PreprocessOptions) -> dict[str, np.ndarray]:
    """``impute`` = ffill, knn or iterative: fill holes from this party's own rows (nothing here merges across
    clients, so each client fills its own; the docs say so). ffill carries the last value down in row order
    (time-ordered rows); knn averages the 5 nearest rows (scikit-learn's KNNImputer); iterative models each
    column from the others (IterativeImputer, MICE). What remains empty (a leading hole, a single row) takes the
    federation's median."""
    if options.impute not in LOCAL_IMPUTE or not numbers:
        return numbers
    names = list(numbers)
    matrix = np.column_stack([numbers[n] for n in names])
    if options.impute == "ffill":
        import pandas as pd

        matrix = pd.DataFrame(matrix).ffill().to_numpy(dtype=np.float64)
    elif len(matrix) >= 2 and np.isnan(matrix).any():
        from sklearn.experimental import enable_iterative_imputer  # noqa: F401 - makes IterativeImputer importable
        from sklearn.impute import IterativeImputer, KNNImputer

        complete = ~np.isnan(matrix).all(axis=0)  # a column empty in every row here stays for the median
        imputer = KNNImputer(n_neighbors=5) if options.impute == "knn" else IterativeImputer(random_state=0)
        matrix[:, complete] = imputer.fit_transform(matrix[:, complete])
    return {n: matrix[:, i] for i, n in enumerate(names)}


def _impute_clip(x: np.ndarray, plan: ColumnPlan, name: str) -> np.ndarray:
    x = np.where(np.isnan(x), plan.impute.get(name, 0.0), x)
    if name in plan.low:
        x = np.clip(x, plan.low[name], plan.high[name])
    return x


# ---- the server side: stage by stage ---------------------------------------------------------------------


class FederatedFit:
    """The fitting loop: ``while (req := fit.request()) is not None: fit.absorb(merge(answers to req))``."""

    def __init__(
        self, columns: Sequence[str], options: PreprocessOptions | None = None, *, target: str = "", task: str = "auto"
    ) -> None:
        self.options = options or PreprocessOptions()
        if task not in ("auto", "classification", "regression"):
            raise DataError(f"task={task!r} is not supported; choose one of: auto, classification, regression")
        self.target = TargetPlan(target, task) if target else None
        self.columns = [c for c in columns if c not in self.options.drop and c != target]
        unknown = sorted(set(self.options.drop) - set(columns))
        if unknown:
            raise DataError(f"drop names {', '.join(map(repr, unknown))}, which are not among the table's columns")
        self.plans: list[ColumnPlan] = []
        self.ranges: dict[str, tuple[float, float]] = {}
        self.moments: dict[str, tuple[float, float, float]] = {}  # n, mean, variance of the raw values
        self.stage = 0
        self.resolution: dict[str, float] = {}

    def _stages(self) -> list[str]:
        wanted = ["schema", "moments"]
        o = self.options
        if o.outliers == "clip-z":
            wanted.append("spread")
        if o.impute in ("median", *LOCAL_IMPUTE) or o.outliers == "clip-iqr" or o.scaling == "robust":
            wanted.append("quantiles")
        if o.scaling in ("standard", "minmax"):
            wanted.append("scaling")
        return wanted

    def request(self) -> dict[str, Any] | None:
        """What every party computes next (JSON-able), or None when the preprocessor is fitted."""
        stages = self._stages()
        if self.stage >= len(stages):
            return None
        stage = stages[self.stage]
        if stage in ("spread", "quantiles", "scaling") and not any(p.numeric_names() for p in self.plans):
            self.stage += 1
            return self.request()
        req: dict[str, Any] = {
            "stage": stage,
            "options": _options_to(self.options),
            "plan": [asdict(p) for p in self.plans],
            "columns": self.columns,
            "target": asdict(self.target) if self.target else None,
        }
        if stage == "quantiles":
            req["ranges"] = {k: list(v) for k, v in self.ranges.items()}
        if stage in ("spread", "scaling"):
            req["shift"] = {k: m[1] for k, m in self.moments.items()}
        return req

    def absorb(self, stats: Stats) -> None:
        """Fit the current stage from the merged statistics of every party."""
        stage = self._stages()[self.stage]
        getattr(self, f"_fit_{stage}")(stats)
        self.stage += 1

    def preprocessor(self, pooled: pd.DataFrame | None = None) -> Preprocessor:
        """The fitted preprocessor (after the last stage). ``text="tfidf"`` fits each text column's vocabulary on
        ``pooled``, the one party's table; without it (a federation) TF-IDF is refused: its vocabulary would be the
        parties' words."""
        if self.request() is not None:
            raise DataError("the preprocessor is not fitted yet: absorb every stage's statistics first")
        pre = Preprocessor(self.options)
        pre.plan_ = [ColumnPlan(**asdict(p)) for p in self.plans]
        if self.options.text == "tfidf":
            for plan in pre.plan_:
                if plan.kind == "text":
                    if pooled is None:
                        raise DataError(
                            f"column {plan.name!r}: text-columns='tfidf' fits a vocabulary of the words themselves, "
                            "which would tell the server the clients' words; a federation hashes text instead "
                            "(--text-columns hashing), or train centrally"
                        )
                    _fit_tfidf(plan, pooled[plan.name])
        pre.resolution_ = dict(self.resolution)
        pre.target_ = TargetPlan(**asdict(self.target)) if self.target else None
        pre.feature_names_out_ = pre._names()
        return pre

    def _fit_target_schema(self, stats: Stats) -> None:
        t = self.target
        assert t is not None
        rows, present, numeric, whole = (int(v) for v in stats[f"{TARGET}:schema"])
        if present < rows:
            raise DataError(f"target column {t.name!r} has {rows - present} empty values; fill or drop those rows")
        distinct = int(stats[f"{TARGET}:distinct:max"][0])
        if t.task == "auto":
            many = distinct > (MAX_CLASSES if whole == present else MAX_FLOAT_CLASSES)
            t.task = "regression" if numeric == present and many else "classification"
        elif t.task == "regression" and numeric < present:
            raise DataError(
                f"target column {t.name!r} holds {present - numeric} values that are not numbers, but task=regression "
                "needs numbers: convert the column, or use --task classification (or auto) to predict its values"
            )

    def _fit_target_moments(self, stats: Stats) -> None:
        t = self.target
        assert t is not None
        if t.task == "classification":
            counts = stats.get(f"{TARGET}:counts", {})
            if len(counts) < 2:
                only = next(iter(counts), "")
                raise DataError(f"target column {t.name!r} has a single class {only!r}; need at least two")
            numeric = all(_is_number(k) for k in counts)
            t.classes = sorted(counts, key=lambda k: (float(k), k) if numeric else (0.0, k))
            return
        n, total, squares = (float(v) for v in stats[f"{TARGET}:n"])
        t.mean = total / n
        t.std = _nonzero(math.sqrt(max(squares / n - t.mean**2, 0.0)))
        if t.std == 1.0 and squares / n - t.mean**2 <= 1e-24:
            raise DataError(f"target column {t.name!r} has one value in every row; a regression needs one that varies")

    def _fit_schema(self, stats: Stats) -> None:
        o = self.options
        if self.target is not None:
            self._fit_target_schema(stats)
        for name in self.columns:
            rows, present, numeric, datetime = (float(v) for v in stats[f"{name}:schema"])
            if present == 0:
                raise DataError(
                    f"column {name!r} is empty in all {int(rows)} rows; leave it out (--drop-columns {name}) or fill it"
                )
            if numeric == present:
                kind = "numeric"
            elif datetime == present:
                kind = "datetime"
            elif float(stats[f"{name}:distinct:max"][0]) <= o.categorical_max:
                kind = "categorical"
            elif o.text == "drop":
                continue
            elif o.text in ("hashing", "tfidf"):
                kind = "text"
            else:
                raise DataError(
                    f"column {name!r} holds free text or identifiers (over {o.categorical_max} distinct values "
                    f"at one party): hash its words (--text-columns hashing) or leave it out (--drop-columns {name})"
                )
            self.plans.append(ColumnPlan(name, kind))

    def _fit_moments(self, stats: Stats) -> None:
        if self.target is not None:
            self._fit_target_moments(stats)
        for plan in self.plans:
            for name in plan.numeric_names():
                n, total, squares = (float(v) for v in stats[f"{name}:n"])
                if n == 0:
                    raise DataError(f"{name!r} has no value in any row; drop column {plan.name!r} or fill it")
                mean = total / n
                self.moments[name] = (n, mean, max(squares / n - mean * mean, 0.0))
                self.ranges[name] = (float(stats[f"{name}:min"][0]), float(stats[f"{name}:max"][0]))
                if self.options.impute == "mean":
                    plan.impute[name] = mean
                elif self.options.impute == "constant":
                    plan.impute[name] = float(self.options.fill_value)
            if plan.kind == "categorical":
                self._fit_categories(plan, stats.get(f"{plan.name}:counts", {}))

    def _fit_categories(self, plan: ColumnPlan, counts: Mapping[str, int]) -> None:
        if self.options.encoding == "hashing":
            plan.fill = MISSING
            return
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # ties by name: the same at every party
        plan.fill = ranked[0][0] if ranked else MISSING  # most frequent
        keep = self.options.max_categories - (1 if len(ranked) > self.options.max_categories else 0)
        plan.vocabulary = sorted(k for k, _ in ranked[:keep])

    def _fit_spread(self, stats: Stats) -> None:
        for plan in self.plans:
            for name in plan.numeric_names():
                n, mean, _ = self.moments[name]
                if plan.kind == "numeric":
                    spread = self.options.z_limit * math.sqrt(float(stats[f"{name}:m2"][0]) / n)
                    plan.low[name], plan.high[name] = mean - spread, mean + spread

    def _fit_quantiles(self, stats: Stats) -> None:
        o = self.options
        for plan in self.plans:
            for name in plan.numeric_names():
                low, high = self.ranges[name]
                hist = np.asarray(stats[f"{name}:hist"], dtype=np.float64)
                q1, median, q3 = (histogram_quantile(hist, low, high, q) for q in (0.25, 0.5, 0.75))
                self.resolution[name] = (high - low) / o.bins
                if o.impute in ("median", *LOCAL_IMPUTE):  # the local imputers' fallback too
                    plan.impute[name] = median
                if o.outliers == "clip-iqr" and plan.kind == "numeric":
                    plan.low[name], plan.high[name] = q1 - o.iqr_k * (q3 - q1), q3 + o.iqr_k * (q3 - q1)
                if o.scaling == "robust":
                    plan.center[name], plan.scale[name] = median, _nonzero(q3 - q1)

    def _fit_scaling(self, stats: Stats) -> None:
        for plan in self.plans:
            for name in plan.numeric_names():
                n, total, squares = (float(v) for v in stats[f"{name}:n"])
                if self.options.scaling == "standard":
                    offset = total / n  # the cleaned mean's distance from the raw mean the sums are shifted by
                    plan.center[name] = self.moments[name][1] + offset
                    plan.scale[name] = _nonzero(math.sqrt(max(squares / n - offset * offset, 0.0)))
                else:  # minmax
                    low, high = float(stats[f"{name}:min"][0]), float(stats[f"{name}:max"][0])
                    plan.center[name], plan.scale[name] = low, _nonzero(high - low)


def histogram_quantile(hist: np.ndarray, low: float, high: float, q: float) -> float:
    """The ``q`` quantile (numpy's default, linear between order statistics) of values binned in ``hist`` over
    [low, high]: each order statistic is placed inside the bin that holds it, so the result is off from the exact
    quantile of the values by at most one bin width, (high - low) / len(hist)."""
    total = int(round(float(hist.sum())))
    if total == 0 or high <= low:
        return float(low)
    cum = np.cumsum(hist)
    width = (high - low) / len(hist)

    def order_statistic(k: int) -> float:  # the k-th smallest value (0-based), within its bin
        i = min(int(np.searchsorted(cum, k, side="right")), len(hist) - 1)
        before = float(cum[i - 1]) if i > 0 else 0.0
        inside = (k - before + 0.5) / float(hist[i]) if hist[i] > 0 else 0.5
        return float(low + (i + min(max(inside, 0.0), 1.0)) * width)

    position = q * (total - 1)
    below = int(math.floor(position))
    frac = position - below
    value = order_statistic(below)
    return value if frac == 0 else (1 - frac) * value + frac * order_statistic(min(below + 1, total - 1))


def _nonzero(scale: float) -> float:
    return scale if scale > 1e-12 else 1.0


# ---- the fitted transformer ----------------------------------------------------------------------------------


class Preprocessor:
    """A scikit-learn transformer from a raw table (a DataFrame) to float32 model inputs.

    ``fit`` is the federated loop with one party; ``transform`` applies the fitted plan the same way everywhere.
    """

    plan_: list[ColumnPlan]  # fitted state (scikit-learn's trailing underscore)
    resolution_: dict[str, float]  # per numeric feature: the histogram bin width bounding its median/IQR error
    feature_names_out_: list[str]
    target_: TargetPlan | None  # the target's task and classes or scaling, when fitted with one

    def __init__(self, options: PreprocessOptions | None = None) -> None:
        self.options = options

    # scikit-learn's estimator API (parameters only in __init__; fitted state ends in "_")
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters (scikit-learn's estimator API)."""
        return {"options": self.options}

    def set_params(self, **params: Any) -> Preprocessor:
        """Set constructor parameters (scikit-learn's estimator API)."""
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def fit(self, X: pd.DataFrame, y: Any = None) -> Preprocessor:
        """Fit on one table: the federated fit with a single party."""
        fitted = fit_parties([X], list(map(str, X.columns)), self.options)
        self.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_")})
        return self

    def fit_transform(self, X: pd.DataFrame, y: Any = None) -> np.ndarray:
        """``fit(X).transform(X)``."""
        return self.fit(X, y).transform(X)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the output columns (``age``, ``city=Paris``, ``visit.month_sin``, ``notes#7``...)."""
        return np.asarray(self.feature_names_out_, dtype=object)

    @property
    def task(self) -> str:
        """``classification`` or ``regression`` (fitted with a target), else empty."""
        return self.target_.task if self.target_ else ""

    @property
    def n_outputs(self) -> int:
        """The model's output width: the number of classes, or 1 for regression."""
        if self.target_ is None:
            raise DataError("this preprocessor was fitted without a target")
        return len(self.target_.classes) if self.task == "classification" else 1

    def encode_target(self, series: pd.Series) -> np.ndarray:
        """Target values as the model learns them: class indices (int64), or the values themselves (float32)."""
        import pandas as pd

        t = self.target_
        if t is None:
            raise DataError("this preprocessor was fitted without a target")
        if series.isna().any():
            raise DataError(f"target column {t.name!r} has {int(series.isna().sum())} empty values; fill or drop them")
        if t.task == "regression":
            y = pd.to_numeric(series, errors="coerce")
            if y.isna().any():
                raise DataError(f"target column {t.name!r} holds {series[y.isna()].iloc[0]!r:.40}, not a number")
            return np.array(y.to_numpy(dtype=np.float32))  # a writable copy: torch.from_numpy wants one
        index = {c: i for i, c in enumerate(t.classes)}
        codes = series.map(label_text).map(index)
        if codes.isna().any():
            unknown = sorted(set(series[codes.isna()].map(label_text)))[:5]
            raise DataError(
                f"target column {t.name!r} holds classes {unknown} that the federation did not fit "
                f"(known: {', '.join(t.classes)}); check the column, or refit with these rows"
            )
        return np.array(codes.to_numpy(dtype=np.int64))

    @property
    def input_columns(self) -> list[str]:
        """The raw columns a row must carry."""
        return [p.name for p in self.plan_]

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        """Raw rows in, model inputs out (float32, columns as :meth:`get_feature_names_out`)."""
        missing = [c for c in self.input_columns if c not in X.columns]
        if missing:
            raise DataError(
                f"the rows lack columns {', '.join(map(repr, missing))} that the model was trained on; "
                f"it expects: {', '.join(self.input_columns)}"
            )
        o = self.options or PreprocessOptions()
        numbers = local_impute(_numeric_parts(X, self.plan_), o)
        blocks: list[np.ndarray] = []
        scaled: list[np.ndarray] = []  # the numeric columns, for polynomial features
        for plan in self.plan_:
            if plan.kind in ("numeric", "datetime"):
                for name in plan.numeric_names():
                    raw = _impute_clip(numbers[name], plan, name)
                    x = (raw - plan.center.get(name, 0.0)) / plan.scale.get(name, 1.0)
                    blocks.append(x[:, None])
                    if plan.kind == "numeric":
                        scaled.append(x)
                    if plan.kind == "datetime" and name.rsplit(".", 1)[1] in CYCLES:  # cycles of the unscaled part
                        period = CYCLES[name.rsplit(".", 1)[1]]
                        blocks.append(np.sin(2 * np.pi * raw / period)[:, None])
                        blocks.append(np.cos(2 * np.pi * raw / period)[:, None])
            elif plan.kind == "categorical":
                blocks.append(self._categories(X[plan.name], plan, o))
            elif o.text == "tfidf":
                blocks.append(_tfidf(X[plan.name], plan))
            else:
                blocks.append(_hash_words(X[plan.name], o.hash_buckets))
        if o.polynomial and scaled:
            i, j = np.triu_indices(len(scaled))
            z = np.column_stack(scaled)
            blocks.append(z[:, i] * z[:, j])
        if not blocks:
            return np.zeros((len(X), 0), dtype=np.float32)
        return np.hstack(blocks).astype(np.float32)

    def _categories(self, series: pd.Series, plan: ColumnPlan, o: PreprocessOptions) -> np.ndarray:
        values = _strings(series).fillna(plan.fill).astype(str)
        if o.encoding == "hashing":
            return _hash_values(values.to_numpy(), o.hash_buckets)
        index = {v: i for i, v in enumerate(plan.vocabulary)}
        codes = values.map(index).fillna(len(plan.vocabulary)).to_numpy(dtype=np.int64)  # unseen/rare: infrequent
        if o.encoding == "ordinal":
            return np.asarray(codes, dtype=np.float64)[:, None]
        out = np.zeros((len(values), len(plan.vocabulary) + 1), dtype=np.float64)
        out[np.arange(len(values)), codes] = 1.0
        return out

    def _names(self) -> list[str]:
        o = self.options or PreprocessOptions()
        names: list[str] = []
        for plan in self.plan_:
            if plan.kind in ("numeric", "datetime"):
                for name in plan.numeric_names():
                    names.append(name)
                    part = name.rsplit(".", 1)[-1]
                    if plan.kind == "datetime" and part in CYCLES:
                        names += [f"{name}_sin", f"{name}_cos"]
            elif plan.kind == "categorical" and o.encoding == "onehot":
                names += [f"{plan.name}={v}" for v in plan.vocabulary] + [f"{plan.name}={INFREQUENT}"]
            elif plan.kind == "categorical" and o.encoding == "ordinal":
                names.append(plan.name)
            elif plan.kind == "text" and o.text == "tfidf":
                names += [f"{plan.name}#{word}" for word in plan.vocabulary]
            else:
                names += [f"{plan.name}#{i}" for i in range(o.hash_buckets)]
        numeric = [p.name for p in self.plan_ if p.kind == "numeric"]
        if o.polynomial and numeric:
            i, j = np.triu_indices(len(numeric))
            names += [f"{numeric[a]}^2" if a == b else f"{numeric[a]}*{numeric[b]}" for a, b in zip(i, j, strict=True)]
        return names

    # ---- travelling with the model: JSON, never a pickle ----
    def to_dict(self) -> dict[str, Any]:
        """The fitted plan as JSON-able data."""
        return {
            "options": _options_to(self.options or PreprocessOptions()),
            "plan": [asdict(p) for p in self.plan_],
            "resolution": self.resolution_,
            "target": asdict(self.target_) if self.target_ else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessor:
        """Inverse of :meth:`to_dict`."""
        try:
            pre = cls(PreprocessOptions(**_options_from(data["options"])))
            pre.plan_ = [ColumnPlan(**p) for p in data["plan"]]
            pre.resolution_ = {str(k): float(v) for k, v in data.get("resolution", {}).items()}
            pre.target_ = TargetPlan(**data["target"]) if data.get("target") else None
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"not a fitted preprocessor ({type(exc).__name__}: {exc}); refit the run") from exc
        pre.feature_names_out_ = pre._names()
        return pre

    def dumps(self) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> Preprocessor:
        """Inverse of :meth:`dumps`."""
        return cls.from_dict(json.loads(text))


def fit_parties(
    frames: Sequence[pd.DataFrame],
    columns: Sequence[str],
    options: PreprocessOptions | None = None,
    *,
    target: str = "",
    task: str = "auto",
) -> Preprocessor:
    """Fit across parties whose tables are at hand (a simulation, a test): the same loop a federation runs."""
    fit = FederatedFit(columns, options, target=target, task=task)
    while (req := fit.request()) is not None:
        fit.absorb(merge(local_statistics(frame, req) for frame in frames))
    return fit.preprocessor(frames[0] if len(frames) == 1 else None)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _hash_values(values: np.ndarray, buckets: int) -> np.ndarray:
    """One-hot of a stable hash of each value into ``buckets`` columns (CRC-32: the same on every machine)."""
    codes = np.fromiter((zlib.crc32(str(v).encode()) % buckets for v in values), dtype=np.int64, count=len(values))
    out = np.zeros((len(values), buckets), dtype=np.float64)
    out[np.arange(len(values)), codes] = 1.0
    return out


def _texts(series: pd.Series) -> list[str]:
    """A text column's values as strings, missing ones as "" (no words); a text that is there but holds no word (empty,
    blanks, punctuation) is refused with its row: it says nothing a model could read, and is likely a mistake."""
    import re

    texts = series.astype("string")
    present = texts.notna().to_numpy()
    out = [str(t) for t in texts.fillna("").to_numpy()]
    for row, text in enumerate(out):
        if present[row] and not re.search(TOKENS, text):
            raise DataError(
                f"column {series.name!r}, row {row}: the text {text!r:.40} holds no word; give the row its text, or "
                "leave the cell empty (a missing text counts as no words)"
            )
    return out


def _hash_words(series: pd.Series, buckets: int) -> np.ndarray:
    """log(1 + count) of the words of each text in ``buckets`` hashed columns; missing text has no words."""
    import re

    out = np.zeros((len(series), buckets), dtype=np.float64)
    for row, text in enumerate(_texts(series)):
        for word in re.findall(TOKENS, text.lower()):
            out[row, zlib.crc32(word.encode()) % buckets] += 1.0
    return np.log1p(out)


def _tfidf_vectorizer(vocabulary: list[str] | None = None) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        token_pattern=TOKENS, lowercase=True, max_features=TFIDF_WORDS, vocabulary=vocabulary, dtype=np.float64
    )


def _fit_tfidf(plan: ColumnPlan, series: pd.Series) -> None:
    """Fit one text column's TF-IDF (scikit-learn's ``TfidfVectorizer``) on one party's rows: words and IDF."""
    vectorizer = _tfidf_vectorizer()
    try:
        vectorizer.fit(_texts(series))
    except ValueError as exc:  # scikit-learn: "empty vocabulary; perhaps the documents only contain stop words"
        raise DataError(f"column {plan.name!r} holds no word in any row, so TF-IDF has no vocabulary: {exc}") from exc
    words = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
    plan.vocabulary, plan.idf = words, [float(v) for v in vectorizer.idf_]


def _tfidf(series: pd.Series, plan: ColumnPlan) -> np.ndarray:
    """TF-IDF of each text over the fitted vocabulary (l2-normalised rows, as scikit-learn's default)."""
    vectorizer = _tfidf_vectorizer(plan.vocabulary)
    vectorizer.idf_ = np.asarray(plan.idf, dtype=np.float64)
    return np.asarray(vectorizer.transform(_texts(series)).toarray(), dtype=np.float64)


def _options_to(options: PreprocessOptions) -> dict[str, Any]:
    data = asdict(options)
    data["drop"] = list(options.drop)
    return data


def _options_from(data: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(data)
    out["drop"] = tuple(out.get("drop", ()))
    return out
