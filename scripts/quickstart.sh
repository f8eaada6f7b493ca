#!/usr/bin/env bash
# Set up, train the default models if none are registered, then serve them on :3000.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! ls exported/*/LATEST >/dev/null 2>&1; then
  .venv/bin/python -m training train --preset quick
fi
.venv/bin/python -m training models
exec .venv/bin/bentoml serve service.app:ModelService --host "${HOST:-127.0.0.1}" --port "${PORT:-3000}"
