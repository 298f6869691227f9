#!/usr/bin/env python
"""Ingest, augment and the training loader on both pin sets, in one run: is the current set (Spark 4.3,
pyarrow 25, NumPy 2, OpenCV 5) slower than the petastorm set (Spark 3.5, pyarrow 14, NumPy 1.26, OpenCV 4)?

    .venv/bin/python benchmarks/bench_stacks.py [--frames 400] [--rounds 3] [--batches 60] [--repeats 1]
    .venv/bin/python benchmarks/bench_stacks.py --loader-only [--rounds 4] [--batches 600] [--repeats 5]

Needs both venvs (``make interop`` makes them). Each round runs one child process per set, with that set's own
Python, the order alternating between rounds (petastorm then current, current then petastorm, ...) so that the
VM's drift hits both alike. A child builds its SparkSession (``local[2]``), warms up untimed (a 24-frame ingest:
JVM start, first Python workers, MLflow store), then times, each on a fresh work dir:

* ``ingest``: the whole ingest stage (``run_stage`` with a real Tracker) of ``--frames`` synthetic frames;
* ``augment``: the whole augment stage on that dataset (``augment.copies=2``, policy ``basic``);
* ``loader``: ``pipeline.train.loader.batches`` on that dataset's train split, lane classifier, 2 decode
  workers: ``--batches`` batches of 32 after 3 untimed ones (samples/s).

Each child times the loader ``--repeats`` times in a row, each a fresh pass, and reports their median.

``--loader-only``: the loaders alone, on one dataset. The petastorm set ingests and augments it once, untimed;
then every round runs each set's loader on those same files (no Spark in the timed children), so that only the
reading libraries (pyarrow, NumPy, OpenCV) differ, not the Parquet files each set's Spark wrote. Each child also
times the loader's parts alone, on one thread (``parts``: read, decode, collate, ms per pass over the split).

Printed: each round's values, the median per set, and current/petastorm (time ratio for the stages, throughput
ratio for the loader) as the median of the per-round ratios with their range. The speed probe
(``bench_train.probe``, run in this driver) is printed before and after every child.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STACKS = {"petastorm": REPO / ".venv", "current": REPO / ".venv-current"}
MEASURES = ("ingest", "augment", "loader")  # seconds, seconds, samples/s


def child(args) -> dict:
    sys.path.insert(0, str(HERE))
    import common

    from pipeline.session import build_session
    from pipeline.stages import get_stage, run_stage
    from pipeline.tracking import Tracker
    from pipeline.train import loader
    from pipeline.train.spec import make_spec

    work = Path(args.child_work)
    small = ["ingest.render_hw=[180,320]"]

    def conf_for(name: str, frames: int):
        return common.make_conf(work / name, f"ingest.num_frames={frames}", "augment.copies=2",
                                "augment.policy=basic", "train.task=lane_classifier", "train.batch_size=32",
                                *small, progress=False)

    conf = conf_for("timed", args.frames)
    out, spark = {}, None
    if not args.child_loader_only:
        warm = conf_for("warm", 24)
        spark = build_session(warm)
        run_stage(get_stage("ingest"), spark, warm, Tracker(warm))
        for stage in ("ingest", "augment"):
            tracker = Tracker(conf)
            tic = time.perf_counter()
            run_stage(get_stage(stage), spark, conf, tracker)
            out[stage] = time.perf_counter() - tic
        if args.child_prepare:
            spark.stop()
            return out
    from dataclasses import replace

    train = replace(make_spec(conf).loader("train"), workers=2)
    rates = []
    for _ in range(args.repeats):
        it = loader.batches(train, args.batches + 3, epoch=0)
        for _ in range(3):
            next(it)
        tic, seen = time.perf_counter(), 0
        for x, y in it:
            seen += len(y)
            float(x[0, 0, 0, 0])
        rates.append(seen / (time.perf_counter() - tic))
    out["loader"], out["loader_repeats"] = statistics.median(rates), rates
    if args.child_loader_only:
        out.update(parts(train))
    import cv2
    import numpy
    import pyarrow
    import pyspark

    out["versions"] = (f"pyspark {pyspark.__version__}, pyarrow {pyarrow.__version__}, numpy {numpy.__version__}, "
                       f"opencv {cv2.__version__}")
    if spark is not None:
        spark.stop()
    return out


def parts(spec, passes: int = 40) -> dict:
    """The loader's parts alone, one thread, over the whole split (ms per pass, median of ``passes``): reading the
    row groups (pyarrow, to Python values), decoding the encoded columns, collating batches into tensors."""
    from pipeline.data import store
    from pipeline.train import loader
    from schemas.datasets import SCHEMAS, field_decoders

    decoders = field_decoders(SCHEMAS[spec.kind], spec.fields)
    pieces = store.row_groups_of(spec.url)
    columns = [store.read_row_group(piece, spec.fields) for piece in pieces]
    rows = []
    for group in columns:
        group = {**group, **loader.decode_columns(group, decoders)}
        rows += [{name: values[i] for name, values in group.items()} for i in range(len(group["id"]))]

    def median_ms(work) -> float:
        times = []
        for _ in range(passes):
            tic = time.perf_counter()
            work()
            times.append(time.perf_counter() - tic)
        return statistics.median(times) * 1e3

    return {"read_ms": median_ms(lambda: [store.read_row_group(piece, spec.fields) for piece in pieces]),
            "decode_ms": median_ms(lambda: [loader.decode_columns(group, decoders) for group in columns]),
            "collate_ms": median_ms(lambda: [loader.collate(spec.kind, rows[i:i + spec.batch_size], spec.aux)
                                             for i in range(0, len(rows), spec.batch_size)])}


def probe() -> float:
    sys.path.insert(0, str(HERE))
    from bench_train import probe as one

    return min(one() for _ in range(3))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=400, help="synthetic frames ingested per timed run")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs both sets, order alternating")
    p.add_argument("--batches", type=int, default=60, help="loader batches timed per pass")
    p.add_argument("--repeats", type=int, default=1, help="loader passes per child (their median is its figure)")
    p.add_argument("--loader-only", action="store_true",
                   help="time only the loaders, both sets on one dataset the petastorm set writes once")
    p.add_argument("--child-loader-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-prepare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "bench_stacks"))
    p.add_argument("--child-work", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_out:
        Path(args.child_out).write_text(json.dumps(child(args)))
        return 0
    for stack, venv in STACKS.items():
        if not (venv / ".installed").exists():
            p.error(f"no {stack} venv at {venv}: `make interop` makes both")
    print(f"# bench_stacks: {' '.join(sys.argv)}  ({time.strftime('%Y-%m-%d %H:%M:%S')})", flush=True)
    def run_child(stack: str, work: Path, *flags: str) -> dict:
        result = work / f"result-{stack}.json"
        done = subprocess.run([str(STACKS[stack] / "bin" / "python"), __file__, f"--frames={args.frames}",
                               f"--batches={args.batches}", f"--repeats={args.repeats}", f"--child-work={work}",
                               f"--child-out={result}", *flags], capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            raise SystemExit(1)
        return json.loads(result.read_text())

    shared = Path(args.work_dir) / "shared"
    if args.loader_only:
        subprocess.run(["rm", "-rf", str(shared)], check=True)
        run_child("petastorm", shared, "--child-prepare")
    measures = ("loader", "read_ms", "decode_ms", "collate_ms") if args.loader_only else MEASURES
    got: dict = {stack: [] for stack in STACKS}
    for r in range(args.rounds):
        order = list(STACKS) if r % 2 == 0 else list(reversed(STACKS))
        for stack in order:
            work = shared if args.loader_only else Path(args.work_dir) / f"{stack}-{r}"
            if not args.loader_only:
                subprocess.run(["rm", "-rf", str(work)], check=True)
            before = probe()
            row = run_child(stack, work, *(["--child-loader-only"] if args.loader_only else []))
            after = probe()
            got[stack].append(row)
            stages = "" if args.loader_only else f"ingest {row['ingest']:6.1f} s  augment {row['augment']:6.1f} s  "
            passes = ", ".join(f"{x:.0f}" for x in row["loader_repeats"])
            if args.loader_only:
                passes += f"; parts: read {row['read_ms']:.1f}, decode {row['decode_ms']:.1f}, " \
                          f"collate {row['collate_ms']:.1f} ms"
            print(f"round {r} {stack:9s} {stages}loader {row['loader']:6.0f} samples/s ({passes})   "
                  f"probe {before * 1e3:.0f} -> {after * 1e3:.0f} ms   ({row['versions']})", flush=True)
    print()
    print("| measure | petastorm set (median) | current set (median) | current / petastorm: median (range) |")
    print("| --- | ---: | ---: | --- |")
    for m in measures:
        a, b = [r[m] for r in got["petastorm"]], [r[m] for r in got["current"]]
        ratios = [y / x for x, y in zip(a, b)]
        unit = "samples/s" if m == "loader" else "ms per pass, one thread" if m.endswith("_ms") else "s"
        print(f"| {m} ({unit}) | {statistics.median(a):.1f} | {statistics.median(b):.1f} | "
              f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |")
    print("\nA time ratio below 1 (stages, parts) or a throughput ratio above 1 (loader): the current set is faster.")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
