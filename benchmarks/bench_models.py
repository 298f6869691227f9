"""What each model reaches on the synthetic default data, and in how long on this machine.

    .venv/bin/python benchmarks/bench_models.py [--profile full] [--detector-epochs N] [KEY=VALUE ...]

Ingests once with the profile (default ``conf/full.yaml``), then trains and tests each task through the real
stages (TorchDistributor, MLflow) and prints one line per task: test metrics and wall time. Targets from the
issue: lane classifier >= 95% test accuracy (context_bias=0); traffic-light classifier >= 98%; detector recall
>= 0.9 at precision >= 0.9 at every distance (far too: frames stored at 288x512).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402
from pipeline.session import build_session  # noqa: E402
from pipeline.stages import get_stage, is_done, run_stage  # noqa: E402
from pipeline.tasks import TASKS, get_task  # noqa: E402
from pipeline.tracking import Tracker  # noqa: E402

# The test metrics printed per task, in table order (a task not named here prints its key metrics).
SHOWN = {"lane_classifier": ("test_accuracy", "test_f1_macro"),
         "tl_classifier": ("test_accuracy", "test_f1_macro"),
         "tl_detector": ("test_recall_at_p90_near", "test_recall_at_p90_medium", "test_recall_at_p90_far",
                         "test_ap_near", "test_ap_medium", "test_ap_far", "test_precision", "test_recall")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="full")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--detector-epochs", type=int, default=0,
                        help="epochs of tl_detector (0: the profile's, train.per_task.tl_detector)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    tasks = [get_task(name) for name in args.tasks.split(",")]  # an unknown name fails now, not after the ingest
    base = load_config(args.profile, overrides=args.overrides)
    spark = build_session(base)
    tracker = Tracker(base)
    rows = []
    with tracker.pipeline_run("bench_models"):
        ingest = get_stage("ingest")
        tic = time.perf_counter()
        if not is_done(base, ingest):
            run_stage(ingest, spark, base, tracker)
        print(f"ingest: {time.perf_counter() - tic:.0f} s", flush=True)
        for task in tasks:
            extra = [f"train.epochs={args.detector_epochs}"] if task.detector and args.detector_epochs else []
            conf = load_config(args.profile, overrides=[*extra, *args.overrides, f"train.task={task.name}"])
            tic = time.perf_counter()
            results = run_stage(get_stage("train"), spark, conf, tracker)
            wall = time.perf_counter() - tic
            keys = SHOWN.get(task.name) or tuple(f"test_{m}" for m in task.metrics if m != "loss")
            shown = " ".join(f"{k}={results[k]:.4f}" for k in keys if k in results)
            rows.append(f"| {task.name} | {conf.train.epochs} | {wall:.0f} s | {shown} | {results['run_id'][:8]} |")
            print(rows[-1], flush=True)
    print("| task | epochs | train + test wall time | test metrics | MLflow run |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
