"""The server optimiser's state in the run's checkpoints, so a resumed FedAdam/FedYogi/FedAdagrad/FedAvgM goes on.

Flower's server optimisers keep moments between rounds (``m_t``/``v_t`` in FedOpt, ``momentum_vector`` in
FedAvgM) and nothing on disk; the round loop checkpoints every :class:`strategies.wrapper.Stateful` layer, so
this wrapper reads and restores those attributes of the strategy it wraps, unchanged otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.serverapp.strategy import Strategy

from strategies.wrapper import StrategyWrapper, innermost

MOMENTS = ("m_t", "v_t", "momentum_vector")  # FedOpt's first/second moments (per array name), FedAvgM's momentum


def _dump(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dump(v) for v in value]
    array = np.asarray(value)
    return {"dtype": str(array.dtype), "shape": list(array.shape), "values": array.ravel().tolist()}


def _load(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [_load(v) for v in value]
    if set(value) == {"dtype", "shape", "values"}:
        return np.asarray(value["values"], dtype=value["dtype"]).reshape(value["shape"])
    return {k: _load(v) for k, v in value.items()}


class ServerOptimizerState(StrategyWrapper):
    """Checkpoint the moments of the server optimiser under ``strategy``."""

    state_key = "server-optimizer"

    def __init__(self, strategy: Strategy) -> None:
        super().__init__(strategy)
        self.optimizer = innermost(strategy)

    def state_dict(self) -> dict[str, Any]:
        """The optimiser's moments (JSON: dtype, shape and values of each array)."""
        return {name: _dump(getattr(self.optimizer, name)) for name in MOMENTS if hasattr(self.optimizer, name)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        for name, value in state.items():
            if name in MOMENTS and hasattr(self.optimizer, name):
                setattr(self.optimizer, name, _load(value))
