"""Third-party chatter kept out of the terminal unless asked for (``--verbose``): what UAAP says is never hidden.

Measured on a fresh workspace: every simulation printed MLflow's SQLAlchemy ``noload`` deprecation and Flower's
"`run_simulation` is deprecated" banner; an export printed about sixteen lines of TensorFlow, absl, TFLite and
coremltools start-up notes (unsupported versions, "Failed to load _MLModelProxy" on Linux, where Core ML's
runtime does not exist). None of them is about the user's run. Python warnings and log records are filtered
here; what native libraries write straight to the process's stdout/stderr is redirected to a log file while
they run (:func:`native_output`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

VERBOSE = False  # set by a command's --verbose: nothing below filters anything then

_WARNINGS = (r".*The ``noload`` loader strategy is deprecated",)  # MLflow's sqlite store, SQLAlchemy 2
_LOGGERS = ("coremltools", "absl", "tensorflow", "h5py", "numexpr")


def python_warnings() -> None:
    """Drop the known third-party Python warnings that say nothing about the user's run."""
    if VERBOSE:
        return
    for pattern in _WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


class _NoDeprecationBanner(logging.Filter):
    """Flower announces its own deprecations (``run_simulation``) as a multi-line WARNING on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in str(record.msg)


def flower_banners() -> None:
    """Keep Flower's deprecation banners out of the terminal."""
    if VERBOSE:
        return
    logger = logging.getLogger("flwr")
    if not any(isinstance(f, _NoDeprecationBanner) for f in logger.filters):
        logger.addFilter(_NoDeprecationBanner())


def converter_loggers() -> None:
    """Converters' own loggers (coremltools' version notes, TensorFlow's) only report errors."""
    if VERBOSE:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ INFO/WARNING lines, read at its import
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def native_output(log: Path) -> Iterator[None]:
    """While the block runs, what anything writes to file descriptors 1 and 2 goes to ``log`` (appended).

    Native converters (TensorFlow Lite, absl) print through the C runtime, where no Python filter reaches.
    A no-op under ``--verbose``.
    """
    if VERBOSE:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    try:
        with open(log, "ab") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


def terminal() -> TextIO:
    """A text stream on the terminal that stays there while :func:`native_output` redirects fds 1 and 2
    (``sys.stdout`` itself when it has no file descriptor, as under a test's capture)."""
    try:
        return os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, closefd=True)
    except (OSError, ValueError, io.UnsupportedOperation):
        return sys.stdout
