#!/usr/bin/env bash
# The device checks of a session with a lent GPU: real-scale speed and memory figures.
# Usage (on the GPU machine, from the repo root): bash scripts/gpu_checks.sh OUT_DIR [WHEEL_DIR]
# WHEEL_DIR holds pure-Python wheels of maft's dependencies when the machine lacks them
# (torch and torchvision must already be installed there).
set -uo pipefail
out=${1:?usage: gpu_checks.sh OUT_DIR [WHEEL_DIR]}
wheels=${2:-}
mkdir -p "$out"
py=${PYTHON:-python3}
{
  $py -c "import sys, torch; print(sys.version); print('torch', torch.__version__, torch.cuda.get_device_name(0))"
  nvidia-smi --query-gpu=name,memory.total --format=csv
} > "$out/machine.txt" 2>&1
if [ -n "$wheels" ]; then
  site="$out/../site"
  $py -m pip install -q --no-index --find-links "$wheels" --target "$site" --no-deps "$wheels"/*.whl \
    > "$out/pip.txt" 2>&1 || true
  export PYTHONPATH="$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
run() { local name=$1; shift; echo "== $name: $*"; timeout 240 "$@" > "$out/$name.log" 2>&1; echo "exit $?"; tail -n 12 "$out/$name.log"; }
run ip_clip $py scripts/bench_ip_clip.py --preset real --device cuda --repeats 5 --out "$out/bench_ip_clip_real_cuda.json"
run maft_step $py scripts/bench_maft_step.py --preset real --device cuda --repeats 5 --out "$out/bench_maft_step_real_cuda.json"
run proposals $py scripts/bench_proposals.py --device cuda --iters 5 --warmup 2 --out "$out/bench_proposals_cuda.json"
run proposals_amp $py scripts/bench_proposals.py --device cuda --iters 5 --warmup 2 --amp --out "$out/bench_proposals_cuda_bf16.json"
