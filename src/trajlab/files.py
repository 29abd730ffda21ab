"""Safe file writes and the run's checksums: every file trajlab writes goes through here.

* **Confined.** Files are created with ``O_NOFOLLOW | O_EXCL`` under a temporary name in the target's own
  directory, then renamed over the target (a rename replaces a symlink, it never writes through it), and
  appends open with ``O_NOFOLLOW``. :func:`check_confined` refuses a target whose directories between a
  run directory and the file include a symlink, so a link planted in a run directory cannot send a write
  elsewhere.
* **Atomic.** A reader sees the old file or the complete new one; a killed writer leaves at most a
  ``.<name>.*.tmp`` file.
* **The process umask decides the mode** (files are created 0666 & ~umask), so others in the group can
  read a shared run.
* **Out of disk** is its own error (:class:`DiskFullError`), so the CLI can say so and exit with its code.
* **Checksums.** ``RUN/checksums.json`` maps every small file trajlab writes once (``config.json``,
  ``recipe.json``, ``provenance.json``, ``summary.json``, result files) to its sha256; readers check it
  (:func:`read_verified`), ``trajlab runs verify`` checks all of it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHECKSUMS_FILE = "checksums.json"
_NOSPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """The disk (or quota) is full: nothing half-written was left; free space and run again."""


class UnsafePathError(OSError):
    """A write would follow a symlink out of the run directory, or the path cannot hold a file."""


class ChecksumError(ValueError):
    """A file's content differs from the sha256 recorded for it (altered or damaged)."""


def _raise_os(exc: OSError, path: Path, what: str) -> None:
    if exc.errno in _NOSPACE:
        raise DiskFullError(
            exc.errno, f"{path}: out of disk space while writing {what}; free space and run again"
        )
    if exc.errno == errno.ELOOP:
        raise UnsafePathError(exc.errno, f"{path}: is a symlink; trajlab does not write through links")
    raise exc


def check_confined(path: str | os.PathLike, root: str | os.PathLike | None) -> None:
    """Refuse ``path`` when a directory between ``root`` and it (or it itself) is a symlink.

    Raises:
        UnsafePathError: naming the link.
    """
    if root is None:
        return
    path, root = Path(path), Path(root)
    try:
        rel = path.relative_to(root)
    except ValueError:
        raise UnsafePathError(errno.EXDEV, f"{path}: outside the run directory {root}") from None
    here = root
    for part in rel.parts:
        here = here / part
        if here.is_symlink():
            raise UnsafePathError(errno.ELOOP, f"{here}: is a symlink inside the run directory; remove it")


def check_can_create(path: str | os.PathLike) -> None:
    """Refuse, before anything is written, a directory that could not be created or written: a component
    longer than 255 bytes, an existing part that is a file, or a nearest existing directory that is not
    writable (read-only file system, permissions).

    Raises:
        UnsafePathError: one line saying which part and why.
    """
    path = Path(os.path.abspath(path))
    for part in path.parts:
        if len(part.encode()) > 255:
            raise UnsafePathError(errno.ENAMETOOLONG, f"{path}: a path component is longer than 255 bytes")
    here = path
    while not here.exists():
        here = here.parent
    if not here.is_dir():
        raise UnsafePathError(
            errno.ENOTDIR, f"{path}: {here} is a file, not a directory; choose another path"
        )
    if not os.access(here, os.W_OK | os.X_OK):
        raise UnsafePathError(
            errno.EACCES, f"{path}: {here} is not writable (read-only file system or permissions)"
        )


