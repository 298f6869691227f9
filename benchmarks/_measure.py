"""Measuring helpers shared by the benchmarks (bench_ingest.py, bench_augment.py).

* :class:`CpuMeter` / :data:`METER`: CPU seconds of this process (the driver), the JVM, its Python workers, a plain
  process pool, and of the whole machine; what the machine used beyond ours is ``others``: the noise.
* :func:`wait_quiet`: wait for other processes to go quiet before a measurement (the machine is shared).
* :func:`timed`, :class:`Bench`: timed runs; a run during which others used more than ``--retake-above`` cores is
  re-taken (at most ``--retakes`` times) and the least disturbed attempt is kept. :meth:`Bench.record` keeps the
  samples per variant, :meth:`Bench.table` prints the markdown table of medians with ratios to the baselines.
* :func:`stage_once`: one whole stage through ``run_stage`` with a real Tracker (whose creation is not timed).
* :func:`profiled_stage` (built on :func:`wrapped`, :func:`timeline`, :class:`SparkJobs`): where a stage run's time
  goes, from timestamps of wrapped functions (no profiler inside the stage) and the Spark jobs started meanwhile.
* :func:`profile_groups`: a cProfile summed into named groups; :func:`fit_linear`: time = fixed + N * per-item
  (``statistics.linear_regression``).

Scripts import it as ``import _measure`` (their own folder is on sys.path when run as
``.venv/bin/python benchmarks/bench_X.py``).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import io
import json
import os
import platform
import pstats
import shlex
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

try:
    import psutil
except ImportError:  # CPU accounting is optional
    psutil = None


# ------------------------------------------------------------------------------------------ formatting

def med(xs):
    xs = [x for x in xs if x == x]  # no NaN
    return statistics.median(xs) if xs else float("nan")


def fmt_cpu(cpu: dict, wall: float) -> str:
    if not cpu:
        return "n/a"
    pool = f", pool {cpu['pool']:.1f}s" if cpu["pool"] > 0.05 else ""
    return (f"driver {cpu['driver']:.1f}s, JVM {cpu['jvm']:.1f}s, py-workers {cpu['workers']:.1f}s{pool}, "
            f"others {cpu['others']:.1f}s; util {cpu['ours'] / wall:.2f} cores")


def command_line() -> str:
    return " ".join([".venv/bin/python" if ".venv" in sys.executable else Path(sys.executable).name]
                    + [shlex.quote(a) for a in sys.argv])


def header(name: str, versions: str = "") -> _dt.datetime:
    """Print the first lines of a benchmark's output (date, host, versions, command line); returns the start."""
    started = _dt.datetime.now().astimezone()
    print(f"{name}  {started:%Y-%m-%d %H:%M %Z}  host={platform.node()} cpus={os.cpu_count()} "
          f"python={platform.python_version()} {versions}".rstrip())
    print(f"command: {command_line()}")
    print(f"load average at start: {os.getloadavg()}", flush=True)
    return started


def add_noise_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each timed measurement, wait up to this long for the machine to be idle (other "
                        "processes using < 0.25 cores over 3 s); the machine is shared, and noise hurts the "
                        "2-core variants most")
    p.add_argument("--retake-above", "--noise-cores", type=float, default=0.2, metavar="CORES",
                   help="re-take a measurement during which other processes used more than this many cores")
    p.add_argument("--retakes", "--retry-noisy", type=int, default=2,
                   help="at most this many re-takes per measurement; the least disturbed attempt is kept")


# ------------------------------------------------------------------------------------ CPU accounting

