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
from pathlib import Path
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
    from server.continual import check_shapes, load_parent
    from server.federation import clear_stop, failure_reason, initial_arrays
    from uaap.crypto import ensure_simulation_keys
    from uaap.data import federated
    from uaap.privacy.utility import hopeless_noise_warning, model_size
    from uaap.tracking import ensure_experiment

    cfg = cfg.replace(run_id=cfg.run_id or workspace.new_run_id()).with_absolute_paths()
    cfg.check_family("federated")
    cfg = ensure_simulation_keys(cfg)  # CKKS keys under <UAAP_HOME>/keys/<run-id>/ when HE is on without key paths
    parent = load_parent(cfg)  # continue-from: a run that cannot go on is refused before Ray starts
    plan = Path(parent.plan).read_text(encoding="utf-8") if parent is not None and parent.plan else ""
    meta = federated(cfg, cfg.num_clients, plan)[1]  # bad data fails here, before Ray starts
    if parent is not None:
        check_shapes(parent.run_id, {k: v.numpy() for k, v in initial_arrays(cfg, meta).items()}, parent.arrays)
    size = model_size(cfg, meta.n_features, meta.n_classes, meta.image_shape)
    if warning := hopeless_noise_warning(cfg, size):
        print(f"uaap: warning: {warning}", file=sys.stderr, flush=True)
    ensure_experiment(cfg.experiment)  # schema + experiment before any worker exists
    rd = workspace.run_dir(cfg.run_id)
    rd.write_config(cfg)
    if cfg.malicious_fraction > 0:  # a test of robust aggregation: say who attacks (uaap.attacks)
        from uaap.attacks import malicious_partitions

        attackers = sorted(malicious_partitions(cfg))
        rd.log_event("attack", partitions=attackers, attack=cfg.attack, scale=cfg.attack_scale)
        print(f"uaap: testing: partitions {attackers} poison their updates ({cfg.attack}, k={cfg.attack_scale:g})",
              file=sys.stderr, flush=True)  # fmt: skip
    res = resources or ClientResources()
    if not verbose:
        for name in ("flwr", "ray"):
            logging.getLogger(name).setLevel(logging.WARNING)
        quiet.flower_banners()  # `run_simulation` is deprecated: Flower's notice to us, not to the user

    stop = threading.Event()
    tail = threading.Thread(target=_tail, args=(rd, on_event, stop), daemon=True) if on_event else None
    clear_stop()
    ends_before = len(rd.events("end"))
    stopper = _GracefulStop(rd, ends_before)
    try:
        connect(ray_address)  # a Ctrl-C here (an address where no cluster answers) stops at once
        if tail:
            tail.start()
        with stopper:
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
        if stopper.signal_exc:
            raise stopper.signal_exc from None
        raise  # the ServerApp's own error (bad data, keys, a run whose rounds all failed): its message says why
    except Exception as exc:
        if stopper.signal_exc:
            raise stopper.signal_exc from None
        ends = rd.events("end")
        why = ends[-1].get("reason") if ends else ""
        raise RunFailedError(
            f"simulation {rd.run_id} failed: {why or failure_reason(exc)}; see {rd.metrics_file}"
        ) from exc
    finally:
        stop.set()
        if tail and tail.is_alive():
            tail.join(timeout=5)
        if ray.is_initialized():
            ray.shutdown()
    if stopper.signal_exc:
        raise stopper.signal_exc
    ends = rd.events("end")
    if not ends or ends[-1]["status"] not in ("completed", "stopped"):
        why = ends[-1].get("reason", "") if ends else "the server wrote no end event"
        raise RunFailedError(f"simulation {rd.run_id} did not complete: {why}; see {rd.metrics_file}")
    return rd


class _GracefulStop:
    """Ctrl-C or SIGTERM while the simulation runs: stop it the way it would end by itself, then raise.

    Raising ``KeyboardInterrupt`` inside ``run_simulation`` made Flower shut Ray down while its worker threads
    still waited on actors, and Ray's core then ended the process with exit code 1 (seen in CI about one stop in
    four). So the first signal only asks the round loop to end (it writes the ``interrupted`` event and the
    ServerApp returns), silences Flower (which logs every actor Ray stops as an error) and kills this machine's
    client actors so that each worker's wait returns. Flower then unwinds and shuts Ray down with no thread
    inside it, and the caller raises :attr:`signal_exc` (``KeyboardInterrupt``, or ``Terminated`` for SIGTERM).
    A second signal, or a stop still unfinished after ``grace`` seconds, raises in the main thread at once.
    """

    def __init__(self, rd: workspace.RunDir, ends_before: int, grace: float = 20.0) -> None:
        self.rd, self.ends_before, self.grace = rd, ends_before, grace
        self.signal_exc: KeyboardInterrupt | None = None
        self._previous: dict[int, Any] = {}
        self._done = threading.Event()

    def __enter__(self) -> _GracefulStop:
        import signal

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                before = signal.getsignal(sig)
                if before is not signal.SIG_IGN:  # a background job's ignored Ctrl-C stays ignored
                    self._previous[sig] = before
                    signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        self._done.set()
        for sig, before in self._previous.items():
            signal.signal(sig, before if before is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame: Any) -> None:
        import signal

        from server.federation import request_stop
        from uaap.processes import Terminated

        if self.signal_exc is not None:  # the second Ctrl-C: stop now
            raise self.signal_exc
        self.signal_exc = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        logging.getLogger("flwr").setLevel(logging.CRITICAL)
        request_stop()
        threading.Thread(target=self._reap, daemon=True, name="uaap-stop").start()

    def _reap(self) -> None:
        import _thread

        _stop_actors(self.rd, self.ends_before)
        if not self._done.wait(self.grace):
            _thread.interrupt_main()  # still not unwound: the old way (KeyboardInterrupt in the main thread)


def _interrupt(rd: workspace.RunDir, ends_before: int) -> None:
    """A stop that raised inside the simulation: record it, free Flower's workers (:func:`_stop_actors`)."""
    from server.federation import request_stop

    request_stop()
    _stop_actors(rd, ends_before)


def _stop_actors(rd: workspace.RunDir, ends_before: int, timeout: float = 10.0) -> None:
    """Wait for the round loop's ``end`` event, then kill this machine's ``ClientAppActor`` processes.

    Flower's simulation workers wait on their actors without a timeout; a killed actor makes each wait return.
    """
    import psutil

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
