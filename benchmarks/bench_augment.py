#!/usr/bin/env python
"""Offline augmentation throughput: the Spark augment stage on ``local[2]`` vs torchvision.transforms.v2 in a loop.

Unit: **augmented images per second** = (train rows of road_frames + tl_frames + tl_crops) x ``--copies``, i.e.
the augmented copies (copy >= 1) over all three kinds, divided by the wall time of the variant. Every variant
below is divided by that same number, whatever else it does. The Spark job does more than that: it also
decodes and re-encodes copy 0 (the original) of every train row and every val/test row (written untouched),
so the number of *rows written* is larger; it is printed for reference but never used as the numerator.

Variants, all in one run, interleaved per repeat so that machine noise hits every variant alike:

* ``torchvision v2 loop, 1 thread``  the baseline: one Python process, ``torch.set_num_threads(1)`` and
  ``cv2.setNumThreads(1)``. It reads the train split of each kind from the ingested Parquet files (pyarrow),
  decodes each row once with the datasets' own Petastorm codecs (PNG via OpenCV, as the Spark job does),
  applies a ``torchvision.transforms.v2`` pipeline comparable to the ``basic`` policy (same ops, probabilities
  and ranges; see :func:`tv_pipeline`) ``--copies`` times, with the lane mask (``tv_tensors.Mask``) and the
  traffic-light boxes (``tv_tensors.BoundingBoxes`` + ``SanitizeBoundingBoxes``) moving with the image, and
  encodes every output field with the same codecs (PNG image and mask, npy boxes).
* ``torchvision v2 loop, default threads``  the same with torch's and OpenCV's default thread counts.
* ``own ops loop (Policy.apply), 1 thread``  the same loop with the project's ops instead of torchvision:
  ``pipeline.augment.rows.augment_row`` (``Policy.apply``) plus the ``ops`` JSON, as the Spark task does.
* ``own ops loop, 2 processes (no Spark)``  that loop with the rows split over 2 plain processes (a started
  multiprocessing pool): what two cores give without Spark.
* ``spark core transform``  what the stage computes, without writing: for each kind and split, ``_plan``
  (ids collected to the driver, plan DataFrame, two joins) -> ``repartition(parts, "id")`` ->
  ``mapPartitions(_augment_partition)`` -> ``count()``. The loop mirrors ``pipeline.augment.stage.run``.
* ``spark stage``  the whole augment stage through ``run_stage(get_stage("augment"), ...)`` with a real
  ``Tracker``: the above plus the Petastorm writes, the read-back counts, op counts, sample rows, the
  ``_ingest.json``, the swap-in, MLflow logging (metrics, dataset fingerprints, two figures per kind).

One SparkSession (``--master``, default ``local[2]``) is built once; an untimed warm-up (one transform and one
stage run) pays the JVM start, JIT, Python-worker imports and MLflow store creation. Tracker construction is
outside the timed region. The machine is shared: before each timed measurement the script waits (``--wait-quiet``)
for other processes to go quiet, measures the CPU they use during it, and re-takes a measurement in which they used
more than ``--retake-above`` cores (at most ``--retakes`` times, keeping the least disturbed sample).

Where the time goes (``--no-profile`` skips it): per-step timing (parquet read / decode / augment / encode) of
the two loops by kind, a cProfile of ``_augment_partition`` in one process, a phase breakdown of one
instrumented stage run with its Spark job / task counts, a fixed-vs-per-copy model of the stage from runs with
``augment.copies=1`` and ``=4`` and ``augment.policy=none``, the latency of a trivial Spark job, a what-if
(one Spark job doing only the needed work: decode each train row once, augment, encode, count; not the
project's code), and CPU seconds per process (driver, JVM, Python workers, other processes = noise) for every
measurement.

Run:  .venv/bin/python benchmarks/bench_augment.py [--frames 400] [--repeats 3] [--work-dir DIR]
Tiny smoke test:  ... --frames 32 --render-hw 180,320 --repeats 1 --work-dir /tmp/bench_augment_tiny
Results (JSON) are also written to ``<work-dir>/results.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as _dt
import functools
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("MPLBACKEND", "Agg")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    import psutil  # noqa: E402
except ImportError:  # CPU accounting is optional
    psutil = None

CV2_DEFAULT_THREADS = cv2.getNumThreads()      # before anything calls setNumThreads
TORCH_DEFAULT_THREADS = torch.get_num_threads()
KINDS = ("road_frames", "tl_frames", "tl_crops")
POLICY = "basic"                                # the torchvision pipeline below mirrors this policy


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Offline augmentation throughput (augmented images/s): the real Spark augment stage "
                    "(policy 'basic') on local[2] vs torchvision.transforms.v2 doing comparable ops in a "
                    "single-process loop, in the same run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--frames", type=int, default=400, help="synthetic frames to ingest (once per work dir)")
    p.add_argument("--road-hw", default="128,128", help="ingest.road_hw (height,width)")
    p.add_argument("--render-hw", default="", help="ingest.render_hw (height,width); '' keeps the default "
                                                   "(720,1280); a smaller size only makes the ingest faster")
    p.add_argument("--copies", type=int, default=2, help="augment.copies")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of every variant (medians reported)")
    p.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "bench_augment"),
                   help="the ingested dataset is written here once and reused; MLflow store and outputs too")
    p.add_argument("--master", default="local[2]", help="spark.master")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each timed measurement, wait up to this long for the machine to be idle (other "
                        "processes using < 0.25 cores over 3 s); the machine is shared")
    p.add_argument("--retake-above", type=float, default=0.2, metavar="CORES",
                   help="re-take a timed measurement when other processes used more than this many cores during it")
    p.add_argument("--retakes", type=int, default=2,
                   help="at most this many re-takes per measurement; the least disturbed sample is kept")
    p.add_argument("--no-profile", action="store_true", help="skip the 'where the time goes' section")
    p.add_argument("--skip-stage", action="store_true", help="do not time the whole stage (transform only)")
    return p.parse_args(argv)


def _hw(text: str) -> list:
    h, w = (int(v) for v in text.split(","))
    return [h, w]


# ----------------------------------------------------------------------------------- CPU accounting

def _busy(ct) -> float:
    return sum(getattr(ct, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


class CpuMeter:
    """CPU seconds of the driver, the JVM, its Python workers and a process pool, and of the whole machine
    (-> ``others``, the noise). Python workers come and go, so a thread polls the JVM's descendants every
    0.1 s while a Spark variant runs and keeps each pid's last-seen CPU time."""

    def __init__(self):
        self.jvm_pid = None
        self.pool_pids: list = []
        self.active = False
        self._seen: dict = {}
        self._lock = None

    def start(self, jvm_pid: int) -> None:
        import threading

        self.jvm_pid = jvm_pid
        if psutil is None:
            return
        self._lock = threading.Lock()
        self._poll()
        threading.Thread(target=self._loop, daemon=True, name="cpu-meter").start()

    def _poll(self) -> None:
        try:
            kids = psutil.Process(self.jvm_pid).children(recursive=True)
        except psutil.Error:
            return
        seen = {}
        for child in kids:
            with contextlib.suppress(psutil.Error):
                ct = child.cpu_times()
                seen[(child.pid, child.create_time())] = ct.user + ct.system
        with self._lock:
            self._seen.update(seen)

    def _loop(self) -> None:
        while True:
            time.sleep(0.1)
            if self.active:
                self._poll()

    def snapshot(self) -> dict:
        if psutil is None:
            return {}
        t = psutil.Process().cpu_times()
        snap = {"driver": t.user + t.system, "jvm": 0.0, "workers": 0.0, "pool": 0.0,
                "machine": _busy(psutil.cpu_times())}
        for pid in self.pool_pids:
            with contextlib.suppress(psutil.Error):
                pt = psutil.Process(pid).cpu_times()
                snap["pool"] += pt.user + pt.system
        if self.jvm_pid and self._lock is not None:
            self._poll()
            with contextlib.suppress(psutil.Error):
                jt = psutil.Process(self.jvm_pid).cpu_times()
                snap["jvm"] = jt.user + jt.system
            with self._lock:
                snap["workers"] = sum(self._seen.values())
        return snap

    @staticmethod
    def delta(a: dict, b: dict) -> dict:
        if not a or not b:
            return {}
        d = {k: b[k] - a[k] for k in a}
        d["ours"] = d["driver"] + d["jvm"] + d["workers"] + d["pool"]
        d["others"] = max(0.0, d["machine"] - d["ours"])
        return d