def find_symlinks(root: str | os.PathLike) -> list[Path]:
    """Every symlink inside ``root`` (not followed), so writers can refuse a run with a planted link."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                found.append(path)
    return found


def make_dirs(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """``mkdir -p`` that refuses symlinked directories under ``root``."""
    path = Path(path)
    check_confined(path, root)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _raise_os(exc, path, "a directory")
    check_confined(path, root)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes | memoryview, *, root: Any = None) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename + directory fsync).

    Args:
        path: the target file.
        data: its content.
        root: the run directory the write must stay in (checked for symlinked directories).

    Raises:
        DiskFullError: out of space (the temporary file is removed).
        UnsafePathError: a symlink in the way.
    """
    path = Path(path)
    check_confined(path.parent, root)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, 0o666)
    except OSError as exc:
        _raise_os(exc, path, "a file")
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except OSError as exc:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        _raise_os(exc, path, "a file")
    _fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str, *, root: Any = None) -> None:
    """:func:`write_bytes_atomic` of UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"), root=root)


def json_bytes(obj: Any, indent: int | None = 2) -> bytes:
    return (json.dumps(obj, indent=indent, sort_keys=False, allow_nan=True) + "\n").encode("utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, root: Any = None) -> None:
    """Write ``obj`` as JSON atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, json_bytes(obj, indent), root=root)


def save_figure_atomic(fig: Any, path: str | os.PathLike, *, dpi: int = 110, root: Any = None) -> None:
    """Render a matplotlib figure to PNG bytes, then write them atomically (never through a symlink)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)
    write_bytes_atomic(path, buffer.getvalue(), root=root)


@contextlib.contextmanager
def open_append(path: str | os.PathLike, *, root: Any = None) -> Iterator[int]:
    """A file descriptor appending to ``path`` (created if missing), opened without following symlinks."""
    path = Path(path)
    check_confined(path.parent, root)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as exc:
        _raise_os(exc, path, "an append")
    try:
        yield fd
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes, path: Path) -> None:
    """``os.write`` everything, with out-of-space reported as :class:`DiskFullError`."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        _raise_os(exc, path, "an append")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- the run's checksums -------------------------------------------------------------------------------


def read_checksums(run_dir: str | os.PathLike) -> dict[str, str]:
    """``{relative path: sha256}`` of ``RUN/checksums.json`` (empty when there is none).

    Raises:
        ChecksumError: the file exists but cannot be read.
    """
    path = Path(run_dir) / CHECKSUMS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ChecksumError(f"{path}: unreadable ({type(exc).__name__}); run `trajlab runs verify`") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.get("files", {}).values()):
        raise ChecksumError(f"{path}: not a trajlab checksums file; run `trajlab runs verify`")
    return dict(data.get("files", {}))


def write_run_json(run_dir: str | os.PathLike, rel: str, obj: Any, *, indent: int | None = 2) -> None:
    """Write ``RUN/rel`` as JSON atomically and record its sha256 in ``RUN/checksums.json``."""
    run_dir = Path(run_dir)
    data = json_bytes(obj, indent)
    path = run_dir / rel
    make_dirs(path.parent, run_dir)
    write_bytes_atomic(path, data, root=run_dir)
    record_checksum(run_dir, rel, sha256_bytes(data))


def record_checksum(run_dir: str | os.PathLike, rel: str, sha: str | None) -> None:
    """Add or replace one entry of ``RUN/checksums.json`` (atomically); ``sha=None`` removes it (the file
    was set aside on purpose)."""
    run_dir = Path(run_dir)
    try:
        files = read_checksums(run_dir)
    except ChecksumError:
        files = {}  # rebuilt from what is written from now on; `runs verify` reported the damage
    if sha is None:
        files.pop(rel, None)
    else:
        files[rel] = sha
    doc = {"format": "trajlab-checksums/1", "files": files}
    write_json_atomic(run_dir / CHECKSUMS_FILE, doc, root=run_dir)


def read_verified(run_dir: str | os.PathLike, rel: str, *, verify: bool = True) -> bytes:
    """The bytes of ``RUN/rel``, checked against ``RUN/checksums.json`` when it lists the file.

    Raises:
        ChecksumError: the content differs from the recorded sha256 (one line: the file and what to do).
        OSError: the file cannot be read.
    """
    path = Path(run_dir) / rel
    data = path.read_bytes()
    if verify:
        expected = read_checksums(run_dir).get(rel)
        if expected is not None and sha256_bytes(data) != expected:
            raise ChecksumError(
                f"{path}: sha256 differs from {CHECKSUMS_FILE} (the file was altered or damaged); run "
                "`trajlab runs verify`, or pass --no-verify to read it anyway"
            )
    return data
