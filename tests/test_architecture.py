"""The house rules (docs/architecture.md), read from the source with ``ast``.

* Each room imports only what it may (``ROOMS``), and no import cycle joins
  two project modules, counting imports inside
  ``if TYPE_CHECKING:`` blocks and function bodies.
* ``lvs/`` and ``schedulers/`` are pure: they import no I/O module (sockets,
  event loops, threads, processes, clock, signals), read no file, argv,
  standard stream or environment, and import no data plane or program
  package.  Time comes in as ``now``, randomness as a ``random.Random``.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: packages whose code must stay pure (the emulated kernel and its schedulers)
PURE = ("lvs", "schedulers")
#: what a pure module must not import (the top-level name is enough)
IO_MODULES = frozenset(
    {"socket", "asyncio", "uvloop", "selectors", "threading", "subprocess", "time", "signal",
     "multiprocessing", "concurrent", "socketserver", "http", "urllib", "shutil", "tempfile", "pathlib",
     "fcntl", "select", "mmap", "io_uring", "pyroute2", "scapy", "grp", "pwd"}
)
#: the rooms (docs/architecture.md) and the project packages each may import:
#: the shells only the core, the program everything
ROOMS: dict[str, set[str] | None] = {
    "lvs": {"lvs"},
    "schedulers": {"lvs", "schedulers"},
    "forwarding": {"lvs", "forwarding"},
    "checkers": {"lvs", "checkers"},
    "teaching": {"lvs", "teaching"},
    "lvsd": None,  # the program wires everything
}
PURE_MAY_IMPORT = {package: ROOMS[package] for package in PURE}
#: attribute reads that reach the host: environment, argv, standard streams,
#: the clock, the entropy pool, process identity, files by descriptor
HOST_ATTRIBUTES = frozenset(
    {("os", "environ"), ("os", "getenv"), ("os", "putenv"), ("os", "urandom"), ("os", "getpid"),
     ("os", "open"), ("os", "read"), ("os", "write"), ("os", "listdir"), ("os", "scandir"), ("os", "stat"),
     ("os", "readlink"), ("os", "fork"), ("os", "system"), ("os", "popen"), ("os", "path"),
     ("sys", "argv"), ("sys", "stdin"), ("sys", "stdout"), ("sys", "stderr"), ("sys", "exit"),
     ("random", "random"), ("random", "randint"), ("random", "randrange"), ("random", "choice"),
     ("random", "shuffle"), ("random", "seed"), ("random", "getrandbits"), ("random", "SystemRandom"),
     ("datetime", "now"), ("datetime", "today"), ("datetime", "utcnow"), ("date", "today")}
)
#: builtins that reach the host
HOST_BUILTINS = frozenset({"open", "input", "print", "exit", "quit", "breakpoint"})


def project_packages() -> list[str]:
    """The top-level packages pyproject.toml installs (``lvs*`` -> ``lvs``)."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = conf["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({pattern.rstrip("*").rstrip(".") for pattern in include})


def module_files() -> dict[str, Path]:
    """Every project module by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for package in project_packages():
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = module_files()


@dataclass(frozen=True)
class Import:
    target: str  # dotted name as written, resolved if relative
    line: int


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imports_of(module: str, path: Path) -> Iterator[Import]:
    """Every import statement anywhere in the module, relative ones resolved.
    ``from pkg import name`` counts as an import of ``pkg.name`` when that is
    a module."""
    tree = ast.parse(path.read_text(), str(path))
    package = _package_of(module, path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in MODULES]
            if len(names) < len(node.names):
                yield Import(source, node.lineno)
            for name in names:
                yield Import(name, node.lineno)


def _project_target(name: str) -> str | None:
    """The project module an import loads (the longest known prefix)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported project module: line of the first such import}."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in MODULES.items():
        edges: dict[str, int] = {}
        for imp in imports_of(module, path):
            target = _project_target(imp.target)
            if target is not None and target != module:
                edges.setdefault(target, imp.line)
        graph[module] = edges
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's components with more than one module: each is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _cycle_text(component: list[str], graph: dict[str, dict[str, int]]) -> str:
    members = set(component)
    edges = [
        f"  {a} -> {b} ({MODULES[a].relative_to(ROOT)}:{line})"
        for a in component
        for b, line in sorted(graph[a].items())
        if b in members
    ]
    return "cycle between " + ", ".join(component) + ":\n" + "\n".join(edges)


