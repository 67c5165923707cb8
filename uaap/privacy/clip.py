"""Client-side clipping for client-level (central) DP."""

from __future__ import annotations

import numpy as np

from uaap.errors import ConfigError


def update_norm(new: list[np.ndarray], start: list[np.ndarray]) -> float:
    """L2 norm of ``new - start`` over all parameters flattened (float64)."""
    if len(new) != len(start):
        raise ConfigError(f"update has {len(new)} arrays, the global model {len(start)}")
    total = 0.0
    for n, s in zip(new, start, strict=True):
        d = np.asarray(n, dtype=np.float64) - np.asarray(s, dtype=np.float64)
        total += float(np.dot(d.ravel(), d.ravel()))
    return float(np.sqrt(total))


def clip_update(new: list[np.ndarray], start: list[np.ndarray], clip_norm: float) -> list[np.ndarray]:
    """``start + delta * min(1, C / ||delta||)`` with ``delta = new - start`` over ALL parameters flattened.

    Bounds one client's contribution to the aggregate by ``clip_norm`` (the sensitivity the server's
    Gaussian noise is calibrated to). Arrays keep their shapes and dtypes.
    """
    if not clip_norm > 0:
        raise ConfigError(f"dp-central-clip-norm={clip_norm!r} must be > 0")
    norm = update_norm(new, start)
    factor = 1.0 if norm <= clip_norm else clip_norm / norm
    out = []
    for n, s in zip(new, start, strict=True):
        s64 = np.asarray(s, dtype=np.float64)
        out.append((s64 + (np.asarray(n, dtype=np.float64) - s64) * factor).astype(np.asarray(n).dtype))
    return out
