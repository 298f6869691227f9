"""The talk's failure, reproduced and audited: a lane classifier that learned the road's context, not the lanes.

    .venv/bin/python benchmarks/context_failure.py [--frames 1200] [--bias 0.95] [--work-dir DIR] [KEY=VALUE ...]

Ingests the synthetic scenes twice, with ``ingest.context_bias=<bias>`` (a sequence's time of day and scenery
follow its lane class with that probability) and with ``context_bias=0`` (independent); trains the lane
classifier on the biased data as it is, and again on its augmented copy with the ``context`` policy (lanes pasted
onto other frames' backgrounds, occluders, cutouts); then, for each net, tests it on both test splits and runs the
audit stage on the unbiased one. Every step is a real stage run in one MLflow experiment (``<work-dir>/mlflow.db``).
Prints one table: accuracy on biased and unbiased test data, the occlusion and attribution figures, the verdict.
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
from pipeline.stages import get_stage, run_stage  # noqa: E402
from pipeline.tracking import Tracker  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--bias", type=float, default=0.95)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--work-dir", default="/tmp/context_failure")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    common = [f"paths.work_dir={args.work_dir}", f"ingest.num_frames={args.frames}", "ingest.frames_per_sequence=4",
              f"train.epochs={args.epochs}", "train.task=lane_classifier", "mlflow.experiment=context-failure",
              *args.overrides]

    def conf(*extra):
        return load_config("local", overrides=[*common, *extra])

    spark = build_session(conf())
    tic = time.perf_counter()

    def stage(name, c):
        print(f"== {name} ({c.train.data if name != 'ingest' else c.ingest.name})", flush=True)
        return run_stage(get_stage(name), spark, c, Tracker(c))

    stage("ingest", conf(f"ingest.context_bias={args.bias}", "ingest.name=biased"))
    stage("ingest", conf("ingest.context_bias=0", "ingest.name=fair"))
    stage("augment", conf("augment.source=biased", "augment.policy=context", "augment.name=biased-context"))
    rows = []
    for name, data in (("trained on biased data", "biased"), ("+ context augmentation", "biased-context")):
        trained = stage("train", conf(f"train.data={data}"))
        uri = trained["model_uri"]
        row = {"net": name}
        for test in ("biased", "fair"):
            evaluated = stage("evaluate", conf(f"train.data={test}", f"evaluate.model_uri={uri}"))
            row[f"test on {test}"] = evaluated["test_accuracy"]
        audited = stage("audit", conf(f"train.data={data}", "audit.data=fair", f"audit.model_uri={uri}"))
        row.update(audited)
        rows.append(row)
    print(f"\ncontext_bias={args.bias}, {args.frames} frames per dataset, {args.epochs} epochs, "
          f"{time.perf_counter() - tic:.0f} s\n")
    print("| net | test acc., biased | test acc., unbiased | acc. object filled / context filled (unbiased) | "
          "attribution on lanes / lane area | flagged | verdict |")
    print("| --- | ---: | ---: | ---: | ---: | --- | --- |")
    for r in rows:
        print(f"| {r['net']} | {r['test on biased']:.3f} | {r['test on fair']:.3f} | "
              f"{r.get('context.occlusion.object_filled_accuracy', float('nan')):.3f} / "
              f"{r.get('context.occlusion.context_filled_accuracy', float('nan')):.3f} | "
              f"{r.get('context.attribution.object_share', float('nan')):.3f} / "
              f"{r.get('context.attribution.area_share', float('nan')):.3f} | "
              f"{'yes' if r['context.relies_on_context'] else 'no'} | {r['context.verdict']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
