#!/usr/bin/env bash
# On the lent GPU machine, from the repository root, with .gputrain carried (benchmarks/gpu/stage_train.sh):
# every model's `full` preset at once, one process each, until BUDGET_S seconds; what was published (manifests,
# model cards, plots, training logs; no weights) comes back as $OUT/registry.tar.gz with the log.
#   bash benchmarks/gpu/train_full.sh [BUDGET_S] [extra train args...]     (device run: carry .gputrain)
# e.g. the 2026-11-28 run (benchmarks/RESULTS.md): 510 --set fashion.train.max_minutes=5.5
#   --set sentiment.train.max_minutes=4.5 --set topics.train.max_minutes=4.5 --set de-en.train.max_minutes=4 ...
# (later arguments win: --models de-en,en-ko trains the translators alone)
set -u
budget=${1:-480}; shift || true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .gputrain/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p /usr/share/datasets/fashion-mnist data/topics data/translation
for f in .gputrain/fashion-mnist/*.xz; do  # plain IDX under the .gz name: the reader takes both
  python3 -c 'import lzma, sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' "$f" \
    > "/usr/share/datasets/fashion-mnist/$(basename "$f" .xz).gz" || exit 1; done
cp .gputrain/topics/* data/topics/ && cp .gputrain/translation/* data/translation/ || exit 1
{ date -u; nproc; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import sys, torch, transformers, tokenizers, onnx, onnxruntime, sklearn, pydantic
print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__,
      "tokenizers", tokenizers.__version__, "onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__,
      "scikit-learn", sklearn.__version__, "pydantic", pydantic.__version__)'; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
(while sleep 10; do date -u +%T | tr '\n' ' '; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done) \
  > "$OUT/gpu_util.log" 2>&1 &
mon=$!
# one process per model, three CPU threads each (16 cores); the time budgets (train.max_minutes) anneal
# each schedule to its end in time for export and evaluation to finish inside BUDGET_S
set -o pipefail
timeout -k 10 "$budget" python3 -m training train --preset full --models sentiment,topics,fashion,de-en,en-ko \
  --registry /tmp/reg --data-dir data --checkpoint-dir /tmp/ckpt --jobs 5 --set train.threads=3 --set train.progress=false \
  --set 'export.exporters=["legacy"]' "$@" 2>&1 | tee "$OUT/train.log"
rc=$?
echo "train exit $rc" | tee -a "$OUT/train.log"
pkill -f "training train" 2>/dev/null; kill $mon 2>/dev/null
[ -d /tmp/reg ] && tar -czf "$OUT/registry.tar.gz" --exclude='*.onnx' --exclude='*.onnx.data' --exclude='*.safetensors' -C /tmp/reg .
ls -la "$OUT"
exit $rc
