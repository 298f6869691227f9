#!/usr/bin/env python
"""Offline augmentation throughput: the Spark augment stage on ``local[2]`` vs torchvision.transforms.v2 in a loop.

Unit: **augmented images per second** = (train rows of road_frames + tl_frames + tl_crops) x copies, i.e. the
augmented copies (copy >= 1) over all three kinds, divided by the wall time of the variant. Every variant is
divided by its own number of augmented copies, whatever else it does. The Spark job does more than that: it also
writes copy 0 (the original, stored bytes passed through) of every train row and every val/test row (copied with
lineage columns, not decoded), so the number of *rows written* is larger; it is printed for reference but never
used as the numerator.

Variants, all in one run, interleaved per repeat so that machine noise hits every variant alike:

* ``torchvision v2 loop, 1 thread``  the baseline: one Python process, ``torch.set_num_threads(1)`` and
  ``cv2.setNumThreads(1)``. It reads the train split of each kind from the ingested Parquet files (pyarrow),
  decodes each row once with the datasets' own Petastorm codecs (PNG via OpenCV, as the Spark task does),
  applies a ``torchvision.transforms.v2`` pipeline comparable to the ``basic`` policy (same ops, probabilities
  and ranges; see :func:`tv_pipeline`) copies times, with the lane mask (``tv_tensors.Mask``) and the
  traffic-light boxes (``tv_tensors.BoundingBoxes`` + ``SanitizeBoundingBoxes``) moving with the image, and
  encodes every output field with the same codecs (PNG image and mask, npy boxes).
* ``torchvision v2 loop, default threads``  the same with torch's and OpenCV's default thread counts.
* ``own ops loop (Policy.apply), 1 thread``  the same loop with the project's ops instead of torchvision:
  ``pipeline.augment.rows.augment_row`` (``Policy.apply``) plus the ``ops`` JSON, as the Spark task does.
* ``own ops loop, 2 processes (no Spark)``  that loop with the rows split over 2 plain processes (a started
  multiprocessing pool): what two cores give without Spark.
* ``spark transform``  the stage's one Spark job alone: the stage's (kind, split, source file) units grouped
  into tasks by the stage's own planner (``stage.plan_groups``; listing done once, untimed), its job
  ``stage.files_job(...).collect()`` into a throwaway folder: tasks read, decode once, augment, encode and write
  their own files (``stage.augment_files``). No Petastorm metadata, sample rows, swap-in or MLflow.
* ``spark stage, copies=C``  the whole augment stage through ``run_stage(get_stage("augment"), ...)`` with a real
  ``Tracker``: the above plus the file listing, Petastorm metadata, op counts, sample rows, the ``_ingest.json``,
  the swap-in, MLflow logging (metrics, dataset fingerprints, two figures per kind).
* ``spark stage, copies=K``  the same at ``--copies-hi`` copies (own output name): with the row above it fits stage
  time = fixed + copies x per-copy, i.e. the stage's fixed cost and its marginal augmented images/s.
* ``spark stage, policy=none`` (``--policy-none``)  the stage with no ops (copies decoded and re-encoded only).

The input is the real ingest stage's output for ``--frames`` synthetic frames, made once per work dir (untimed;
a manifest says what is there). Spark's fixed per-run cost needs a large input to amortise: ``--frames 2000``
works (the loops hold one kind's encoded train rows in memory at a time, a few hundred MB at most).

One SparkSession (``--master``, default ``local[2]``) is built once; an untimed warm-up (one transform, one stage
run, one pass of each loop) pays the JVM start, JIT, Python-worker imports and MLflow store creation. Tracker
construction is outside the timed region. The machine is shared: before each timed measurement the script waits
(``--wait-quiet``) for other processes to go quiet, measures the CPU they use during it, and re-takes a measurement
in which they used more than ``--retake-above`` cores (at most ``--retakes`` times, keeping the least disturbed
sample); helpers in ``benchmarks/_measure.py``.

Where the time goes (``--no-profile`` skips it): per-step timing (parquet read / decode / augment / encode) of
the two loops by kind, a cProfile of ``augment_files`` on the train files in one process, the phases of one
instrumented stage run (functions the stage calls on the driver wrapped for timestamps, with the Spark jobs each
started) and the latency of a trivial Spark job.

Run:  .venv/bin/python benchmarks/bench_augment.py [--frames 400] [--copies 2] [--repeats 3] [--work-dir DIR]
Tiny smoke test:  ... --frames 32 --render-hw 180,320 --repeats 1 --work-dir /tmp/bench_smoke_augment
Results (JSON) are also written to ``<work-dir>/results.json``.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _measure as M  # noqa: E402  (puts the repo root on sys.path too)
import common  # noqa: E402

os.environ.setdefault("MPLBACKEND", "Agg")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

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
    p.add_argument("--copies-hi", type=int, default=-1,
                   help="copies of the second stage variant (fixed + per-copy model); -1: max(4, copies + 2); "
                        "0: no second stage variant")
    p.add_argument("--policy-none", action="store_true",
                   help="also time the stage with augment.policy=none (what the ops themselves cost)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of every variant (medians reported)")
    p.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "bench_augment"),
                   help="the ingested dataset is written here once and reused; MLflow store and outputs too")
    p.add_argument("--reingest", action="store_true", help="ingest again even if the work dir has the input")
    p.add_argument("--master", default="local[2]", help="spark.master")
    M.add_noise_args(p)
    p.add_argument("--no-profile", action="store_true", help="skip the 'where the time goes' section")
    p.add_argument("--skip-stage", action="store_true", help="do not time the whole stage (loops + transform only)")
    return p.parse_args(argv)


def _hw(text: str) -> list:
    h, w = (int(v) for v in text.split(","))
    return [h, w]



# ------------------------------------------------------------------------------------ data + configs

def make_conf(work: Path, args, *extra):
    """The benchmark's config (:func:`common.make_conf`): ``--frames`` synthetic frames, policy ``basic``."""
    overrides = [f"ingest.num_frames={args.frames}", f"ingest.road_hw={_hw(args.road_hw)}",
                 f"augment.policy={POLICY}", f"augment.copies={args.copies}"]
    if args.render_hw:
        overrides.append(f"ingest.render_hw={_hw(args.render_hw)}")
    return common.make_conf(work, *overrides, *extra, master=args.master, progress=False)


