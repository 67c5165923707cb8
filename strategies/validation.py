"""Reply validation as one schema, checked first: a bad reply is rejected, never fatal to the run.

:class:`ValidateReplies` is the outermost layer of every strategy stack (``build_strategy``), so no other
layer parses, accounts or aggregates a reply it has not accepted. Each reply is checked against what this
round expects, from the server's own model and configuration, never from another reply:

* records: exactly ``arrays`` (training only), ``metrics`` and optionally ``client-info``;
* evaluation counts: a confusion matrix of the server's model's classes (and AUC histograms that count the same
  rows), or, for regression, sums that real rows can produce (:func:`check_regression_counts`; a forecasting run
  adds its horizon forecast's sums, :func:`check_forecast_counts`), or, for anomaly detection, error histograms of
  the fixed bins that count the reply's rows (:func:`check_anomaly_counts`);
* metrics: exactly the keys this run's clients send (:func:`train_rules`, :func:`evaluate_rules`), each of
  its type and in its range; ``num-examples`` and ``he-weight`` at most ``max_num_examples`` (a client cannot
  outweigh the federation by its claim), ``he-weight`` equal to the record's own total weight, and 1 under
  central DP;
* plaintext arrays: the global model's names, shapes and a float dtype, all values finite;
* ciphertext: the full :func:`uaap.crypto.parse_record` check against the server's context and the global
  model's shapes (header size, nesting and declared sizes bounded before anything is allocated).

Any exception while checking one reply rejects that reply only: it is logged with the node id Flower
authenticated and the reason, written as a ``rejected`` event in ``runs/<run-id>/metrics.jsonl``, and
counted in the round's ``rejected-replies``. Replies a client lost (Flower errors) pass through so the inner
strategy counts them as failures. An aggregate of fewer than ``min_contributors`` accepted replies is not
released (the global model stays), except under central DP, where the noise protects a lone contributor
and withholding a release because few clients took part would itself depend on who took part.

Length: just over 500 lines because every task's evaluation counts (classification, regression, forecasting,
anomaly detection) are checked here beside the wrapper that applies them, so what a reply may carry is read in one
place.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.serverapp.strategy import Strategy

from strategies.stragglers import DropStragglers
from strategies.wrapper import StrategyWrapper, find_layer
from uaap import crypto
from uaap.metrics import AUC_BINS, ERROR_BINS, bin_upper_edge
from uaap.protocol import (
    ARRAYS,
    CLIENT_INFO,
    CONFUSION,
    DP_EPSILON,
    DP_Q,
    DP_SIGMA,
    DP_STEPS,
    DP_TOTAL_STEPS,
    ERROR_HIST_ANOMALY,
    ERROR_HIST_NORMAL,
    ERROR_SUM,
    FORECAST_ABS,
    FORECAST_N,
    FORECAST_SCALED,
    FORECAST_SMAPE,
    FORECAST_SQ,
    HE_WEIGHT,
    LOSS_SUM,
    METRICS,
    NUM_EXAMPLES,
    PARTITION_ID,
    REJECTED_REPLIES,
    SAE,
    SCORE_HIST_NEG,
    SCORE_HIST_POS,
    SSE,
    STEPS,
    STRAGGLER,
    TRAIN_LOSS,
    Y2_SUM,
    Y_SUM,
    as_float,
    as_int,
)

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.serverapp import Grid

log = logging.getLogger("uaap.validation")
COUNT_KEYS = frozenset({CONFUSION, SCORE_HIST_POS, SCORE_HIST_NEG})
MAX_STEPS = 10**9
SUM_TOLERANCE = 1e-9  # relative: float64 sums of real rows meet the identities below far closer than this


class InvalidReply(ValueError):
    """Why one reply cannot be aggregated."""


@dataclass(frozen=True)
class Rule:
    """One metric's type and closed/open range."""

    whole: bool = False
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False

    def check(self, key: str, value: object) -> None:
        """Raise :class:`InvalidReply` unless ``value`` is a number of this rule's kind and range."""
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidReply(f"metric {key}={value!r:.60}: expected a finite number")
        if self.whole and not float(value).is_integer():
            raise InvalidReply(f"metric {key}={value!r}: expected a whole number")
        if value < self.low or value > self.high or (self.low_open and value == self.low):
            bracket = "(" if self.low_open else "["
            raise InvalidReply(f"metric {key}={value!r}: expected a value in {bracket}{self.low:g}, {self.high:g}]")


