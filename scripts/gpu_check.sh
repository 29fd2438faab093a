#!/usr/bin/env bash
# The CUDA checks in one prepared run, for a session that is lent a GPU machine (its `device` tool):
#   tests/integration/test_cuda.py (16-mixed with GradScaler + the inner loss scale; NCCL DDP when 2 GPUs) and
#   benchmarks/maml.py on the GPU (loop vs vmap, memory per inner step; learn2learn rows if importable).
#
# Here, once:   mkdir -p .gpu && cp -r ../shared/data/omniglot .gpu/ && echo /.gpu/ >> .git/info/exclude
# On the GPU:   run(command="bash scripts/gpu_check.sh", carry=[".gpu"], timeout_s=540)
# The machine's python3 already has torch, pytorch-lightning, torchmetrics and pytest; the package runs
# from the working tree (PYTHONPATH), nothing is installed. Logs and maml.json land in $OUT.
# Locally (no GPU: the CUDA tests skip, the benchmark runs on CPU):
#   BENCH_ARGS="--rounds 1 --steps 1 --skip-memory" OUT=/tmp/gpu_check bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=offline
export LIGHTNING_META_OMNIGLOT="${LIGHTNING_META_OMNIGLOT:-$PWD/.gpu/omniglot}"
export LIGHTNING_META_CACHE="${LIGHTNING_META_CACHE:-/tmp/lightning_meta_cache}" LIGHTNING_META_RESULTS="$out"
python="${PYTHON:-python3}"

(nvidia-smi -L || echo "no nvidia-smi") 2>&1 | tee "$out/device.txt"
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    2>&1 | tee -a "$out/device.txt"
timeout 240 "$python" -m pytest -q -rs -p no:cacheprovider tests/integration/test_cuda.py 2>&1 | tee "$out/test_cuda.log"
status=$?
# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
timeout 270 "$python" benchmarks/maml.py ${BENCH_ARGS:-} 2>&1 | tee "$out/maml_benchmark.log"
exit "$status"
