"""The preprocessing an export's manifest states (edge.source) against what the model was trained on."""

from __future__ import annotations

import numpy as np
import pytest

from edge.source import _scaling
from uaap.config import RunConfig
from uaap.data import load_bundled, load_split, train_test


@pytest.mark.parametrize("dataset", ["wine", "breast_cancer", "digits"])
def test_manifest_scaling_turns_raw_rows_into_what_the_model_saw(dataset: str) -> None:
    # A device applies the manifest's scaling to raw rows; it must get exactly the rows the model was trained
    # and tested on (uaap.data.load_split), i.e. statistics of the training split, not of the whole table.
    cfg = RunConfig(dataset=dataset, seed=7, test_fraction=0.3)
    scaling = _scaling(cfg)
    assert scaling["kind"] == "standardize"
    mean, std = np.asarray(scaling["mean"]), np.asarray(scaling["std"])
    raw = train_test(load_bundled(dataset), cfg.test_fraction, cfg.seed)
    seen = load_split(cfg)
    for part in ("train", "test"):
        device = (getattr(raw, part).X.astype(np.float64) - mean) / std
        np.testing.assert_allclose(device, getattr(seen, part).X, rtol=1e-5, atol=1e-5)


def test_a_tflite_export_works_in_a_process_whose_simulation_kept_tensorflow_out() -> None:
    # a Python session that ran a simulation (uaap.cluster.block_tensorflow) and then exports to TFLite
    import subprocess
    import sys

    code = (
        "from uaap.cluster import block_tensorflow; block_tensorflow(); import sys;"
        "assert sys.modules['tensorflow'] is None;"
        "from edge.tflite_export import _tf; tf = _tf(); print(tf.__name__, hasattr(tf, 'lite'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["tensorflow", "True"]