METER = CpuMeter()


def wait_quiet(limit_s: float, threshold: float = 0.25, window: float = 3.0) -> float:
    """Wait (up to limit_s) until other processes use < ``threshold`` cores over ``window`` seconds."""
    if psutil is None or limit_s <= 0:
        return float("nan")
    deadline = time.monotonic() + limit_s
    while True:
        a = _busy(psutil.cpu_times())
        time.sleep(window)
        cores = (_busy(psutil.cpu_times()) - a) / window
        if cores < threshold or time.monotonic() > deadline:
            return cores
        print(f"  (machine busy: {cores:.2f} cores used by other processes; waiting)", flush=True)


def timed(fn, spark: bool = True):
    """(wall seconds, CPU deltas, result) of fn(); the JVM's descendants are polled only when ``spark``."""
    a = METER.snapshot()
    METER.active = spark
    t0 = time.perf_counter()
    try:
        out = fn()
    finally:
        wall = time.perf_counter() - t0
        METER.active = False
    return wall, CpuMeter.delta(a, METER.snapshot()), out


RETAKEN: list = []


def measure(run, args, label: str):
    """``run()`` -> (wall, cpu, ...) after waiting for a quiet machine; re-taken (up to ``args.retakes`` times)
    while other processes used more than ``args.retake_above`` cores during it; the least disturbed sample wins."""
    best, best_others = None, float("inf")
    for attempt in range(args.retakes + 1):
        wait_quiet(args.wait_quiet)
        out = run()
        wall, cpu = out[0], out[1]
        others = cpu["others"] / wall if cpu else 0.0
        if others < best_others:
            best, best_others = out, others
        if others <= args.retake_above:
            break
        if attempt < args.retakes:
            RETAKEN.append(label)
            print(f"  (re-taking '{label}': other processes used {others:.2f} cores during it)", flush=True)
    return best


def fmt_cpu(cpu: dict, wall: float) -> str:
    if not cpu:
        return "n/a"
    pool = f", pool {cpu['pool']:.1f}s" if cpu["pool"] > 0.05 else ""
    return (f"driver {cpu['driver']:.1f}s, JVM {cpu['jvm']:.1f}s, py-workers {cpu['workers']:.1f}s{pool}, "
            f"others {cpu['others']:.1f}s; util {cpu['ours'] / wall:.2f} cores")


def med(xs):
    return statistics.median(xs) if xs else float("nan")


# ------------------------------------------------------------------------------------ data + configs

def make_conf(work: Path, args, *extra):
    from pipeline.config import load_config

    overrides = [f"paths.work_dir={work}", f"spark.master={args.master}", f"ingest.num_frames={args.frames}",
                 f"ingest.road_hw={_hw(args.road_hw)}", f"augment.policy={POLICY}", f"augment.copies={args.copies}",
                 "spark.conf.spark.ui.showConsoleProgress=false"]   # no progress bars; no effect on timing
    if args.render_hw:
        overrides.append(f"ingest.render_hw={_hw(args.render_hw)}")
    return load_config("local", overrides=overrides + list(extra))


def ensure_ingested(spark, conf, work: Path, args) -> None:
    """Run the real ingest stage once per work dir; a manifest says what is there, so later runs reuse it."""
    from pipeline.stages import get_stage, run_stage
    from pipeline.tracking import Tracker

    manifest = work / "ingest_manifest.json"
    want = {"frames": args.frames, "road_hw": _hw(args.road_hw), "render_hw": args.render_hw or "default",
            "source": "synthetic", "seed": 0}
    if manifest.exists() and json.loads(manifest.read_text()) == want and \
            (work / "data" / "synthetic" / "_ingest.json").exists():
        print(f"ingest: reusing {work / 'data' / 'synthetic'}")
        return
    shutil.rmtree(work / "data", ignore_errors=True)
    t0 = time.perf_counter()
    results = run_stage(get_stage("ingest"), spark, conf, Tracker(conf))
    manifest.write_text(json.dumps(want))
    print(f"ingest: {args.frames} synthetic frames -> {results['rows_written']} rows in "
          f"{time.perf_counter() - t0:.1f}s (once, untimed)")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def read_train_rows(src: str, kind: str) -> list:
    """The encoded train rows of one kind, straight from the Parquet files (what Spark's reader sees)."""
    import pyarrow.parquet as pq

    from schemas.datasets import SCHEMAS

    path = Path(local_path(f"{src}/{kind}/train"))
    files = sorted(p for p in path.glob("*.parquet"))
    cols = list(SCHEMAS[kind].fields)
    rows = []
    for f in files:
        rows.extend(pq.read_table(f, columns=cols).to_pylist())
    return rows


