#!/usr/bin/env python
"""Ingest throughput: 1280x720 PNG frames -> 128x128 rows, Spark ``local[2]`` vs a plain single-process loop.

What is measured, all in one run, interleaved per repeat so that machine noise hits every variant alike:

* ``loop, cv2 1 thread``   the baseline: one Python process over the same files doing the work ingest does per
                           image (``images.read_bytes`` -> ``images.decode_image`` -> ``cv2.resize(INTER_AREA)``
                           to 128x128 -> ``cv2.imencode('.png')``), with ``cv2.setNumThreads(1)`` as in a Spark task.
* ``loop, cv2 default``    the same loop with OpenCV's default thread pool (a second, labelled baseline).
* ``loop, 2 processes``    the same loop in a plain 2-process multiprocessing pool (started before timing), files split
                           evenly: what two cores give without Spark, i.e. the realistic ceiling for ``local[2]``.
* ``process_partition, 1 process``  ingest's own per-input code (``ingest.process_partition``) called in this one
                           process, no Spark, rows not written: what ingest does per image on top of the bare loop
                           (phash, lane mask, row encoding), without any parallelism.
* ``spark transform``      the stage's one Spark job alone: ``ingest.write_job(..., p).collect()`` into a
                           throwaway folder (the tasks transform and write their own Parquet files and return their
                           reports); no Petastorm metadata, accounting, near-duplicate join or MLflow. ``p`` is the
                           stage's task count (``ingest.task_count``) unless ``--partitions`` says otherwise.
* ``spark stage, N frames``  the whole ingest stage through ``run_stage(get_stage("ingest"), ...)`` with a real
                           ``Tracker``, a fresh ``paths.work_dir`` per run, at ``--frames`` and at ``--small-frames``
                           (or at every size of ``--stage-frames``): a least-squares fit of stage time = fixed +
                           N / rate over the sizes separates the fixed cost (Spark job, metadata, join, MLflow) from
                           the per-image rate, which is compared with the loop.

Noise: the machine is shared. Every measurement records the CPU that other processes used meanwhile (machine
busy time minus ours); ``--wait-quiet`` waits for an idle machine before each measurement, and a measurement with
others above ``--retake-above`` cores is re-taken up to ``--retakes`` times, keeping the least disturbed attempt.
The table shows the others' CPU of the kept samples (helpers in ``benchmarks/_measure.py``).

One SparkSession is built once (``spark.ui.showConsoleProgress=false``, for readable output); the JVM start, the
first Python-worker imports and the MLflow store creation are paid by an untimed warm-up (a small transform and a
small stage run). Tracker construction (MLflow store creation for the fresh work dir) is outside the timed region and
reported separately.

Where the time goes (``--no-profile`` skips it): per-step timing of the loop (read / decode / resize / encode), a
cProfile of ``write_partition`` in one process, the phases of one extra stage run per size (functions the stage calls
on the driver are wrapped for timestamps only, with the Spark jobs each started), and a partition-count sweep of the
transform.

Run:  .venv/bin/python benchmarks/bench_ingest.py [--frames 400] [--small-frames 50] [--repeats 3] [--work-dir DIR]
          [--wait-quiet 30]
Tiny smoke test:  ... --frames 40 --small-frames 20 --repeats 1 --sweep '' --work-dir /tmp/bench_smoke_ingest
Results (JSON) are also written to ``<work-dir>/results.json``.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import shutil
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

CV2_DEFAULT_THREADS = cv2.getNumThreads()   # before anything calls setNumThreads
TARGET_HW = (128, 128)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Ingest throughput of 1280x720 PNG frames -> 128x128: the real Spark ingest stage on "
                    "local[2] vs a plain single-process decode/resize/encode loop, in the same run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--frames", type=int, default=400,
                   help="frames of the loops, the transform and the headline stage run")
    p.add_argument("--small-frames", type=int, default=0,
                   help="frames of the second stage size (fixed-cost probe) and of the warm-up (0: frames // 8, "
                        "min 16)")
    p.add_argument("--stage-frames", default="",
                   help="comma-separated stage sizes instead of --small-frames, e.g. 400,2000 (--frames is always "
                        "one of them); frames are generated for the largest")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of every variant (medians reported)")
    p.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "bench_ingest"),
                   help="frames are written here once and reused; every stage run gets a fresh folder under it")
    p.add_argument("--classes", type=int, default=4, help="ImageFolder class folders")
    p.add_argument("--master", default="local[2]", help="spark.master")
    p.add_argument("--partitions", type=int, default=0,
                   help="partitions of the bare-transform measurement (0: the stage's own rule)")
    p.add_argument("--sweep", default="2,4,8,16",
                   help="partition counts for the transform sweep in the profile section ('' to skip)")
    M.add_noise_args(p)
    p.add_argument("--no-profile", action="store_true", help="skip the 'where the time goes' section")
    p.add_argument("--skip-stage", action="store_true", help="do not run the whole stage (loops + transform only)")
    return p.parse_args(argv)


def _ints(text: str) -> list:
    return [int(x) for x in text.split(",") if x.strip()]



# ------------------------------------------------------------------------------------------- frames

def _render_one(job):
    """Render frame i with the project's synthetic generator (1280x720) and write it as a PNG (cv2)."""
    i, path = job
    from pipeline.data.synth import SynthConfig, render_frame

    frame = render_frame(0, i, SynthConfig())
    # The input files, written as a camera or a user's tool would: OpenCV's default PNG settings (no level given:
    # level 1 with the RLE strategy and the SUB filter). Not images.encode_png on purpose: it always sets a level,
    # which switches OpenCV to the default strategy and adaptive filters (other bytes: bigger files that decode
    # slower), and decoding these inputs is most of the measured work; RESULTS.md's figures are on these files.
    ok, buf = cv2.imencode(".png", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
    assert ok
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.part"
    with open(tmp, "wb") as fh:
        fh.write(buf.tobytes())
    os.replace(tmp, path)
    return path


def generate_frames(work: Path, n: int, classes: int) -> list[str]:
    """<work>/frames/<class>/<name>.png, written once: a manifest says what is there, so later runs reuse it (or
    render only the frames they lack); the stage and the transform read hard-linked subsets (link_subset)."""
    frames = work / "frames"
    manifest = work / "frames_manifest.json"
    want = {"classes": classes, "seed": 0, "hw": [720, 1280], "generator": "synth.render_frame"}
    paths = [str(frames / f"class_{i % classes}" / f"frame_{i:05d}.png") for i in range(n)]
    have = json.loads(manifest.read_text()) if manifest.exists() else {}
    if {k: v for k, v in have.items() if k != "frames"} != want:
        shutil.rmtree(frames, ignore_errors=True)
        have = {}
    missing = [(i, p) for i, p in enumerate(paths) if i >= have.get("frames", 0) or not os.path.exists(p)]
    if not missing:
        print(f"frames: reusing {n} PNGs under {frames}")
        return paths
    t0 = time.perf_counter()
    import multiprocessing as mp

    with mp.get_context("fork").Pool(max(1, os.cpu_count() or 1)) as pool:   # before any JVM exists
        pool.map(_render_one, missing, chunksize=8)
    manifest.write_text(json.dumps({**want, "frames": max(n, have.get("frames", 0))}))
    size = sum(os.path.getsize(p) for p in paths)
    print(f"frames: wrote {len(missing)} PNGs ({size / n / 1e6:.2f} MB each on average) in "
          f"{time.perf_counter() - t0:.1f}s")
    return paths


def link_subset(paths: list[str], src_root: Path, dst_root: Path) -> None:
    shutil.rmtree(dst_root, ignore_errors=True)
    for p in paths:
        dst = dst_root / Path(p).relative_to(src_root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, dst)
        except OSError:
            shutil.copyfile(p, dst)


# ------------------------------------------------------------------------------------------ baseline

def loop_once(paths: list[str], min_size: int, max_pixels: int, steps: dict | None = None,
              png_level: int = 0) -> int:
    """The plain single-process loop: read -> decode_image -> resize 128x128 (INTER_AREA) -> PNG encode at the
    stage's zlib level (``ingest.png_compression``)."""
    from pipeline.data import images

    clock = time.perf_counter
    done = 0
    for path in paths:
        t0 = clock()
        data = images.read_bytes(path)
        t1 = clock()
        decoded = images.decode_image(data, min_size=min_size, max_pixels=max_pixels, target_hw=TARGET_HW)
        t2 = clock()
        small = cv2.resize(decoded.rgb, (TARGET_HW[1], TARGET_HW[0]), interpolation=cv2.INTER_AREA)
        t3 = clock()
        # The baseline: the PNG encode a user's loop would write with OpenCV (BGR at the stage's zlib level, the
        # bytes images.encode_png makes), kept as plain cv2 code on purpose; the stage's own code is measured by
        # the process_partition and Spark variants.
        ok, buf = cv2.imencode(".png", cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_PNG_COMPRESSION, png_level])
        t4 = clock()
        assert ok and len(buf) > 0
        done += 1
        if steps is not None:
            for k, v in (("read", t1 - t0), ("decode", t2 - t1), ("resize", t3 - t2), ("encode", t4 - t3)):
                steps[k] = steps.get(k, 0.0) + v
    return done


