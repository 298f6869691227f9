#!/usr/bin/env bash
# GPU check (issue 5): train the detector and the lane classifier for a fixed number of steps on the GPU and
# print samples/s and the fraction of step time spent waiting for data.
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
for task in tl_detector lane_classifier; do
  echo "== $task"
  "$PY" benchmarks/bench_train.py --task "$task" --device cuda --width 1.0 --batch-size 128 \
        --frames 2000 --steps "$STEPS" --repeats 2 --skip-processes --work-dir "$WORK"
done
