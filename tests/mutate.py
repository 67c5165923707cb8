"""``make mutate``: the mutation score of the core where a silent bug costs privacy or correctness.

mutmut ([tool.mutmut] in pyproject.toml) plants one small bug at a time (an operator, a constant, a
condition, a dropped argument) in each module below and runs the fast tests that reach the mutated
function; a mutant no test fails on has *survived*. Per module this prints and writes
(``artifacts/mutation/report.md``) killed, survived and equivalent counts, the score
``killed / (killed + survived)`` and the run time, then every survivor with its diff.

A survivor is either killed by a new fast test or listed in ``tests/mutation_equivalents.txt`` (the
mutant's name, or a glob, then ``#`` and a one-line reason): equivalents are excluded from the score.
A mutant that no test reaches counts as survived; a timeout counts as killed (the tests noticed).

    .venv/bin/python tests/mutate.py                       # every module, from scratch (not in CI: slow)
    .venv/bin/python tests/mutate.py strategies/secure.py  # one module
    .venv/bin/python tests/mutate.py --survivors           # re-run only the last run's survivors (after new tests)
    .venv/bin/python tests/mutate.py --report              # rewrite the report from the last results
    .venv/bin/python tests/mutate.py server/federation.py --functions 'x_exchange*'  # other functions than SCOPE's
"""

from __future__ import annotations

import argparse
import ast
import difflib
import fnmatch
import functools
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MUTANTS = REPO / "mutants"
OUT = REPO / "artifacts" / "mutation"
EQUIVALENTS = REPO / "tests" / "mutation_equivalents.txt"
MUTMUT = str(Path(sys.executable).with_name("mutmut"))

# module (as people name it) -> the prefix of its mutants' names
MODULES = {
    "strategies/validation.py": "strategies.validation.",
    "strategies/secure.py": "strategies.secure.",
    "strategies/dp_noise.py": "strategies.dp_noise.",
    "strategies/dp_accounting.py": "strategies.dp_accounting.",
    "strategies/secagg.py": "strategies.secagg.",
    "uaap/privacy/": "uaap.privacy.",
    "uaap/crypto/": "uaap.crypto.",
    "server/federation.py": "server.federation.",
}
# modules scored on some functions only (mutated function names, comma-separated globs), with why
SCOPE = {
    # the round loop's checkpoint/resume: which layer gets which part of a checkpoint, what a resumed run writes
    # again (the committed round's metrics line, the missing MLflow rows) and the MLflow metrics of a round line.
    # The rest of the module is the loop itself, whose every mutant would run whole federations (minutes each).
    "server/federation.py": "x__recover*,x__load_state*,x_tracked_metrics*",
}
KILLED = {1, 3, -11, -9, 24, -24, 36, 152, 255}  # failed, pytest error, crash, timeout
SURVIVED = {0, 5, 33, 35}  # passed, no tests reached it, suspicious
SKIPPED = {34, 37}


@dataclass
class Tally:
    """One module's results."""

    killed: list[str] = field(default_factory=list)
    survived: list[str] = field(default_factory=list)
    equivalent: list[tuple[str, str]] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    seconds: float | None = None
    scope: str = "*"  # the mutated functions judged (globs), when not all of the module's

    @property
    def score(self) -> float:
        """killed / (killed + survived), equivalents excluded."""
        judged = len(self.killed) + len(self.survived)
        return len(self.killed) / judged if judged else 0.0


