"""The command blocks of README.md and docs/*.md, and a runner that executes them as a newcomer would.

A command block is a fenced block tagged ``bash`` (or ``sh``/``shell``). :func:`blocks` finds them with the
heading they sit under; :class:`DocSession` runs them in document order in one temporary directory, each as
one ``bash -e`` script, with a fresh workspace and ``HOME`` and nothing of the caller's ``UAAP_*``,
``MLFLOW_*``, ``RAY_ADDRESS`` or ``FLWR_HOME``. Every process a block starts carries a session marker in its
environment, so whatever a block leaves running is found (also daemons that detached into their own session),
reported and stopped by PID.

A block may be scaled down, and only through what its doc documents: environment variables (``UAAP_*``
settings, ``make`` variables) and flags appended to a command (argparse keeps the last value of a flag); the
text after the block must name each of them (:meth:`Spec.scale_tokens`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")))
COMMAND_TAGS = ("bash", "sh", "shell")
MARKER = "UAAP_DOCTEST_SESSION"
BLOCK_MARKER = "UAAP_DOCTEST_BLOCK"
# What a newcomer's shell does not have: settings, tracking servers and Flower connections of the caller, and the
# outer make's variables (`make test PYTEST_ARGS=...` would reach the README's own `make test` through MAKEFLAGS
# and run the whole suite inside itself).
CLEARED = (
    *("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "FLWR_HOME", "VIRTUAL_ENV", "PYTEST_ADDOPTS"),
    *("MAKEFLAGS", "MFLAGS", "MAKELEVEL"),
)
# A line in an untagged block that looks like a command someone would paste (it must then be tagged bash).
COMMANDISH = re.compile(r"^\s*(\$\s+)?(uaap|flower-server|flower-client|flwr|make|pip|python\S*|docker|mlflow)\s")


def _terminal_job() -> None:
    """A block runs as a shell's foreground job: Ctrl-C (SIGINT) with its default action, whatever this test
    process inherited (an ignored SIGINT is inherited through exec: the block's `uaap dashboard` then never hears
    the Ctrl-C the test sends, only its Streamlit child does, and it exits 0 instead of 130)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass(frozen=True)
