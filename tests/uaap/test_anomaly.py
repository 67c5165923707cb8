"""Anomaly detection (model=autoencoder, task=anomaly): the summed error histograms against scikit-learn on the
pooled rows, the reply checks, the data rules, the refusals and `uaap train`'s threshold chosen on validation rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from strategies.base import summed_metrics
from strategies.validation import InvalidReply, ValidateReplies, check_anomaly_counts
from tests.flower_helpers import reply_from
from uaap import workspace
from uaap.anomaly import detect
from uaap.config import RunConfig
from uaap.errors import ConfigError, DataError
from uaap.metrics import ERROR_BINS, ERROR_LOG_HIGH, ERROR_LOG_LOW, anomaly_counts, metrics_from_counts, sum_counts
from uaap.protocol import CLIENT_INFO, ERROR_HIST_ANOMALY, ERROR_HIST_NORMAL, ERROR_SUM, METRICS, NUM_EXAMPLES

BIN = 10 ** ((ERROR_LOG_HIGH - ERROR_LOG_LOW) / ERROR_BINS)  # the ratio of a bin's upper to its lower edge


def _pooled_reference(y: np.ndarray, errors: np.ndarray, threshold: float) -> dict[str, float]:
    flags = errors > threshold
    return {
        "accuracy": accuracy_score(y, flags),
        "precision": precision_score(y, flags, zero_division=0),
        "recall": recall_score(y, flags),
        "f1": f1_score(y, flags),
        "auc": roc_auc_score(y, errors),
    }


@pytest.mark.parametrize("q", [0.9, 0.95, 0.99])
def test_the_threshold_and_metrics_of_summed_client_histograms_are_those_of_the_pooled_rows(q: float) -> None:
    rng = np.random.default_rng(7)
    parts = []
    for n, shift in ((120, 0.0), (80, 0.3), (50, -0.2)):  # three clients whose errors differ in level
        y = (rng.random(n) < 0.25).astype(np.int64)
        errors = np.exp(rng.normal(shift + 1.5 * y, 0.8))
        parts.append((y, errors))
    total = sum_counts(anomaly_counts(y, e) for y, e in parts)
    got = metrics_from_counts(total, anomaly_quantile=q)
    y, errors = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    exact = np.quantile(errors[y == 0], q, method="inverted_cdf")  # the ceil(q n)-th smallest normal error
    assert exact <= got["threshold"] <= exact * BIN * (1 + 1e-9), "within the one bin that holds the quantile"
    ref = _pooled_reference(y, errors, got["threshold"])
    for key in ("accuracy", "precision", "recall", "f1"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    assert abs(got["auc"] - ref["auc"]) <= got["auc-error-bound"] + 1e-12
    assert got["loss"] == pytest.approx(errors.mean(), rel=1e-12)
    # a saved threshold (a bin edge) gives the same flags again, on other rows too
    again = metrics_from_counts(anomaly_counts(*parts[0]), threshold=got["threshold"])
    assert again["recall"] == pytest.approx(recall_score(parts[0][0], parts[0][1] > got["threshold"]), abs=1e-12)


def test_the_servers_aggregation_fn_sums_then_thresholds_at_the_runs_quantile() -> None:
    rng = np.random.default_rng(3)
    y, errors = (rng.random(200) < 0.2).astype(np.int64), rng.gamma(2.0, 0.3, 200)
    contents = [RecordDict({METRICS: MetricRecord(anomaly_counts(y[i::2], errors[i::2]))}) for i in (0, 1)]
    record = summed_metrics(contents, NUM_EXAMPLES, anomaly_quantile=0.8)
    exact = np.quantile(errors[y == 0], 0.8, method="inverted_cdf")
    assert exact <= record["threshold"] <= exact * BIN * (1 + 1e-9) and record[NUM_EXAMPLES] == 200


def _honest() -> dict:
    rng = np.random.default_rng(0)
    return anomaly_counts((rng.random(40) < 0.3).astype(np.int64), rng.gamma(2.0, 0.2, 40))


def _with(**changes: object) -> dict:
    return {**_honest(), **changes}


def test_anomaly_replies_must_be_consistent_counts_of_the_fixed_bins() -> None:
    check_anomaly_counts(_honest())
    honest = _honest()
    shifted = [0] * 100 + honest[ERROR_HIST_NORMAL][:-100]  # the rows claimed 100 bins (x3.2) higher than their sum
    lies = {
        "count": (_with(**{NUM_EXAMPLES: 41}), "count 40 rows; num-examples says 41"),
        "bins": (_with(**{ERROR_HIST_NORMAL: honest[ERROR_HIST_NORMAL][:-1]}), f"expected {ERROR_BINS}"),
        "negative": (_with(**{ERROR_HIST_ANOMALY: [-1] + honest[ERROR_HIST_ANOMALY][1:]}), "whole number >= 0"),
        "sum-low": (_with(**{ERROR_SUM: 0.0}), "outside"),
        "sum-high": (_with(**{ERROR_SUM: honest[ERROR_SUM] * 3}), "outside"),
        "shifted": (_with(**{ERROR_HIST_NORMAL: shifted}), None),
    }
    for name, (metrics, message) in lies.items():
        with pytest.raises(InvalidReply, match=message or "outside") as err:
            check_anomaly_counts(metrics)
        assert err.value, name


def test_the_validator_rejects_an_anomaly_reply_with_missing_or_foreign_keys() -> None:
    validator = ValidateReplies(FedAvg(min_available_nodes=1), task="anomaly", max_num_examples=1000)

    def reply(metrics: dict) -> object:
        return reply_from(1, RecordDict({METRICS: MetricRecord(metrics), CLIENT_INFO: ConfigRecord({})}))

    validator.check_evaluate(reply(_honest()))
    with pytest.raises(InvalidReply, match=rf"missing \['{ERROR_HIST_ANOMALY}'\]"):
        validator.check_evaluate(reply({k: v for k, v in _honest().items() if k != ERROR_HIST_ANOMALY}))
    with pytest.raises(InvalidReply, match=r"unexpected \['confusion'\]"):
        validator.check_evaluate(reply(_with(confusion=[1, 2, 3, 4])))
    with pytest.raises(InvalidReply, match="num-examples=1001"):
        validator.check_evaluate(reply(_with(**{NUM_EXAMPLES: 1001})))


def test_breast_cancer_as_an_anomaly_task_trains_clients_on_normal_rows_and_validates_on_all() -> None:
    from sklearn.datasets import load_breast_cancer

    from uaap.data import federated, load_data

    cfg = RunConfig(dataset="breast_cancer", task="anomaly", model="autoencoder", num_clients=3, partition="iid")
    data = load_data(cfg)
    assert data.task == "anomaly" and np.array_equal(data.y, load_breast_cancer().target == 0)  # malignant: 1
    clients, test = federated(cfg, 3)
    assert all(c.train.y.sum() == 0 and len(c.train.y) > 50 for c in clients), "train on normal rows only"
    assert all(0 < c.test.y.sum() < len(c.test.y) for c in clients) and 0 < test.y.sum() < len(test.y)


def test_anomaly_runs_that_cannot_work_are_refused_naming_what_does() -> None:
    with pytest.raises(ConfigError, match="model='autoencoder' detects anomalies only, not task='auto'"):
        RunConfig(model="autoencoder")
    with pytest.raises(ConfigError, match="model='mlp' does not do anomaly.*For anomaly: autoencoder"):
        RunConfig(model="mlp", task="anomaly")
    with pytest.raises(DataError, match="needs a two-class target.*'digits' is 10 classes"):
        from uaap.data import load_split

        load_split(RunConfig(dataset="digits", model="autoencoder", task="anomaly"))
    with pytest.raises(DataError, match="not dataset='csv' yet"):
        load_split(RunConfig(dataset="csv", data_path="x.csv", target="y", model="autoencoder", task="anomaly"))


@pytest.mark.slow
def test_uaap_train_chooses_the_threshold_on_validation_rows_and_saves_it_with_the_model(uaap_home: Path) -> None:
    from uaap.cli import main
    from uaap.data import load_split, local_split
    from uaap.training import reconstruction_errors

    argv = ["train", "--dataset", "breast_cancer", "--model", "autoencoder", "--task", "anomaly", "--epochs", "12"]
    assert main([*argv, "--optimizer", "adam", "--learning-rate", "0.005", "--experiment", "tests"]) == 0
    (run_id,) = workspace.list_runs()
    rd = workspace.existing_run(run_id)
    final = rd.events("end")[-1]["central"]
    model, meta = workspace.load_model(rd.model_file)
    cfg = rd.read_config()
    split = load_split(cfg)
    validation = local_split(split.train, cfg.seed).test  # held out of the training rows, never the test rows
    val_errors = reconstruction_errors(model, validation.X)
    exact = np.quantile(val_errors[validation.y == 0], cfg.anomaly_quantile, method="inverted_cdf")
    assert meta["threshold"] == final["threshold"] and exact <= meta["threshold"] <= exact * BIN * (1 + 1e-9)
    errors, flags = detect(model, meta, split.test.X)
    ref = _pooled_reference(split.test.y, errors, meta["threshold"])
    for key in ("accuracy", "precision", "recall", "f1"):
        assert final[key] == pytest.approx(ref[key], abs=1e-12), key
    assert np.array_equal(flags, errors > meta["threshold"])
    assert ref["auc"] > 0.85 and final["recall"] > 0.5, f"test metrics {final}"
