#!/usr/bin/env bash
# Download the serving image's wheels on the host so `docker build` needs no network.
#   wheelhouse.sh FLAVOUR CACHE_DIR   (FLAVOUR: cpu|gpu)
# Wheels are cached in CACHE_DIR/wheels (shared across lock versions), then exactly the locked set
# is copied into deploy/wheelhouse/ (emptied first), the build context's wheel folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
flavour="${1:?cpu|gpu}"; cache="${2:?cache dir}"
py="${PYTHON:-.venv/bin/python}"
lock="deploy/requirements/serve-$flavour.lock"
mkdir -p "$cache/wheels"
# The host matches the image: CPython 3.11, glibc, x86_64.
nice -n 10 "$py" -m pip download -q --no-deps --only-binary=:all: -d "$cache/wheels" -r "$lock" 2>&1 \
  | grep -v "^WARNING: Location" || true
find deploy/wheelhouse -name '*.whl' -delete
"$py" - "$lock" "$cache/wheels" deploy/wheelhouse <<'PY'
import re, shutil, sys
from pathlib import Path
lock, cache, dest = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
norm = lambda s: re.sub(r"[-_.]+", "_", s).lower()
wanted = {}
for line in lock.read_text().splitlines():
    if line and not line.startswith("#"):
        name, version = line.split("==")
        wanted[(norm(name), version)] = line
found = set()
for whl in cache.glob("*.whl"):
    name, version = whl.name.split("-")[:2]
    key = (norm(name), version)
    if key in wanted:
        found.add(key)
        target = dest / whl.name
        try:
            target.hardlink_to(whl)
        except OSError:
            shutil.copy2(whl, target)
missing = [wanted[k] for k in wanted if k not in found]
if missing:
    sys.exit(f"wheels missing from {cache}: {missing}")
print(f"{dest}: {len(found)} wheels")
PY