def train_rules(*, dp_local: bool, secure: bool, central: bool, max_num_examples: int) -> dict[str, Rule]:
    """The metrics a training reply must carry, exactly, for this run's settings (see ``client.app.train``)."""
    rules = {
        NUM_EXAMPLES: Rule(whole=True, low=1, high=max_num_examples),
        TRAIN_LOSS: Rule(low=0.0),
        STEPS: Rule(whole=True, low=0, high=MAX_STEPS),
        STRAGGLER: Rule(whole=True, low=0, high=1),
    }
    if dp_local:  # this round's DP-SGD release, accounted by the server (uaap.privacy.dpsgd.client_report)
        rules |= {
            DP_SIGMA: Rule(low=0.0, high=1e6, low_open=True),
            DP_Q: Rule(low=0.0, high=1.0, low_open=True),
            DP_STEPS: Rule(whole=True, low=1, high=MAX_STEPS),
            DP_TOTAL_STEPS: Rule(whole=True, low=1, high=MAX_STEPS),
            DP_EPSILON: Rule(low=0.0),
        }
    if secure:  # central DP pre-divides by q N and sends weight 1 (strategies.dp_noise)
        rules[HE_WEIGHT] = Rule(low=1.0, high=1.0) if central else Rule(low=0.0, high=max_num_examples, low_open=True)
    return rules


def evaluate_rules(max_num_examples: int, task: str = "classification") -> dict[str, Rule]:
    """The scalar metrics of an evaluation reply; the counts beside them are checked by :func:`check_counts`.

    Regression replies carry only scalars (``uaap.metrics.regression_counts``): all of them are here, and for a
    forecasting run (``task="forecast"``: one-step windows scored as a regression) the horizon forecast's sums too.
    """
    n = Rule(whole=True, low=1, high=max_num_examples)
    if task == "anomaly":  # the histograms beside these: check_anomaly_counts
        return {NUM_EXAMPLES: n, ERROR_SUM: Rule(low=0.0)}
    if task not in ("regression", "forecast"):
        return {NUM_EXAMPLES: n, LOSS_SUM: Rule(low=0.0)}
    rules = {NUM_EXAMPLES: n, Y_SUM: Rule(), Y2_SUM: Rule(low=0.0), SSE: Rule(low=0.0), SAE: Rule(low=0.0)}
    if task == "forecast":  # uaap.forecast.metrics: points, |errors|, squares, sMAPE terms, MASE-scaled errors
        nonnegative = Rule(low=0.0)
        rules |= {FORECAST_N: n, FORECAST_ABS: nonnegative, FORECAST_SQ: nonnegative}
        rules |= {FORECAST_SMAPE: nonnegative, FORECAST_SCALED: nonnegative}
    return rules


def check_counts(metrics: Mapping[str, Any], n_classes: int | None, task: str = "classification") -> None:
    """An evaluation reply's confusion matrix (and, for two classes, score histograms) are consistent counts.

    For regression the sums are checked instead (:func:`check_regression_counts`), and for a forecasting run the
    horizon forecast's sums too (:func:`check_forecast_counts`).
    """
    if task in ("regression", "forecast"):
        check_regression_counts(metrics)
        if task == "forecast":
            check_forecast_counts(metrics)
        return
    if task == "anomaly":
        check_anomaly_counts(metrics)
        return
    n = int(metrics[NUM_EXAMPLES])
    confusion = _counts(metrics[CONFUSION], CONFUSION)
    k = math.isqrt(len(confusion))
    if k * k != len(confusion) or k < 2 or (n_classes is not None and k != n_classes):
        expected = f"{n_classes} x {n_classes}" if n_classes else "a square of at least 2 x 2"
        raise InvalidReply(f"{CONFUSION} has {len(confusion)} entries; expected {expected}")
    if sum(confusion) != n:
        raise InvalidReply(f"{CONFUSION} counts {sum(confusion)} rows; {NUM_EXAMPLES} says {n}")
    hists = {SCORE_HIST_POS, SCORE_HIST_NEG} & set(metrics.keys())
    if k == 2 and len(hists) != 2:
        raise InvalidReply(f"two classes need {SCORE_HIST_POS} and {SCORE_HIST_NEG} (the AUC's sums)")
    if k != 2 and hists:
        raise InvalidReply(f"{sorted(hists)} belong to two-class tasks; this one has {k} classes")
    if k == 2:
        pos, neg = _counts(metrics[SCORE_HIST_POS], SCORE_HIST_POS), _counts(metrics[SCORE_HIST_NEG], SCORE_HIST_NEG)
        if len(pos) != AUC_BINS or len(neg) != AUC_BINS:
            raise InvalidReply(f"score histograms have {len(pos)}/{len(neg)} bins; expected {AUC_BINS}")
        if sum(pos) != confusion[2] + confusion[3] or sum(neg) != confusion[0] + confusion[1]:
            raise InvalidReply("score histograms do not count the rows the confusion matrix counts per class")