class Block:
    """One fenced command block of a doc."""

    doc: str
    heading: str
    index: int  # 1-based among the command blocks under this heading
    line: int  # line of the opening fence
    code: str
    after: str  # the prose that follows, up to the next block or heading

    @property
    def key(self) -> str:
        """``doc#heading-slug`` (``/n`` for the n-th block under one heading): how specs name blocks."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        return f"{self.doc}#{slug}" + (f"/{self.index}" if self.index > 1 else "")


def blocks(doc: str) -> list[Block]:
    """The command blocks of ``doc`` (a path relative to the repository), in order."""
    lines = (REPO / doc).read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    heading, counts = "", dict[str, int]()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        fence = re.match(r"^```(\w*)\s*$", line)
        if not fence:
            i += 1
            continue
        start, tag = i, fence.group(1)
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        if tag not in COMMAND_TAGS:
            continue
        after = []
        j = i
        while j < len(lines) and not lines[j].startswith(("```", "#")):
            after.append(lines[j])
            j += 1
        counts[heading] = counts.get(heading, 0) + 1
        found.append(Block(doc, heading, counts[heading], start + 1, "\n".join(body) + "\n", "\n".join(after)))
    return found


def untagged_commands(doc: str) -> list[str]:
    """Lines of untagged fenced blocks that look like commands (they would escape the doc tests)."""
    out, inside, tag = [], False, ""
    for n, line in enumerate((REPO / doc).read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^```(\w*)\s*$", line)
        if fence:
            inside, tag = (not inside, fence.group(1)) if not inside else (False, "")
            continue
        if inside and tag == "" and COMMANDISH.match(line):
            out.append(f"{doc}:{n}: {line.strip()}")
    return out


@dataclass(frozen=True)
class Spec:
    """How the suite runs one block: scale-down, time limit and the lines that prove it worked."""

    expect: tuple[str, ...] = ()  # regular expressions that must match the block's output
    refuse: tuple[str, ...] = ()  # regular expressions that must not match it (what went wrong before)
    env: dict[str, str] = field(default_factory=dict)  # documented variables (UAAP_* settings, make variables)
    append: dict[str, str] = field(default_factory=dict)  # "uaap automl" -> flags appended to that command
    timeout: float = 300.0
    slow: bool = False
    # a long-running command (a server, a dashboard): started, checked for ``ready``, then stopped by ``stop``
    background: bool = False
    ready: str = ""
    stop: str = ""  # "SIGTERM", "SIGINT", or "" to let it finish (joined by a later block's ``joins``)
    stop_within: float = 10.0
    settle: float = 0.0  # seconds between ``ready`` and ``stop`` (a server still starting its own workers)
    rc: int = 0  # exit code expected (after ``stop`` for a background block: 130 or 143)
    joins: tuple[str, ...] = ()  # background blocks to wait for after this one; each must exit with its ``rc``
    skip: str = ""  # why this block cannot run here (said in the doc too); the reason is checked when it holds
    skip_unless: str = ""  # the executable whose absence is the reason to skip

    def scale_tokens(self) -> list[str]:
        """What the doc must say about how the tests scale this block down."""
        return [f"{k}={v}" for k, v in self.env.items()] + [f"{flags}" for flags in self.append.values()]


def _preamble(spec: Spec) -> str:
    """Shell functions appending documented flags to commands (``uaap automl`` -> ``uaap automl --trials 2``)."""
    by_program: dict[str, list[tuple[str, str]]] = {}
    for command, flags in spec.append.items():
        program, _, sub = command.partition(" ")
        by_program.setdefault(program, []).append((sub, flags))
    out = ["set -e"]
    for program, cases in by_program.items():
        arms = "".join(f'    {sub or "*"}) command {program} "$@" {flags} ;;\n' for sub, flags in cases)
        default = "" if any(not sub for sub, _ in cases) else f'    *) command {program} "$@" ;;\n'
        out.append(f'{program}() {{\n  case "$1" in\n{arms}{default}  esac\n}}')
    return "\n".join(out) + "\n"


@dataclass
class Result:
    """What a block did."""

    rc: int | None
    output: str
    seconds: float
    left_behind: list[str] = field(default_factory=list)


class DocSession:
    """One doc's blocks, run in order in one directory and workspace; stops everything they started."""

    def __init__(self, cwd: Path, home: Path, *, extra_path: str = "") -> None:
        self.cwd = cwd
        self.home = home
        self.id = uuid.uuid4().hex
        env = {k: v for k, v in os.environ.items() if not k.startswith("UAAP_") and k not in CLEARED}
        env.update(HOME=str(home), FLWR_TELEMETRY_ENABLED="0", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
        env["COLUMNS"] = "200"  # a wide terminal: tables (rich) print whole cells, not "finished…"
        env[MARKER] = self.id
        if extra_path:
            env["PATH"] = f"{extra_path}{os.pathsep}{env.get('PATH', '')}"
        self.env = env
        self.background: dict[str, tuple[subprocess.Popen[bytes], Path, float, Spec]] = {}
        self.results: dict[str, Result] = {}

    def _start(self, block: Block, spec: Spec) -> tuple[subprocess.Popen[bytes], Path]:
        n = len(self.results) + len(self.background)
        script = self.home / f"block-{n:02d}.sh"
        script.write_text(_preamble(spec) + block.code)
        log = self.home / f"block-{n:02d}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["bash", "--noprofile", "--norc", str(script)],
                cwd=self.cwd,
                env={**self.env, **spec.env, BLOCK_MARKER: block.key},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_terminal_job,  # noqa: PLW1509 - signal dispositions only
            )
        return proc, log

    def run(self, block: Block, spec: Spec) -> Result:
        """Run ``block``; a background block is only started (and checked for ``ready``)."""
        t0 = time.monotonic()
        proc, log = self._start(block, spec)
        if spec.background:
            if spec.ready:
                self._wait_for(proc, log, spec.ready, spec.timeout)
            time.sleep(spec.settle)
            if spec.stop:
                result = self._stop(block.key, proc, log, spec, t0)
                self.results[block.key] = result
                return result
            self.background[block.key] = (proc, log, t0, spec)
            return Result(None, log.read_text(errors="replace"), time.monotonic() - t0)
        rc = _wait(proc, spec.timeout)
        left = self._leftovers(block.key)
        result = Result(rc, log.read_text(errors="replace"), time.monotonic() - t0, left)
        self.results[block.key] = result
        return result

    def join(self, key: str) -> Result:
        """Wait for a background block to finish by itself."""
        proc, log, t0, spec = self.background.pop(key)
        rc = _wait(proc, spec.timeout)
        result = Result(rc, log.read_text(errors="replace"), time.monotonic() - t0, self._leftovers(key))
        self.results[key] = result
        return result

    def _stop(self, key: str, proc: subprocess.Popen[bytes], log: Path, spec: Spec, t0: float) -> Result:
        """Signal the block's command like a user would (the terminal signals the whole foreground group)."""
        sig = getattr(signal, spec.stop)
        stopped_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        rc = _wait(proc, spec.stop_within)
        took = time.monotonic() - stopped_at
        left = self._leftovers(key, grace=2.0)
        output = log.read_text(errors="replace") + f"\n[doc test: stopped by {spec.stop} in {took:.1f}s]\n"
        return Result(rc, output, time.monotonic() - t0, left)

    def _wait_for(self, proc: subprocess.Popen[bytes], log: Path, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, log.read_text(errors="replace")):
            if proc.poll() is not None:
                raise AssertionError(f"exited with {proc.returncode} before {pattern!r}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout:g}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)

    def marked(self, block: str = "") -> list[tuple[int, str]]:
        """Every live process started by this session's blocks (or by ``block``), found by the markers in its
        environment: daemons that detached into a session of their own are found too."""
        import psutil

        found = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.pid == os.getpid():
                continue
            with contextlib.suppress(psutil.Error):
                env = p.environ()
                if env.get(MARKER) != self.id or (block and env.get(BLOCK_MARKER) != block):
                    continue
                if p.status() != psutil.STATUS_ZOMBIE:
                    found.append((p.pid, " ".join(p.info["cmdline"] or [])[:160]))
        return found

    def _leftovers(self, block: str, grace: float = 15.0) -> list[str]:
        """Processes of ``block`` still running ``grace`` seconds after it ended (then stopped): left behind."""
        deadline = time.monotonic() + grace
        while True:
            live = self.marked(block)
            if not live or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for pid, _ in live:
            _kill(pid)
        return [f"{pid} {cmd}" for pid, cmd in live]

    def close(self) -> list[str]:
        """Stop whatever is still running (background blocks never joined, strays); what had to be stopped."""
        strays = [f"{pid} {cmd}" for pid, cmd in self.marked()]
        for proc, *_ in self.background.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(1.0)
        for pid, _ in self.marked():
            _kill(pid)
        return strays


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The exit code as a shell reports it (128 + N for a death by signal N), or None after ``timeout``."""
    try:
        rc = proc.wait(timeout=timeout)
        return 128 - rc if rc < 0 else rc
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return None


def _kill(pid: int) -> None:
    import psutil

    with contextlib.suppress(psutil.Error):
        p = psutil.Process(pid)
        p.terminate()
        try:
            p.wait(timeout=5)
        except psutil.TimeoutExpired:
            p.kill()


def checkout_copy(dest: Path) -> Path:
    """The working tree as a fresh checkout would hold it (tracked and unignored files), plus this ``.venv``.

    ``.venv`` is a folder of links to the repository's environment with a fresh install stamp, so ``make``
    finds it installed (as it is after ``make install``) and never reinstalls into the shared environment.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        src = REPO / name
        if src.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    venv = dest / ".venv"
    venv.mkdir()
    for entry in (REPO / ".venv").iterdir():
        if entry.name != ".installed":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed").touch()
    return dest


def iter_docs() -> Iterator[tuple[str, list[Block]]]:
    """Each doc with its command blocks."""
    for doc in DOCS:
        yield doc, blocks(doc)