def equivalents() -> list[tuple[str, str]]:
    """(name or glob, reason) pairs of tests/mutation_equivalents.txt; a line without a reason is an error."""
    out = []
    for n, line in enumerate(EQUIVALENTS.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, reason = line.partition("#")
        if not reason.strip():
            raise SystemExit(f"{EQUIVALENTS.name}:{n}: an equivalent mutant needs a one-line reason after '#'")
        out.append((name.strip(), reason.strip()))
    return out


def results() -> dict[str, int | None]:
    """mutant name -> exit code of its test run (None: not run yet), from mutmut's files under mutants/."""
    out: dict[str, int | None] = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        out |= json.loads(meta.read_text())["exit_code_by_key"]
    return out


def tally(prefix: str, codes: dict[str, int | None], equiv: list[tuple[str, str]]) -> Tally:
    """Sort one module's mutants into killed, survived, equivalent and unchecked."""
    t = Tally()
    for name, code in sorted(codes.items()):
        if not name.startswith(prefix) or code in SKIPPED:
            continue
        if code is None:
            t.unchecked.append(name)
        elif code in KILLED:
            t.killed.append(name)
        elif reason := next((r for pattern, r in equiv if fnmatch.fnmatchcase(name, pattern)), None):
            t.equivalent.append((name, reason))
        else:
            t.survived.append(name)
    return t


def in_scope(module: str, name: str, functions: str = "*") -> bool:
    """Whether mutant ``name`` of ``module`` is judged: its function matches ``functions`` or the module's SCOPE."""
    chosen = functions if functions != "*" else SCOPE.get(module, "*")
    return any(fnmatch.fnmatchcase(name, MODULES[module] + g.strip()) for g in chosen.split(","))


@functools.cache
def _functions(path: Path) -> tuple[list[str], dict[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """The lines of mutmut's mutated copy of a module and its functions by name (parsed once)."""
    source = path.read_text()
    defs = {n.name: n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    return source.splitlines(), defs


def mutant_diff(name: str) -> str:
    """The lines a mutant changes, read from mutmut's mutated copy of the module."""
    module, _, function = name.rpartition(".")
    path = MUTANTS / (module.replace(".", "/") + ".py")
    if not path.is_file():
        path = MUTANTS / module.replace(".", "/") / "__init__.py"
    lines, defs = _functions(path)
    orig = defs.get(function.rsplit("__mutmut_", 1)[0] + "__mutmut_orig")
    mutated = defs.get(function)
    if orig is None or mutated is None:
        return "(diff unavailable)"
    a, b = (lines[f.lineno : f.end_lineno] for f in (orig, mutated))  # the bodies, without the def line
    changed = [x for x in difflib.unified_diff(a, b, lineterm="", n=0) if x[:1] in "+-" and x[:3] not in ("+++", "---")]
    return "\n".join(x[0] + " " + x[1:].strip() for x in changed) or "(no textual change)"


def run_mutmut(names: list[str], log: Path) -> float:
    """Run mutmut on ``names`` (globs), its output into ``log``; returns the wall time in seconds."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run([MUTMUT, "run", "--max-children", "2", *names], cwd=REPO, stdout=fh, stderr=fh)
    if proc.returncode not in (0, 1):  # mutmut exits 1 when mutants survive
        raise SystemExit(f"mutmut failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def stale_equivalents(prefixes: list[str], equiv: list[tuple[str, str]], codes: dict[str, int | None]) -> list[str]:
    """Entries of the equivalents list, for the modules of ``prefixes``, that excuse no survivor any more.

    An entry is stale when it names no mutant at all (the source changed and mutmut renumbered), or when every
    mutant it names was run and killed. An entry with a mutant not run yet is kept: nothing is known.
    """
    out = []
    for pattern, _ in equiv:
        if not any(pattern.startswith(prefix) for prefix in prefixes):
            continue  # another module's entry: judged when that module is reported
        named = [codes[n] for n in codes if fnmatch.fnmatchcase(n, pattern) and codes[n] not in SKIPPED]
        if not named or all(code is not None and code in KILLED for code in named):
            out.append(pattern)
    return out


def report(tallies: dict[str, Tally], equiv: list[tuple[str, str]], codes: dict[str, int | None]) -> str:
    """The markdown report: the per-module table, then every survivor with its diff."""
    rows = [
        "| module | killed | survived | equivalent | score | run time |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for module, t in tallies.items():
        took = f"{t.seconds / 60:.1f} min" if t.seconds is not None else "-"
        note = f" ({len(t.unchecked)} not run)" if t.unchecked else ""
        name = module if t.scope == "*" else f"{module} ({', '.join(f'`{g.strip()}`' for g in t.scope.split(','))})"
        rows.append(
            f"| {name} | {len(t.killed)} | {len(t.survived)} | {len(t.equivalent)} | {100 * t.score:.1f}%{note} "
            f"| {took} |"
        )
    stale = stale_equivalents([MODULES[m] for m in tallies], equiv, codes)
    parts = ["# Mutation testing (mutmut)", "", *rows, ""]
    parts += [
        "Score: killed / (killed + survived); equivalent mutants (tests/mutation_equivalents.txt) are excluded.",
        "Run time: wall clock of the module's last full run, 2 mutmut workers (timings.json).",
        "",
    ]
    if stale:
        parts += ["Equivalents that no longer survive (remove them from the list):", *[f"- `{p}`" for p in stale], ""]
    for module, t in tallies.items():
        if t.survived:
            parts += [f"## Survivors in {module}", ""]
            for name in t.survived:
                parts += [f"### `{name}` (exit {codes[name]})", "```diff", mutant_diff(name), "```", ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen modules (all by default), then print the table and write the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"modules to mutate (default: all): {', '.join(MODULES)}")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--survivors", action="store_true", help="re-run only the survivors of the last run")
    mode.add_argument("--report", action="store_true", help="only rewrite the report from the last results")
    parser.add_argument(
        "--functions",
        default="*",
        help="comma-separated globs of mutated function names to run (a sample of a slow module); default all",
    )
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.modules) - set(MODULES)):
        parser.error(f"unknown module(s) {unknown}; choose from {', '.join(MODULES)}")
    modules = args.modules or list(MODULES)
    equiv = equivalents()
    OUT.mkdir(parents=True, exist_ok=True)
    timings_file = OUT / "timings.json"
    timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.is_file() else {}

    if args.survivors:
        codes = results()
        names = [n for m in modules for n in tally(MODULES[m], codes, equiv).survived if in_scope(m, n, args.functions)]
        if names:
            (MUTANTS / "mutmut-stats.json").unlink(missing_ok=True)  # the tests changed: which reach what, again
            print(f"re-running {len(names)} survivors")
            seconds = run_mutmut(names, OUT / "survivors.log")
            print(f"survivors re-run in {seconds / 60:.1f} min")
            timings[f"survivors of {', '.join(modules)}"] = seconds  # kept apart: the table shows full runs
            timings_file.write_text(json.dumps(timings, indent=1))
    elif not args.report:
        if set(modules) == set(MODULES):
            shutil.rmtree(MUTANTS, ignore_errors=True)  # a run from scratch: sources and tests as they are now
        else:
            (MUTANTS / "mutmut-stats.json").unlink(missing_ok=True)
        for module in modules:
            print(f"mutating {module} ...", flush=True)
            log = OUT / (module.strip("/").replace("/", "_") + ".log")
            functions = args.functions if args.functions != "*" else SCOPE.get(module, "*")
            globs = [MODULES[module] + f.strip() for f in functions.split(",")]
            timings[module] = run_mutmut(globs, log)
        timings_file.write_text(json.dumps(timings, indent=1))

    codes = results()
    tallies = {m: tally(MODULES[m], codes, equiv) for m in modules}
    for m, t in tallies.items():  # a sample or a module's scope: judge only the mutants of the functions chosen
        t.killed, t.survived, t.unchecked = ([n for n in names if in_scope(m, n, args.functions)]
                                             for names in (t.killed, t.survived, t.unchecked))  # fmt: skip
        t.equivalent = [(n, r) for n, r in t.equivalent if in_scope(m, n, args.functions)]
        t.scope = args.functions if args.functions != "*" else SCOPE.get(m, "*")
    for m, t in tallies.items():
        t.seconds = timings.get(m)
    text = report(tallies, equiv, codes)
    (OUT / "report.md").write_text(text)
    print("\n".join(line for line in text.splitlines() if line.startswith("|")))
    for t in tallies.values():
        for name in t.survived:
            print(f"survived: {name}: {mutant_diff(name).splitlines()[-1]}")
    print(f"report: {OUT / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
