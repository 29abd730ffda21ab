"""Callables written down as text, so a run recorded from a user's own loop can be rebuilt later.

A reference is ``package.module:qualname`` for a function importable from an installed or importable
module, or ``path/to/script.py:qualname`` for one defined in a script run as ``python script.py`` (its
module is ``__main__``). Loading a script reference runs the script's top level under another module name,
so the script's ``if __name__ == "__main__":`` block (the training) does not run again; code outside it
does, as it would on import. Lambdas, closures and objects defined in a notebook have no reference:
:func:`reference_of` returns ``None`` and the caller says what to do instead.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


class FactoryError(ValueError):
    """A reference that cannot be resolved; the message says which and what to do."""


def reference_of(obj: Any) -> str | None:
    """``module:qualname`` or ``/abs/script.py:qualname`` for a module-level callable, else ``None``.

    A string is returned unchanged (it already is a reference).
    """
    if isinstance(obj, str):
        return obj
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname:  # <lambda>, <locals>
        return None
    if module == "__main__":
        script = getattr(sys.modules.get("__main__"), "__file__", None)
        if not script:
            return None  # an interactive session or a notebook
        return f"{Path(script).resolve()}:{qualname}"
    return f"{module}:{qualname}"


def load_reference(
    ref: str, *, what: str = "factory", base_dir: str | Path | None = None
) -> Callable[..., Any]:
    """The callable a reference names.

    Args:
        ref: ``package.module:qualname`` or ``path/to/script.py:qualname``.
        what: what the reference is for (``model factory``, ``--data``, ...), for the error message.
        base_dir: where a relative script path is looked for first (then the working directory).

    Raises:
        FactoryError: malformed, not found, or not callable; one line naming the reference.
    """
    target, sep, qualname = ref.rpartition(":")
    if not sep or not target or not qualname:
        raise FactoryError(f"{what} {ref!r}: expected package.module:function or path/to/script.py:function")
    if target.endswith(".py"):
        module = _load_script(target, what, ref, base_dir)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise FactoryError(f"{what} {ref!r}: cannot import {target} ({e})") from None
    obj: Any = module
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise FactoryError(f"{what} {ref!r}: {target} has no {qualname}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise FactoryError(f"{what} {ref!r}: {qualname} is not callable")
    return obj


def _load_script(path: str, what: str, ref: str, base_dir: str | Path | None) -> Any:
    candidates = [Path(path)]
    if base_dir is not None and not Path(path).is_absolute():
        candidates.insert(0, Path(base_dir) / path)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FactoryError(f"{what} {ref!r}: no such script {path}")
    found = found.resolve()
    # One module per script file, loaded once per process; not __main__, so its training does not rerun.
    name = "_trajlab_user_script_" + hashlib.sha256(str(found).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, found)
    if spec is None or spec.loader is None:
        raise FactoryError(f"{what} {ref!r}: cannot load {found}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise FactoryError(f"{what} {ref!r}: running {found.name} failed: {type(e).__name__}: {e}") from None
    return module
