#!/usr/bin/env bash
# The registry gate on a context-biased dataset (ingest.context_bias=0.95) and on the default unbiased one, the same
# budget each: `pipeline run --only ingest,train,audit` of the lane classifier; prints each run's gate line.
cd "$(dirname "$0")/.."
COMMON="ingest.num_frames=480 ingest.frames_per_sequence=4 ingest.render_hw=[180,320] ingest.frame_hw=[72,128] ingest.road_hw=[64,64] train.epochs=20 train.batch_size=16 train.lr=0.002 train.width=0.25 run.tasks=[lane_classifier] audit.counterfactual.sequences=60"
for bias in 0.95 0.0; do
  W=/tmp/gate_$bias; rm -rf $W
  /usr/bin/time -f "%e s" .venv/bin/pipeline run --only ingest,train,audit paths.work_dir=$W ingest.context_bias=$bias $COMMON > /tmp/gate_$bias.log 2>&1
  echo "bias $bias exit $?"; grep -E "^gate: " /tmp/gate_$bias.log; tail -1 /tmp/gate_$bias.log
done
