"""Provenance: the source digest ties results to code outside a git checkout; --version prints it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import trajlab
from trajlab import cli
from trajlab.provenance import provenance, source_digest

PACKAGE = Path(trajlab.__file__).resolve().parent


def _tree(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("x = 1\n")
    (root / "pkg" / "sub" / "b.toml").write_text("lr = 0.1\n")
    return root / "pkg"


def test_digest_depends_on_content_and_names_not_location(tmp_path):
    one = _tree(tmp_path / "one")
    two = _tree(tmp_path / "two")
    assert source_digest(one) == source_digest(two)
    (two / "sub" / "b.toml").write_text("lr = 0.2\n")
    assert source_digest(one) != source_digest(two)
    (two / "sub" / "b.toml").write_text("lr = 0.1\n")
    (two / "a.py").rename(two / "c.py")  # same bytes, another file name
    assert source_digest(one) != source_digest(two)


def test_digest_ignores_caches_and_non_source_files(tmp_path):
    pkg = _tree(tmp_path)
    before = source_digest(pkg)
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.cpython-311.py").write_text("stale")
    (pkg / "notes.txt").write_text("not code")
    assert source_digest(pkg) == before


def test_a_copy_of_the_package_has_the_installed_digest(tmp_path):
    copy = tmp_path / "trajlab"
    shutil.copytree(PACKAGE, copy)
    assert source_digest(copy) == source_digest() == provenance()["source_sha256"]
    assert len(source_digest()) == 16


def test_version_prints_version_and_digest(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"trajlab {trajlab.__version__} (") and f"source sha256 {source_digest()}" in out
