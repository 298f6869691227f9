#!/usr/bin/env python
"""Ingest throughput: 1280x720 PNG frames -> 128x128 rows, Spark ``local[2]`` vs a plain single-process loop.

What is measured, all in one run, interleaved per repeat so that machine noise hits every variant alike:

* ``loop, cv2 1 thread``   the baseline: one Python process over the same files doing the work ingest does per
                           image (``images.read_bytes`` -> ``images.decode_image`` -> ``cv2.resize(INTER_AREA)``
                           to 128x128 -> ``cv2.imencode('.png')``), with ``cv2.setNumThreads(1)`` as in a Spark task.
* ``loop, cv2 default``    the same loop with OpenCV's default thread pool (a second, labelled baseline).
* ``loop, 2 processes``    the same loop in a plain 2-process multiprocessing pool (started before timing), files split
                           evenly: what two cores give without Spark, i.e. the realistic ceiling for ``local[2]``.
* ``process_partition, 1 proc``  ingest's own per-input code (``ingest.process_partition``) called in this one
                           process, no Spark: what ingest does per image on top of the bare loop (phash, lane mask,
                           Petastorm row encoding), without any parallelism.
* ``spark transform``      ``sc.parallelize(plan_inputs(conf), 4).mapPartitions(process_partition).count()`` on
                           ``local[2]``: the core transform only (rows are counted in the Python workers; they never
                           reach the JVM).
* ``spark transform+persist``  the same RDD persisted MEMORY_AND_DISK, as the stage does, then counted: rows are
                           pickled to the JVM block manager and read back once.
* ``spark stage``          the whole ingest stage through ``run_stage(get_stage("ingest"), ...)`` with a real
                           ``Tracker``: plan, transform, ledger, Petastorm writes per split, accounting, quarantine,
                           near-duplicate join, MLflow logging, dataset swap. A fresh ``paths.work_dir`` per repeat.
* ``spark stage, small``   the same stage on the first ``--small-frames`` frames: with the full-size run it separates
                           the stage's fixed cost (Spark jobs, MLflow) from its per-image cost.

Noise: the machine is shared. Every measurement records the CPU that other processes used meanwhile (machine
busy time minus ours); ``--wait-quiet`` waits for an idle machine before each measurement, and a measurement with
others above ``--noise-cores`` is re-taken up to ``--retry-noisy`` times, keeping the least noisy attempt. The table
shows the others' CPU of the kept samples.

One SparkSession is built once (``spark.ui.showConsoleProgress=false``, for readable output); the JVM start, the
first Python-worker imports and the MLflow store creation are paid by an untimed warm-up stage run on the small
tree. Tracker construction (MLflow store creation for the fresh work dir) is outside the timed region and reported
separately.

Where the time goes (``--no-profile`` skips it): per-step timing of the loop (read / decode / resize / encode),
a cProfile of ``process_partition`` in one process, a phase breakdown of one extra stage run (the ingest
module's helpers are wrapped for timestamps only), CPU seconds per process (driver, JVM, Python workers) and
the CPU other processes used during each measurement (noise), and a partition-count sweep of the transform.

Run:  .venv/bin/python benchmarks/bench_ingest.py [--frames 400] [--repeats 3] [--work-dir DIR] [--wait-quiet 30]
Results (JSON) are also written to ``<work-dir>/results.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as _dt
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

try:
    import psutil  # noqa: E402
except ImportError:  # CPU accounting is optional
    psutil = None

CV2_DEFAULT_THREADS = cv2.getNumThreads()   # before anything calls setNumThreads
TARGET_HW = (128, 128)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Ingest throughput of 1280x720 PNG frames -> 128x128: the real Spark ingest stage on "
                    "local[2] vs a plain single-process decode/resize/encode loop, in the same run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--frames", type=int, default=400, help="frames to generate and ingest")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of every variant (medians reported)")
    p.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "bench_ingest"),
                   help="frames are written here once and reused; every stage run gets a fresh folder under it")
    p.add_argument("--small-frames", type=int, default=0,
                   help="frames of the fixed-cost probe stage run and of the warm-up (0: frames // 8, min 16)")
    p.add_argument("--classes", type=int, default=4, help="ImageFolder class folders")
    p.add_argument("--master", default="local[2]", help="spark.master")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the bare-transform measurement")
    p.add_argument("--sweep", default="2,4,8,16",
                   help="partition counts for the transform sweep in the profile section ('' to skip)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each timed measurement, wait up to this long for the machine to be idle (other "
                        "processes using < 0.25 cores over 3 s); the machine is shared, and noise hurts the 2-core "
                        "variants most")
    p.add_argument("--noise-cores", type=float, default=0.2,
                   help="a measurement during which other processes used more CPU than this (cores) is noisy")
    p.add_argument("--retry-noisy", type=int, default=2,
                   help="re-measure a noisy measurement up to this many times; the least noisy attempt is kept")
    p.add_argument("--no-profile", action="store_true", help="skip the 'where the time goes' section")
    p.add_argument("--skip-stage", action="store_true", help="do not run the whole stage (transform only)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------- frames

def _render_one(job):
    """Render frame i with the project's synthetic generator (1280x720) and write it as a PNG (cv2)."""
    i, path = job
    from pipeline.data.synth import SynthConfig, render_frame

    frame = render_frame(0, i, SynthConfig())
    ok, buf = cv2.imencode(".png", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
    assert ok
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.part"
    with open(tmp, "wb") as fh:
        fh.write(buf.tobytes())
    os.replace(tmp, path)
    return path


def generate_frames(work: Path, n: int, classes: int) -> list[str]:
    """<work>/frames/<class>/<name>.png, written once: a manifest says what is there, so repeats reuse it."""
    frames = work / "frames"
    manifest = work / "frames_manifest.json"
    want = {"frames": n, "classes": classes, "seed": 0, "hw": [720, 1280], "generator": "synth.render_frame"}
    paths = [str(frames / f"class_{i % classes}" / f"frame_{i:05d}.png") for i in range(n)]
    if manifest.exists() and json.loads(manifest.read_text()) == want and all(map(os.path.exists, paths)):
        print(f"frames: reusing {n} PNGs under {frames}")
        return paths
    shutil.rmtree(frames, ignore_errors=True)
    t0 = time.perf_counter()
    import multiprocessing as mp

    with mp.get_context("fork").Pool(max(1, os.cpu_count() or 1)) as pool:   # before any JVM exists
        pool.map(_render_one, list(enumerate(paths)), chunksize=8)
    manifest.write_text(json.dumps(want))
    size = sum(os.path.getsize(p) for p in paths)
    print(f"frames: wrote {n} PNGs ({size / n / 1e6:.2f} MB each on average) in {time.perf_counter() - t0:.1f}s")
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


# ----------------------------------------------------------------------------------- CPU accounting

def _busy(ct) -> float:
    return sum(getattr(ct, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


class CpuMeter:
    """CPU seconds of the driver, the JVM and its Python workers, and of the whole machine (-> others).

    Python workers come and go (pyspark.daemon forks them and does not reap them into its own child times),
    so a background thread polls the JVM's descendants every 0.1 s and keeps each pid's last-seen CPU time;
    a worker that exits between two polls loses at most 0.1 s of CPU from the count.
    """

    def __init__(self):
        self.jvm_pid = None
        self.pool_pids: list = []   # the plain multiprocessing loop's worker processes
        self.active = False     # poll only while a Spark variant runs (the thread must not slow the loops)
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
            jvm = psutil.Process(self.jvm_pid)
            kids = jvm.children(recursive=True)
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
    """Wait (up to limit_s) until the machine's busy CPU over ``window`` seconds is below ``threshold`` cores;
    returns the last measured busy cores."""
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


# ------------------------------------------------------------------------------------------ baseline

def loop_once(paths: list[str], min_size: int, max_pixels: int, steps: dict | None = None) -> int:
    """The plain single-process loop: read -> decode_image -> resize 128x128 (INTER_AREA) -> PNG encode."""
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
        ok, buf = cv2.imencode(".png", small[:, :, ::-1])   # RGB -> BGR as Petastorm's codec does
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
        return loop_once(paths, conf.ingest.min_size, conf.ingest.max_pixels)
    finally:
        cv2.setNumThreads(CV2_DEFAULT_THREADS)


def _loop_chunk(job) -> int:
    paths, min_size, max_pixels = job
    cv2.setNumThreads(1)
    return loop_once(paths, min_size, max_pixels)


def run_loop_procs(pool, procs: int, paths, conf) -> int:
    """The same loop in ``procs`` plain processes (a started multiprocessing pool), files split evenly:
    what two cores give without Spark, the realistic ceiling for local[2]."""
    jobs = [(paths[i::procs], conf.ingest.min_size, conf.ingest.max_pixels) for i in range(procs)]
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
    from pipeline.config import load_config

    return load_config("local", overrides=[
        f"paths.work_dir={work_dir}", f"spark.master={master}", "ingest.source=imagefolder",
        f"ingest.source_path={source_path}", f"ingest.road_hw=[{TARGET_HW[0]},{TARGET_HW[1]}]",
        "spark.conf.spark.ui.showConsoleProgress=false"])   # no progress bars in the output; no effect on timing


def spark_transform(spark, inputs, opts, partitions: int, persist: bool) -> int:
    from pyspark import StorageLevel

    from pipeline.data.ingest import process_partition

    rdd = spark.sparkContext.parallelize(inputs, partitions).mapPartitions(lambda it: process_partition(it, opts))
    if not persist:
        return rdd.count()
    rdd = rdd.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return rdd.count()
    finally:
        rdd.unpersist()


class Runs:
    """Fresh work dirs for stage runs."""

    def __init__(self, root: Path):
        self.root = root
        self.n = 0
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)

    def next(self, tag: str) -> Path:
        self.n += 1
        return self.root / f"{self.n:02d}-{tag}"


def stage_once(spark, conf):
    """(stage wall seconds, CPU deltas, results, tracker init seconds); Tracker creation is not timed."""
    from pipeline.stages import get_stage, run_stage
    from pipeline.tracking import Tracker

    t0 = time.perf_counter()
    tracker = Tracker(conf)
    tracker_s = time.perf_counter() - t0
    wall, cpu, results = timed(lambda: run_stage(get_stage("ingest"), spark, conf, tracker))
    return wall, cpu, results, tracker_s


# -------------------------------------------------------------------------------------------- profile

@contextlib.contextmanager
def instrumented_ingest(events: list):
    """Wrap helpers of pipeline.data.ingest to record (name, start, end); restores them afterwards."""
    from pipeline.data import ingest

    names = ["run", "plan_inputs", "recover", "_ledger_schema", "write_petastorm", "_account",
             "near_duplicate_pairs", "_write_meta", "swap_in", "_log"]
    saved = {n: getattr(ingest, n) for n in names}

    def wrap(name, fn):
        def inner(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                events.append((name, t0, time.perf_counter()))
        return inner

    for n in names:
        setattr(ingest, n, wrap(n, saved[n]))
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(ingest, n, fn)


def stage_phases(events: list, t_start: float, t_end: float) -> list[tuple[str, float]]:
    """Turn wrapper events into the stage's phases (seconds), in order."""
    first = {}
    last = {}
    total_write = 0.0
    for name, a, b in events:
        first.setdefault(name, (a, b))
        last[name] = (a, b)
        if name == "write_petastorm":
            total_write += b - a
    run_a, run_b = first["run"]
    plan_b = first["plan_inputs"][1]
    recover_b = first["recover"][1]
    ledger_a = first["_ledger_schema"][0]
    pw_a, pw_b = first["write_petastorm"][0], last["write_petastorm"][1]
    acc_a, acc_b = first["_account"]
    ndp_a = first["near_duplicate_pairs"][0]
    meta_a = first["_write_meta"][0]
    log_a, log_b = first["_log"]
    n_writes = sum(1 for e in events if e[0] == "write_petastorm")
    return [
        ("MLflow child run start + config logging (run_stage)", run_a - t_start),
        ("plan inputs (read_imagefolder on the driver) + recover", recover_b - run_a),
        ("transform + ledger parquet write + splits query (first action on the persisted RDD)", pw_a - ledger_a),
        (f"Petastorm writes ({n_writes} datasets: rows -> DataFrame -> parquet + metadata)", total_write),
        ("sample rows (take 12) + unpersist", acc_a - pw_b),
        ("accounting (groupBy counts, read back every dataset)", acc_b - acc_a),
        ("quarantine write", ndp_a - acc_b),
        ("near-duplicate join + count, _ingest.json, swap-in", log_a - ndp_a),
        ("MLflow logging (metrics, dataset fingerprints, sample figures)", log_b - log_a),
        ("mark_done + MLflow run end", t_end - run_b),
        ("(unaccounted inside run())", (run_b - run_a) - ((recover_b - run_a) + (pw_a - ledger_a) + total_write
                                                           + (acc_a - pw_b) + (acc_b - acc_a) + (ndp_a - acc_b)
                                                           + (log_a - ndp_a) + (log_b - log_a))),
    ]


def profiled_stage(spark, conf, count: int):
    """One stage run with the ingest helpers wrapped for timestamps: (wall, CPU deltas, phases)."""
    from pipeline.stages import get_stage, run_stage
    from pipeline.tracking import Tracker

    events: list = []
    tracker = Tracker(conf)
    with instrumented_ingest(events):
        a = METER.snapshot()
        METER.active = True
        t_start = time.perf_counter()
        results = run_stage(get_stage("ingest"), spark, conf, tracker)
        t_end = time.perf_counter()
        METER.active = False
        cpu = CpuMeter.delta(a, METER.snapshot())
    assert results["rows_written"] == count, results
    return t_end - t_start, cpu, stage_phases(events, t_start, t_end)


def cprofile_partition(inputs, opts, top: int = 14) -> tuple[str, dict]:
    from pipeline.data.ingest import process_partition

    prof = cProfile.Profile()
    prof.enable()
    n = sum(1 for _ in process_partition(inputs, opts))
    prof.disable()
    cv2.setNumThreads(CV2_DEFAULT_THREADS)
    assert n == 2 * len(inputs)
    st = pstats.Stats(prof)
    total = st.total_tt
    groups = {"cv2.imdecode (PNG inflate + unfilter)": ("imdecode",),
              "cv2.resize": ("resize",), "cv2.imencode (PNG encode, image + lane mask)": ("imencode",),
              "cv2.cvtColor (decode BGR->RGB, phash grey)": ("cvtColor",), "cv2.dct (phash)": ("dct",),
              "file read": ("method 'read' of '_io.BufferedReader'",),
              "PNG header / IEND scan": ("rfind", "_png_header")}
    by = {g: 0.0 for g in groups}
    for (file, line, name), (cc, nc, tt, ct, callers) in st.stats.items():
        label = f"{file}:{name}"
        for g, keys in groups.items():
            if any(k in label for k in keys):
                by[g] += tt
                break
    by["everything else (Python: dicts, Row building, hashing, ...)"] = total - sum(by.values())
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    text = "\n".join(line for line in out.getvalue().splitlines() if line.strip())
    return text, {"total_s": total, "images": len(inputs), "groups": by}


# ------------------------------------------------------------------------------------------------ main

def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt_cpu(cpu: dict, wall: float) -> str:
    if not cpu:
        return "n/a"
    pool = f", pool {cpu['pool']:.1f}s" if cpu["pool"] > 0.05 else ""
    return (f"driver {cpu['driver']:.1f}s, JVM {cpu['jvm']:.1f}s, py-workers {cpu['workers']:.1f}s{pool}, "
            f"others {cpu['others']:.1f}s; util {cpu['ours'] / wall:.2f} cores")


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    n = args.frames
    n_small = args.small_frames or max(16, n // 8)
    n_small = min(n_small, n)
    started = _dt.datetime.now().astimezone()
    print(f"bench_ingest  {started:%Y-%m-%d %H:%M %Z}  host={platform.node()} cpus={os.cpu_count()} "
          f"python={platform.python_version()} cv2={cv2.__version__} (default threads {CV2_DEFAULT_THREADS})")
    print(f"load average at start: {os.getloadavg()}")

    paths = generate_frames(work, n, args.classes)
    frames_dir = work / "frames"
    small_dir = work / "frames_small"
    link_subset(paths[:n_small], frames_dir, small_dir)
    mb = sum(os.path.getsize(p) for p in paths) / 1e6
    print(f"{n} frames, {mb:.0f} MB of PNG (files are in the page cache after generation for every variant)")

    import multiprocessing as mp

    import pyspark

    from pipeline.data import ingest
    from pipeline.session import build_session

    # Every config is resolved now, once: conf/*.yaml may be edited by others while the benchmark runs.
    runs = Runs(work / "runs")
    conf = make_conf(runs.next("plan"), frames_dir, args.master)
    small_conf = make_conf(runs.next("warmup"), small_dir, args.master)
    attempts = 1 + max(0, args.retry_noisy)
    stage_confs = [([make_conf(runs.next(f"stage-r{r + 1}-a{k + 1}"), frames_dir, args.master)
                     for k in range(attempts)],
                    [make_conf(runs.next(f"stage-r{r + 1}-a{k + 1}-small"), small_dir, args.master)
                     for k in range(attempts)])
                   for r in range(args.repeats)]
    profiled_confs = [([make_conf(runs.next(f"stage-profiled-a{k + 1}"), frames_dir, args.master)
                        for k in range(attempts)], n),
                      ([make_conf(runs.next(f"stage-profiled-a{k + 1}-small"), small_dir, args.master)
                        for k in range(attempts)], n_small)]
    inputs, classes = ingest.plan_inputs(conf)
    opts = ingest.options_from(conf, classes)
    assert len(inputs) == n, (len(inputs), n)
    print(f"plan_inputs: {len(inputs)} inputs, classes {classes}")

    t0 = time.perf_counter()
    spark = build_session(conf)
    METER.start(int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()))
    print(f"SparkSession ({args.master}, pyspark {pyspark.__version__}) built in {time.perf_counter() - t0:.1f}s "
          f"(JVM pid {METER.jvm_pid}); untimed")

    # Warm-up (untimed): JVM JIT, Python worker start + imports, MLflow store; the same code paths as timed runs.
    t0 = time.perf_counter()
    small_inputs, _ = ingest.plan_inputs(small_conf)
    spark_transform(spark, small_inputs, opts, args.partitions, persist=False)
    if not args.skip_stage:
        stage_once(spark, small_conf)
    run_loop(paths[:4], conf, 1)
    procs = os.cpu_count() or 2
    pool = mp.get_context("spawn").Pool(procs)    # started (and its imports paid) before any timing
    run_loop_procs(pool, procs, paths[:2 * procs], conf)
    METER.pool_pids = [p.pid for p in pool._pool]
    print(f"warm-up (untimed: one small transform + one small stage run on {n_small} frames): "
          f"{time.perf_counter() - t0:.1f}s")

    two = f"loop, {procs} processes (no Spark)"
    variants = ["loop, cv2 1 thread", "loop, cv2 default threads", two, "process_partition, 1 proc (no Spark)",
                "spark transform", "spark transform+persist"]
    if not args.skip_stage:
        variants += ["spark stage", "spark stage, small"]
    res = {v: {"wall": [], "cpu": [], "images": n} for v in variants}
    if not args.skip_stage:
        res["spark stage, small"]["images"] = n_small
    tracker_init = []
    for r in range(args.repeats):
        print(f"\n--- repeat {r + 1}/{args.repeats}  (load average {os.getloadavg()[0]:.2f})", flush=True)
        plan = [
            ("loop, cv2 1 thread", lambda k: run_loop(paths, conf, 1), n, False),
            ("loop, cv2 default threads", lambda k: run_loop(paths, conf, CV2_DEFAULT_THREADS), n, False),
            (two, lambda k: run_loop_procs(pool, procs, paths, conf), n, False),
            ("process_partition, 1 proc (no Spark)", lambda k: run_partition_in_process(inputs, opts), 2 * n, False),
            ("spark transform", lambda k: spark_transform(spark, inputs, opts, args.partitions, False), 2 * n, True),
            ("spark transform+persist", lambda k: spark_transform(spark, inputs, opts, args.partitions, True), 2 * n,
             True),
        ]
        if not args.skip_stage:
            plan += [("spark stage", lambda k, r=r: stage_once(spark, stage_confs[r][0][k]), None, True),
                     ("spark stage, small", lambda k, r=r: stage_once(spark, stage_confs[r][1][k]), None, True)]
        for name, fn, expect, on_spark in plan:
            count = res[name]["images"]
            kept = None
            for k in range(attempts):
                wait_quiet(args.wait_quiet)
                if expect is None:    # a stage run: Tracker creation happens inside stage_once, untimed
                    wall, cpu, results, tr_s = fn(k)
                    assert results["rows_in"] == results["rows_written"] == count, results
                    note = f"  (Tracker init {tr_s:.1f}s, untimed)"
                    tracker_init.append(tr_s)
                else:
                    wall, cpu, got = timed(lambda: fn(k), on_spark)
                    assert got == expect, (name, got, expect)
                    note = ""
                noise = cpu["others"] / wall if cpu else 0.0
                print(f"{name:40s} {wall:7.2f}s  {count / wall:7.1f} img/s   [{fmt_cpu(cpu, wall)}]{note}"
                      + (f"  NOISY ({noise:.2f} cores used by others)" if noise > args.noise_cores else ""),
                      flush=True)
                if kept is None or noise < kept[2]:
                    kept = (wall, cpu, noise)
                if noise <= args.noise_cores:
                    break
            res[name]["wall"].append(kept[0])
            res[name]["cpu"].append(kept[1])
            res[name]["attempts"] = res[name].get("attempts", 0) + k + 1

    # ------------------------------------------------------------------------------------- table
    base = n / med(res["loop, cv2 1 thread"]["wall"])
    base_mt = n / med(res["loop, cv2 default threads"]["wall"])
    ceiling = n / med(res[two]["wall"])
    print(f"\n=== {n} frames 1280x720 PNG -> 128x128, {args.master} on {os.cpu_count()} cores, "
          f"median of {args.repeats} (min-max)")
    print(f"| variant | images/s (median) | min-max | vs loop 1 thread | vs loop default threads | "
          f"vs {procs}-process loop | cores used (ours) | other processes (cores) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    table = {}
    for v in variants:
        ips = [res[v]["images"] / w for w in res[v]["wall"]]
        m = res[v]["images"] / med(res[v]["wall"])
        table[v] = {"median_ips": m, "min_ips": min(ips), "max_ips": max(ips), "walls": res[v]["wall"],
                    "ratio_vs_loop1": m / base, "ratio_vs_loop_default": m / base_mt,
                    "ratio_vs_procs_loop": m / ceiling, "images": res[v]["images"]}
        ours = [c["ours"] / w for w, c in zip(res[v]["wall"], res[v]["cpu"]) if c]
        other = [c["others"] / w for w, c in zip(res[v]["wall"], res[v]["cpu"]) if c]
        table[v].update({"ours_cores": ours, "others_cores": other, "attempts": res[v].get("attempts", 0)})
        print(f"| {v} | {m:.1f} | {min(ips):.1f}-{max(ips):.1f} | {m / base:.2f}x | {m / base_mt:.2f}x | "
              f"{m / ceiling:.2f}x | {med(ours):.2f} | {med(other):.2f} |")
    extra = {}
    if not args.skip_stage:
        t_big = med(res["spark stage"]["wall"])
        t_small = med(res["spark stage, small"]["wall"])
        per_img = (t_big - t_small) / (n - n_small) if n > n_small else float("nan")
        fixed = t_small - n_small * per_img
        extra = {"stage_fixed_s": fixed, "stage_marginal_ips": 1 / per_img if per_img > 0 else float("inf"),
                 "tracker_init_s_median": med(tracker_init)}
        print(f"\nstage model from the two sizes: time = {fixed:.1f}s fixed + N / {1 / per_img:.1f} img/s "
              f"(marginal {1 / per_img / base:.2f}x the 1-thread loop); at N={n} the fixed part is "
              f"{fixed / t_big:.0%} of the stage. Tracker init (untimed) median {med(tracker_init):.1f}s.")
    retried = {v: table[v]["attempts"] - args.repeats for v in variants if table[v]["attempts"] > args.repeats}
    print(f"noisy measurements re-taken (others > {args.noise_cores} cores; least noisy attempt kept): "
          + (", ".join(f"{v}: {k}" for v, k in retried.items()) or "none"))
    others = [x for v in variants for x in table[v]["others_cores"]]
    if others:
        print(f"noise: other processes used {med(others):.2f} cores on median (max {max(others):.2f}) during "
              f"the timed runs; load average now {os.getloadavg()}")

    # ----------------------------------------------------------------------------------- profile
    profile = {}
    if not args.no_profile:
        print("\n=== where the time goes")
        steps: dict = {}
        wait_quiet(args.wait_quiet)
        cv2.setNumThreads(1)
        loop_once(paths, conf.ingest.min_size, conf.ingest.max_pixels, steps)
        cv2.setNumThreads(CV2_DEFAULT_THREADS)
        tot = sum(steps.values())
        print(f"loop steps (1 thread, {n} images, {tot:.2f}s): " + ", ".join(
            f"{k} {v / n * 1e3:.2f} ms/img ({v / tot:.0%})" for k, v in steps.items()))
        profile["loop_steps_ms"] = {k: v / n * 1e3 for k, v in steps.items()}

        k = min(n, 120)
        wait_quiet(args.wait_quiet)
        text, groups = cprofile_partition(inputs[:k], opts)
        gt = groups["total_s"]
        print(f"cProfile of process_partition on {k} inputs in one process ({gt / k * 1e3:.1f} ms/input "
              f"under the profiler):")
        for g, v in sorted(groups["groups"].items(), key=lambda kv: -kv[1]):
            print(f"  {g:62s} {v / k * 1e3:6.2f} ms/img  {v / gt:5.1%}")
        print("  top functions by own time:\n    " + "\n    ".join(text.splitlines()[-16:]))
        profile["cprofile_groups_ms"] = {g: v / k * 1e3 for g, v in groups["groups"].items()}

        if not args.skip_stage:
            for cs, count in profiled_confs:
                for k in range(attempts):
                    wait_quiet(args.wait_quiet)
                    wall, cpu, phases = profiled_stage(spark, cs[k], count)
                    noise = cpu["others"] / wall if cpu else 0.0
                    if noise <= args.noise_cores or k == attempts - 1:
                        break
                    print(f"  (instrumented stage run on {count} frames was noisy: others used {noise:.2f} cores;"
                          f" again)")
                print(f"phases of one extra (instrumented) stage run on {count} frames, {wall:.1f}s = "
                      f"{count / wall:.1f} img/s [{fmt_cpu(cpu, wall)}]:")
                for name, sec in phases:
                    print(f"  {sec:6.2f}s {sec / wall:5.1%}  {name}")
                profile[f"stage_phases_{count}_s"] = dict(phases)
                profile[f"stage_profiled_{count}"] = {"wall_s": wall, "cpu": cpu}

        sweep = [int(x) for x in args.sweep.split(",") if x.strip()]
        if sweep:
            print(f"transform partition sweep (median of {args.repeats}):")
            profile["partition_sweep_ips"] = {}
            for parts in sweep:
                walls = []
                for _ in range(args.repeats):
                    kept = None
                    for k in range(attempts):
                        wait_quiet(args.wait_quiet)
                        wall, cpu, got = timed(lambda: spark_transform(spark, inputs, opts, parts, False))
                        assert got == 2 * n
                        noise = cpu["others"] / wall if cpu else 0.0
                        if kept is None or noise < kept[1]:
                            kept = (wall, noise)
                        if noise <= args.noise_cores:
                            break
                    walls.append(kept[0])
                ips = n / med(walls)
                profile["partition_sweep_ips"][parts] = ips
                print(f"  {parts:3d} partitions: {ips:6.1f} img/s ({ips / base:.2f}x the 1-thread loop, "
                      f"{ips / ceiling:.2f}x the {procs}-process loop)")

    out = {"date": started.isoformat(), "command": " ".join([Path(sys.executable).name] + sys.argv),
           "frames": n, "small_frames": n_small, "repeats": args.repeats, "master": args.master,
           "cpus": os.cpu_count(), "table": table, "cpu": {v: res[v]["cpu"] for v in variants}, **extra,
           "profile": profile, "load_average_end": os.getloadavg()}
    (work / "results.json").write_text(json.dumps(out, indent=1, default=str))
    print(f"\nresults: {work / 'results.json'}")
    pool.close()
    pool.join()
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