def run_loop(paths, conf, threads: int) -> int:
    cv2.setNumThreads(threads)
    try:
        return loop_once(paths, conf.ingest.min_size, conf.ingest.max_pixels,
                         png_level=conf.ingest.png_compression)
    finally:
        cv2.setNumThreads(CV2_DEFAULT_THREADS)


def _loop_chunk(job) -> int:
    paths, min_size, max_pixels, png_level = job
    cv2.setNumThreads(1)
    return loop_once(paths, min_size, max_pixels, png_level=png_level)


def run_loop_procs(pool, procs: int, paths, conf) -> int:
    """The same loop in ``procs`` plain processes (a started multiprocessing pool), files split evenly:
    what two cores give without Spark, the realistic ceiling for local[2]."""
    jobs = [(paths[i::procs], conf.ingest.min_size, conf.ingest.max_pixels, conf.ingest.png_compression)
            for i in range(procs)]
    return sum(pool.map(_loop_chunk, jobs, chunksize=1))


def run_partition_in_process(inputs, opts) -> int:
    from pipeline.data.ingest import process_partition

    try:
        rows = sum(1 for _ in process_partition(inputs, opts))   # sets cv2.setNumThreads(1) itself
    finally:
        cv2.setNumThreads(CV2_DEFAULT_THREADS)
    return rows