def _busy(ct) -> float:
    return sum(getattr(ct, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


class CpuMeter:
    """CPU seconds of the driver, the JVM, its Python workers and a process pool, and of the whole machine
    (-> ``others``, the noise).

    Python workers come and go (pyspark.daemon forks them and does not reap them into its own child times), so
    while a Spark variant runs a thread polls the JVM's descendants every 0.1 s and keeps each pid's last-seen
    CPU time; a worker that exits between two polls loses at most 0.1 s of CPU from the count.
    """

    def __init__(self):
        self.jvm_pid = None
        self.pool_pids: list = []   # a plain multiprocessing pool's worker processes
        self.active = False         # poll only while a Spark variant runs (the thread must not slow the loops)
        self._seen: dict = {}
        self._lock = threading.Lock()

    def start(self, spark) -> int:
        """Follow the JVM of ``spark`` (and its Python workers); returns the JVM's pid."""
        self.jvm_pid = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
        if psutil is not None:
            self._poll()
            threading.Thread(target=self._loop, daemon=True, name="cpu-meter").start()
        return self.jvm_pid

    def watch_pool(self, pool) -> None:
        """Count this pool's worker processes as ours (call once per pool; pools add up)."""
        self.pool_pids += [p.pid for p in pool._pool]

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
        if self.jvm_pid:
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
    """Wait (up to ``limit_s``) until the machine's busy CPU over ``window`` seconds is below ``threshold``
    cores; returns the last measured busy cores (NaN when not measured)."""
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
    """(wall seconds, CPU deltas, result) of ``fn()``; the JVM's descendants are polled only when ``spark``."""
    a = METER.snapshot()
    METER.active = spark
    t0 = time.perf_counter()
    try:
        out = fn()
    finally:
        wall = time.perf_counter() - t0
        METER.active = False
    return wall, CpuMeter.delta(a, METER.snapshot()), out


def others_cores(wall: float, cpu: dict) -> float:
    return cpu["others"] / wall if cpu and wall > 0 else 0.0


# ------------------------------------------------------------------------------------ measurements

class Bench:
    """Measurements of one benchmark run: re-takes of disturbed samples, samples per variant, the table."""

    def __init__(self, args):
        self.wait_s, self.retake_above, self.retakes = args.wait_quiet, args.retake_above, args.retakes
        self.retaken: list = []
        self.res: dict = {}      # variant -> {"items", "wall", "cpu", "attempts"}

    def measure(self, run, label: str):
        """``run()`` -> (wall, cpu, ...) after waiting for a quiet machine; re-taken while other processes used
        more than ``retake_above`` cores during it; the least disturbed attempt is returned, plus the count."""
        best, best_others, attempts = None, float("inf"), 0
        for attempt in range(self.retakes + 1):
            wait_quiet(self.wait_s)
            out = run()
            attempts += 1
            others = others_cores(out[0], out[1])
            if others < best_others:
                best, best_others = out, others
            if others <= self.retake_above:
                break
            if attempt < self.retakes:
                self.retaken.append(label)
                print(f"  (re-taking '{label}': other processes used {others:.2f} cores during it)", flush=True)
        return best, attempts

    def variant(self, name: str, items: int) -> None:
        self.res.setdefault(name, {"items": items, "wall": [], "cpu": [], "attempts": 0})

    def record(self, name: str, run, unit: str = "img/s", note=None):
        """Measure ``run()`` -> (wall, cpu, ...) as one sample of variant ``name`` (see :meth:`variant`); prints
        the sample; ``note(out)`` adds text to the line. Returns the kept ``run()`` result."""
        out, attempts = self.measure(run, name)
        wall, cpu = out[0], out[1]
        r = self.res[name]
        r["wall"].append(wall)
        r["cpu"].append(cpu)
        r["attempts"] += attempts
        extra = f"  {note(out)}" if note else ""
        print(f"{name:56s} {wall:7.2f}s  {r['items'] / wall:8.1f} {unit}   [{fmt_cpu(cpu, wall)}]{extra}",
              flush=True)
        return out

    def rate(self, name: str) -> float:
        r = self.res[name]
        return r["items"] / med(r["wall"])

    def table(self, variants: list, unit: str, baselines: list) -> dict:
        """Print the markdown table (medians, min-max, ratios to each baseline variant, our cores, others'
        cores) and return it as a dict."""
        base = {b: self.rate(b) for b in baselines}
        cols = " | ".join(f"vs {b}" for b in baselines)
        print(f"| variant | {unit} (median) | min-max | {cols} | cores used (ours) | other processes (cores) |")
        print("| --- | ---: | ---: | " + " | ".join("---:" for _ in baselines) + " | ---: | ---: |")
        table = {}
        for v in variants:
            r = self.res[v]
            if not r["wall"]:
                continue
            rates = [r["items"] / w for w in r["wall"]]
            m = self.rate(v)
            ours = [c["ours"] / w for w, c in zip(r["wall"], r["cpu"]) if c]
            other = [c["others"] / w for w, c in zip(r["wall"], r["cpu"]) if c]
            table[v] = {"items": r["items"], "median_rate": m, "min_rate": min(rates), "max_rate": max(rates),
                        "walls": r["wall"], "ratios": {b: m / x for b, x in base.items()},
                        "ours_cores": ours, "others_cores": other, "attempts": r["attempts"]}
            ratios = " | ".join(f"{m / x:.2f}x" for x in base.values())
            print(f"| {v} | {m:.1f} | {min(rates):.1f}-{max(rates):.1f} | {ratios} | {med(ours):.2f} | "
                  f"{med(other):.2f} |")
        return table

    def noise_summary(self, table: dict) -> None:
        others = [x for t in table.values() for x in t["others_cores"]]
        print(f"re-taken measurements (other processes > {self.retake_above} cores; least disturbed kept): "
              f"{len(self.retaken)}" + (f" ({', '.join(self.retaken)})" if self.retaken else ""))
        if others:
            print(f"noise: other processes used {med(others):.2f} cores on median (max {max(others):.2f}) during "
                  f"the kept samples; load average now {os.getloadavg()}")


def expect(got, want, what: str):
    """``got``, or an AssertionError naming ``what`` (checks that every variant did the work it is credited with)."""
    if got != want:
        raise AssertionError(f"{what}: got {got}, expected {want}")
    return got


def clear(folder: Path) -> None:
    """Empty ``folder`` (throwaway outputs; called outside the timed regions)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)


def fit_linear(points: list) -> tuple:
    """Least squares ``y = fixed + x * per_x`` over (x, y) points (``statistics.linear_regression``);
    (fixed, per_x), NaN when not resolvable (fewer than two distinct x)."""
    try:
        per, fixed = statistics.linear_regression([x for x, _ in points], [y for _, y in points])
    except statistics.StatisticsError:
        return float("nan"), float("nan")
    return fixed, per


class Runs:
    """Fresh, numbered folders under ``root`` (emptied once, at the start)."""

    def __init__(self, root: Path):
        self.root, self.n = root, 0
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)

    def next(self, tag: str) -> Path:
        self.n += 1
        return self.root / f"{self.n:03d}-{tag}"


def stage_once(spark, conf, stage: str):
    """One whole stage via ``run_stage`` with a real Tracker: (wall, CPU deltas, results, tracker init seconds);
    the Tracker's creation (MLflow store) is not timed."""
    from pipeline.stages import get_stage, run_stage
    from pipeline.tracking import Tracker

    t0 = time.perf_counter()
    tracker = Tracker(conf)
    tracker_s = time.perf_counter() - t0
    wall, cpu, results = timed(lambda: run_stage(get_stage(stage), spark, conf, tracker))
    return wall, cpu, results, tracker_s


def write_results(path: Path, out: dict, bench: "Bench | None" = None) -> None:
    """``out`` as JSON with the command line; with ``bench``, also every variant's CPU, the re-taken
    measurements and the load average at the end."""
    if bench is not None:
        out = {**out, "cpu": {v: r["cpu"] for v, r in bench.res.items()}, "retaken": bench.retaken,
               "load_average_end": os.getloadavg()}
    path.write_text(json.dumps({"command": command_line(), **out}, indent=1, default=str))
    print(f"results: {path}")


# ------------------------------------------------------------------------------ where the time goes

class SparkJobs:
    """Counts the Spark jobs started from this thread while active (a job group), and their stages / tasks."""

    def __init__(self, spark):
        self.sc = spark.sparkContext
        self.st = self.sc.statusTracker()
        self.group = f"bench-{time.time_ns()}"

    def __enter__(self):
        self.sc.setJobGroup(self.group, "instrumented benchmark run")
        return self

    def __exit__(self, *exc):
        self.sc.setLocalProperty("spark.jobGroup.id", None)

    def now(self) -> int:
        return len(self.st.getJobIdsForGroup(self.group))

    def counts(self) -> dict:
        jobs = [self.st.getJobInfo(j) for j in self.st.getJobIdsForGroup(self.group)]
        stage_ids = sorted({s for j in jobs if j for s in j.stageIds})
        infos = [self.st.getStageInfo(s) for s in stage_ids]
        return {"jobs": len(jobs), "stages": len(stage_ids), "tasks": sum(i.numTasks for i in infos if i)}


@contextlib.contextmanager
def wrapped(targets: list, events: list, jobs_now=lambda: 0):
    """Wrap ``(owner, attribute)`` functions (modules or classes) to record ``(name, start, end, jobs at start,
    jobs at end)`` in ``events``; restores them afterwards. Targets the owner no longer has are skipped (and
    named in the ``missing`` list yielded), so a refactored stage gives a coarser timeline, not a crash."""
    saved, missing = [], []
    for owner, name in targets:
        fn = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
        if fn is None or not callable(fn):
            missing.append(f"{getattr(owner, '__name__', owner)}.{name}")
            continue
        saved.append((owner, name, fn))

    def wrap(name, fn):
        @functools.wraps(fn)
        def inner(*a, **k):
            j0, t0 = jobs_now(), time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                events.append((name, t0, time.perf_counter(), j0, jobs_now()))
        return inner

    for owner, name, fn in saved:
        setattr(owner, name, wrap(name, fn))
    try:
        yield missing
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def timeline(events: list, t_start: float, t_end: float, j_end: int, outer: str = "run",
             notes: dict | None = None) -> list:
    """A stage run's phases from :func:`wrapped` events: (label, seconds, Spark jobs), in order, summing to
    ``t_end - t_start``. ``outer`` is the stage's own function; inside it, the top-level wrapped calls (not
    inside another wrapped call) in order, consecutive calls of one function merged ("finalize x5"), and the
    code between them as gaps, labelled ``notes[(previous, next)]`` where given."""
    notes = notes or {}
    outers = [e for e in events if e[0] == outer]
    if not outers:
        return [("(no call of the stage function recorded)", t_end - t_start, j_end)]
    _, r0, r1, rj0, rj1 = outers[0]
    inner = [e for e in events if e[0] != outer and r0 <= e[1] and e[2] <= r1]
    top = sorted((e for e in inner if not any(o is not e and o[1] <= e[1] and e[2] <= o[2]
                                              and (o[1], o[2]) != (e[1], e[2]) for o in inner)),
                 key=lambda e: e[1])
    merged: list = []
    for name, a, b, j0, j1 in top:
        if merged and merged[-1][0] == name:
            merged[-1][2], merged[-1][4], merged[-1][5] = b, j1, merged[-1][5] + 1
        else:
            merged.append([name, a, b, j0, j1, 1])
    out = [("run_stage before the stage function (MLflow child run, config logging)", r0 - t_start, rj0)]
    small = 0.0   # gaps under 10 ms without a Spark job: summed into one line, not listed one by one
    prev_name, prev_t, prev_j = "start", r0, rj0
    for name, a, b, j0, j1, count in merged:
        gap = a - prev_t
        if gap >= 0.01 or j0 - prev_j:
            out.append((notes.get((prev_name, name), f"code between {prev_name} and {name}"), gap, j0 - prev_j))
        else:
            small += gap
        label = notes.get(name, name)
        out.append((label if count == 1 else f"{label} (x{count})", b - a, j1 - j0))
        prev_name, prev_t, prev_j = name, b, j1
    if r1 - prev_t >= 0.01 or rj1 - prev_j:
        out.append((notes.get((prev_name, "end"), f"code after {prev_name}"), r1 - prev_t, rj1 - prev_j))
    else:
        small += r1 - prev_t
    out.append(("other code of the stage function (gaps under 10 ms between the calls above)", small, 0))
    out.append(("run_stage after the stage function (mark_done, MLflow run end)", t_end - r1, j_end - rj1))
    return out


def print_timeline(phases: list, wall: float) -> None:
    for label, sec, jobs in phases:
        print(f"  {sec:7.2f}s {sec / wall:6.1%} {jobs:4d} jobs  {label}")


def profiled_stage(spark, conf, stage: str, targets: list, notes: dict, outer: str = "run") -> tuple:
    """One run of ``stage`` via ``run_stage`` with a real Tracker (created untimed), the ``(owner, attribute)``
    ``targets`` it calls on the driver wrapped for timestamps (:func:`wrapped`; ``outer`` is the stage's own
    function, one of them): (wall, CPU deltas, phases (:func:`timeline`, labelled with ``notes``), Spark
    job/stage/task counts, wrapped targets not found, the stage's results)."""
    from pipeline.stages import get_stage, run_stage
    from pipeline.tracking import Tracker

    events: list = []
    tracker = Tracker(conf)
    with SparkJobs(spark) as jobs, wrapped(targets, events, jobs.now) as missing:
        a = METER.snapshot()
        METER.active = True
        t_start = time.perf_counter()
        try:
            results = run_stage(get_stage(stage), spark, conf, tracker)
        finally:
            t_end = time.perf_counter()
            METER.active = False
        cpu = CpuMeter.delta(a, METER.snapshot())
        j_end = jobs.now()
    phases = timeline(events, t_start, t_end, j_end, outer=outer, notes=notes)
    return t_end - t_start, cpu, phases, jobs.counts(), missing, results


def profile_groups(prof, groups: dict, rest: str, top: int = 16) -> tuple:
    """A cProfile's own time summed into ``groups`` (label -> substrings of "file:function"; the first group
    that matches takes a function), the rest under ``rest``; returns (top functions text, {"total_s", "groups"})."""
    st = pstats.Stats(prof)
    total = st.total_tt
    by = {g: 0.0 for g in groups}
    for (file, _line, name), (_cc, _nc, tt, _ct, _callers) in st.stats.items():
        label = f"{file}:{name}"
        for g, keys in groups.items():
            if any(k in label for k in keys):
                by[g] += tt
                break
    by[rest] = total - sum(by.values())
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    text = "\n".join(line for line in out.getvalue().splitlines() if line.strip())
    return text, {"total_s": total, "groups": by}


def trivial_job_s(spark, n: int = 20) -> tuple:
    """Median seconds of a trivial Spark job with one Python task per core, and of a JVM-only one
    (``spark.range(100).count()``): the floor every job pays."""
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
