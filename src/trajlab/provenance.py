"""How a result was obtained: code revision, versions, device, seed, command line; atomic JSON writes."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from trajlab import files
from trajlab.version import __version__

# The package directory (this file sits in it), for the git revision and the source digest.
_PACKAGE_DIR = Path(__file__).resolve().parent


def git_revision(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Git revision and dirty flag of the trajlab source tree (``None`` fields outside a checkout)."""
    root = Path(path) if path else _PACKAGE_DIR
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return {"revision": rev, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}


# Files whose content is the code: Python modules, presets and the C source of the averaging kernel.
_SOURCE_SUFFIXES = (".py", ".toml", ".c", ".h")


def source_digest(path: str | os.PathLike | None = None) -> str:
    """SHA-256 (first 16 hex digits) of the trajlab source files, by relative path and content.

    Ties a result to its code where git cannot: an installed wheel, or a copy of the source tree (such
    as the one long experiments run from so that edits to the checkout do not reach their workers). Two
    trees with the same files give the same digest wherever they are; ``__pycache__`` is ignored.
    """
    root = Path(path) if path else _PACKAGE_DIR
    h = hashlib.sha256()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix in _SOURCE_SUFFIXES and "__pycache__" not in p.parts
    )
    for p in files:
        rel = p.relative_to(root).as_posix().encode()
        data = p.read_bytes()
        # Length-prefixed, so that no two different trees hash the same byte stream.
        h.update(len(rel).to_bytes(8, "little") + rel + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:16]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device | str | None = None) -> str:
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def provenance(
    *, seed: int | None = None, device: torch.device | str | None = None, command: list[str] | None = None
) -> dict[str, Any]:
    """The provenance record attached to every run and result file."""
    import numpy

    return {
        "trajlab": __version__,
        "git": git_revision(),
        "source_sha256": source_digest(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "device": device_description(device),
        "seed": seed,
        "command": command,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Write JSON atomically (:func:`trajlab.files.write_json_atomic`: no symlinks followed, the umask's mode,
    out of space reported as such); the parent directory is created."""
    path = Path(path)
    files.make_dirs(path.parent)
    files.write_json_atomic(path, obj, indent=indent)
