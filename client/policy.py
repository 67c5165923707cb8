"""What a deployed client requires, whatever the server asks: its node config pins its protection.

The server sends the run configuration with every message; a client that simply applied it would let a
malicious server switch secure aggregation or DP off, or name the file the client reads. ``flower-client``
writes the client's own requirements into its node config (``policy=deployed`` plus the keys below), and
:func:`enforce` applies them to every message before anything is trained or sent:

* ``require-secure-aggregation=true`` (default when the client holds a secret context): a message that asks
  for plaintext updates is refused; CKKS and SecAgg+ both keep the server from reading this client's update;
* ``require-dp=true`` with ``max-epsilon=E``: a message without example-level DP, or with a target epsilon
  above E, is refused; and the client refuses to send an update whose release would take its own
  accountant past E (:func:`check_spent`);
* the data source and the secret context come from the node config only: the server's ``data-path``,
  ``data-table``/``data-query`` and ``he-secret-context`` are never used on a deployed client.

A refusal raises :class:`PolicyError`; Flower logs it on the client and the error reply tells the server
why. Simulated clients carry no policy: a simulation is one trust domain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from uaap.config import RunConfig
from uaap.errors import UaapError
from uaap.protocol import (
    NODE_DATA_PATH,
    NODE_DATA_TABLE,
    NODE_HE_SECRET_CONTEXT,
    NODE_MAX_EPSILON,
    NODE_POLICY,
    NODE_REQUIRE_DP,
    NODE_REQUIRE_SECURE,
    NODE_TARGET,
)

DEPLOYED = "deployed"


class PolicyError(UaapError):
    """The server asked this client for less protection than its node config requires."""


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class ClientPolicy:
    """A deployed client's requirements (empty for a simulated client)."""

    deployed: bool = False
    require_secure_aggregation: bool = False
    require_dp: bool = False
    max_epsilon: float = 0.0
    data_path: str = ""
    target: str = ""
    data_table: str = ""
    he_secret_context: str = ""

    @classmethod
    def from_node_config(cls, node: Mapping[str, Any]) -> ClientPolicy:
        """The policy written by ``flower-client`` (no policy without ``policy=deployed``)."""
        if str(node.get(NODE_POLICY, "")) != DEPLOYED:
            return cls()
        return cls(
            deployed=True,
            require_secure_aggregation=_flag(node.get(NODE_REQUIRE_SECURE, False)),
            require_dp=_flag(node.get(NODE_REQUIRE_DP, False)),
            max_epsilon=float(node.get(NODE_MAX_EPSILON, 0.0) or 0.0),
            data_path=str(node.get(NODE_DATA_PATH, "")),
            target=str(node.get(NODE_TARGET, "")),
            data_table=str(node.get(NODE_DATA_TABLE, "")),
            he_secret_context=str(node.get(NODE_HE_SECRET_CONTEXT, "")),
        )


def enforce(cfg: RunConfig, policy: ClientPolicy) -> RunConfig:
    """``cfg`` as this client will run it; :class:`PolicyError` when the server asks for less than required."""
    if not policy.deployed:
        return cfg
    if policy.require_secure_aggregation and cfg.secure_aggregation == "none":
        raise PolicyError(
            f"the server asks for secure-aggregation={cfg.secure_aggregation!r}; this client requires 'ckks' or "
            "'secagg+' (flower-client --he-secret-context), so it sends no plaintext update"
        )
    if policy.require_dp and not cfg.dp_local:
        raise PolicyError("the server asks for dp-local=false; this client requires example-level DP (--require-dp)")
    if policy.require_dp and policy.max_epsilon > 0 and cfg.dp_target_epsilon > policy.max_epsilon:
        raise PolicyError(
            f"the server asks for dp-target-epsilon={cfg.dp_target_epsilon:g}; this client allows at most "
            f"{policy.max_epsilon:g} (--max-epsilon)"
        )
    if policy.data_path:  # how the table is read is the client's too: a server-chosen query could read anything
        pinned = cfg.replace(
            dataset="csv",
            data_path=policy.data_path,
            target=policy.target or cfg.target,
            data_table=policy.data_table,
            data_query="",
            data_sep="",
            data_encoding="utf-8",
            data_decimal=".",
        )
    elif cfg.dataset == "csv" or cfg.data_path:
        raise PolicyError(
            f"the server asks this client to read {cfg.data_path!r}; a deployed client reads only the table its "
            "own --data names"
        )
    else:
        pinned = cfg  # a bundled dataset partition (flower-client --partition-id): nothing to read from a path
    return pinned.replace(he_secret_context=policy.he_secret_context)


def check_spent(epsilon: float, policy: ClientPolicy) -> None:
    """Refuse to send an update whose release takes this client's example-level epsilon past its maximum."""
    if policy.deployed and policy.require_dp and policy.max_epsilon > 0 and epsilon > policy.max_epsilon:
        raise PolicyError(
            f"this round's update would bring this client's example-level epsilon to {epsilon:.4f}, above its "
            f"--max-epsilon {policy.max_epsilon:g}; the update is not sent"
        )