def ensure_ingested(spark, conf, work: Path, args) -> None:
    """Run the real ingest stage once per work dir (:func:`common.ensure_dataset`); a manifest says with which
    settings, so later runs reuse it."""
    from pipeline.data import store

    want = {"frames": args.frames, "road_hw": _hw(args.road_hw), "render_hw": args.render_hw or "default",
            "source": "synthetic", "seed": 0}
    tic = time.perf_counter()
    results = common.ensure_dataset(spark, conf, want=want, manifest=work / "ingest_manifest.json",
                                    fresh=args.reingest)
    if results is None:
        print(f"ingest: reusing {store.dataset_root(conf.paths.data_url, conf.ingest.name)}")
    else:
        print(f"ingest: {args.frames} synthetic frames -> {results['rows_written']} inputs written in "
              f"{time.perf_counter() - tic:.1f}s (once, untimed)")


def train_files(src: str, kind: str) -> tuple:
    """(fsspec filesystem, the train split's Parquet files of one kind, sorted)."""
    from pipeline.data import store

    fs, root = store.filesystem(f"{src}/{kind}/train")
    return fs, sorted(fs.glob(f"{root}/*.parquet"))


def read_train_rows(src: str, kind: str, subset=None) -> list:
    """The encoded train rows of one kind, straight from the Parquet files; ``subset`` (i, n): rows i, i+n, ..."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas.datasets import SCHEMAS

    fs, files = train_files(src, kind)
    cols = list(SCHEMAS[kind].fields)
    tables = []
    for f in files:
        with fs.open(f, "rb") as fh:   # as the stage's tasks read them
            tables.append(pq.read_table(fh, columns=cols))
    table = pa.concat_tables(tables)
    if subset is not None:
        table = table.take(list(range(subset[0], len(table), subset[1])))
    return table.to_pylist()


def first_image_shape(src: str, kind: str) -> tuple:
    import pyarrow.parquet as pq

    from schemas.datasets import SCHEMAS, field_decoders

    decode = field_decoders(SCHEMAS[kind], ["image"])["image"]
    fs, files = train_files(src, kind)
    for f in files:
        with fs.open(f, "rb") as fh:
            table = pq.read_table(fh, columns=["image"])
        if len(table):
            return tuple(decode(table.column("image")[0].as_py()).shape)
    return ()


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


def loop(src: str, copies: int, which: str, policy=None, subset=None, steps: dict | None = None,
         png_level: int = 0) -> int:
    """One process: read train Parquet -> decode each row once -> ``copies`` x (augment -> encode).

    ``which``: "tv" (torchvision v2) or "own" (augment_row / Policy.apply + ops JSON). ``subset``: (i, n) to do
    rows i, i+n, ... only (the 2-process variant). ``steps``: accumulate seconds per (kind, step). Every output
    field of the kind's schema is encoded as the stage stores it (``parts.encode_row``: the Petastorm codecs, the
    image as PNG at ``png_level``, the stage's ``ingest.png_compression``); the lineage columns the stage adds
    (parent id, copy, ops JSON) are not encoded. Returns the number of augmented images produced."""
    from pipeline.augment.rows import augment_row
    from pipeline.data.parts import encode_row
    from schemas.datasets import SCHEMAS, decode_row

    tv = TvAugmenter() if which == "tv" else None
    clock = time.perf_counter
    done = 0
    for kind in KINDS:
        schema = SCHEMAS[kind]
        t0 = clock()
        rows = read_train_rows(src, kind, subset)
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
                encoded = encode_row(schema, {name: out[name] for name in schema.fields}, png_level)
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


def run_loop(src, copies, which, threads: int, png_level: int, policy=None) -> int:
    n = threads if threads > 0 else None
    _set_threads(n or TORCH_DEFAULT_THREADS, n or CV2_DEFAULT_THREADS)
    try:
        return loop(src, copies, which, policy, png_level=png_level)
    finally:
        _restore_threads()


def _pool_chunk(job) -> int:
    src, copies, seed, png_level, i, n = job
    from pipeline.augment.policy import get_policy

    _set_threads(1, 1)
    return loop(src, copies, "own", get_policy(POLICY, seed), subset=(i, n), png_level=png_level)


def _warm_worker(_) -> int:
    """Pay the pool workers' imports before any timing."""
    import importlib

    for module in ("pipeline.augment.rows", "pipeline.augment.policy", "pipeline.data.parts", "schemas.datasets"):
        importlib.import_module(module)
    return os.getpid()


