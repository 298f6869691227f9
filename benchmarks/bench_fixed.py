"""Where the demo's minutes go: each job's fixed cost (its time with almost no work) against its work, and what
the fixed part is made of.

    .venv/bin/python benchmarks/bench_fixed.py --work-dir /tmp/bench_fixed [--skip-jobs] [--skip-parts]

1. **Per job**: ``pipeline run`` twice, each in a fresh work dir: the demo (the local profile as ``make demo``
   runs it) and the same jobs at their least work (:data:`LEAST_WORK`: 48 frames, one step of every training,
   one batch of every pass, the same number of trainings, side nets and logged models). A job's time at least
   work is its fixed cost: Spark jobs started, Python workers and ranks started and importing, MLflow runs,
   models logged and registered. The table gives, per job, demo time, fixed cost, the difference (the work)
   and the fixed share of the demo time.
2. **Parts** of the fixed cost, each the median of ``--repeats`` in this process (one SparkSession):
   a Python process importing what a rank or a worker imports; a Spark job on warm workers; a first Spark job on
   fresh Python workers importing torch; ``TorchDistributor(local_mode=True).run`` of a function that only
   imports the training module (one rank spawned); an MLflow run with 20 params and 20 metrics; a net logged as
   a LoggedModel and registered.

The speed probe (``bench_train.probe``: a fixed 2-thread matmul loop) is printed before and after: absolute
times on this VM move up to 2x with it.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repo root on sys.path too)
from bench_train import probe  # noqa: E402

REPO = common.REPO
PIPELINE = Path(sys.executable).parent / "pipeline"

# Every job of `pipeline run` at its least work: the same jobs, trainings, side nets and logged models as the
# demo, each doing one step or one batch (the sizes below are the least the stages accept).
LEAST_WORK = [
    "ingest.num_frames=48", "ingest.frames_per_sequence=2", "ingest.split={train: 0.5, val: 0.25, test: 0.25}",
    "augment.copies=1",
    "train.epochs=1", "train.steps_per_epoch=1", "train.eval_batches=1", "train.batch_size=8",
    "evaluate.max_batches=1",
    "correlate.epochs=1", "correlate.max_rows=16", "correlate.mi_pairs=1", "correlate.batch_size=8",
    "visualize.steps=1", "visualize.units=2", "visualize.facet_units=0", "visualize.dream_steps=1",
    "visualize.color_images=16", "visualize.max_rows=16",
    "transfer.steps=1", "transfer.epochs=1", "transfer.sizes=[8,16]", "transfer.batch_size=8",
    "audit.max_rows=16", "audit.counterfactual.sequences=4", "audit.counterfactual.frames=1",
    "audit.counterfactual.probe_sequences=8", "audit.counterfactual.resamples=100",
]

WALL = "bench_fixed: pipeline run wall seconds"
JOB_TIMES = re.compile(r"^time per job: (.*); total (\d+) s$", re.M)


def run_pipeline(work: Path, overrides: list, log: Path) -> dict:
    """``pipeline run`` in a fresh ``work`` dir (its output into ``log``); {job: seconds} and the wall."""
    shutil.rmtree(work, ignore_errors=True)
    tic = time.perf_counter()
    out = subprocess.run([str(PIPELINE), "run", f"paths.work_dir={work}",
                          "spark.conf.spark.ui.showConsoleProgress=false", *overrides],
                         capture_output=True, text=True, cwd=REPO)
    log.write_text(out.stdout + f"\n{WALL} {time.perf_counter() - tic:.1f}\n--- stderr ---\n" + out.stderr)
    if out.returncode:
        raise SystemExit(f"pipeline run failed (exit {out.returncode}); its output: {log}")
    return job_times(log)


def job_times(log: Path) -> dict:
    """{job: seconds} from the last 'time per job' line of a logged ``pipeline run``, and its wall time."""
    text = log.read_text()
    found = JOB_TIMES.findall(text)
    if not found:
        raise SystemExit(f"no 'time per job' line in {log}")
    times = {}
    for item in found[-1][0].split(", "):
        name, secs, _ = item.rsplit(" ", 2)
        times[name] = float(secs)
    wall = re.findall(rf"^{WALL} ([0-9.]+)$", text, re.M)
    times["(pipeline run, wall)"] = float(wall[-1]) if wall else float("nan")
    return times


def job_table(demo: dict, least: dict) -> list:
    rows = ["| job | demo (s) | fixed: at least work (s) | work (s) | fixed share |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for job in demo:
        if job.startswith("("):
            continue
        fixed = least.get(job, float("nan"))
        rows.append(f"| {job} | {demo[job]:.0f} | {fixed:.0f} | {demo[job] - fixed:.0f} | "
                    f"{fixed / demo[job]:.0%} |")
    total_d = sum(v for k, v in demo.items() if not k.startswith("("))
    total_l = sum(v for k, v in least.items() if not k.startswith("("))
    rows.append(f"| **jobs total** | {total_d:.0f} | {total_l:.0f} | {total_d - total_l:.0f} | "
                f"{total_l / total_d:.0%} |")
    rows.append(f"| `pipeline run`, wall | {demo['(pipeline run, wall)']:.0f} | {least['(pipeline run, wall)']:.0f} "
                f"| | |")
    return rows


# ------------------------------------------------------------------------------------------------ parts

def median_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def fresh_import(modules: str) -> None:
    subprocess.run([sys.executable, "-c", f"import {modules}"], check=True, cwd=REPO)


def _import_training() -> None:
    import pipeline.train.run  # noqa: F401  (what a rank imports before its first step)


def _torch_in_worker(_):
    import torch

    return [torch.__version__]


def parts(work: Path, repeats: int) -> list:
    import mlflow
    from pyspark.ml.torch.distributor import TorchDistributor

    from pipeline.models import build_model, stored
    from pipeline.session import build_session, quiet_warnings

    quiet_warnings()
    conf = common.make_conf(work / "parts", progress=False)
    rows = ["| part | seconds (median) | paid |", "| --- | ---: | --- |"]
    for label, modules, paid in [
            ("a Python process: `import torch`", "torch", "by every rank and fresh Python worker"),
            ("a Python process: the training module", "pipeline.train.run", "by every rank (TorchDistributor)"),
            ("a Python process: `import mlflow`", "mlflow", "by the driver, once"),
            ("a Python process: Spark and the ingest module", "pyspark, pipeline.data.ingest",
             "by every fresh ingest worker")]:
        rows.append(f"| {label} | {median_of(lambda: fresh_import(modules), repeats):.2f} | {paid} |")
    tic = time.perf_counter()
    spark = build_session(conf)
    rows.append(f"| SparkSession start (JVM) | {time.perf_counter() - tic:.2f} | once per `pipeline run` |")
    sc = spark.sparkContext
    tic = time.perf_counter()
    sc.parallelize(range(2), 2).mapPartitions(_torch_in_worker).collect()
    rows.append(f"| first Spark job: two fresh Python workers importing torch | {time.perf_counter() - tic:.2f} | "
                f"by each stage whose workers run torch, when its workers are new |")
    warm = median_of(lambda: sc.parallelize(range(2), 2).mapPartitions(_torch_in_worker).collect(), max(repeats, 5))
    rows.append(f"| a Spark job of 2 tasks on warm workers | {warm:.2f} | per Spark job |")
    spawn = median_of(lambda: TorchDistributor(num_processes=1, local_mode=True, use_gpu=False).run(_import_training),
                      repeats)
    rows.append(f"| TorchDistributor, 1 rank, local mode: spawn + import, no training | {spawn:.2f} | by every "
                f"training (train, correlate's seeds) |")
    mlflow.set_tracking_uri(conf.mlflow.tracking_uri)
    mlflow.set_experiment("bench-fixed")

    def one_run():
        with mlflow.start_run():
            mlflow.log_params({f"p{i}": i for i in range(20)})
            mlflow.log_metrics({f"m{i}": float(i) for i in range(20)})
    rows.append(f"| an MLflow run, 20 params, 20 metrics (SQLite) | {median_of(one_run, repeats):.2f} | per job and "
                f"side run |")
    model = build_model("tl_detector", None, (288, 512), 0.25)
    info = stored.card("tl_detector", ("light",), (288, 512), 0.25, "tl_frames")

    def log_and_register():
        with mlflow.start_run():
            logged = stored.log_model(model, info, "tl_detector", [])
            mlflow.register_model(logged.model_uri, "bench-fixed-detector")
    rows.append(f"| a net logged as a LoggedModel and registered | {median_of(log_and_register, repeats):.2f} | "
                f"per trained net |")
    spark.stop()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default="/tmp/bench_fixed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-jobs", action="store_true", help="only the parts")
    p.add_argument("--skip-parts", action="store_true", help="only the per-job table")
    p.add_argument("--reuse-demo", action="store_true",
                   help="take the demo's times from the last run's log (<work-dir>/demo.log) instead of running it")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="for both pipeline runs")
    args = p.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    print(f"speed probe before: {probe() * 1000:.0f} ms", flush=True)
    if not args.skip_jobs:
        demo = (job_times(work / "demo.log") if args.reuse_demo
                else run_pipeline(work / "demo", args.overrides, work / "demo.log"))
        print(f"demo: {demo}", flush=True)
        least = run_pipeline(work / "least", [*LEAST_WORK, *args.overrides], work / "least.log")
        print(f"least work: {least}", flush=True)
        print("\n".join(job_table(demo, least)), flush=True)
    if not args.skip_parts:
        print("\n".join(parts(work, args.repeats)), flush=True)
    print(f"speed probe after: {probe() * 1000:.0f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
