#!/usr/bin/env bash
# The prepared run for a lent GPU machine (see docs/benchmarks or the session notes): the machine has
# python3 with torch but not Exemplar's other dependencies, so those travel as wheels in .whl/
# (python 3.12, downloaded here with `pip download --no-deps --only-binary=:all: --python-version 3.12 ...`:
# faiss-cpu open_clip_torch ftfy wcwidth pydantic pydantic_core annotated-types typing-inspection
# pydantic-settings python-dotenv). faiss-gpu-cu12 needs CUDA 12's cuBLAS (hundreds of MB), which does
# not fit what travels, so faiss GPU search is not checked by this script.
#   run: bash benchmarks/device_run.sh   (carry .whl; results under $OUT)
set -u
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, open_clip, faiss; print('torch', torch.__version__, 'open_clip', open_clip.__version__, 'faiss', faiss.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
echo "== gpu_check"
(cd benchmarks && timeout 150 python3 gpu_check.py --out "$OUT/gpu_check.json") 2>&1 | tee "$OUT/gpu_check.log"
echo "== gpu tests"
timeout 120 python3 -m pytest -m gpu -p no:cacheprovider -q tests/unit/encoders tests/unit/retrieval/index 2>&1 | tee "$OUT/gpu_tests.log"
echo "== build throughput on cuda"
(cd benchmarks && timeout 240 python3 build_throughput.py --device cuda --images 6000 --vit-images 3000 \
    --workers 1,4,8 --index-vectors 0 --out "$OUT/build_throughput_cuda.json") 2>&1 | tee "$OUT/build_cuda.log"
echo "== done"
