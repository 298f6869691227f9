"""The training loader alone (no model): samples/s per core, against what a user of Petastorm would write.

    .venv/bin/python benchmarks/bench_loader.py [--task lane_classifier] [--frames 2000] [--batches 60] [--repeats 5]

The same ``--frames`` synthetic frames are ingested twice (once, cached under ``--work-dir``): images stored as PNG
at zlib level 0 (``ingest.image_format=png``, the ingest default until this benchmark) and as raw arrays
(``ingest.image_format=raw``). On each dataset's train split, every variant produces ``--batches`` batches of
``--batch-size`` normalised float NCHW images with their labels, as training consumes them:

* ``ours``: ``pipeline.train.loader.batches`` (pyarrow reading whole row groups in order, in one thread;
  decode by ``--workers`` threads, a seeded shuffle buffer, collate, prefetched in a thread), 1 and 2 workers;
* ``petastorm make_reader``: Petastorm's documented path, ``make_reader`` (per-row decode with the dataset's own
  codecs in its thread pool of ``workers_count`` workers) + ``petastorm.pytorch.DataLoader``, then the same
  normalisation; 1 and 2 workers;
* ``petastorm make_batch_reader``: ``make_batch_reader`` with a ``TransformSpec`` that decodes the image column
  (pandas) + ``petastorm.pytorch.BatchedDataLoader``, then the same normalisation; 1 and 2 workers.

Petastorm's loaders run without a shuffling queue (less work than ours does). Variants alternate within each
repeat; medians of ``--repeats`` are printed with each repeat's value, the CPU the process used (cores), and the
CPU others used meanwhile (the noise). This VM changes speed by itself (benchmarks/RESULTS.md): a speed probe
(``bench_train.probe``) runs before and after every measurement, and a measurement during which it moved by more
than ``--probe-tolerance`` is marked and left out of the medians. Ratios are to ``petastorm make_reader`` with the same worker count on the
PNG dataset, measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _measure  # noqa: E402
import common  # noqa: E402

from pipeline.tasks import TASKS  # noqa: E402
from pipeline.models.normalize import to_tensor  # noqa: E402
from pipeline.train import loader  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="lane_classifier", choices=list(TASKS))
    p.add_argument("--frames", type=int, default=2000, help="synthetic frames to ingest (once per image format)")
    p.add_argument("--batches", type=int, default=60, help="batches per measurement (after 3 not timed)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", default="1,2", help="worker counts to measure")
    p.add_argument("--formats", default="png,raw")
    p.add_argument("--only", default="", help="comma-separated variant prefixes (ours, make_reader, batch_reader)")
    p.add_argument("--probe-tolerance", type=float, default=0.05)
    p.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "bench_loader"))
    return p


def ensure_data(args, image_format: str):
    """The dataset ingested with ``image_format`` (once, :func:`common.ensure_dataset`), as a training spec."""
    from pipeline.session import build_session
    from pipeline.train.spec import make_spec

    conf = common.make_conf(args.work_dir, f"ingest.num_frames={args.frames}", f"ingest.name=bench-{image_format}",
                            f"ingest.image_format={image_format}", f"train.task={args.task}",
                            f"train.data=bench-{image_format}", f"train.batch_size={args.batch_size}")
    common.ensure_dataset(lambda: build_session(conf), conf, say=f"ingesting {args.frames} synthetic frames as "
                          f"{image_format} into {args.work_dir} (once) ...")
    return make_spec(conf)


def _ours(spec, workers: int, n: int):
    from dataclasses import replace

    train = replace(spec.loader("train"), workers=workers)
    for x, y in loader.batches(train, n, epoch=0):
        yield x, y


def _make_reader(spec, workers: int, n: int):
    from petastorm import make_reader
    from petastorm.pytorch import DataLoader

    with DataLoader(make_reader(spec.split_url("train"), schema_fields=["image", "label"], workers_count=workers,
                                num_epochs=None), batch_size=spec.train.batch_size) as batches:
        for i, batch in enumerate(batches):
            if i == n:
                return
            yield to_tensor(batch["image"].numpy()), batch["label"].long()


def _batch_reader(spec, workers: int, n: int):
    from petastorm import TransformSpec, make_batch_reader
    from petastorm.pytorch import BatchedDataLoader

    from schemas.datasets import decode_image

    h, w = spec.in_hw

    def decode(frame):
        frame["image"] = [decode_image(v) for v in frame["image"]]
        return frame

    transform = TransformSpec(decode, edit_fields=[("image", np.uint8, (h, w, 3), False)],
                              selected_fields=["image", "label"])
    reader = make_batch_reader(spec.split_url("train"), schema_fields=["image", "label"], workers_count=workers,
                               num_epochs=None, transform_spec=transform)
    with BatchedDataLoader(reader, batch_size=spec.train.batch_size) as batches:
        for i, batch in enumerate(batches):
            if i == n:
                return
            yield to_tensor(batch["image"].numpy()), batch["label"].long()


VARIANTS = {"ours": _ours, "make_reader": _make_reader, "batch_reader": _batch_reader}


def _probe() -> float:
    from bench_train import probe

    return min(probe() for _ in range(3))


def measure(make, spec, workers: int, n: int) -> tuple[float, float, float]:
    """(samples/s, cores this process used, cores others used) over ``n`` batches after 3 untimed ones."""
    meter = _measure.CpuMeter() if _measure.psutil else None
    it = make(spec, workers, n + 3)
    for _ in range(3):
        next(it)
    before = meter.snapshot() if meter else {}
    tic, seen = time.perf_counter(), 0
    for x, y in it:
        seen += len(y)
        float(x[0, 0, 0, 0])  # touch the batch
    wall = time.perf_counter() - tic
    cpu = _measure.CpuMeter.delta(before, meter.snapshot()) if meter else {}
    return seen / wall, (cpu.get("driver", float("nan")) / wall), _measure.others_cores(wall, cpu)


def main(args) -> int:
    _measure.header("bench_loader", f"torch threads={__import__('torch').get_num_threads()}")
    formats = args.formats.split(",")
    workers = [int(w) for w in args.workers.split(",")]
    specs = {fmt: ensure_data(args, fmt) for fmt in formats}
    only = [o for o in args.only.split(",") if o]
    names = [v for v in VARIANTS if not only or any(v.startswith(o) for o in only)]
    samples: dict = {}
    left_out: dict = {}
    for r in range(args.repeats):
        for fmt in formats:
            for name in names:
                for k in workers:
                    before = _probe()
                    sps, cores, others = measure(VARIANTS[name], specs[fmt], k, args.batches)
                    drift = max(before, after := _probe()) / min(before, after) - 1
                    steady = drift <= args.probe_tolerance and others <= 0.3
                    samples.setdefault((name, fmt, k), [])
                    left_out.setdefault((name, fmt, k), 0)
                    if steady:
                        samples[(name, fmt, k)].append((sps, cores, others))
                    else:
                        left_out[(name, fmt, k)] += 1
                    print(f"  repeat {r + 1}: {name:12s} {fmt} {k} worker(s): {sps:7.0f} samples/s, "
                          f"{cores:.2f} cores, others {others:.2f} cores, probe {before * 1e3:.0f}/{after * 1e3:.0f} ms"
                          + ("" if steady else "  MACHINE SPEED CHANGED: left out"), flush=True)
    print(f"\n{args.task}, {specs[formats[0]].in_hw[0]}x{specs[formats[0]].in_hw[1]} images, batch "
          f"{args.batch_size}, {args.batches} batches per measurement, medians of {args.repeats}\n")
    print("| loader | stored as | workers | samples/s (median) | per repeat (steady) | left out | cores used "
          "| samples/s per core | vs make_reader png, same workers |")
    print("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for (name, fmt, k), got in samples.items():
        if not got:
            print(f"| {name} | {fmt} | {k} | n/a | | {left_out[(name, fmt, k)]} | | | |")
            continue
        sps = statistics.median(s for s, _, _ in got)
        cores = statistics.median(c for _, c, _ in got)
        base = samples.get(("make_reader", "png", k)) or None
        ratio = f"{sps / statistics.median(s for s, _, _ in base):.2f}x" if base else "n/a"
        print(f"| {name} | {fmt} | {k} | {sps:.0f} | {', '.join(f'{s:.0f}' for s, _, _ in got)} "
              f"| {left_out[(name, fmt, k)]} | {cores:.2f} "
              f"| {sps / cores:.0f} | {ratio} |")
    noisy = max((o for got in samples.values() for _, _, o in got), default=0.0)
    print(f"\nmost CPU others used during one measurement: {noisy:.2f} cores"
          + ("  (NOISY: re-run on a quiet machine)" if noisy > 0.3 else ""))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    sys.exit(main(get_args_parser().parse_args()))