def encode_row(schema, row: dict) -> dict:
    """Every field of ``schema`` that ``row`` has, encoded by its Petastorm codec (what dict_to_spark_row does,
    minus building a pyspark Row)."""
    out = {}
    for name, field in schema.fields.items():
        if name in row:
            value = row[name]
            out[name] = field.codec.encode(field, value) if field.codec is not None and value is not None \
                else value
    return out


# ----------------------------------------------------------------------------------------- torchvision

def tv_pipeline(kind: str, hw: tuple):
    """torchvision.transforms.v2 ops comparable to conf/augment.yaml ``basic``, step for step:

    hflip p .5 | crop_rescale p .5 side fraction [.7, 1] -> RandomResizedCrop, area fraction [.49, 1], the
    image's own aspect, back to full size (bilinear) | rotate p .3 +-5 deg -> RandomRotation bilinear |
    brightness p .5 [.75, 1.25] | contrast p .5 [.75, 1.25] | saturation p .5 [.7, 1.3] | hue p .3 +-8 deg
    (= +-8/360 of the circle) -> one ColorJitter per op so each has its own probability, in the policy's order.
    Masks move with the image (nearest); boxes are transformed and degenerate ones dropped
    (SanitizeBoundingBoxes, min 1 px) with their index, so states and distances follow.
    """
    from torchvision.transforms import InterpolationMode, v2

    h, w = hw
    steps = [
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.RandomResizedCrop((h, w), scale=(0.49, 1.0), ratio=(w / h, w / h),
                                             interpolation=InterpolationMode.BILINEAR, antialias=True)], p=0.5),
        v2.RandomApply([v2.RandomRotation(5.0, interpolation=InterpolationMode.BILINEAR)], p=0.3),
        v2.RandomApply([v2.ColorJitter(brightness=(0.75, 1.25))], p=0.5),
        v2.RandomApply([v2.ColorJitter(contrast=(0.75, 1.25))], p=0.5),
        v2.RandomApply([v2.ColorJitter(saturation=(0.7, 1.3))], p=0.5),
        v2.RandomApply([v2.ColorJitter(hue=(-8.0 / 360, 8.0 / 360))], p=0.3),
    ]
    if kind == "tl_frames":
        steps.append(v2.SanitizeBoundingBoxes(min_size=1.0))
    return v2.Compose(steps)


class TvAugmenter:
    def __init__(self):
        self._pipes: dict = {}

    def __call__(self, kind: str, row: dict) -> dict:
        from torchvision import tv_tensors

        image = row["image"]
        hw = image.shape[:2]
        pipe = self._pipes.get((kind, hw))
        if pipe is None:
            pipe = self._pipes[(kind, hw)] = tv_pipeline(kind, hw)
        sample = {"image": tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))}
        if kind == "road_frames":
            sample["mask"] = tv_tensors.Mask(torch.from_numpy(row["lane_mask"]))
        elif kind == "tl_frames":
            boxes = np.asarray(row["boxes"], np.float32).reshape(-1, 4)
            sample["boxes"] = tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=hw)
            sample["labels"] = torch.arange(len(boxes))
        out = pipe(sample)
        new = dict(row, image=out["image"].permute(1, 2, 0).contiguous().numpy())
        if kind == "road_frames":
            new["lane_mask"] = out["mask"].numpy()
        elif kind == "tl_frames":
            keep = out["labels"].numpy()
            new.update(boxes=out["boxes"].numpy().astype(np.float32).reshape(-1, 4),
                       states=np.asarray(row["states"], np.int32)[keep],
                       distances=np.asarray(row["distances"], np.int32)[keep])
        return new


# ------------------------------------------------------------------------------------------------ loops

def _set_threads(n_torch: int, n_cv2: int) -> None:
    torch.set_num_threads(n_torch)
    cv2.setNumThreads(n_cv2)


def _restore_threads() -> None:
    _set_threads(TORCH_DEFAULT_THREADS, CV2_DEFAULT_THREADS)


def loop(src: str, copies: int, which: str, policy=None, subset=None, steps: dict | None = None) -> int:
    """One process: read train Parquet -> decode each row once -> ``copies`` x (augment -> encode).

    ``which``: "tv" (torchvision v2) or "own" (augment_row / Policy.apply + ops JSON). ``subset``: (i, n) to do
    rows i, i+n, ... only (the 2-process variant). ``steps``: accumulate seconds per (kind, step). Returns the
    number of augmented images produced."""
    from pipeline.augment.rows import augment_row
    from schemas.datasets import SCHEMAS, decode_row

    tv = TvAugmenter() if which == "tv" else None
    clock = time.perf_counter
    done = 0
    for kind in KINDS:
        schema = SCHEMAS[kind]
        t0 = clock()
        rows = read_train_rows(src, kind)
        if subset is not None:
            rows = rows[subset[0]::subset[1]]
        t_read = clock() - t0
        t_dec = t_aug = t_enc = 0.0
        for enc in rows:
            t0 = clock()
            row = decode_row(schema, enc)
            t1 = clock()
            t_dec += t1 - t0
            for c in range(1, copies + 1):
                t1 = clock()
                if tv is not None:
                    out = tv(kind, row)
                else:
                    out, applied = augment_row(kind, row, policy, row["id"], c)
                    out["ops"] = json.dumps(applied, sort_keys=True)
                t2 = clock()
                encoded = encode_row(schema, out)
                t3 = clock()
                assert len(encoded["image"]) > 0
                t_aug += t2 - t1
                t_enc += t3 - t2
                done += 1
        if steps is not None:
            for name, sec in (("read parquet", t_read), ("decode", t_dec), ("augment", t_aug),
                              ("encode", t_enc)):
                steps[(kind, name)] = steps.get((kind, name), 0.0) + sec
            steps[(kind, "images")] = steps.get((kind, "images"), 0) + len(rows) * copies
    return done


