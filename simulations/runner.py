"""Run the UAAP Flower app for N simulated clients on Ray (Flower's Ray backend).

We start Ray ourselves (Flower skips its own ``ray.init`` when Ray is up) so that every Ray worker
blocks TensorFlow before Flower can import it: Flower imports TensorFlow eagerly whenever it is
installed, which was measured at ~0.5 GB and several CPU-seconds per actor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from uaap import quiet, workspace
from uaap.cluster import block_tensorflow, connect
from uaap.config import RunConfig
from uaap.errors import RunFailedError, UaapError

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp

log = logging.getLogger("uaap.simulate")


@dataclass(frozen=True)
class ClientResources:
    """Ray resources reserved per simulated client (one actor per reservation).

    One CPU per client gives one actor per core. Each actor holds torch plus one client's data and
    model (~0.5 GB measured with TensorFlow blocked), so memory, not CPU, limits the pool only on
    machines with many cores and little RAM.
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0


def simulate(
    cfg: RunConfig,
    *,
    ray_address: str | None = None,
    resources: ClientResources | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    verbose: bool = False,
    client_app: ClientApp | None = None,
) -> workspace.RunDir:
    """Run the federation of ``cfg.num_clients`` simulated clients; returns the run folder.

    ``on_event`` receives each ``metrics.jsonl`` event as the server writes it (progress display).
    Ray is shut down on return (an attached cluster is only disconnected, never stopped). ``client_app``
    replaces UAAP's ClientApp (a test federation with misbehaving participants runs this way).
    """
    block_tensorflow()
    import ray
    from flwr.simulation import run_simulation

    from client.app import app as uaap_client_app
    from server.app import make_app
    from server.federation import clear_stop, failure_reason
    from uaap.crypto import ensure_simulation_keys
    from uaap.data import federated
    from uaap.privacy.utility import hopeless_noise_warning, model_size
    from uaap.tracking import ensure_experiment

    cfg = cfg.replace(run_id=cfg.run_id or workspace.new_run_id()).with_absolute_paths()
    cfg = ensure_simulation_keys(cfg)  # CKKS keys under <UAAP_HOME>/keys/<run-id>/ when HE is on without key paths
    meta = federated(cfg, cfg.num_clients)[1]  # bad data fails here, before Ray starts
    size = model_size(cfg, meta.n_features, meta.n_classes, meta.image_shape)
    if warning := hopeless_noise_warning(cfg, size):
        print(f"uaap: warning: {warning}", file=sys.stderr, flush=True)
    ensure_experiment(cfg.experiment)  # schema + experiment before any worker exists
    rd = workspace.run_dir(cfg.run_id)
    rd.write_config(cfg)
    res = resources or ClientResources()
    if not verbose:
        for name in ("flwr", "ray"):
            logging.getLogger(name).setLevel(logging.WARNING)
        quiet.flower_banners()  # `run_simulation` is deprecated: Flower's notice to us, not to the user

    stop = threading.Event()
    tail = threading.Thread(target=_tail, args=(rd, on_event, stop), daemon=True) if on_event else None
    clear_stop()
    ends_before = len(rd.events("end"))
    restore = _stop_quietly()
    try:
        connect(ray_address)
        if tail:
            tail.start()
        run_simulation(
            server_app=make_app(cfg.to_flower(), announce_end=False),
            client_app=client_app or uaap_client_app,
            num_supernodes=cfg.num_clients,
            backend_config={"client_resources": {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus}},
            verbose_logging=verbose,
        )
    except KeyboardInterrupt:
        _interrupt(rd, ends_before)
        raise
    except UaapError:
        raise  # the ServerApp's own error (bad data, keys, a run whose rounds all failed): its message says why
    except Exception as exc:
        ends = rd.events("end")
        why = ends[-1].get("reason") if ends else ""
        raise RunFailedError(
            f"simulation {rd.run_id} failed: {why or failure_reason(exc)}; see {rd.metrics_file}"
        ) from exc
    finally:
        restore()
        stop.set()
        if tail and tail.is_alive():
            tail.join(timeout=5)
        if ray.is_initialized():
            ray.shutdown()
    ends = rd.events("end")
    if not ends or ends[-1]["status"] not in ("completed", "stopped"):
        why = ends[-1].get("reason", "") if ends else "the server wrote no end event"
        raise RunFailedError(f"simulation {rd.run_id} did not complete: {why}; see {rd.metrics_file}")
    return rd


def _stop_quietly() -> Callable[[], None]:
    """While the simulation runs, Ctrl-C and SIGTERM first silence Flower (whose workers log every actor that
    Ray stops as an error with a traceback) and ask the round loop to stop, then raise as usual. Returns the
    function that puts the previous handlers back."""
    import signal

    from server.federation import request_stop

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        logging.getLogger("flwr").setLevel(logging.CRITICAL)
        request_stop()
        before = previous[signal.Signals(signum)]
        if callable(before):
            before(signum, frame)
        raise KeyboardInterrupt

    for sig, before in previous.items():
        if before is not signal.SIG_IGN:  # a background job's ignored Ctrl-C stays ignored
            signal.signal(sig, handler)

    def restore() -> None:
        for sig, before in previous.items():
            signal.signal(sig, before if before is not None else signal.SIG_DFL)

    return restore


def _interrupt(rd: workspace.RunDir, ends_before: int, timeout: float = 10.0) -> None:
    """Ctrl-C or SIGTERM: the round loop records the interruption and ends, then the client actors are stopped.

    Flower's ServerApp thread would poll for replies until the round timeout, and its simulation workers wait on
    their actors without a timeout (Ray shut down under them makes the process exit 1). So: ask the loop to
    stop, wait for its ``end`` event, then kill this machine's ``ClientAppActor`` processes so that every
    worker's wait returns, and let the caller shut Ray down.
    """
    import psutil

    from server.federation import request_stop

    request_stop()
    deadline = time.monotonic() + timeout
    while len(rd.events("end")) <= ends_before and time.monotonic() < deadline:
        time.sleep(0.1)
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "ClientAppActor" in " ".join(proc.cmdline()):
                proc.kill()


def _tail(rd: workspace.RunDir, on_event: Callable[[dict[str, Any]], None], stop: threading.Event) -> None:
    offset = rd.metrics_file.stat().st_size if rd.metrics_file.is_file() else 0  # skip a resumed run's past
    while True:
        done = stop.is_set()
        if rd.metrics_file.is_file():
            with open(rd.metrics_file, encoding="utf-8") as fh:
                fh.seek(offset)
                while line := fh.readline():
                    if not line.endswith("\n"):
                        break
                    offset += len(line.encode())
                    on_event(json.loads(line))
        if done:
            return
        time.sleep(0.2)