def test_the_walk_sees_every_package() -> None:
    """The walk covers the program, the core, the schedulers and the data planes,
    and finds the imports it should (so an empty graph cannot pass)."""
    packages = {m.split(".")[0] for m in MODULES}
    assert {"lvs", "lvsd", "schedulers", "forwarding"} <= packages
    graph = import_graph()
    assert "lvs.core" in graph["lvsd.main"]
    assert "lvs.model" in graph["lvs.core"]


def test_no_import_cycle() -> None:
    graph = import_graph()
    cycles = strongly_connected(graph)
    assert not cycles, "\n".join(_cycle_text(c, graph) for c in cycles)


def test_every_package_has_a_room() -> None:
    missing = set(project_packages()) - set(ROOMS)
    assert not missing, f"add {sorted(missing)} to ROOMS here and to docs/architecture.md"


def test_rooms_import_only_what_they_may() -> None:
    """The data planes, checkers, schedulers and teaching import the core and
    nothing else of the project; only the program (lvsd/) wires them."""
    problems = []
    for module, edges in import_graph().items():
        allowed = ROOMS.get(module.split(".")[0])
        if allowed is None:
            continue
        for target, line in sorted(edges.items()):
            if target.split(".")[0] not in allowed:
                problems.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {module} imports {target}")
    assert not problems, "\n".join(problems)


def test_tests_share_helpers_not_test_modules() -> None:
    """What several test files need lives in a helper module (helpers.py,
    natlab.py, nsnet.py, ...), never in another test file."""
    problems = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module or ''}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n.split(".")[-1].startswith(("test_", "conftest")) for n in names):
                problems.append(f"tests/{path.name}:{node.lineno}")
    assert not problems, "imports of test modules: " + ", ".join(problems)


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert strongly_connected(graph) == [["a", "b", "c"]]


def _pure_violations(module: str, path: Path) -> Iterator[str]:
    top = module.split(".")[0]
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    allowed = PURE_MAY_IMPORT[top]
    project = {m.split(".")[0] for m in MODULES}
    tree = ast.parse(path.read_text(), str(path))
    for imp in imports_of(module, path):
        head = imp.target.split(".")[0]
        if head in IO_MODULES:
            yield f"{where}:{imp.line}: imports {imp.target} (I/O)"
        elif head in project and head not in allowed:
            yield f"{where}:{imp.line}: imports {imp.target} (outside {', '.join(sorted(allowed))})"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in HOST_ATTRIBUTES:
                yield f"{where}:{node.lineno}: uses {node.value.id}.{node.attr}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in HOST_BUILTINS:
            yield f"{where}:{node.lineno}: calls {node.func.id}()"
        elif isinstance(node, ast.ImportFrom) and node.module in ("os", "sys", "random", "datetime"):
            for alias in node.names:
                if (node.module, alias.name) in HOST_ATTRIBUTES:
                    yield f"{where}:{node.lineno}: imports {alias.name} from {node.module}"


@pytest.mark.parametrize("package", PURE)
def test_pure_packages_touch_no_host(package: str) -> None:
    problems = [
        problem
        for module, path in MODULES.items()
        if module.split(".")[0] == package
        for problem in _pure_violations(module, path)
    ]
    assert not problems, "\n".join(problems)


def test_purity_check_catches_what_it_should(tmp_path: Path) -> None:
    """The rule itself: a module that reads the clock, the environment and a
    file, and imports a data plane, is reported four times."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os\nfrom time import monotonic\n"
        "def f():\n    from forwarding import nat\n    return open(os.environ['X'])\n"
    )
    problems = list(_pure_violations("lvs.bad", bad))
    assert len(problems) == 4, problems