def run_loop(src, copies, which, threads: int, policy=None) -> int:
    n = threads if threads > 0 else None
    _set_threads(n or TORCH_DEFAULT_THREADS, n or CV2_DEFAULT_THREADS)
    try:
        return loop(src, copies, which, policy)
    finally:
        _restore_threads()


def _pool_chunk(job) -> int:
    src, copies, seed, i, n = job
    from pipeline.augment.policy import get_policy

    _set_threads(1, 1)
    return loop(src, copies, "own", get_policy(POLICY, seed), subset=(i, n))


def _warm_worker(_) -> int:
    """Pay the pool workers' imports before any timing."""
    import importlib

    for module in ("pipeline.augment.rows", "pipeline.augment.policy", "schemas.datasets"):
        importlib.import_module(module)
    return os.getpid()


def run_loop_procs(pool, procs: int, src: str, copies: int, seed: int) -> int:
    return sum(pool.map(_pool_chunk, [(src, copies, seed, i, procs) for i in range(procs)], chunksize=1))


# ------------------------------------------------------------------------------------------------ Spark

def spark_transform(spark, conf, policy, meta: dict, src: str, probe_partitions: bool = False) -> int:
    """The stage's plan + mapPartitions(_augment_partition) for every kind and split, counted, not written.
    Mirrors the loop of ``pipeline.augment.stage.run`` (keep the two in step). ``probe_partitions=False`` is a
    what-if: the partition count without ``plan.rdd.getNumPartitions()`` (which, with AQE, runs the joins)."""
    from pipeline.augment.stage import _augment_partition, _plan

    a = conf.augment
    with_background = any(step.op == "context_paste" for step in policy.ops)
    total = 0
    for kind, info in meta["datasets"].items():
        for split in info["splits"]:
            df = spark.read.parquet(f"{src}/{kind}/{split}")
            copies = a.copies if split == "train" else 0
            plan = _plan(spark, df, copies, with_background and split == "train")
            parts = 2 * spark.sparkContext.defaultParallelism
            if probe_partitions:
                parts = max(plan.rdd.getNumPartitions(), parts)
            rows = plan.repartition(parts, "id").rdd.mapPartitions(
                lambda it, k=kind: _augment_partition(it, k, policy))
            total += rows.count()
    return total


def _lean_partition(rows, copies: int, policy):
    """What-if Spark task: (kind, encoded train row) -> decode once -> copies x (augment_row + ops JSON ->
    encode); yields the encoded image sizes (nothing goes back to the JVM but the count)."""
    from pipeline.augment.rows import augment_row
    from schemas.datasets import SCHEMAS, decode_row

    for kind, enc in rows:
        schema = SCHEMAS[kind]
        row = decode_row(schema, enc)
        for c in range(1, copies + 1):
            out, applied = augment_row(kind, row, policy, row["id"], c)
            out["ops"] = json.dumps(applied, sort_keys=True)
            yield len(encode_row(schema, out)["image"])


def lean_transform(spark, src: str, kinds, copies: int, policy) -> int:
    """What-if (not the project's code): the train rows of every kind as ONE Spark job (Parquet -> RDD union,
    no plan join, no shuffle), only the augmented copies computed (no copy 0, no val/test), counted."""
    from schemas.datasets import SCHEMAS

    sc = spark.sparkContext
    rdds = [spark.read.parquet(f"{src}/{k}/train").select(*SCHEMAS[k].fields).rdd.map(lambda r, k=k: (k, r.asDict()))
            for k in kinds]
    return sc.union(rdds).mapPartitions(lambda it: _lean_partition(it, copies, policy)).count()


def trivial_job_s(spark, n: int = 20) -> tuple[float, float]:
    """Median seconds of a trivial Spark job with one Python task per core, and of a JVM-only one
    (``spark.range(100).count()``): the floor every job of the stage pays."""
    sc = spark.sparkContext
    py, jvm = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        sc.parallelize(range(sc.defaultParallelism), sc.defaultParallelism).map(lambda x: x).count()
        t1 = time.perf_counter()
        spark.range(100).count()
        py.append(t1 - t0)
        jvm.append(time.perf_counter() - t1)
    return med(py), med(jvm)


def stage_once(spark, conf):
    """(stage wall seconds, CPU deltas, results, tracker init seconds); Tracker creation is not timed."""
    from pipeline.stages import get_stage, run_stage
    from pipeline.tracking import Tracker

    t0 = time.perf_counter()
    tracker = Tracker(conf)
    tracker_s = time.perf_counter() - t0
    wall, cpu, results = timed(lambda: run_stage(get_stage("augment"), spark, conf, tracker))
    return wall, cpu, results, tracker_s


# ---------------------------------------------------------------------------------------------- profile

@contextlib.contextmanager
def instrumented_stage(events: list, jobs_now):
    """Wrap helpers the augment stage calls, and DataFrame.count / DataFrame.collect / DataFrameWriter.parquet,
    to record (name, start, end, Spark jobs started meanwhile); restores them afterwards."""
    from pyspark.sql import DataFrame, DataFrameReader, DataFrameWriter

    from pipeline.augment import stage
    from pipeline.data import ingest

    targets = [(stage, "run"), (stage, "_plan"), (stage, "_log"), (ingest, "write_petastorm"),
               (ingest, "recover"), (ingest, "read_meta"), (ingest, "_write_meta"), (ingest, "swap_in"),
               (DataFrame, "count"), (DataFrame, "collect"), (DataFrameWriter, "parquet")]
    saved = [(owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name))
             for owner, name in targets]
    saved_props = [(DataFrame, "rdd", DataFrame.__dict__["rdd"]),                 # a property
                   (DataFrameReader, "read.parquet", DataFrameReader.__dict__["parquet"])]

    def wrap(name, fn):
        @functools.wraps(fn)
        def inner(*a, **k):
            j0, t0 = jobs_now(), time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                events.append((name, t0, time.perf_counter(), jobs_now() - j0))
        return inner

    for owner, name, fn in saved:
        setattr(owner, name, wrap(name, fn))
    DataFrame.rdd = property(wrap("rdd", saved_props[0][2].fget))
    DataFrameReader.parquet = wrap("read.parquet", saved_props[1][2])
    try:
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
        DataFrame.rdd = saved_props[0][2]
        DataFrameReader.parquet = saved_props[1][2]


