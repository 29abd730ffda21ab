"""The import rules of the package (README "Architecture"), checked on the source of every module.

Each room (a subpackage or a top-level module of ``trajlab``) has a floor; a module may import rooms on
its own floor or below, never above. Nothing imports ``commands/`` or ``cli.py`` (but ``cli.py`` itself),
no two modules import each other through any chain (no cycles, counting imports inside functions and
under ``TYPE_CHECKING``), and no module loads the project's own modules through ``importlib``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "trajlab"

# Floors, bottom up. data/, models/, theory/ know nothing of training; train/ never sees trajectory/,
# averaging/, probes/ (they plug in as callbacks); runs/ is the glue from a config to a run and back.
FLOORS: dict[str, int] = {
    "objective": 0,
    "data": 0,
    "models": 0,
    "theory": 0,
    "provenance": 0,
    "version": 0,
    "files": 0,
    "config": 1,
    "train": 2,
    "trajectory": 3,
    "averaging": 4,
    "probes": 4,
    "runs": 5,
    "integrations": 6,
    "reports": 7,
    "experiments": 8,
    "commands": 9,
    "cli": 10,
}
# The package's face (``trajlab/__init__.py``) re-exports public names from any room but commands/cli.
FACE = "trajlab"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """trajlab modules imported anywhere in ``path`` (``from pkg import sub`` counts as ``pkg.sub``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m == FACE or m.startswith(FACE + ".")}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else FACE


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {i for i in _imports(p, modules) if i in modules and i != m} for m, p in modules.items()}


def test_every_room_has_a_floor() -> None:
    rooms = {_room(m) for m in _modules()} - {FACE}
    assert rooms <= set(FLOORS), f"rooms without a floor in this test: {sorted(rooms - set(FLOORS))}"


def test_no_import_runs_back_up() -> None:
    bad = []
    for module, targets in _graph().items():
        room = _room(module)
        for target in targets:
            to = _room(target)
            if to in (FACE, room):
                continue
            if room == FACE:
                if to in ("commands", "cli"):
                    bad.append(f"{module} -> {target} (the package face never imports the CLI)")
                continue
            if FLOORS[to] > FLOORS[room]:
                bad.append(f"{module} (floor {FLOORS[room]}) -> {target} (floor {FLOORS[to]})")
    assert not bad, "imports that run back up:\n" + "\n".join(sorted(bad))


def test_nothing_but_the_cli_imports_commands_or_the_cli() -> None:
    bad = [
        f"{m} -> {t}"
        for m, ts in _graph().items()
        for t in ts
        if _room(t) in ("commands", "cli") and _room(m) not in ("commands", "cli")
    ]
    assert not bad, bad


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycles() -> None:
    # A package's __init__ re-exporting its submodules is not a cycle unless a submodule imports the
    # package's __init__ back: that is what this finds, with every other cycle.
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("needle", ["import_module(", "__import__("])
def test_no_importlib_for_own_modules(needle: str) -> None:
    hits = [
        f"{path.relative_to(SRC.parent)}:{i}"
        for path in SRC.rglob("*.py")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if needle in line and "trajlab" in line
    ]
    assert not hits, hits


def test_only_the_cli_reads_the_environment_or_sets_threads() -> None:
    needles = ("os.environ", "getenv", "set_num_threads")
    hits = [
        f"{path.relative_to(SRC.parent)}:{i}: {line.strip()}"
        for path in SRC.rglob("*.py")
        if path.name != "cli.py" or path.parent != SRC
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if any(n in line for n in needles)
    ]
    assert not hits, hits
