"""The UAAP ServerApp: ``serverapp = "server.app:app"`` in pyproject's ``[tool.flwr.app]``.

``flwr run .`` hands the run config (pyproject defaults + ``-c`` overrides) to :data:`app`;
``uaap simulate`` builds an app with its validated config baked in (:func:`make_app`), because
Flower's in-process simulation passes an empty run config.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import run_federation
from uaap.config import RunConfig

log = logging.getLogger("uaap.server")


def make_app(overrides: Mapping[str, Any] | None = None, *, announce_end: bool = True) -> ServerApp:
    """A ServerApp whose run config is Flower's merged with ``overrides``.

    ``announce_end``: the run's last message tells every client how it ended, so a deployed ``flower-client``
    exits 0 at once (``uaap simulate`` turns it off: its simulated clients end with the simulation).
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        values = {**dict(context.run_config), **(overrides or {})}
        cfg = RunConfig.from_mapping(values)
        num_partitions = len(list(grid.get_node_ids())) or cfg.num_clients
        if num_partitions != cfg.num_clients:
            log.warning(
                "the federation has %d clients (SuperNodes connected), not num-clients=%d: the data are split %d "
                "ways. Under `flwr run`, Flower's simulation starts num-supernodes of them (2 by default): pass "
                "--federation-config 'num-supernodes=%d' for %d clients",
                num_partitions,
                cfg.num_clients,
                num_partitions,
                cfg.num_clients,
                cfg.num_clients,
            )
        run_federation(
            grid,
            cfg.replace(num_clients=max(num_partitions, 2)),
            num_partitions=num_partitions,
            announce_end=announce_end,
        )

    return server_app


app = make_app()