def check_regression_counts(metrics: Mapping[str, Any]) -> None:
    """Regression sums that ``n`` real rows could have produced (``uaap.metrics.regression_counts``).

    Each of ``n``, ``y-sum``, ``y2-sum``, ``sq-error-sum`` (SSE) and ``abs-error-sum`` (SAE) must be a finite
    number (``n`` whole and >= 1, the other sums but ``y-sum`` >= 0), and they must satisfy what any real rows
    do: SST = y2-sum - y-sum^2 / n >= 0, and sqrt(SSE) <= SAE <= sqrt(n * SSE) (the L1 norm of the errors lies
    between their L2 norm and sqrt(n) times it); with one row, SST is 0. A reply that claims fewer rows than its
    sums need, a negative or non-finite sum, or targets whose spread is impossible is rejected.
    """
    try:
        n = as_int(metrics.get(NUM_EXAMPLES), NUM_EXAMPLES)
        y_sum, y2_sum, sse, sae = (as_float(metrics.get(k), k) for k in (Y_SUM, Y2_SUM, SSE, SAE))
    except ValueError as exc:
        raise InvalidReply(str(exc)) from None
    if n < 1:
        raise InvalidReply(f"{NUM_EXAMPLES}={n}: a regression reply needs at least one row")
    negative = [k for k, v in ((Y2_SUM, y2_sum), (SSE, sse), (SAE, sae)) if v < 0]
    if negative:
        raise InvalidReply(f"{', '.join(negative)} < 0: sums of squares and absolute values cannot be negative")
    sst = y2_sum - y_sum * y_sum / n
    if sst < -SUM_TOLERANCE * y2_sum or (n == 1 and abs(sst) > SUM_TOLERANCE * y2_sum):
        raise InvalidReply(
            f"{Y_SUM}={y_sum:g} and {Y2_SUM}={y2_sum:g} over {n} rows give a target spread SST={sst:g}; real rows "
            f"give SST >= 0 (and 0 for one row)"
        )
    _check_norms(n, sse, sae, SSE, SAE)


def check_forecast_counts(metrics: Mapping[str, Any]) -> None:
    """A horizon forecast's sums that ``forecast-n`` real points could have produced (``uaap.forecast.metrics``).

    Each sMAPE term 2|e| / (|y| + |yhat|) lies in [0, 2], so their sum is at most 2n; the absolute and squared
    errors obey sqrt(SSE) <= SAE <= sqrt(n * SSE) as a regression's do. (The MASE-scaled sum has no bound the
    server can check: each series' scale is its client's.)
    """
    try:
        n = as_int(metrics.get(FORECAST_N), FORECAST_N)
        sae, sse, smape = (as_float(metrics.get(k), k) for k in (FORECAST_ABS, FORECAST_SQ, FORECAST_SMAPE))
    except ValueError as exc:
        raise InvalidReply(str(exc)) from None
    if smape > 2 * n * (1.0 + SUM_TOLERANCE):
        raise InvalidReply(f"{FORECAST_SMAPE}={smape:g} over {n} points: each point's sMAPE term is at most 2")
    _check_norms(n, sse, sae, FORECAST_SQ, FORECAST_ABS)


def _check_norms(n: int, sse: float, sae: float, sse_key: str, sae_key: str) -> None:
    """Raise unless the L1 norm of ``n`` errors (``sae``) lies between their L2 norm and sqrt(n) times it."""
    slack = 1.0 + SUM_TOLERANCE
    if sae * sae > n * sse * slack + 1e-300 or math.sqrt(sse) > sae * slack + 1e-300:
        raise InvalidReply(
            f"{sae_key}={sae:g} and {sse_key}={sse:g} over {n} rows are inconsistent: real errors give "
            f"sqrt(SSE) <= SAE <= sqrt(n * SSE)"
        )


