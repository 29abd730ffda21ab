"""trajlab.data depends on nothing else in trajlab (data knows nothing of training) and has no print."""

from __future__ import annotations

import ast
from pathlib import Path

import trajlab.data

SOURCES = sorted(Path(trajlab.data.__file__).parent.rglob("*.py"))


def test_imports_stay_inside_trajlab_data() -> None:
    assert SOURCES
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                assert not module.startswith("trajlab") or module.startswith("trajlab.data"), (path, module)


def test_no_print_in_library() -> None:
    for path in SOURCES:
        calls = [
            n
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "print"
        ]
        assert not calls, path
