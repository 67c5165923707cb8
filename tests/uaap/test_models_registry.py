"""The model families' capability table (uaap.models.registry) and the refusals it drives."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from uaap.config import RunConfig
from uaap.errors import ConfigError
from uaap.models import FAMILIES, build_model, capability_table, check_combination
from uaap.models.registry import Capabilities, ModelFamily


def test_uaap_models_prints_the_registry_as_a_table_and_as_json():
    out = subprocess.run([sys.executable, "-m", "uaap.cli", "models", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["family"] for r in rows] == list(FAMILIES) and rows == capability_table()
    text = subprocess.run([sys.executable, "-m", "uaap.cli", "models"], capture_output=True, text=True).stdout
    text = " ".join(text.split())  # rich wraps long summaries
    for name, fam in FAMILIES.items():
        assert name in text and fam.summary in text


def test_run_configs_are_refused_before_they_start_naming_what_exists(monkeypatch):
    with pytest.raises(ConfigError, match="model='cnn' does not do regression; it does classification. "
                                          "For regression: logreg, mlp"):  # fmt: skip
        RunConfig(model="cnn", task="regression")
    central = ModelFamily("trees", "a central-only family", Capabilities(("classification",), export=("onnx",)))
    monkeypatch.setitem(FAMILIES, "trees", central)
    with pytest.raises(ConfigError) as err:
        check_combination("trees", where="federated")
    federated = ", ".join(n for n, f in FAMILIES.items() if f.capabilities.federated)
    assert str(err.value) == (
        f"model='trees' trains only centrally (uaap train, uaap automl); federated families: {federated}"
    )
    assert federated.startswith("logreg, svm, mlp, cnn")
    with pytest.raises(ConfigError, match="cannot run under secure-aggregation='ckks'.*use --secure-aggregation none"):
        check_combination("trees", secure_aggregation="ckks")
    with pytest.raises(
        ConfigError, match=r"has no differential privacy \(--dp-central true\); families with DP: logreg"
    ):
        check_combination("trees", dp_central=True)
    check_combination("trees", where="central")  # what it can do passes
    with pytest.raises(ConfigError, match="model='mlp' federates as FedAvg/FedProx, a server optimiser or a robust "
                                          "aggregator over the parameters and takes strategy fedavg or fedprox or "
                                          "fedadam or .* or bulyan, not strategy='qfedavg'"):  # fmt: skip
        check_combination("mlp", where="federated", strategy="qfedavg")
    for strategy in ("fedavgm", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"):
        check_combination("mlp", where="federated", strategy=strategy)  # Flower's, wrapped (strategies.base)
    with pytest.raises(ConfigError, match="model='resnet' is not a model family; choose one of: logreg, svm, mlp, cnn"):
        check_combination("resnet")


def test_the_cnn_takes_any_image_shape_and_refuses_a_table():
    import torch

    for shape in [(1, 8, 8), (3, 7, 9), (1, 5, 4)]:
        n = shape[0] * shape[1] * shape[2]
        assert build_model("cnn", n, 4, shape)(torch.zeros(3, n)).shape == (3, 4)
    with pytest.raises(ConfigError, match="model='cnn' needs image data .* use model='mlp' or 'logreg'"):
        build_model("cnn", 30, 2, None)