def check_anomaly_counts(metrics: Mapping[str, Any]) -> None:
    """Anomaly sums that ``n`` real rows could have produced (``uaap.metrics.anomaly_counts``).

    Both error histograms have exactly :data:`ERROR_BINS` whole, non-negative entries and together count the
    reply's ``num-examples``; ``error-sum`` is finite and lies between the sums of the rows' bin edges (each row's
    error is at least its bin's lower edge and below its upper one), so a reply whose sum does not fit the bins its
    rows claim is rejected.
    """
    try:
        n = as_int(metrics.get(NUM_EXAMPLES), NUM_EXAMPLES)
        total = as_float(metrics.get(ERROR_SUM), ERROR_SUM)
    except ValueError as exc:
        raise InvalidReply(str(exc)) from None
    normal = _counts(metrics.get(ERROR_HIST_NORMAL), ERROR_HIST_NORMAL)
    anomaly = _counts(metrics.get(ERROR_HIST_ANOMALY), ERROR_HIST_ANOMALY)
    if len(normal) != ERROR_BINS or len(anomaly) != ERROR_BINS:
        raise InvalidReply(f"error histograms have {len(normal)}/{len(anomaly)} bins; expected {ERROR_BINS}")
    if sum(normal) + sum(anomaly) != n:
        raise InvalidReply(f"error histograms count {sum(normal) + sum(anomaly)} rows; {NUM_EXAMPLES} says {n}")
    if total < 0:
        raise InvalidReply(f"{ERROR_SUM}={total:g}: squared errors cannot sum below 0")
    rows = np.asarray(normal, dtype=np.float64) + np.asarray(anomaly, dtype=np.float64)
    floor = float((rows * _LOWER_EDGES).sum())
    ceiling = math.inf if rows[-1] else float((rows[:-1] * _UPPER_EDGES[:-1]).sum())  # the last bin has no top
    if not floor * (1 - SUM_TOLERANCE) <= total <= ceiling * (1 + SUM_TOLERANCE):
        raise InvalidReply(
            f"{ERROR_SUM}={total:g} is outside [{floor:g}, {ceiling:g}], what rows in the histograms' bins sum to"
        )


_UPPER_EDGES = np.array([bin_upper_edge(i) for i in range(ERROR_BINS)])  # the last is infinite
_LOWER_EDGES = np.concatenate(([0.0], _UPPER_EDGES[:-1]))  # the first bin also holds every smaller error


def _counts(value: object, key: str) -> list[int]:
    if not isinstance(value, list) or len(value) > 1 << 20:
        raise InvalidReply(f"metric {key}: expected a list of counts")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise InvalidReply(f"metric {key}: every entry must be a whole number >= 0")
    return value


Layout = dict[str, tuple[tuple[int, ...], str]]


def expected_layout(arrays: ArrayRecord) -> Layout | None:
    """Name -> (shape, dtype) of a plaintext global model; None when the arrays are ciphertext."""
    if crypto.is_encrypted(arrays):
        return None
    return {name: (tuple(int(d) for d in arr.shape), str(arr.dtype)) for name, arr in arrays.items()}


