"""LSTM and GRU over fixed-length windows: they learn a window classification, agree with torch's own nn.LSTM /
nn.GRU given the same weights, and their ONNX exports agree with torch within 1e-5 on held-out windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from uaap.data import Dataset


def _windows(n: int, length: int, seed: int) -> Dataset:
    """Three kinds of noisy window: rising, falling, oscillating (label 0, 1, 2)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    t = np.linspace(0, 1, length)
    shapes = np.stack([t, 1 - t, 0.5 + 0.5 * np.sin(6 * np.pi * t)])
    X = shapes[y] + rng.normal(0, 0.15, (n, length))
    return Dataset("windows", X.astype(np.float32), y.astype(np.int64), 3, tuple(f"t{i}" for i in range(length)))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sequence_classifier_learns_matches_torch_and_exports_to_onnx(cell: str, tmp_path: Path) -> None:
    import onnxruntime as ort
    import torch

    from edge.onnx_export import export
    from edge.source import Source
    from uaap.models import build_model
    from uaap.training import TrainConfig, evaluate, local_train

    train, test = _windows(240, 16, 0), _windows(90, 16, 1)
    model = build_model(cell, 16, 3, seed=0)
    local_train(model, train, TrainConfig(epochs=8, batch_size=16, lr=0.01, optimizer="adam"))
    assert evaluate(model, test)["accuracy"] >= 0.9

    # the DP-capable layer computes what torch's own recurrent layer computes with the same weights
    reference = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](1, 32, batch_first=True)
    reference.load_state_dict(model.rnn.state_dict())
    X = torch.from_numpy(test.X)
    with torch.no_grad():
        ours = model.eval()(X)
        theirs = model.head(reference(X.reshape(len(X), 16, 1))[0][:, -1])
    assert float((ours - theirs).abs().max()) <= 1e-5

    source = Source("torch", cell, model, {}, 16, 3, test)
    (path,) = export(source, tmp_path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": test.X})[0]
    want = torch.softmax(ours, dim=1).numpy()
    diff = float(np.abs(got - want).max())
    print(f"{cell} classifier ONNX vs torch on {len(test.X)} held-out windows: max |diff| {diff:.1e}")
    assert diff <= 1e-5


def test_embedding_bag_text_classifier_exports_to_onnx(tmp_path: Path) -> None:
    import onnxruntime as ort
    import torch

    from edge.onnx_export import export
    from edge.source import Source
    from uaap.models import build_model

    rng = np.random.default_rng(0)
    X = np.log1p(rng.poisson(0.4, (60, 32))).astype(np.float32)  # 32 hashed-word buckets of log(1 + count)
    data = Dataset("bags", X, rng.integers(0, 3, 60).astype(np.int64), 3, tuple(f"text#{i}" for i in range(32)))
    model = build_model("embedding_bag", 32, 3, seed=0).eval()
    source = Source("torch", "embedding_bag", model, {}, 32, 3, data)
    (path,) = export(source, tmp_path)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": X})[0]
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(X)), dim=1).numpy()
    diff = float(np.abs(got - want).max())
    print(f"embedding_bag ONNX vs torch on {len(X)} rows: max |diff| {diff:.1e}")
    assert diff <= 1e-5
