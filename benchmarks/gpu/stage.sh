#!/usr/bin/env bash
# Build what a lent GPU machine (no package index, 64 MiB per call, python 3.12 with its own CUDA 13 PyTorch)
# needs to run the service and the benchmarks with the CUDA provider, into .gpu/ (add /.gpu/ to
# .git/info/exclude). Two loads, one per device call:
#   .gpu/stage1.tar.xz  the project's cp312 wheels the machine lacks, wrk + h2load and their libraries,
#                       a registry and the translation data            (call 1: benchmarks/gpu/device.sh stage)
#   .gpu/ortgpu.tar.xz  onnxruntime-gpu with only sm_90 device code     (call 2: benchmarks/gpu/device.sh run)
# Usage: bash benchmarks/gpu/stage.sh REGISTRY_DIR [SM]        (SM: 90 for H100/H200)
set -euo pipefail
cd "$(dirname "$0")/../.."
reg=$1; sm=${2:-90}; out=$PWD/.gpu; tmp=$(mktemp -d); mkdir -p "$out"
ort=$(python3 - <<'PY'
import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["tool"]["modelserve"]["image"]["gpu-onnxruntime"])
PY
)
source benchmarks/gpu/wheel_platforms.sh
# the serve extra (minus what the machine's image has: numpy, tokenizers, aiohttp, rich, ...) + tritonclient + py-spy
python3 - > "$tmp/req.txt" <<'PY'
import tomllib
t = tomllib.load(open("pyproject.toml", "rb"))["project"]
skip = ("numpy", "scipy", "pillow", "onnxruntime", "tokenizers")
deps = [d for d in t["dependencies"] if not d.startswith(skip)] + t["optional-dependencies"]["serve"]
deps += [d for d in t["optional-dependencies"]["dev"] if d.startswith(("tritonclient", "py-spy"))]
print("\n".join(deps))
PY
python3 -m pip download -q "${plat[@]}" -d "$tmp/w" -r "$tmp/req.txt"
(cd "$tmp/w" && rm -f numpy-* ml_dtypes-* hf_xet-* huggingface_hub-* tokenizers-* aiohttp-[0-9]* aiohappyeyeballs-* \
  aiosignal-* frozenlist-* multidict-* propcache-* yarl-* attrs-* anyio-* certifi-* charset_normalizer-* click-[0-9]* \
  cloudpickle-* filelock-* fsspec-* h11-* idna-* jinja2-* [Mm]arkup[Ss]afe-* markdown_it_py-* mdurl-* packaging-* \
  psutil-* pygments-* python_dateutil-* [Pp]y[Yy][Aa][Mm][Ll]-* rich-[0-9]* setuptools-* tqdm-* typing_extensions-* \
  urllib3-* pyparsing-* uvloop-* prometheus_client-* nvidia_ml_py-* httpx-[0-9]* httpcore-[0-9]* requests-* six-*)
mkdir -p "$tmp/s1/tools/lib" "$tmp/s1/data/translation" "$tmp/s1/fashion-mnist"
mv "$tmp/w" "$tmp/s1/wheels"
cp -r "$reg" "$tmp/s1/reg"
cp data/translation/*.jsonl "$tmp/s1/data/translation/" 2>/dev/null || true
cp /usr/share/datasets/fashion-mnist/t10k-* "$tmp/s1/fashion-mnist/" 2>/dev/null || true
cp "$(command -v wrk)" "$(command -v h2load)" "$tmp/s1/tools/"
for lib in $(ldd "$(command -v wrk)" "$(command -v h2load)" | awk '/=>/ {print $3}' | grep -E 'luajit|nghttp2|jemalloc|libev'); do
  cp -L "$lib" "$tmp/s1/tools/lib/"; done
tar -cf - -C "$tmp/s1" . | xz -9 -T0 > "$out/stage1.tar.xz"
# onnxruntime-gpu: the python package with the CUDA provider cut to one GPU generation
python3 -m pip download -q --no-deps "${plat[@]}" -d "$tmp/o" "$ort"
mkdir -p "$tmp/opkg" && (cd "$tmp/opkg" && unzip -q "$tmp"/o/*.whl)
capi=$tmp/opkg/onnxruntime/capi
python3 benchmarks/gpu/keep_sm.py "$capi/libonnxruntime_providers_cuda.so" "$sm"
rm -rf "$capi"/libonnxruntime.so.* "$capi/libonnxruntime_providers_tensorrt.so" "$tmp/opkg/onnxruntime/transformers"
tar -cf - -C "$tmp/opkg" . | xz -9 -T0 > "$out/ortgpu.tar.xz"
cp benchmarks/gpu/device.sh "$out/"
ls -la "$out"; rm -rf "$tmp"
