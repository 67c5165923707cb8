"""What the API tells its operators: JSON log lines and Prometheus metrics.

Log lines carry the request id, route, status, latency, model and version; API tokens and the workspace's
paths are redacted from every line, whatever logged it. Metrics are counters and a latency histogram per route
(the route template, so a client cannot grow the label set), rows predicted per model version, and the cache's
hits, misses, hit ratio and size, in the Prometheus text format 0.0.4.
"""

from __future__ import annotations

import logging
import threading

from uaap.jsonlog import SECRET, JsonFormatter  # in the library: the deployment launchers log with it too

__all__ = ["SECRET", "JsonFormatter", "Metrics", "configure_logging"]

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


# ---- logs -------------------------------------------------------------------------------------------------------


def configure_logging(level: int = logging.INFO) -> None:
    """Route every log record (uvicorn's too) through :class:`JsonFormatter` on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


# ---- metrics ----------------------------------------------------------------------------------------------------


class Metrics:
    """Request counts, latency histograms, predictions and cache hits, as Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}
        self.latency: dict[tuple[str, str], list[float]] = {}  # per bucket counts, then sum, then count
        self.rows: dict[tuple[str, str], int] = {}
        self.cache_hits = 0
        self.cache_misses = 0

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and its latency."""
        with self._lock:
            key = (method, route, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            h = self.latency.setdefault((method, route), [0.0] * (len(BUCKETS) + 2))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def predicted(self, model: str, version: str, rows: int, hits: int) -> None:
        """Count predicted rows and the cache's part in them."""
        with self._lock:
            self.rows[(model, version)] = self.rows.get((model, version), 0) + rows
            self.cache_hits += hits
            self.cache_misses += rows - hits

    def render(self, cache_entries: int) -> str:
        """The Prometheus text exposition (format 0.0.4)."""

        def lbl(**kv: str) -> str:
            return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in kv.items()) + "}"

        out = [
            "# HELP uaap_requests_total HTTP requests by method, route and status.",
            "# TYPE uaap_requests_total counter",
        ]
        with self._lock:
            for (m, r, s), n in sorted(self.requests.items()):
                out.append(f"uaap_requests_total{lbl(method=m, route=r, status=s)} {n}")
            out += [
                "# HELP uaap_request_duration_seconds Request latency.",
                "# TYPE uaap_request_duration_seconds histogram",
            ]
            for (m, r), h in sorted(self.latency.items()):
                for i, bound in enumerate(BUCKETS):
                    out.append(f"uaap_request_duration_seconds_bucket{lbl(method=m, route=r, le=repr(bound))} {h[i]:g}")
                out.append(f"uaap_request_duration_seconds_bucket{lbl(method=m, route=r, le='+Inf')} {h[-1]:g}")
                out.append(f"uaap_request_duration_seconds_sum{lbl(method=m, route=r)} {h[-2]!r}")
                out.append(f"uaap_request_duration_seconds_count{lbl(method=m, route=r)} {h[-1]:g}")
            out += ["# HELP uaap_predictions_total Rows predicted.", "# TYPE uaap_predictions_total counter"]
            for (model, version), n in sorted(self.rows.items()):
                out.append(f"uaap_predictions_total{lbl(model=model, version=version)} {n}")
            total = self.cache_hits + self.cache_misses
            out += [
                "# HELP uaap_cache_hits_total Rows answered from the cache.",
                "# TYPE uaap_cache_hits_total counter",
                f"uaap_cache_hits_total {self.cache_hits}",
                "# HELP uaap_cache_misses_total Rows the model had to predict.",
                "# TYPE uaap_cache_misses_total counter",
                f"uaap_cache_misses_total {self.cache_misses}",
                "# HELP uaap_cache_hit_ratio Hits over looked-up rows since start.",
                "# TYPE uaap_cache_hit_ratio gauge",
                f"uaap_cache_hit_ratio {self.cache_hits / total if total else 0.0!r}",
                "# HELP uaap_cache_entries Rows held in the cache.",
                "# TYPE uaap_cache_entries gauge",
                f"uaap_cache_entries {cache_entries}",
            ]
        return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