class ValidateReplies(StrategyWrapper):
    """Reject replies that do not match this round's schema; delegate everything else to ``strategy``."""

    linear_passthrough = True  # only filters replies: secure aggregation may sit on top of it

    def __init__(
        self,
        strategy: Strategy,
        run_id: str = "",
        *,
        dp_local: bool = False,
        central: bool = False,
        he_context: crypto.HEContext | None = None,
        max_num_examples: int = 100_000,
        min_contributors: int = 1,
        n_classes: int | None = None,
        task: str = "classification",
        check_arrays: Callable[[ArrayRecord], None] | None = None,
    ) -> None:
        super().__init__(strategy)
        self.run_id = run_id
        self.check_arrays = check_arrays  # a family whose arrays have no fixed layout (a forest) checks its own
        self.he_context = he_context
        self.central = central
        self.min_contributors = min_contributors
        self.train_rules = train_rules(
            dp_local=dp_local, secure=he_context is not None, central=central, max_num_examples=max_num_examples
        )
        self.eval_rules = evaluate_rules(max_num_examples, task)
        self.n_classes = n_classes
        self.task = task
        self.layout: Layout | None = None  # plaintext global model
        self.he_shapes: list[tuple[int, ...]] | None = None  # ciphertext global model
        self.rejected: list[dict[str, Any]] = []  # every rejection of this run: round, phase, node, reason

    def summary(self) -> None:
        """Log what is checked, then the inner strategy's summary."""
        log.info(
            "reply validation: records, metrics %s, %s, min-contributors %d",
            sorted(self.train_rules),
            "ciphertext layout" if self.he_context else "array names/shapes/finite values",
            self.min_contributors,
        )
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model's layout (the server's own arrays), then let the inner strategy sample."""
        self.layout = expected_layout(arrays)
        self.he_shapes = crypto.record_shapes(arrays) if self.layout is None else [s for s, _ in self.layout.values()]
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate only the replies that pass :meth:`check_train`; withhold an aggregate of too few."""
        good, lost, bad = self._split(server_round, "train", replies, self.check_train)
        if not good:
            log.warning("round %d: no valid training replies (%d rejected, %d lost)", server_round, bad, len(lost))
        arrays, metrics = self.strategy.aggregate_train(server_round, good + lost)
        dropper = find_layer(self.strategy, DropStragglers)
        contributors = len(good) - (dropper.last_dropped if dropper is not None else 0)
        if arrays is not None and contributors < self.min_contributors and not self.central:
            log.warning(
                "round %d: %d accepted replies, fewer than min-contributors=%d; the aggregate is not released",
                server_round,
                contributors,
                self.min_contributors,
            )
            arrays = None
        if metrics is not None:
            metrics[REJECTED_REPLIES] = bad
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Aggregate only evaluation replies with sound counts (the inner strategy sums them: ``summed_metrics``)."""
        good, lost, _ = self._split(server_round, "evaluate", replies, self.check_evaluate)
        return self.strategy.aggregate_evaluate(server_round, good + lost)

    # ---- the schema --------------------------------------------------------------------------------------
    def check_train(self, msg: Message) -> None:
        """Records, metrics and arrays of one training reply against this round's expectations."""
        _check_records(msg, arrays=True)
        metrics = msg.content.metric_records[METRICS]
        _check_metrics(metrics, self.train_rules, {})
        record = msg.content.array_records[ARRAYS]
        if self.he_context is not None:
            enc = crypto.parse_record(record, self.he_context, shapes=self.he_shapes)
            if not math.isclose(enc.weight, as_float(metrics[HE_WEIGHT], HE_WEIGHT), rel_tol=1e-12):
                raise InvalidReply(f"metric {HE_WEIGHT}={metrics[HE_WEIGHT]} differs from its record's {enc.weight}")
        elif self.check_arrays is not None:
            try:
                self.check_arrays(record)
            except ValueError as exc:
                raise InvalidReply(str(exc)) from exc
        elif self.layout is None:
            raise InvalidReply("the global model is ciphertext but this server runs without secure aggregation")
        else:
            _check_plaintext(record, self.layout)

    def check_evaluate(self, msg: Message) -> None:
        """Records, scalar metrics and counts of one evaluation reply."""
        _check_records(msg, arrays=False)
        metrics = msg.content.metric_records[METRICS]
        if self.task in ("regression", "forecast"):  # scalars only: exactly these sums, then their consistency
            _check_metrics(metrics, self.eval_rules, {})
            check_counts(metrics, self.n_classes, self.task)
            return
        if self.task == "anomaly":  # the two error histograms beside exactly the anomaly scalars
            hists = {ERROR_HIST_NORMAL, ERROR_HIST_ANOMALY}
            unexpected = sorted(k[:40] for k in set(metrics.keys()) - set(self.eval_rules) - hists)[:10]
            missing = sorted(hists - set(metrics.keys()))
            if unexpected or missing:
                raise InvalidReply(f"metrics missing {missing}, unexpected {unexpected}")
            _check_metrics({k: v for k, v in metrics.items() if k not in hists}, self.eval_rules, {})
            check_anomaly_counts(metrics)
            return
        scalars = {k: v for k, v in metrics.items() if k not in COUNT_KEYS}
        unexpected = sorted(k[:40] for k in set(metrics.keys()) - set(self.eval_rules) - COUNT_KEYS)[:10]
        if unexpected or CONFUSION not in metrics:
            raise InvalidReply(
                f"metrics missing {[CONFUSION] if CONFUSION not in metrics else []}, unexpected {unexpected}"
            )
        _check_metrics(scalars, self.eval_rules, {})
        check_counts(metrics, self.n_classes)

    def _split(
        self, server_round: int, phase: str, replies: Iterable[Message], check: Callable[[Message], None]
    ) -> tuple[list[Message], list[Message], int]:
        good: list[Message] = []
        lost: list[Message] = []
        bad = 0
        for msg in replies:
            if msg.has_error():  # lost clients: the inner strategy counts and logs them as failures
                lost.append(msg)
                continue
            try:
                check(msg)
            except Exception as exc:  # noqa: BLE001 - any failure while checking one reply rejects that reply only
                bad += 1
                reason = str(exc) if isinstance(exc, InvalidReply | crypto.CiphertextError) else repr(exc)
                self._record(server_round, phase, int(msg.metadata.src_node_id), reason[:500])
                continue
            good.append(msg)
        return good, lost, bad

    def _record(self, server_round: int, phase: str, node: int, reason: str) -> None:
        entry = {"round": server_round, "phase": phase, "node": node, "reason": reason}
        self.rejected.append(entry)
        log.error("round %d %s: rejected the reply of node %d: %s", server_round, phase, node, reason)
        if self.run_id:
            from uaap import workspace

            try:
                workspace.run_dir(self.run_id).log_event("rejected", **entry)
            except OSError as exc:  # logging must never take the round down
                log.warning("could not log the rejection: %s", exc)