def run_loop_procs(pool, procs: int, src: str, copies: int, seed: int, png_level: int) -> int:
    return sum(pool.map(_pool_chunk, [(src, copies, seed, png_level, i, procs) for i in range(procs)],
                        chunksize=1))


# ------------------------------------------------------------------------------------------------ Spark

def spark_transform(spark, groups: list, policy, copies: int, scratch: Path, rowgroup_mb: float,
                    encoding: tuple) -> int:
    """The stage's Spark job alone (``stage.files_job``), into a throwaway folder under ``scratch`` (removed by the
    caller, untimed); returns the rows written."""
    from pipeline.augment.stage import files_job

    url = f"file://{scratch}/{uuid.uuid4().hex[:8]}"
    reports = files_job(spark, groups, policy, copies, url, rowgroup_mb, encoding).collect()
    return sum(info["rows"] for r in reports for written in r["files"] for info in written.values())



# ---------------------------------------------------------------------------------------------- profile

PHASE_NOTES = {
    "get_policy": "load the policy",
    "read_meta": "store.read_meta: the source's _ingest.json",
    ("read_meta", "recover"): "MLflow: policy dict + params",
    "recover": "store.recover (leftovers of killed runs)",
    ("recover", "plan_tasks"): "list the source files (glob + size per file)",
    "plan_tasks": "balance the units into task groups (writer.plan_tasks)",
    ("plan_tasks", "collect"): "parallelize the groups",
    "collect": "THE Spark job: tasks read, decode once, augment, encode and write their own files (augment_files)",
    "context_plan": "context policies only: plan join of (row, copy) to its background",
    "finalize": "Petastorm metadata per dataset (parts.finalize: footers checked, _common_metadata)",
    ("finalize", "write_meta"): "op counts + sample rows from the task reports",
    "write_meta": "store.write_meta: _ingest.json",
    "swap_in": "store.swap_in: swap the dataset in",
    "log_run": "log_run: MLflow metrics, dataset fingerprints (reads every output byte), 2 figures per kind",
}


