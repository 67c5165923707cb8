"""One validated run configuration for every entry point.

Flower run config keys (``[tool.flwr.app.config]``, ``flwr run -c key=value``) are kebab-case;
CLI flags and Python use the snake_case field names. Both map onto :class:`RunConfig`, which
checks every value before Ray or Flower start and names the allowed values when one is wrong.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from uaap.errors import ConfigError

DATASETS = ("digits", "breast_cancer", "wine", "synthetic", "csv")
MODELS = ("logreg", "mlp", "cnn")
STRATEGIES = ("fedavg", "fedprox")
PARTITIONS = ("iid", "dirichlet", "pathological")
OPTIMIZERS = ("sgd", "adam")
SECURE_AGGREGATION = ("none", "ckks")
ACCOUNTANTS = ("rdp", "prv")


def _choice(*allowed: str) -> dict[str, Any]:
    return {"choices": allowed}


def _range(low: float | None = None, high: float | None = None, *, low_open: bool = False) -> dict[str, Any]:
    return {"range": (low, high, low_open)}


@dataclass(frozen=True)
class RunConfig:
    """Everything one federated (or central) run needs; immutable once validated."""

    # data
    dataset: str = field(default="digits", metadata=_choice(*DATASETS))
    data_path: str = ""
    target: str = ""
    partition: str = field(default="dirichlet", metadata=_choice(*PARTITIONS))
    dirichlet_alpha: float = field(default=0.5, metadata=_range(0.0, None, low_open=True))
    classes_per_client: int = field(default=2, metadata=_range(1))
    synthetic_alpha: float = field(default=1.0, metadata=_range(0.0))
    synthetic_beta: float = field(default=1.0, metadata=_range(0.0))
    test_fraction: float = field(default=0.2, metadata=_range(0.0, 1.0, low_open=True))
    # model and local training
    model: str = field(default="mlp", metadata=_choice(*MODELS))
    local_epochs: int = field(default=5, metadata=_range(1))
    batch_size: int = field(default=16, metadata=_range(1))
    learning_rate: float = field(default=0.05, metadata=_range(0.0, None, low_open=True))
    optimizer: str = field(default="sgd", metadata=_choice(*OPTIMIZERS))
    momentum: float = field(default=0.9, metadata=_range(0.0, 1.0))
    # federation
    strategy: str = field(default="fedprox", metadata=_choice(*STRATEGIES))
    proximal_mu: float = field(default=0.01, metadata=_range(0.0))
    num_rounds: int = field(default=10, metadata=_range(1))
    num_clients: int = field(default=10, metadata=_range(2))
    fraction_train: float = field(default=1.0, metadata=_range(0.0, 1.0, low_open=True))
    fraction_evaluate: float = field(default=1.0, metadata=_range(0.0, 1.0))
    min_clients: int = field(default=2, metadata=_range(1))
    straggler_fraction: float = field(default=0.0, metadata=_range(0.0, 1.0))
    round_timeout: float = field(default=3600.0, metadata=_range(0.0, None, low_open=True))
    central_eval: bool = True
    seed: int = 42
    # secure aggregation
    secure_aggregation: str = field(default="none", metadata=_choice(*SECURE_AGGREGATION))
    he_public_context: str = ""
    he_secret_context: str = ""
    # differential privacy
    dp_local: bool = False
    dp_target_epsilon: float = field(default=8.0, metadata=_range(0.0, None, low_open=True))
    dp_delta: float = field(default=1e-5, metadata=_range(0.0, 1.0, low_open=True))
    dp_clip_norm: float = field(default=1.0, metadata=_range(0.0, None, low_open=True))
    dp_central: bool = False
    dp_noise_multiplier: float = field(default=1.0, metadata=_range(0.0))
    dp_central_clip_norm: float = field(default=1.0, metadata=_range(0.0, None, low_open=True))
    dp_accountant: str = field(default="rdp", metadata=_choice(*ACCOUNTANTS))
    max_epsilon: float = field(default=0.0, metadata=_range(0.0))
    # bookkeeping
    run_id: str = ""
    experiment: str = "uaap"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        if self.dataset == "csv" and not (self.data_path and self.target):
            raise ConfigError("dataset='csv' needs data-path and target: pass --data FILE.csv --target COLUMN")
        if self.min_clients > self.num_clients:
            raise ConfigError(
                f"min-clients={self.min_clients} exceeds num-clients={self.num_clients}: "
                "lower min-clients or add clients"
            )

    # ---- conversions -------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from Flower run config (kebab-case) or keyword (snake_case) values."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                close = [k.replace("_", "-") for k in known if name[:4] in k]
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigError(
                    f"unknown config key '{key}'{hint}; allowed keys: "
                    + ", ".join(sorted(k.replace("_", "-") for k in known))
                )
            kwargs[name] = _coerce(known[name], value)
        return cls(**kwargs)

    def to_flower(self) -> dict[str, Any]:
        """The kebab-case mapping Flower's run config uses."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    def to_json(self) -> str:
        """Serialise for checkpoints and messages."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        """Inverse of :meth:`to_json`."""
        return cls.from_mapping(json.loads(text))

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def secure(self) -> bool:
        """Whether updates travel as CKKS ciphertexts."""
        return self.secure_aggregation == "ckks"


def _coerce(f: dataclasses.Field[Any], value: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    flag = "--" + f.name.replace("_", "-")
    try:
        if kind == "bool":
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return lowered in ("true", "1", "yes")
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{flag}={value!r} is not a valid {kind}; give a {kind} value") from exc


def _check_field(f: dataclasses.Field[Any], value: Any) -> None:
    flag = f.name.replace("_", "-")
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{flag}={value!r} is not supported; choose one of: {', '.join(choices)}")
    bounds = f.metadata.get("range")
    if bounds is not None:
        low, high, low_open = bounds
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and value > high
        if too_low or too_high:
            left = "(" if low_open else "["
            lo = "-inf" if low is None else f"{low:g}"
            hi = "inf" if high is None else f"{high:g}"
            raise ConfigError(f"{flag}={value!r} is outside {left}{lo}, {hi}]; pick a value in that range")
