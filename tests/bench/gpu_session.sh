#!/usr/bin/env bash
# Issue 21's GPU checks as one prepared run on a lent device (bare, offline:
# Python 3.12 with torch, CuPy, transformers, pytest). Prepare the wheels it lacks
# here, then run this there, carrying them:
#
#   pip download --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d wheels \
#       msgspec gguf anyio h11 sentencepiece jinja2 prometheus-client pyyaml llguidance \
#       safetensors tokenizers
#   device run: bash tests/bench/gpu_session.sh      (carry: wheels)
#
# Each part has its own time limit and writes to $OUT (the device tool brings it
# back): the CUDA tests (kernels against torch, real CUDA graph replays), the
# attention benchmark with the decode planner's sweep, then the whole GPU benchmark
# at the 135M and 1B shapes. A part that fails does not stop the next.
set -u
OUT=${OUT:-/tmp/llmcore-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
{
  nvidia-smi
  python -c "import torch, cupy; print('torch', torch.__version__, 'cupy', cupy.__version__)"
} >"$OUT/device.txt" 2>&1
# Only what is missing, without touching what the machine has (torch, numpy, CuPy).
for pair in msgspec:msgspec gguf:gguf anyio:anyio h11:h11 sentencepiece:sentencepiece \
  jinja2:jinja2 prometheus_client:prometheus-client yaml:pyyaml llguidance:llguidance \
  safetensors:safetensors tokenizers:tokenizers tqdm:tqdm; do
  python -c "import ${pair%%:*}" 2>/dev/null ||
    python -m pip install -q --no-index --find-links wheels --no-deps "${pair#*:}" >>"$OUT/install.txt" 2>&1
done
python -c "import llmcore, ops, msgspec, gguf; print('imports ok')" >>"$OUT/install.txt" 2>&1

timeout 200 python -m pytest -q -p no:cacheprovider tests/ops/test_cuda_ops.py \
  "tests/llmcore/test_decode_graphs.py::test_cuda_graphs_replay_the_eager_steps" \
  >"$OUT/tests.txt" 2>&1
echo "tests rc=$?" >>"$OUT/status.txt"
timeout 120 python tests/bench/bench_gpu.py --attention-only >"$OUT/attention.txt" 2>&1
echo "attention rc=$?" >>"$OUT/status.txt"
for shape in 135m 1b; do
  timeout 150 python tests/bench/bench_gpu.py --shape $shape >"$OUT/bench_$shape.txt" 2>&1
  echo "bench $shape rc=$?" >>"$OUT/status.txt"
done
cat "$OUT/status.txt"
tail -n 5 "$OUT/tests.txt"
cat "$OUT/attention.txt"