# ---------------------------------------------------------------------------------------------- Spark

def make_conf(work_dir: Path, source_path: Path, master: str):
    """The stage's config on the frames under ``source_path`` (ImageFolder), stored at 128x128."""
    return common.make_conf(work_dir, "ingest.source=imagefolder", f"ingest.source_path={source_path}",
                            f"ingest.road_hw=[{TARGET_HW[0]},{TARGET_HW[1]}]", master=master, progress=False)


def spark_transform(spark, inputs, opts, partitions: int, scratch: Path, rowgroup_mb: float) -> tuple:
    """The stage's Spark job alone (``ingest.write_job``), into a throwaway folder under ``scratch``: (inputs
    accounted in the task reports, dataset rows written). The folder is removed by the caller, outside the timed
    region."""
    from pipeline.data.ingest import LEDGER, QUARANTINE, write_job

    url = f"file://{scratch}/{uuid.uuid4().hex[:8]}"
    reports = write_job(spark, inputs, opts, url, rowgroup_mb, partitions).collect()
    accounted = sum(n for r in reports for _, n in r["statuses"])
    rows = sum(info["rows"] for r in reports for folder, info in r["files"].items()
               if folder not in (LEDGER, QUARANTINE))
    return accounted, rows



# -------------------------------------------------------------------------------------------- profile

