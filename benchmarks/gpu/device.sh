#!/usr/bin/env bash
# On the lent GPU machine, from the repository root. Two calls within the machine's warm window:
#   bash .gpu/device.sh stage      carry .gpu/stage1.tar.xz and .gpu/device.sh
#   bash .gpu/device.sh run        carry .gpu/ortgpu.tar.xz and .gpu/device.sh ($OUT gets the results)
set -u
if [ "$1" = stage ]; then
  mkdir -p /tmp/s1 /usr/share/datasets/fashion-mnist && tar -xJf .gpu/stage1.tar.xz -C /tmp/s1 || exit 1
  cp /tmp/s1/fashion-mnist/* /usr/share/datasets/fashion-mnist/ 2>/dev/null
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/s1/wheels/*.whl
  exit $?
fi
tar -xJf .gpu/ortgpu.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PATH=/tmp/s1/tools:/tmp/site/bin:$PATH
nv=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')  # the CUDA 13 / cuDNN libraries of the machine's PyTorch
export LD_LIBRARY_PATH=/tmp/s1/tools/lib:$(find "$nv" -name 'lib*.so*' -printf '%h\n' | sort -u | tr '\n' ':')${LD_LIBRARY_PATH:-}
set -o pipefail
timeout 250 python3 benchmarks/service_bench.py --registry /tmp/s1/reg --models sentiment,fashion --provider cuda \
  --results "$OUT/gpu_service.md" --timeout 60 --note "GPU machine" 2>&1 | tee "$OUT/service.log" | tail -20
timeout 250 python3 benchmarks/translator_serving.py --registry /tmp/s1/reg --model de-en --data-dir /tmp/s1/data \
  --provider cuda --variants fp32 --no-ct2 --no-beam --section translator_serving_gpu --clients 1,16,64 --duration 10 \
  --rounds 2 --results "$OUT/gpu_translator.md" --plot "$OUT/translator_serving_gpu.png" --note "GPU machine" 2>&1 \
  | tee "$OUT/translator.log" | tail -12
