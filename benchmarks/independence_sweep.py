"""Where a leaky validation split bites: the val-vs-independent-test gap over frames per sequence.

    .venv/bin/python benchmarks/independence_sweep.py [--frames 640] [--fps 1,8,32] [--work-dir DIR]

For each frames-per-sequence setting (the same number of frames, so fewer, longer sequences as it grows) the
synthetic scenes are ingested split **by frame** (``ingest.split_by=frame``: frames of one sequence land in train
and in val, the mistake), and two lane classifiers are trained on it: ``short`` (2 epochs) and ``long`` (8
epochs, more room to memorise). Each is scored on the leaky val split and on the test split of an independent
ingest (another seed, split by sequence): accuracy with 95% intervals over sequences, and ``gap = val - test``
with its interval (each split's sequences resampled on their own). The talk's consequence: does the leaky val
pick the other net than the independent test does? Every step is a real stage run in one MLflow experiment.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repo root on sys.path too)

from pipeline.session import build_session  # noqa: E402
from pipeline.stages import get_stage, run_stage  # noqa: E402
from pipeline.tracking import Tracker  # noqa: E402

NETS = (("short", 2), ("long", 8))


def _fmt(t) -> str:
    return f"{t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}]"


def _signed(t) -> str:
    return f"{t[0]:+.2f} [{t[1]:+.2f}, {t[2]:+.2f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=640)
    parser.add_argument("--fps", type=lambda v: [int(i) for i in v.split(",")], default=[1, 8, 32])
    parser.add_argument("--test-frames", type=int, default=640)
    parser.add_argument("--work-dir", default="/tmp/independence_sweep")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    shared = ["train.task=lane_classifier", "mlflow.experiment=independence-sweep", *args.overrides]

    def conf(*extra):
        return common.make_conf(args.work_dir, *shared, *extra, master=None)

    from pipeline.analysis.intervals import bootstrap, gap, grouped_counts
    from pipeline.models.lookup import load_model
    from pipeline.train.loader import LoaderSpec, rows
    from pipeline.train.spec import make_spec

    spark = build_session(conf())
    tic = time.perf_counter()

    def stage(name, c):
        print(f"== {name} ({c.train.data if name != 'ingest' else c.ingest.name})", flush=True)
        return run_stage(get_stage(name), spark, c, Tracker(c))

    stage("ingest", conf("ingest.name=independent", "ingest.seed=1", f"ingest.num_frames={args.test_frames}",
                         "ingest.frames_per_sequence=4"))
    test_spec = make_spec(conf("train.data=independent"))

    def counts(model, spec, split):
        return grouped_counts(model, rows(LoaderSpec(spec.split_url(split), spec.kind, 64, extra=("group",))))

    table = []
    for fps in args.fps:
        name = f"leaky-fps{fps}"
        stage("ingest", conf(f"ingest.name={name}", f"ingest.num_frames={args.frames}",
                             f"ingest.frames_per_sequence={fps}", "ingest.split_by=frame"))
        spec = make_spec(conf(f"train.data={name}"))
        for net, epochs in NETS:
            trained = stage("train", conf(f"train.data={name}", f"train.epochs={epochs}"))
            model = load_model(trained["model_uri"], conf()).eval()
            val, test = counts(model, spec, "val"), counts(model, test_spec, "test")
            table.append((fps, net, bootstrap(*val), bootstrap(*test), gap(val, test), len(val[0])))
    print(f"\n{args.frames} frames per leaky ingest (split by frame), independent test of {args.test_frames} frames "
          f"(seed 1, split by sequence), {time.perf_counter() - tic:.0f} s\n")
    print("| frames per sequence | net | val sequences | leaky val accuracy | independent test accuracy | "
          "val - test | flagged |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for fps, net, val, test, g, seqs in table:
        print(f"| {fps} | {net} | {seqs} | {_fmt(val)} | {_fmt(test)} | {_signed(g)} | "
              f"{'yes' if g[1] > 0 or g[2] < 0 else 'no'} |")
    print("\nWinner by each split (the higher point value; see the intervals above for how sure):")
    for fps in args.fps:
        rows_ = {net: (val, test) for f, net, val, test, _, _ in table if f == fps}
        by_val = max(rows_, key=lambda n: rows_[n][0][0])
        by_test = max(rows_, key=lambda n: rows_[n][1][0])
        print(f"- {fps} frames per sequence: leaky val picks {by_val}, the independent test picks {by_test}"
              f"{' (different winners)' if by_val != by_test else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
