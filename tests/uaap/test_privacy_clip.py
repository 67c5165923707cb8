"""Client-side clipping for central DP (uaap.privacy.clip), value by value on updates whose norms are known."""

from __future__ import annotations

import numpy as np
import pytest

from uaap.errors import ConfigError
from uaap.privacy.clip import clip_update, update_norm


def test_the_norm_is_taken_over_all_arrays_together_in_float64() -> None:
    start = [np.zeros(1, np.float32), np.ones(1, np.float32)]
    assert update_norm([np.array([3.0], np.float32), np.array([5.0], np.float32)], start) == 5.0  # (3, 4), not 3 + 4
    # 300 and 400 in float16: their squares overflow float16 (max 65504), not float64
    half = [np.array([300.0, 400.0], np.float16)]
    assert update_norm(half, [np.zeros(2, np.float16)]) == 500.0
    with pytest.raises(ConfigError) as err:
        update_norm(start, start[:1])
    assert str(err.value) == "update has 2 arrays, the global model 1"


def test_clipping_scales_the_whole_delta_to_the_norm_and_keeps_shapes_and_dtypes() -> None:
    start: list[np.ndarray] = [np.ones((1, 2), np.float32), np.full(1, 2.0, np.float64)]
    new: list[np.ndarray] = [np.array([[4.0, 1.0]], np.float32), np.array([6.0])]  # delta (3, 0, 4): norm 5
    clipped = clip_update(new, start, 2.5)  # halved
    assert [c.tolist() for c in clipped] == [[[2.5, 1.0]], [4.0]]
    assert [(c.shape, str(c.dtype)) for c in clipped] == [((1, 2), "float32"), ((1,), "float64")]
    exact = clip_update(new, start, 5.0)  # at the bound: unchanged
    assert [c.tolist() for c in exact] == [[[4.0, 1.0]], [6.0]]
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError) as err:
            clip_update(new, start, bad)
        assert str(err.value) == f"dp-central-clip-norm={bad!r} must be > 0"