PHASE_NOTES = {
    "plan_inputs": "plan_inputs (ImageFolder listing on the driver)",
    "recover": "store.recover (leftovers of killed runs)",
    ("recover", "collect"): "plan the inputs into tasks (writer.plan_tasks), parallelize them",
    "collect": "THE Spark job: tasks transform their inputs and write their own Parquet files (write_partition)",
    "commit": "commit of ledger + quarantine files (rename, footers)",
    "finalize": "Petastorm metadata per dataset (parts.finalize: footers checked, _common_metadata)",
    "account": "accounting from the task reports",
    ("account", "parquet"): "sample rows from the reports",
    "parquet": "spark.read.parquet(ledger) (listing / schema job)",
    "near_duplicate_pairs": "near-duplicate join: planned",
    "count": "near-duplicate join: executed (pairs.cache().count())",
    "write_meta": "store.write_meta: _ingest.json",
    "swap_in": "store.swap_in: swap the dataset in",
    "log_run": "log_run: MLflow metrics, dataset fingerprints, sample + near-duplicate figures",
}


def stage_targets() -> list:
    """What the ingest stage calls on the driver, wrapped for timestamps by ``M.profiled_stage``."""
    from pyspark import RDD
    from pyspark.sql import DataFrame, DataFrameReader

    from pipeline.data import ingest, parts, store

    return [(ingest, "run"), (ingest, "plan_inputs"), (store, "recover"), (RDD, "collect"),
            (parts, "commit"), (parts, "finalize"), (ingest, "account"), (DataFrameReader, "parquet"),
            (ingest, "near_duplicate_pairs"), (DataFrame, "count"), (store, "write_meta"),
            (store, "swap_in"), (ingest, "log_run")]


def cprofile_partition(inputs, opts, scratch: Path, rowgroup_mb: float, top: int = 16) -> tuple:
    """cProfile of write_partition (process_partition + the task's Parquet writes) in this process."""
    from pipeline.data.ingest import write_partition

    prof = cProfile.Profile()
    try:
        prof.enable()
        reports = list(write_partition(0, inputs, opts, f"file://{scratch}/profile", rowgroup_mb))
        prof.disable()
    finally:
        cv2.setNumThreads(CV2_DEFAULT_THREADS)
    M.expect(sum(n for r in reports for _, n in r["statuses"]), len(inputs), "profiled write_partition inputs")
    groups = {"cv2.imdecode (PNG inflate + unfilter)": ("imdecode",),
              "cv2.resize": ("resize",), "cv2.imencode (PNG encode, image + lane mask)": ("imencode",),
              "cv2.cvtColor (decode BGR->RGB, phash grey)": ("cvtColor",), "cv2.dct (phash)": ("dct",),
              "file read": ("method 'read' of '_io.BufferedReader'",),
              "PNG header / IEND scan": ("rfind", "_png_header"),
              "pyarrow: arrays + Parquet write": ("pyarrow",)}
    return M.profile_groups(prof, groups, "everything else (Python: dicts, row encoding, hashing, ...)", top)


# ------------------------------------------------------------------------------------------------ main

