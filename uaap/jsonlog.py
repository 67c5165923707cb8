"""JSON log lines, one object a line, for the API (``serving``) and the deployment launchers (``flower-server``,
``flower-client --log-format json``).

Each line has ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``, then the fields a record carries:
an API request's (request id, route, status, latency, model, version) or a round's (``event``, run id, round,
node, partition, duration, status). Secrets never reach a line: API tokens, a ``--token`` value, paths
of private keys and CKKS contexts (``*.key``, ``*.ckks``) and the workspace's path are redacted from the whole
line, whatever logged it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import IO, Any

SECRET = re.compile(r"uaap_[a-f0-9]{12}_[A-Za-z0-9_-]{20,100}")  # an API token (serving.auth)
_TOKEN_ARG = re.compile(r"(--token[= ]+|with token )[^\s\"',]+")  # flwr-clientapp's one-time token, as Flower prints it
_KEY_PATH = re.compile(r"[^\s\"'=]*\.(?:key|ckks)\b")  # a private key or a CKKS context, by its path
FORMATS = ("text", "json")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's request or round fields; secrets
    and the workspace's path are redacted from the whole line."""

    FIELDS = (
        "request_id", "method", "route", "status", "latency_ms", "model", "version", "rows", "cache_hits",
        "event", "run_id", "flower_run_id", "round", "node", "partition", "message_type", "duration", "replies",
        "sampled",
    )  # fmt: skip

    def __init__(self) -> None:
        from uaap import workspace

        super().__init__()
        self.home = str(workspace.home())

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({f: getattr(record, f) for f in self.FIELDS if hasattr(record, f)})
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return redact(json.dumps(out, default=str), self.home)


def redact(text: str, home: str = "") -> str:
    """``text`` without API tokens, flwr-clientapp tokens, key and context paths, or the workspace's path."""
    text = SECRET.sub("uaap_<redacted>", text.replace(home, "<workspace>") if home else text)
    return _KEY_PATH.sub("<secret-path>", _TOKEN_ARG.sub(r"\1<redacted>", text))


class Emitter:
    """A launcher's output: plain lines (``text``, as they always were) or JSON objects (``json``)."""

    def __init__(self, logger: str, fmt: str = "text", stream: IO[str] | None = None) -> None:
        self.logger, self.stream = logger, stream
        self.set_format(fmt)

    def set_format(self, fmt: str) -> None:
        """Write ``text`` or ``json`` lines from now on."""
        if fmt not in FORMATS:
            raise ValueError(f"--log-format {fmt!r} is not one of {', '.join(FORMATS)}")
        self.json = fmt == "json"
        self.formatter = JsonFormatter() if self.json else None

    def format(self, text: str, *, level: str = "INFO", logger: str = "", **fields: Any) -> str:
        """One line, newline included: ``text`` as it is, or a JSON object with ``fields`` (a round's run id...)."""
        if self.formatter is None:
            return text.rstrip("\n") + "\n"
        levelno = logging.getLevelName(level) if level in _LEVELS else logging.INFO
        record = logging.LogRecord(logger or self.logger, levelno, "", 0, text.rstrip("\n"), None, None)
        record.__dict__.update(fields)
        return self.formatter.format(record) + "\n"

    def __call__(self, text: str, *, level: str = "INFO", logger: str = "", err: bool = False, **fields: Any) -> None:
        """Write one line (to stderr with ``err``)."""
        stream = self.stream or (sys.stderr if err else sys.stdout)
        stream.write(self.format(text, level=level, logger=logger, **fields))
        stream.flush()


def json_logging(level: int = logging.INFO, stream: IO[str] | None = None) -> None:
    """Route every log record of this process (and ``warnings``) through :class:`JsonFormatter`."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
