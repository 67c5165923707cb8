"""The house rules, read from the code's own imports (ast), so they keep holding as the code grows.

* imports point down: ``uaap`` is the library and imports no upper floor; ``client`` never imports
  server-side code; each floor imports only the floors listed in ``ALLOWED``;
* no import cycle between modules (imports inside functions count; ``if TYPE_CHECKING:`` blocks do not,
  they never run);
* every wire key is defined once, in ``uaap.protocol``: the packages that speak the protocol carry none of
  its strings as literals.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from uaap import protocol

REPO = Path(__file__).resolve().parents[1]
FLOORS = ("uaap", "strategies", "server", "client", "simulations", "edge", "serving")
ALLOWED = {
    "uaap": {"uaap"},
    "strategies": {"strategies", "uaap"},
    "server": {"server", "strategies", "uaap"},
    "client": {"client", "uaap"},
    "simulations": {"simulations", "server", "client", "strategies", "uaap"},
    "edge": {"edge", "uaap"},
    "serving": {"serving", "uaap"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for floor in FLOORS:
        for path in sorted((REPO / floor).rglob("*.py")) if (REPO / floor).is_dir() else []:
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str) -> set[str]:
    """Modules of this repository that ``module`` imports at run time (anywhere in the file)."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # a.b.c -> the deepest module of ours that exists
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


GRAPH = {module: _imports(path, module) for module, path in MODULES.items()}


def test_the_scan_sees_the_code():
    # guards the guard: a parser that found nothing would pass every rule below
    assert len(MODULES) > 60
    assert "uaap.protocol" in GRAPH["client.app"] and "server.federation" in GRAPH["server.app"]


@pytest.mark.parametrize("floor", FLOORS)
def test_imports_point_down(floor: str):
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.split(".")[0] == floor
        for target in targets
        if target.split(".")[0] not in ALLOWED[floor]
    )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


WIRE_PACKAGES = ("client", "server", "strategies", "uaap.crypto")
WIRE_VALUES = {
    value
    for name, value in vars(protocol).items()
    if name.isupper() and isinstance(value, str) and "-" in value  # the distinctive keys (not 'loss', 'arrays')
}


def test_wire_keys_are_defined_only_in_the_protocol_module():
    assert {"num-examples", "uaap-config", "partition-id", "he-weight", "dp-denominator"} <= WIRE_VALUES
    found = []
    for module, path in MODULES.items():
        if not module.startswith(WIRE_PACKAGES) or module == "uaap.protocol":
            continue
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and n.body
            and isinstance(n.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in WIRE_VALUES and id(node) not in docstrings:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not found, "use the uaap.protocol name instead of the literal:\n" + "\n".join(found)


def test_long_modules_say_why():
    long = []
    for path in sorted({*MODULES.values(), *(REPO / "benchmarks").glob("*.py")}):
        text = path.read_text()
        if text.count("\n") > 500 and "Length:" not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(f"{path.relative_to(REPO)} ({text.count(chr(10))} lines)")
    assert not long, "split these or add a 'Length:' sentence to their docstring saying why:\n" + "\n".join(long)