def _outside(events: list, name: str, within: tuple) -> list:
    """Events called ``name`` that do not lie inside an event named in ``within`` (no double counting)."""
    spans = [(a, b) for n, a, b, _ in events if n in within]
    return [e for e in events if e[0] == name and not any(a <= e[1] and e[2] <= b for a, b in spans)]


def profiled_stage(spark, conf):
    """One instrumented stage run: (wall, CPU, phases as (name, seconds, jobs), Spark job/stage/task counts)."""
    from pipeline.stages import get_stage, run_stage
    from pipeline.tracking import Tracker

    events: list = []
    tracker = Tracker(conf)
    sc = spark.sparkContext
    st = sc.statusTracker()
    group = f"bench-augment-{time.time_ns()}"
    sc.setJobGroup(group, "instrumented augment stage")

    def jobs_now() -> int:
        return len(st.getJobIdsForGroup(group))

    try:
        with instrumented_stage(events, jobs_now):
            a = METER.snapshot()
            METER.active = True
            t_start = time.perf_counter()
            run_stage(get_stage("augment"), spark, conf, tracker)
            t_end = time.perf_counter()
            METER.active = False
            cpu = CpuMeter.delta(a, METER.snapshot())
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    jobs = [st.getJobInfo(j) for j in st.getJobIdsForGroup(group)]
    stage_ids = sorted({s for j in jobs if j for s in j.stageIds})
    infos = [st.getStageInfo(s) for s in stage_ids]
    counts = {"jobs": len(jobs), "stages": len(stage_ids), "tasks": sum(i.numTasks for i in infos if i)}

    def total(evs) -> tuple:
        return sum(b - a for _, a, b, _ in evs), sum(j for *_, j in evs)

    def named(name) -> list:
        return [e for e in events if e[0] == name]

    nested = ("_plan", "write_petastorm", "_log")

    def outside(name) -> list:
        return _outside(events, name, nested)

    run_s, run_j = total(named("run"))
    wp_s, wp_j = total(named("write_petastorm"))
    pq_s, pq_j = total(named("parquet"))
    n_wp = len(named("write_petastorm"))
    rdd = outside("rdd")
    phases = [
        ("run_stage outside run(): MLflow child run, config logging, mark_done", (t_end - t_start) - run_s, 0),
        (f"spark.read.parquet x{len(outside('read.parquet'))}: source splits + read-backs (a listing/schema job each)",
         *total(outside("read.parquet"))),
        (f"_plan x{len(named('_plan'))}: collect the ids to the driver, build the plan DataFrame",
         *total(named("_plan"))),
        (f"DataFrame.rdd x{len(rdd)}: with AQE on, .rdd executes the shuffle stages: plan.rdd.getNumPartitions() "
         "runs the plan's two joins, plan.repartition(...).rdd runs them again + the repartition", *total(rdd)),
        (f"write_petastorm x{n_wp}, DataFrameWriter.parquet: the last stage (_augment_partition) + Parquet write",
         pq_s, pq_j),
        (f"write_petastorm x{n_wp}, the rest: createDataFrame + Petastorm metadata (row groups per file job)",
         wp_s - pq_s, wp_j - pq_j),
        (f"read-back counts: DataFrame.count x{len(outside('count'))}", *total(outside("count"))),
        (f"op counts + sample rows: DataFrame.collect x{len(outside('collect'))}", *total(outside("collect"))),
        ("recover + read_meta + _write_meta + swap_in",
         *total([e for e in events if e[0] in ("recover", "read_meta", "_write_meta", "swap_in")])),
        ("_log: MLflow metrics, dataset fingerprints (reads every output byte), 6 matplotlib figures",
         *total(named("_log"))),
    ]
    accounted = sum(p[1] for p in phases[1:])
    phases.append(("rest of run(): policy load, MLflow params/dict, DataFrame planning",
                   run_s - accounted, run_j - sum(p[2] for p in phases[1:])))
    return t_end - t_start, cpu, phases, counts


def plan_rows(spark, conf, policy, meta, src, kind: str) -> list:
    """The train plan rows of one kind, collected to the driver (for an in-process profile)."""
    from pipeline.augment.stage import _plan

    df = spark.read.parquet(f"{src}/{kind}/train")
    with_background = any(step.op == "context_paste" for step in policy.ops)
    return _plan(spark, df, conf.augment.copies, with_background).collect()


def cprofile_partition(rows_by_kind: dict, policy, top: int = 16) -> tuple[str, dict]:
    """cProfile of _augment_partition on the train plan rows of every kind, in this process."""
    from pipeline.augment.stage import _augment_partition

    cv2.setNumThreads(1)
    prof = cProfile.Profile()
    n = 0
    try:
        prof.enable()
        for kind, rows in rows_by_kind.items():
            n += sum(1 for _ in _augment_partition(iter(rows), kind, policy))
        prof.disable()
    finally:
        cv2.setNumThreads(CV2_DEFAULT_THREADS)
    st = pstats.Stats(prof)
    total = st.total_tt
    groups = {
        "PNG decode (cv2.imdecode), image + mask, incl. background/copies re-decode": ("imdecode",),
        "PNG encode (cv2.imencode), image + mask": ("imencode",),
        "ops: warpAffine / resize / LUT / cvtColor / addWeighted / flip / mean": (
            "warpAffine", "resize", "LUT", "cvtColor", "addWeighted", "flip", "'mean'", "getRotationMatrix2D"),
        "per-step RNG (np.random.default_rng) + sha256 row hash": ("default_rng", "sha256", "openssl",
                                                                  "SeedSequence", "__init__ of 'numpy.random",
                                                                  "'random' of 'numpy", "'uniform' of",
                                                                  "'integers' of"),
        "npy encode/decode of boxes (np.save / np.load)": ("save", "load", "BytesIO", "write_array",
                                                          "read_array", "_read_array_header", "header"),
        "json.dumps of the ops": ("dumps", "encode of", "iterencode"),
        "dataclasses.replace / Sample validation": ("replace", "__post_init__", "__init__ of <string>"),
    }
    by = {g: 0.0 for g in groups}
    for (file, line, name), (cc, nc, tt, ct, callers) in st.stats.items():
        label = f"{file}:{name}"
        for g, keys in groups.items():
            if any(k in label for k in keys):
                by[g] += tt
                break
    by["everything else (Python: dicts, Row building, codec checks, generators)"] = total - sum(by.values())
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    text = "\n".join(line for line in out.getvalue().splitlines() if line.strip())
    return text, {"total_s": total, "rows": n, "groups": by}