def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    n = args.frames
    small = min(args.small_frames or max(16, n // 8), n)
    sizes = sorted({n, *(_ints(args.stage_frames) or [small])})
    started = M.header("bench_ingest", f"cv2={cv2.__version__} (default threads {CV2_DEFAULT_THREADS})")

    paths = generate_frames(work, max(sizes), args.classes)
    frames_dir = work / "frames"
    dirs = {}
    for s in sizes:   # every size reads its own folder of hard links: exactly its frames
        dirs[s] = work / f"frames_{s}"
        link_subset(paths[:s], frames_dir, dirs[s])
    paths = paths[:n]
    mb = sum(os.path.getsize(p) for p in paths) / 1e6
    print(f"{n} frames, {mb:.0f} MB of PNG (files are in the page cache after generation for every variant); "
          f"stage sizes {sizes}")

    import multiprocessing as mp

    import pyspark

    from pipeline.data import ingest
    from pipeline.session import build_session

    # Every config is resolved now, once: conf/*.yaml may be edited by others while the benchmark runs.
    runs = M.Runs(work / "runs")
    conf = make_conf(runs.next("plan"), dirs[n], args.master)
    warm_conf = make_conf(runs.next("warmup"), dirs[sizes[0]], args.master)
    attempts = 1 + max(0, args.retakes)
    per_size = args.repeats * attempts + (attempts if not args.no_profile else 0)
    stage_confs = {s: iter([make_conf(runs.next(f"stage-{s}"), dirs[s], args.master) for _ in range(per_size)])
                   for s in ([] if args.skip_stage else sizes)}
    inputs, classes, _ = ingest.plan_inputs(conf)
    opts = ingest.IngestOptions(conf.ingest, classes)
    M.expect(len(inputs), n, "planned inputs")
    print(f"plan_inputs: {len(inputs)} inputs, classes {classes}")
    rowgroup_mb = conf.ingest.rowgroup_size_mb
    scratch = work / "transform-out"
    M.clear(scratch)

    t0 = time.perf_counter()
    spark = build_session(conf)
    M.METER.start(spark)
    print(f"SparkSession ({args.master}, pyspark {pyspark.__version__}) built in {time.perf_counter() - t0:.1f}s "
          f"(JVM pid {M.METER.jvm_pid}); untimed")
    partitions = args.partitions or ingest.task_count(spark, conf.ingest, n)

    # Warm-up (untimed): JVM JIT, Python worker start + imports, MLflow store; the same code paths as timed runs.
    t0 = time.perf_counter()
    small_inputs = ingest.plan_inputs(warm_conf)[0]
    spark_transform(spark, small_inputs, opts, min(partitions, len(small_inputs)), scratch, rowgroup_mb)
    M.clear(scratch)
    if not args.skip_stage:
        M.stage_once(spark, warm_conf, "ingest")
    run_loop(paths[:4], conf, 1)
    procs = os.cpu_count() or 2
    pool = mp.get_context("spawn").Pool(procs)    # started (and its imports paid) before any timing
    run_loop_procs(pool, procs, paths[:2 * procs], conf)
    M.METER.watch_pool(pool)
    # The same loop under the glibc malloc settings the stage gives its Spark workers (conf/base.yaml
    # spark.executorEnv.MALLOC_*): a second, tuned baseline, in freshly spawned processes (glibc reads them at start).
    malloc_env = {k.split("spark.executorEnv.", 1)[1]: v for k, v in conf.spark.conf.items()
                  if k.startswith("spark.executorEnv.MALLOC_")}
    saved = {k: os.environ.get(k) for k in malloc_env}
    os.environ.update(malloc_env)
    try:
        tuned1 = mp.get_context("spawn").Pool(1)
        tuned = mp.get_context("spawn").Pool(procs)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    run_loop_procs(tuned1, 1, paths[:4], conf)
    run_loop_procs(tuned, procs, paths[:2 * procs], conf)
    M.METER.watch_pool(tuned1)
    M.METER.watch_pool(tuned)
    print(f"warm-up (untimed: one small transform{'' if args.skip_stage else ' + one small stage run'} on "
          f"{sizes[0]} frames): "
          f"{time.perf_counter() - t0:.1f}s")

    bench = M.Bench(args)
    v_loop1, v_loopd = "loop, cv2 1 thread (baseline)", f"loop, cv2 default threads ({CV2_DEFAULT_THREADS})"
    v_procs, v_pp = f"loop, {procs} processes (no Spark)", "process_partition, 1 process (no Spark, no write)"
    v_tuned1 = "loop, cv2 1 thread, workers' malloc settings (tuned baseline)"
    v_tunedp = f"loop, {procs} processes, workers' malloc settings"
    v_tr = f"spark transform: write_partition tasks, {partitions} partitions"
    v_stage = {s: f"spark stage, {s} frames" for s in ([] if args.skip_stage else sizes)}
    for v in (v_loop1, v_loopd, v_procs, v_tuned1, v_tunedp, v_pp, v_tr):
        bench.variant(v, n)
    for s, v in sorted(v_stage.items(), reverse=True):
        bench.variant(v, s)
    tracker_init = []

    def stage_note(out):
        tracker_init.append(out[3])
        return f"(Tracker init {out[3]:.1f}s, untimed)"

    for r in range(args.repeats):
        print(f"\n--- repeat {r + 1}/{args.repeats}  (load average {os.getloadavg()[0]:.2f})", flush=True)
        bench.record(v_loop1, lambda: M.timed(lambda: M.expect(run_loop(paths, conf, 1), n, v_loop1), False))
        bench.record(v_loopd, lambda: M.timed(
            lambda: M.expect(run_loop(paths, conf, CV2_DEFAULT_THREADS), n, v_loopd), False))
        bench.record(v_procs, lambda: M.timed(
            lambda: M.expect(run_loop_procs(pool, procs, paths, conf), n, v_procs), False))
        bench.record(v_tuned1, lambda: M.timed(
            lambda: M.expect(run_loop_procs(tuned1, 1, paths, conf), n, v_tuned1), False))
        bench.record(v_tunedp, lambda: M.timed(
            lambda: M.expect(run_loop_procs(tuned, procs, paths, conf), n, v_tunedp), False))
        bench.record(v_pp, lambda: M.timed(
            lambda: M.expect(run_partition_in_process(inputs, opts), 2 * n, v_pp), False))
        out = bench.record(v_tr, lambda: M.timed(
            lambda: spark_transform(spark, inputs, opts, partitions, scratch, rowgroup_mb)))
        M.clear(scratch)
        M.expect(out[2], (n, n), f"{v_tr}: (inputs accounted, rows written)")
        for s, v in sorted(v_stage.items(), reverse=True):
            out = bench.record(v, lambda s=s: M.stage_once(spark, next(stage_confs[s]), "ingest"), note=stage_note)
            M.expect((out[2]["rows_in"], out[2]["rows_written"]), (s, s), f"{v}: (rows in, rows written)")

    # ------------------------------------------------------------------------------------- table
    variants = list(bench.res)
    print(f"\n=== {n} frames 1280x720 PNG -> 128x128, {args.master} on {os.cpu_count()} cores, "
          f"median of {args.repeats} (min-max); images/s = frames of the variant / wall time")
    table = bench.table(variants, "images/s", [v_loop1, v_tuned1, v_procs])
    base = bench.rate(v_loop1)
    extra = {}
    if v_stage:
        points = [(s, M.med(bench.res[v]["wall"])) for s, v in v_stage.items()]
        fixed, per_img = M.fit_linear(points)
        t_n = M.med(bench.res[v_stage[n]]["wall"])
        extra = {"stage_points_s": points, "stage_fixed_s": fixed, "stage_per_image_s": per_img,
                 "tracker_init_s_median": M.med(tracker_init)}
        if per_img == per_img and per_img > 0:
            rate = 1 / per_img
            extra["stage_marginal_ips"] = rate
            print(f"\nstage model from {len(points)} sizes {[s for s, _ in points]} (medians): time = {fixed:.1f}s "
                  f"fixed + N / {rate:.1f} img/s; the marginal rate is {rate / base:.2f}x the 1-thread loop and "
                  f"{rate / bench.rate(v_procs):.2f}x the {procs}-process loop; at N={n} the fixed part is "
                  f"{fixed / t_n:.0%} of the stage.")
        else:
            print(f"\nstage model: not resolved from sizes {[s for s, _ in points]} (one size, or the larger run "
                  f"was not slower: noise or too few frames)")
        print(f"Tracker init (untimed) median {M.med(tracker_init):.1f}s")
    bench.noise_summary(table)

    # ----------------------------------------------------------------------------------- profile
    profile = {}
    if not args.no_profile:
        print("\n=== where the time goes")
        steps: dict = {}
        M.wait_quiet(args.wait_quiet)
        cv2.setNumThreads(1)
        loop_once(paths, conf.ingest.min_size, conf.ingest.max_pixels, steps, png_level=conf.ingest.png_compression)
        cv2.setNumThreads(CV2_DEFAULT_THREADS)
        tot = sum(steps.values())
        print(f"loop steps (1 thread, {n} images, {tot:.2f}s): " + ", ".join(
            f"{k} {v / n * 1e3:.2f} ms/img ({v / tot:.0%})" for k, v in steps.items()))
        profile["loop_steps_ms"] = {k: v / n * 1e3 for k, v in steps.items()}

        k = min(n, 120)
        M.wait_quiet(args.wait_quiet)
        text, groups = cprofile_partition(inputs[:k], opts, scratch, rowgroup_mb)
        M.clear(scratch)
        gt = groups["total_s"]
        print(f"cProfile of write_partition on {k} inputs in one process ({gt / k * 1e3:.1f} ms/input "
              f"under the profiler):")
        for g, v in sorted(groups["groups"].items(), key=lambda kv: -kv[1]):
            print(f"  {g:62s} {v / k * 1e3:6.2f} ms/img  {v / gt:5.1%}")
        print("  top functions by own time:\n    " + "\n    ".join(text.splitlines()[-16:]))
        profile["cprofile_groups_ms"] = {g: v / k * 1e3 for g, v in groups["groups"].items()}

        for s in sorted({n, sizes[0]} & set(v_stage), reverse=True):
            (wall, cpu, phases, counts, missing, results), _ = bench.measure(
                lambda s=s: M.profiled_stage(spark, next(stage_confs[s]), "ingest", stage_targets(), PHASE_NOTES),
                f"instrumented stage, {s} frames")
            M.expect(results["rows_written"], s, "instrumented stage rows written")
            print(f"phases of one extra (instrumented) stage run on {s} frames, {wall:.1f}s = {s / wall:.1f} img/s "
                  f"[{M.fmt_cpu(cpu, wall)}]; Spark: {counts['jobs']} jobs, {counts['stages']} stages, "
                  f"{counts['tasks']} tasks" + (f"; not wrapped (gone): {', '.join(missing)}" if missing else ""))
            M.print_timeline(phases, wall)
            profile[f"stage_phases_{s}"] = {"wall_s": wall, "cpu": cpu, "spark": counts,
                                            "phases": [{"phase": p, "s": t, "jobs": j} for p, t, j in phases]}

        sweep = _ints(args.sweep)
        if sweep:
            print(f"transform partition sweep (median of {args.repeats}):")
            profile["partition_sweep_ips"] = {}
            for parts in sweep:
                walls = []
                for _ in range(args.repeats):
                    (wall, _, got), _ = bench.measure(lambda: M.timed(
                        lambda: spark_transform(spark, inputs, opts, parts, scratch, rowgroup_mb)),
                        f"sweep {parts}")
                    M.clear(scratch)
                    M.expect(got, (n, n), f"sweep {parts}")
                    walls.append(wall)
                ips = n / M.med(walls)
                profile["partition_sweep_ips"][parts] = ips
                print(f"  {parts:3d} partitions: {ips:6.1f} img/s ({ips / base:.2f}x the 1-thread loop, "
                      f"{ips / bench.rate(v_procs):.2f}x the {procs}-process loop)")

    M.write_results(work / "results.json", {
        "date": started.isoformat(), "frames": n, "stage_sizes": sizes, "repeats": args.repeats,
        "master": args.master, "cpus": os.cpu_count(), "transform_partitions": partitions, "table": table,
        **extra, "profile": profile}, bench)
    for p in (pool, tuned1, tuned):
        p.close()
        p.join()
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
