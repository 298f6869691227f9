#!/usr/bin/env bash
# GPU check: for the detector and the lane classifier, the loader alone (no model: the ceiling a GPU can be fed
# at, 1 decode worker and one per core but one), then a fixed number of training steps on the GPU from memory and
# from the loader on PNG and raw datasets: samples/s and the fraction of step time the GPU waited for data.
#   bash benchmarks/gpu_check.sh [STEPS]
# Needs the pinned environment (make install) and a CUDA build of torch; a machine with no network needs the
# wheels carried to it (see README). Figures go to stdout; paste them into benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-200}
PY=${PYTHON:-.venv/bin/python}
"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PY
WORK=$(mktemp -d)
WORKERS=$(( $(nproc) > 2 ? $(nproc) - 1 : 1 ))
for task in tl_detector lane_classifier; do
  echo "== $task: loader alone"
  "$PY" benchmarks/bench_loader.py --task "$task" --batch-size 128 --frames 2000 --batches 30 --repeats 2 \
        --only ours --workers "1,$WORKERS" --work-dir "$WORK/loader"
  echo "== $task: training on the GPU"
  "$PY" benchmarks/bench_train.py --task "$task" --device cuda --width 1.0 --batch-size 128 \
        --frames 2000 --steps "$STEPS" --repeats 2 --skip-processes --formats png,raw --work-dir "$WORK/train"
done