# ------------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = _dt.datetime.now().astimezone()
    import pyspark
    import torchvision

    print(f"bench_augment  {started:%Y-%m-%d %H:%M %Z}  host={platform.node()} cpus={os.cpu_count()} "
          f"python={platform.python_version()} pyspark={pyspark.__version__} torch={torch.__version__} "
          f"torchvision={torchvision.__version__} cv2={cv2.__version__} (default threads: torch "
          f"{TORCH_DEFAULT_THREADS}, cv2 {CV2_DEFAULT_THREADS})")
    print(f"load average at start: {os.getloadavg()}")

    import multiprocessing as mp

    from pipeline.augment.policy import get_policy
    from pipeline.data.ingest import dataset_root, read_meta
    from pipeline.session import build_session

    # Every config is resolved now, once: conf/*.yaml may be edited by others while the benchmark runs.
    conf = make_conf(work, args)
    copies_hi = max(4, conf.augment.copies + 2)     # the stage model's second point: a long lever against noise
    conf_c1 = make_conf(work, args, "augment.copies=1", "augment.name=bench-copies1")
    conf_hi = make_conf(work, args, f"augment.copies={copies_hi}", "augment.name=bench-copies-hi")
    conf_none = make_conf(work, args, "augment.policy=none", "augment.name=bench-none")
    policy = get_policy(POLICY, conf.augment.seed, conf.augment.policies_file)
    copies = conf.augment.copies

    # The pool is spawned before the JVM exists and pays its imports now (untimed).
    procs = 2
    pool = mp.get_context("spawn").Pool(procs)
    pool.map(_warm_worker, range(procs))
    METER.pool_pids = [p.pid for p in pool._pool]

    t0 = time.perf_counter()
    spark = build_session(conf)
    METER.start(int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()))
    print(f"SparkSession ({args.master}) built in {time.perf_counter() - t0:.1f}s (JVM pid {METER.jvm_pid}); "
          f"untimed")
    ensure_ingested(spark, conf, work, args)

    src = dataset_root(conf, conf.augment.source)
    meta = read_meta(src)
    train = {k: meta["datasets"][k]["splits"].get("train", 0) for k in KINDS if k in meta["datasets"]}
    all_rows = {k: sum(v["splits"].values()) for k, v in meta["datasets"].items()}
    n_aug = sum(train.values()) * copies
    n_written = sum(train[k] * (copies + 1) + (all_rows[k] - train[k]) for k in train)
    from schemas.datasets import SCHEMAS, decode_row

    shapes = {}
    for kind in train:
        r = read_train_rows(src, kind)[0]
        shapes[kind] = tuple(decode_row(SCHEMAS[kind], {"image": r["image"]})["image"].shape)
    print(f"dataset {src}: train rows {train} (image sizes {shapes}); all rows {all_rows}")
    print(f"augmented images per run (the numerator of every images/s): {n_aug} = {sum(train.values())} train rows "
          f"x {copies} copies, all three kinds. The Spark job writes {n_written} rows (also copy 0 and val/test).")

    # Warm-up (untimed): JIT, Python workers + imports, MLflow store, torchvision pipelines, the pool's imports.
    t0 = time.perf_counter()
    spark_transform(spark, conf, policy, meta, src)
    if not args.skip_stage:
        stage_once(spark, conf)
    run_loop(src, copies, "tv", 1)
    run_loop(src, copies, "own", 1, policy)
    run_loop_procs(pool, procs, src, copies, conf.augment.seed)
    print(f"warm-up (untimed: one transform, one stage run, one pass of each loop): {time.perf_counter() - t0:.1f}s")

    v_tv1, v_tvd = "torchvision v2 loop, 1 thread", f"torchvision v2 loop, default threads ({TORCH_DEFAULT_THREADS})"
    v_own, v_own2 = "own ops loop (Policy.apply), 1 thread", f"own ops loop, {procs} processes (no Spark)"
    v_tr, v_st = "spark core transform (no write)", "spark stage (whole, run_stage)"
    variants = [v_tv1, v_tvd, v_own, v_own2, v_tr] + ([] if args.skip_stage else [v_st])
    res = {v: {"wall": [], "cpu": []} for v in variants}
    tracker_init = []
    for r in range(args.repeats):
        print(f"\n--- repeat {r + 1}/{args.repeats}  (load average {os.getloadavg()[0]:.2f})", flush=True)
        plan = [
            (v_tv1, lambda: run_loop(src, copies, "tv", 1), n_aug, False),
            (v_tvd, lambda: run_loop(src, copies, "tv", 0), n_aug, False),
            (v_own, lambda: run_loop(src, copies, "own", 1, policy), n_aug, False),
            (v_own2, lambda: run_loop_procs(pool, procs, src, copies, conf.augment.seed), n_aug, False),
            (v_tr, lambda: spark_transform(spark, conf, policy, meta, src), n_written, True),
        ]
        for name, fn, expect, on_spark in plan:
            wall, cpu, got = measure(lambda: timed(fn, on_spark), args, name)
            assert got == expect, (name, got, expect)
            res[name]["wall"].append(wall)
            res[name]["cpu"].append(cpu)
            print(f"{name:45s} {wall:7.2f}s  {n_aug / wall:7.1f} aug img/s   [{fmt_cpu(cpu, wall)}]", flush=True)
        if not args.skip_stage:
            wall, cpu, results, tr_s = measure(lambda: stage_once(spark, conf), args, v_st)
            tracker_init.append(tr_s)
            for k in train:
                assert results[f"{k}.train_rows"] == train[k] * (copies + 1), results
            res[v_st]["wall"].append(wall)
            res[v_st]["cpu"].append(cpu)
            print(f"{v_st:45s} {wall:7.2f}s  {n_aug / wall:7.1f} aug img/s   [{fmt_cpu(cpu, wall)}]  "
                  f"(Tracker init {tr_s:.1f}s, untimed)", flush=True)

    # ------------------------------------------------------------------------------------------- table
    base = n_aug / med(res[v_tv1]["wall"])
    base_d = n_aug / med(res[v_tvd]["wall"])
    print(f"\n=== {n_aug} augmented images (train rows x {copies}, road_frames {shapes.get('road_frames')}, "
          f"tl_frames {shapes.get('tl_frames')}, tl_crops {shapes.get('tl_crops')}), policy '{POLICY}', "
          f"{args.master} on {os.cpu_count()} cores, median of {args.repeats} (min-max)")
    print("| variant | aug images/s (median) | min-max | vs torchvision 1 thread | vs torchvision default threads "
          "| cores used (ours) | other processes (cores) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    table = {}
    for v in variants:
        ips = [n_aug / w for w in res[v]["wall"]]
        m = n_aug / med(res[v]["wall"])
        ours = [c["ours"] / w for w, c in zip(res[v]["wall"], res[v]["cpu"]) if c]
        other = [c["others"] / w for w, c in zip(res[v]["wall"], res[v]["cpu"]) if c]
        table[v] = {"median_ips": m, "min_ips": min(ips), "max_ips": max(ips), "walls": res[v]["wall"],
                    "ratio_vs_tv1": m / base, "ratio_vs_tv_default": m / base_d, "ours_cores": ours,
                    "others_cores": other}
        print(f"| {v} | {m:.1f} | {min(ips):.1f}-{max(ips):.1f} | {m / base:.2f}x | {m / base_d:.2f}x | "
              f"{med(ours):.2f} | {med(other):.2f} |")
    if not args.skip_stage:
        ratio = table[v_st]["ratio_vs_tv1"]
        print(f"\ngoal (spark stage >= 1.5x torchvision 1 thread): {ratio:.2f}x -> "
              f"{'MET' if ratio >= 1.5 else 'NOT MET'}; the core transform alone: {table[v_tr]['ratio_vs_tv1']:.2f}x; "
              f"Tracker init (untimed) median {med(tracker_init):.1f}s")
    others = [x for v in variants for x in table[v]["others_cores"]]
    if others:
        print(f"noise: other processes used {med(others):.2f} cores on median (max {max(others):.2f}) during the "
              f"kept samples; {len(RETAKEN)} measurements re-taken so far; load average now {os.getloadavg()}")

    # ----------------------------------------------------------------------------------------- profile
    profile = {}
    if not args.no_profile:
        print("\n=== where the time goes")
        for which, label, pol in (("tv", "torchvision v2 loop", None), ("own", "own ops loop", policy)):
            steps: dict = {}
            wait_quiet(args.wait_quiet)
            _set_threads(1, 1)
            try:
                loop(src, copies, which, pol, steps=steps)
            finally:
                _restore_threads()
            print(f"{label} steps (1 thread), ms per augmented image:")
            profile[f"{which}_steps_ms"] = {}
            for kind in train:
                k_img = steps[(kind, "images")]
                parts = {s: steps[(kind, s)] / k_img * 1e3 for s in ("read parquet", "decode", "augment", "encode")}
                profile[f"{which}_steps_ms"][kind] = parts
                print(f"  {kind:12s} ({k_img:5d} img): " + ", ".join(f"{s} {v:.3f}" for s, v in parts.items())
                      + f"  = {sum(parts.values()):.3f} ms/img")

        rows_by_kind = {k: plan_rows(spark, conf, policy, meta, src, k) for k in train}
        n_plan = sum(len(v) for v in rows_by_kind.values())
        wait_quiet(args.wait_quiet)
        text, groups = cprofile_partition(rows_by_kind, policy)
        gt = groups["total_s"]
        print(f"cProfile of _augment_partition on the {n_plan} train plan rows (copies 0..{copies}) in one process: "
              f"{gt:.2f}s = {gt / n_aug * 1e3:.2f} ms per augmented image under the profiler:")
        for g, v in sorted(groups["groups"].items(), key=lambda kv: -kv[1]):
            print(f"  {g:78s} {v / n_aug * 1e3:6.3f} ms/aug-img  {v / gt:5.1%}")
        print("  top functions by own time:\n    " + "\n    ".join(text.splitlines()[-18:]))
        profile["cprofile_groups_ms_per_aug_img"] = {g: v / n_aug * 1e3 for g, v in groups["groups"].items()}

        if not args.skip_stage:
            wall, cpu, phases, counts = measure(lambda: profiled_stage(spark, conf), args, "instrumented stage")
            print(f"phases of one extra (instrumented) stage run, {wall:.1f}s = {n_aug / wall:.1f} aug img/s "
                  f"[{fmt_cpu(cpu, wall)}]; Spark: {counts['jobs']} jobs, {counts['stages']} stages, "
                  f"{counts['tasks']} tasks:")
            for name, sec, jobs in phases:
                print(f"  {sec:6.2f}s {sec / wall:5.1%} {jobs:4d} jobs  {name}")
            tr, st_med = med(res[v_tr]["wall"]), med(res[v_st]["wall"])
            print(f"  -> medians: whole stage {st_med:.2f}s - core transform {tr:.2f}s = {st_med - tr:.2f}s "
                  f"({(st_med - tr) / st_med:.0%}) for the writes, read-backs, op counts, samples and MLflow")
            profile["stage_phases"] = [{"phase": n, "s": sec, "jobs": j} for n, sec, j in phases]
            profile["stage_spark_counts"] = counts
            profile["stage_profiled"] = {"wall_s": wall, "cpu": cpu}
            wait_quiet(args.wait_quiet)
            jt_py, jt_jvm = trivial_job_s(spark)
            print(f"  -> a trivial Spark job takes {jt_jvm * 1e3:.0f} ms (JVM only) to {jt_py * 1e3:.0f} ms (2 Python "
                  f"tasks) here; x {counts['jobs']} jobs = {jt_jvm * counts['jobs']:.1f}-{jt_py * counts['jobs']:.1f}s "
                  f"of job overhead per stage run, before any row is touched")
            profile["trivial_job_s"] = {"python_tasks": jt_py, "jvm_only": jt_jvm}

            # Fixed vs per-copy cost of the stage: copies=1 vs copies_hi, and policy=none (no ops at all);
            # interleaved per repeat so that noise hits the three alike.
            points = [("copies=1", conf_c1, sum(train.values())),
                      (f"copies={copies_hi}", conf_hi, sum(train.values()) * copies_hi),
                      (f"copies={copies}, policy=none", conf_none, n_aug)]
            walls = {label: [] for label, _, _ in points}
            for _ in range(args.repeats):
                for label, c, _ in points:
                    w, cpu, _, _ = measure(lambda: stage_once(spark, c), args, f"stage {label}")
                    walls[label].append(w)
                    print(f"  stage {label:28s} {w:6.2f}s  [{fmt_cpu(cpu, w)}]", flush=True)
            model = {label: med(ws) for label, ws in walls.items()}
            t_lo, t_hi, t_none = (model[label] for label, _, _ in points)
            per_copy = (t_hi - t_lo) / (copies_hi - 1)
            fixed = t_lo - per_copy
            t_cur = med(res[v_st]["wall"])
            marginal = sum(train.values()) / per_copy if per_copy > 0 else float("inf")
            print(f"stage model (median of {args.repeats} each): copies=1 {t_lo:.1f}s, copies={copies_hi} {t_hi:.1f}s; "
                  f"copies={copies}: {t_cur:.1f}s (table), policy=none {t_none:.1f}s")
            if per_copy <= 0:
                print(f"  -> copies=1 vs copies={copies_hi} differ by less than the noise: per-copy cost not resolved")
            else:
                print(f"  -> stage time ~ {fixed:.1f}s (what does not grow with copies: job overheads, copy 0 and "
                      f"val/test re-encoded, read-backs, MLflow) + copies x {per_copy:.2f}s; marginal throughput "
                      f"{marginal:.1f} aug img/s = {marginal / base:.2f}x torchvision 1 thread; at copies={copies} "
                      f"the fixed part is {fixed / (fixed + copies * per_copy):.0%}; copies={copies_hi} gives "
                      f"{sum(train.values()) * copies_hi / t_hi:.1f} aug img/s = "
                      f"{sum(train.values()) * copies_hi / t_hi / base:.2f}x")
            t_est = fixed + copies * per_copy
            print(f"  -> the ops themselves cost {t_cur - t_none:.1f}s of the {t_cur:.1f}s stage at copies={copies} "
                  f"(table median, basic, vs policy=none; same rows written), or {t_est - t_none:.1f}s against the "
                  f"model's copies={copies} estimate {t_est:.1f}s (runs interleaved with the policy=none ones)")
            profile["stage_model_s"] = {**model, f"copies={copies}": t_cur, "fixed_s": fixed, "per_copy_s": per_copy,
                                        "marginal_ips": marginal, "walls": walls}

        # What-ifs (not project code), interleaved per repeat: the project's transform without the partition probe
        # (with AQE it runs the joins), and only the needed work in one Spark job (no plan join, no shuffle).
        whatifs = [("noprobe", lambda: spark_transform(spark, conf, policy, meta, src, probe_partitions=False),
                    n_written),
                   ("lean", lambda: lean_transform(spark, src, list(train), copies, policy), n_aug)]
        walls = {k: [] for k, _, _ in whatifs}
        cpus = {k: [] for k, _, _ in whatifs}
        for _ in range(args.repeats):
            for key, fn, expect in whatifs:
                w, cpu, got = measure(lambda: timed(fn), args, f"what-if {key}")
                assert got == expect, (key, got, expect)
                walls[key].append(w)
                cpus[key].append(cpu)
        noprobe, lean = n_aug / med(walls["noprobe"]), n_aug / med(walls["lean"])
        print(f"what-if (not project code): the core transform without plan.rdd.getNumPartitions() (parts = "
              f"2 x defaultParallelism): {noprobe:.1f} aug img/s (median of {args.repeats}) vs "
              f"{table[v_tr]['median_ips']:.1f} with it = {noprobe / base:.2f}x torchvision 1 thread "
              f"[last: {fmt_cpu(cpus['noprobe'][-1], walls['noprobe'][-1])}]")
        print(f"what-if (not project code): one Spark job over the train rows of all kinds, decode once, only the "
              f"{copies} augmented copies, counted (no write): {lean:.1f} aug img/s (median of {args.repeats}) = "
              f"{lean / base:.2f}x torchvision 1 thread [last: {fmt_cpu(cpus['lean'][-1], walls['lean'][-1])}]")
        profile["whatif_transform_no_probe_ips"] = noprobe
        profile["whatif_lean_transform_ips"] = lean
        profile["whatif_walls"] = walls
        profile["whatif_cpu"] = cpus

    out = {"date": started.isoformat(), "command": " ".join([Path(sys.executable).name] + sys.argv),
           "frames": args.frames, "copies": copies, "policy": POLICY, "repeats": args.repeats,
           "master": args.master, "cpus": os.cpu_count(), "train_rows": train, "all_rows": all_rows,
           "augmented_images": n_aug, "rows_written": n_written,
           "image_shapes": {k: list(v) for k, v in shapes.items()},
           "table": table, "cpu": {v: res[v]["cpu"] for v in variants},
           "tracker_init_s": tracker_init, "profile": profile, "retaken": RETAKEN, "load_average_end": os.getloadavg()}
    (work / "results.json").write_text(json.dumps(out, indent=1, default=str))
    print(f"\nre-taken measurements (other processes > {args.retake_above} cores): {len(RETAKEN)}"
          + (f" ({', '.join(RETAKEN)})" if RETAKEN else ""))
    print(f"results: {work / 'results.json'}")
    pool.close()
    pool.join()
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
