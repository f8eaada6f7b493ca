#!/usr/bin/env bash
# Set up, train the default models if none are registered, then serve them on :3000 (HTTP: the JSON API and
# the Open Inference Protocol) and :8001 (OIP over gRPC; SERVICE_GRPC_PORT).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The classifiers (sentiment, topics, fashion: ~20 min on 2 cores). QUICKSTART_TRANSLATORS=1 also
# trains de-en and en-ko (~23 more minutes on 2 cores, side by side); off by default because their
# CPU-trained quick models are demonstration quality only (see README).
if ! ls exported/{sentiment,topics,fashion}/LATEST >/dev/null 2>&1; then
  .venv/bin/python -m training train --preset quick || echo "quickstart: a model did not pass (see above); serving the rest" >&2
fi
if [ "${QUICKSTART_TRANSLATORS:-0}" = 1 ] && ! ls exported/{de-en,en-ko}/LATEST >/dev/null 2>&1; then
  .venv/bin/python -m training train --preset quick --models de-en,en-ko || echo "quickstart: a translator did not pass (see above); serving the rest" >&2
fi
.venv/bin/python -m training models
exec .venv/bin/bentoml serve service.app:ModelService --host "${HOST:-127.0.0.1}" --port "${PORT:-3000}"