def _check_records(msg: Message, *, arrays: bool) -> None:
    content = msg.content
    if set(content.array_records.keys()) != ({ARRAYS} if arrays else set()):
        raise InvalidReply(
            f"array records {sorted(content.array_records.keys())}; expected {[ARRAYS] if arrays else []}"
        )
    if set(content.metric_records.keys()) != {METRICS}:
        raise InvalidReply(f"metric records {sorted(content.metric_records.keys())}; expected ['{METRICS}']")
    if not set(content.config_records.keys()) <= {CLIENT_INFO}:
        raise InvalidReply(
            f"config records {sorted(content.config_records.keys())}; expected at most ['{CLIENT_INFO}']"
        )
    if CLIENT_INFO in content.config_records:  # a label for logs only: identity is the node id Flower authenticated
        info = content.config_records[CLIENT_INFO]
        if not set(info.keys()) <= {PARTITION_ID}:
            raise InvalidReply(f"{CLIENT_INFO} carries {sorted(info.keys())}; expected at most ['{PARTITION_ID}']")
        label = info.get(PARTITION_ID, 0)
        if isinstance(label, bool) or not isinstance(label, int):
            raise InvalidReply(f"{CLIENT_INFO} {PARTITION_ID}={label!r:.40}: expected a whole number")


def _check_metrics(metrics: Mapping[str, Any], required: dict[str, Rule], optional: dict[str, Rule]) -> None:
    keys = set(metrics.keys())
    missing, unexpected = sorted(set(required) - keys), sorted(keys - set(required) - set(optional))
    if missing or unexpected:
        raise InvalidReply(f"metrics missing {missing[:10]}, unexpected {[k[:40] for k in unexpected[:10]]}")
    for key in sorted(keys):
        (required.get(key) or optional[key]).check(key, metrics[key])


def _check_plaintext(record: ArrayRecord, layout: Layout) -> None:
    names = list(record.keys())
    if names != list(layout):
        missing = sorted(set(layout) - set(names))
        extra = sorted(n[:40] for n in set(names) - set(layout))[:10]
        raise InvalidReply(f"array names differ from the global model (missing {missing}, unexpected {extra})")
    for name in names:
        arr = record[name]
        shape, _ = layout[name]
        if tuple(arr.shape) != shape:
            raise InvalidReply(f"array {name!r} has shape {tuple(arr.shape)!r:.80}; the global model's is {shape}")
        if arr.dtype not in ("float16", "float32", "float64"):
            raise InvalidReply(f"array {name!r} has dtype {arr.dtype!r:.40}; expected floating point")
        if len(arr.data) > 128 + 8 * max(1, int(np.prod(shape))):
            raise InvalidReply(f"array {name!r} carries {len(arr.data)} bytes, more than its shape {shape} needs")
        try:
            values = arr.numpy()
        except Exception as exc:  # bytes that do not decode as the declared array
            raise InvalidReply(f"array {name!r} does not decode ({exc.__class__.__name__}: {exc})") from exc
        if values.shape != shape or values.dtype.kind != "f":
            raise InvalidReply(f"array {name!r} decodes to {values.dtype} {values.shape}; expected float {shape}")
        if not np.isfinite(values).all():
            raise InvalidReply(f"array {name!r} has {int((~np.isfinite(values)).sum())} non-finite values (NaN/Inf)")
