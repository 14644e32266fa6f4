#!/usr/bin/env bash
# Issue 21's GPU checks as one prepared run on a lent device (bare, offline:
# Python 3.12 with torch, CuPy, transformers, pytest). Prepare the wheels it lacks
# here, then run this there, carrying them:
#
#   pip download --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d wheels \
#       msgspec gguf anyio h11 sentencepiece jinja2 prometheus-client pyyaml llguidance \
#       safetensors tokenizers
#   device run: bash tests/bench/gpu_session.sh first     (carry: wheels)
#   device run: bash tests/bench/gpu_session.sh second    (the same machine, warm)
#
# A device command may run 10 minutes, so the parts come in two calls. Each part
# has its own time limit and writes to $OUT (the device tool brings it back); a part
# that fails does not stop the next.
#   first:  the CUDA tests (kernels against torch, real CUDA graph replays), the
#           attention benchmark with the decode planner's sweep, the whole GPU
#           benchmark at the 135M shape, async scheduling and overlapped steps
#           each switched off beside it, top_p sampling sorted against windows
#           (about 9.5 minutes at most);
#   second: the GPU benchmark at the 1B shape, and the HTTP server (streaming
#           completions at 1, 64 and 256 concurrent) on a 135M-shaped random model,
#           to set beside the offline figure of the first call; then the same at
#           256 with four API server processes (--api-server-count 4).
# With 15 minutes of device time (start-up included), only the first call may fit:
# it holds the figures that matter most.
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

part() {  # name, limit in seconds, command...
  local name=$1 limit=$2
  shift 2
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  echo "$name rc=$?" >>"$OUT/status.txt"
}
case "${1:-first}" in
first)
  part tests 200 python -m pytest -q -p no:cacheprovider tests/ops/test_cuda_ops.py \
    "tests/llmcore/test_decode_graphs.py::test_cuda_graphs_replay_the_eager_steps" \
    "tests/llmcore/test_decode_graphs.py::test_cuda_async_scheduling_gives_the_tokens_of_steps_one_at_a_time" \
    "tests/llmcore/test_decode_graphs.py::test_cuda_a_replayed_step_launches_without_waiting_for_the_gpu" \
    "tests/llmcore/engine/test_sampler.py::test_cuda_sampling_launches_without_waiting_for_the_gpu"
  part attention 100 python tests/bench/bench_gpu.py --attention-only
  part bench_135m 250 python tests/bench/bench_gpu.py --shape 135m
  ;;
second)
  part bench_1b 180 python tests/bench/bench_gpu.py --shape 1b
  python -c "import sys, torch; sys.path.insert(0, 'tests/bench'); import bench_gpu; \
from pathlib import Path; p = Path('/tmp/llmcore-135m'); p.mkdir(exist_ok=True); \
bench_gpu.build_model('135m', p, torch.bfloat16)" >"$OUT/build_135m.txt" 2>&1
  part serving 280 python tests/bench/bench_serving.py --side-by-side --model /tmp/llmcore-135m \
    --llmcore-variants "--device cuda --kv-cache-memory 8GiB" --levels 1,64,256 --no-ceilings \
    --rounds 1
  # four API server processes in front of the one core, at 256 streams
  part serving_api4 100 python tests/bench/bench_serving.py --side-by-side \
    --model /tmp/llmcore-135m --levels 256 --no-ceilings --rounds 1 --llmcore-variants \
    "--device cuda --kv-cache-memory 8GiB --api-server-count 4 --port 8123"
  ;;
esac
cat "$OUT/status.txt"
tail -n 5 "$OUT"/tests.txt 2>/dev/null
cat "$OUT"/attention.txt "$OUT"/serving.txt "$OUT"/serving_api4.txt 2>/dev/null