def stage_targets() -> list:
    """What the augment stage calls on the driver, wrapped for timestamps by ``M.profiled_stage``."""
    from pyspark import RDD

    from pipeline.augment import stage
    from pipeline.data import parts, store, writer

    return [(stage, "run"), (stage, "get_policy"), (store, "read_meta"), (store, "recover"),
            (writer, "plan_tasks"), (RDD, "collect"), (stage, "context_plan"), (parts, "finalize"),
            (store, "write_meta"), (store, "swap_in"), (stage, "log_run")]


def cprofile_files(groups: list, policy, copies: int, scratch: Path, rowgroup_mb: float, encoding: tuple,
                   top: int = 16) -> tuple:
    """cProfile of augment_files on the train files (all of them, one task) in this process."""
    from pipeline.augment.stage import augment_files

    units = [u for group in groups for u in group if u[1] == "train"]
    _set_threads(1, 1)
    prof = cProfile.Profile()
    try:
        prof.enable()
        reports = list(augment_files(units, policy, copies, f"file://{scratch}/profile", rowgroup_mb, encoding))
        prof.disable()
    finally:
        _restore_threads()
    rows = sum(info["rows"] for r in reports for written in r["files"] for info in written.values())
    groups_ = {
        "pyarrow: read, arrays, Parquet write": ("pyarrow",),
        "PNG decode (cv2.imdecode), image + mask": ("imdecode",),
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
    text, groups_out = M.profile_groups(prof, groups_, "everything else (Python: dicts, row encoding, codec "
                                                       "checks, generators)", top)
    return text, {**groups_out, "rows": rows}


# ------------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    import pyspark
    import torchvision

    started = M.header("bench_augment", f"pyspark={pyspark.__version__} torch={torch.__version__} "
                                        f"torchvision={torchvision.__version__} cv2={cv2.__version__} (default "
                                        f"threads: torch {TORCH_DEFAULT_THREADS}, cv2 {CV2_DEFAULT_THREADS})")

    import multiprocessing as mp

    from pipeline.augment.policy import get_policy
    from pipeline.augment.stage import plan_groups
    from pipeline.data import store
    from pipeline.session import build_session

    # Every config is resolved now, once: conf/*.yaml may be edited by others while the benchmark runs.
    conf = make_conf(work, args)
    copies = conf.augment.copies
    copies_hi = max(4, copies + 2) if args.copies_hi < 0 else args.copies_hi
    conf_hi = make_conf(work, args, f"augment.copies={copies_hi}", "augment.name=bench-copies-hi") \
        if copies_hi and copies_hi != copies and not args.skip_stage else None
    conf_none = make_conf(work, args, "augment.policy=none", "augment.name=bench-none") \
        if args.policy_none and not args.skip_stage else None
    policy = get_policy(POLICY, conf.augment.seed, conf.augment.policies_file)
    rowgroup_mb, png = conf.ingest.rowgroup_size_mb, conf.ingest.png_compression
    encoding = (png, conf.ingest.image_format)      # what the stage's tasks encode with
    scratch = work / "transform-out"
    M.clear(scratch)

    # The pool is spawned before the JVM exists and pays its imports now (untimed).
    procs = 2
    pool = mp.get_context("spawn").Pool(procs)
    pool.map(_warm_worker, range(procs))
    M.METER.watch_pool(pool)

    t0 = time.perf_counter()
    spark = build_session(conf)
    M.METER.start(spark)
    print(f"SparkSession ({args.master}) built in {time.perf_counter() - t0:.1f}s (JVM pid {M.METER.jvm_pid}); "
          f"untimed")
    ensure_ingested(spark, conf, work, args)

    src = store.dataset_root(conf.paths.data_url, conf.augment.source)
    meta = store.read_meta(src)
    train = {k: meta["datasets"][k]["splits"].get("train", 0) for k in KINDS if k in meta["datasets"]}
    all_rows = {k: sum(v["splits"].values()) for k, v in meta["datasets"].items()}
    n_train = sum(train.values())
    n_aug = n_train * copies
    n_written = sum(train[k] * (copies + 1) + (all_rows[k] - train[k]) for k in train)
    shapes = {kind: first_image_shape(src, kind) for kind in train}
    groups = plan_groups(spark, src, meta, copies)
    print(f"dataset {src}: train rows {train} (image sizes {shapes}); all rows {all_rows}; "
          f"{sum(len(g) for g in groups)} source files in {len(groups)} task groups")
    print(f"augmented images per run (the numerator of every images/s): {n_aug} = {n_train} train rows "
          f"x {copies} copies, all three kinds. The Spark job writes {n_written} rows (also copy 0 and val/test).")

    # Warm-up (untimed): JIT, Python workers + imports, MLflow store, torchvision pipelines, the pool's imports.
    t0 = time.perf_counter()
    spark_transform(spark, groups, policy, copies, scratch, rowgroup_mb, encoding)
    M.clear(scratch)
    if not args.skip_stage:
        M.stage_once(spark, conf, "augment")
    run_loop(src, copies, "tv", 1, png)
    run_loop(src, copies, "own", 1, png, policy)
    run_loop_procs(pool, procs, src, copies, conf.augment.seed, png)
    print(f"warm-up (untimed: one transform{'' if args.skip_stage else ', one stage run'}, one pass of each loop): "
          f"{time.perf_counter() - t0:.1f}s")

    bench = M.Bench(args)
    v_tv1 = "torchvision v2 loop, 1 thread (baseline)"
    v_tvd = f"torchvision v2 loop, default threads ({TORCH_DEFAULT_THREADS})"
    v_own, v_own2 = "own ops loop (Policy.apply), 1 thread", f"own ops loop, {procs} processes (no Spark)"
    v_tr = f"spark transform: augment_files tasks, {len(groups)} groups"
    v_st = f"spark stage (whole, run_stage), copies={copies}"
    v_hi = f"spark stage, copies={copies_hi}"
    v_none = f"spark stage, copies={copies}, policy=none"
    for v in (v_tv1, v_tvd, v_own, v_own2, v_tr):
        bench.variant(v, n_aug)
    stages = [] if args.skip_stage else [(v_st, conf, copies)]
    stages += [(v_hi, conf_hi, copies_hi)] if conf_hi else []
    stages += [(v_none, conf_none, copies)] if conf_none else []
    for v, _, c in stages:
        bench.variant(v, n_train * c)
    tracker_init = []

    def stage_note(out):
        tracker_init.append(out[3])
        return f"(Tracker init {out[3]:.1f}s, untimed)"

    unit = "aug img/s"
    for r in range(args.repeats):
        print(f"\n--- repeat {r + 1}/{args.repeats}  (load average {os.getloadavg()[0]:.2f})", flush=True)
        loops = [(v_tv1, lambda: run_loop(src, copies, "tv", 1, png)),
                 (v_tvd, lambda: run_loop(src, copies, "tv", 0, png)),
                 (v_own, lambda: run_loop(src, copies, "own", 1, png, policy)),
                 (v_own2, lambda: run_loop_procs(pool, procs, src, copies, conf.augment.seed, png))]
        for name, fn in loops:
            bench.record(name, lambda: M.timed(lambda: M.expect(fn(), n_aug, name), False), unit)
        bench.record(v_tr, lambda: M.timed(lambda: M.expect(
            spark_transform(spark, groups, policy, copies, scratch, rowgroup_mb, encoding), n_written, v_tr)), unit)
        M.clear(scratch)
        for name, c_conf, c in stages:
            out = bench.record(name, lambda c_conf=c_conf: M.stage_once(spark, c_conf, "augment"), unit, stage_note)
            for k in train:
                M.expect(out[2][f"{k}.train_rows"], train[k] * (c + 1), f"{name}: {k} train rows")

    # ------------------------------------------------------------------------------------------- table
    variants = list(bench.res)
    print(f"\n=== {n_aug} augmented images (train rows x {copies}, road_frames {shapes.get('road_frames')}, "
          f"tl_frames {shapes.get('tl_frames')}, tl_crops {shapes.get('tl_crops')}) from {args.frames} frames, "
          f"policy '{POLICY}', {args.master} on {os.cpu_count()} cores, median of {args.repeats} (min-max); "
          f"aug img/s = augmented copies made by the variant / wall time")
    table = bench.table(variants, "aug images/s", [v_tv1, v_tvd])
    base = bench.rate(v_tv1)
    model = {}
    if not args.skip_stage:
        ratio = table[v_st]["ratios"][v_tv1]
        print(f"\ngoal (spark stage >= 1.5x torchvision 1 thread): {ratio:.2f}x -> "
              f"{'MET' if ratio >= 1.5 else 'NOT MET'}; the transform alone: {table[v_tr]['ratios'][v_tv1]:.2f}x; "
              f"Tracker init (untimed) median {M.med(tracker_init):.1f}s")
        if conf_hi:
            points = [(copies, M.med(bench.res[v_st]["wall"])), (copies_hi, M.med(bench.res[v_hi]["wall"]))]
            fixed, per_copy = M.fit_linear(points)
            model = {"points_s": points, "fixed_s": fixed, "per_copy_s": per_copy}
            if per_copy == per_copy and per_copy > 0:
                marginal = n_train / per_copy
                model["marginal_aug_ips"] = marginal
                print(f"stage model from copies={copies} and copies={copies_hi} (medians): time = {fixed:.1f}s fixed "
                      f"(job, copy 0 and val/test passed through, listing, metadata, MLflow) + copies x "
                      f"{per_copy:.2f}s; marginal {marginal:.1f} aug img/s = {marginal / base:.2f}x torchvision "
                      f"1 thread; at copies={copies} the fixed part is {fixed / points[0][1]:.0%} of the stage")
            else:
                print(f"stage model: copies={copies} vs copies={copies_hi} differ by less than the noise: per-copy "
                      f"cost not resolved")
        if conf_none:
            t_cur, t_none = M.med(bench.res[v_st]["wall"]), M.med(bench.res[v_none]["wall"])
            print(f"the ops themselves: {t_cur - t_none:.1f}s of the {t_cur:.1f}s stage at copies={copies} "
                  f"(policy '{POLICY}' vs none, same rows written, medians)")
    bench.noise_summary(table)

    # ----------------------------------------------------------------------------------------- profile
    profile = {}
    if not args.no_profile:
        print("\n=== where the time goes")
        for which, label, pol in (("tv", "torchvision v2 loop", None), ("own", "own ops loop", policy)):
            steps: dict = {}
            M.wait_quiet(args.wait_quiet)
            _set_threads(1, 1)
            try:
                loop(src, copies, which, pol, steps=steps, png_level=png)
            finally:
                _restore_threads()
            print(f"{label} steps (1 thread), ms per augmented image:")
            profile[f"{which}_steps_ms"] = {}
            for kind in train:
                k_img = steps[(kind, "images")]
                if not k_img:
                    continue
                parts = {s: steps[(kind, s)] / k_img * 1e3 for s in ("read parquet", "decode", "augment", "encode")}
                profile[f"{which}_steps_ms"][kind] = parts
                print(f"  {kind:12s} ({k_img:5d} img): " + ", ".join(f"{s} {v:.3f}" for s, v in parts.items())
                      + f"  = {sum(parts.values()):.3f} ms/img")

        M.wait_quiet(args.wait_quiet)
        text, groups_prof = cprofile_files(groups, policy, copies, scratch, rowgroup_mb, encoding)
        M.clear(scratch)
        gt = groups_prof["total_s"]
        print(f"cProfile of augment_files on the train files ({groups_prof['rows']} rows written: copies "
              f"0..{copies}) in one process: {gt:.2f}s = {gt / n_aug * 1e3:.2f} ms per augmented image under the "
              f"profiler:")
        for g, v in sorted(groups_prof["groups"].items(), key=lambda kv: -kv[1]):
            print(f"  {g:78s} {v / n_aug * 1e3:6.3f} ms/aug-img  {v / gt:5.1%}")
        print("  top functions by own time:\n    " + "\n    ".join(text.splitlines()[-18:]))
        profile["cprofile_groups_ms_per_aug_img"] = {g: v / n_aug * 1e3 for g, v in groups_prof["groups"].items()}

        if not args.skip_stage:
            (wall, cpu, phases, counts, missing, _), _ = bench.measure(
                lambda: M.profiled_stage(spark, conf, "augment", stage_targets(), PHASE_NOTES), "instrumented stage")
            print(f"phases of one extra (instrumented) stage run, {wall:.1f}s = {n_aug / wall:.1f} aug img/s "
                  f"[{M.fmt_cpu(cpu, wall)}]; Spark: {counts['jobs']} jobs, {counts['stages']} stages, "
                  f"{counts['tasks']} tasks" + (f"; not wrapped (gone): {', '.join(missing)}" if missing else ""))
            M.print_timeline(phases, wall)
            tr, st_med = M.med(bench.res[v_tr]["wall"]), M.med(bench.res[v_st]["wall"])
            print(f"  -> medians: whole stage {st_med:.2f}s - transform {tr:.2f}s = {st_med - tr:.2f}s "
                  f"({(st_med - tr) / st_med:.0%}) for the listing, metadata, samples, swap-in and MLflow")
            profile["stage_phases"] = {"wall_s": wall, "cpu": cpu, "spark": counts,
                                       "phases": [{"phase": p, "s": t, "jobs": j} for p, t, j in phases]}
            M.wait_quiet(args.wait_quiet)
            jt_py, jt_jvm = M.trivial_job_s(spark)
            print(f"  -> a trivial Spark job takes {jt_jvm * 1e3:.0f} ms (JVM only) to {jt_py * 1e3:.0f} ms "
                  f"(Python tasks, one per core) here")
            profile["trivial_job_s"] = {"python_tasks": jt_py, "jvm_only": jt_jvm}

    M.write_results(work / "results.json", {
        "date": started.isoformat(), "frames": args.frames, "copies": copies, "copies_hi": copies_hi,
        "policy": POLICY, "repeats": args.repeats, "master": args.master, "cpus": os.cpu_count(),
        "train_rows": train, "all_rows": all_rows, "augmented_images": n_aug, "rows_written": n_written,
        "image_shapes": {k: list(v) for k, v in shapes.items()}, "table": table, "stage_model": model,
        "tracker_init_s": tracker_init, "profile": profile}, bench)
    pool.close()
    pool.join()
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
