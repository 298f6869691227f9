"""The correlate stage's Spark pass against the naive way, and its memory as the probe set grows.

    .venv/bin/python benchmarks/bench_correlate.py [--frames 4000] [--small 400] [--repeats 2]

* **naive** (what representation-similarity tools do): run both nets over every probe image, keep every
  activation in memory, then ``np.corrcoef`` per layer;
* **stage**: ``pipeline.analysis.correlate.first_pass`` (one Spark job on ``local[2]``, float64 sufficient
  statistics per partition, ``treeReduce``) and the correlation blocks derived from it;

both on the same probe rows (the first ``--small`` rows of a synthetic ingest's train split in id-hash order), two
LaneNets of width 0.5 (randomly initialised: neither time nor memory depends on the weights), the five conv layers,
a unit's spatial mean per image, in separate processes, doing the same work: both nets, the random baseline net,
and net 1 on other images (the permuted baseline), all correlation blocks. Then the stage again on ``--frames`` rows (10x). Peak
memory is the largest sum, over time, of the resident memory of the Python processes doing the work (the naive
process; the stage's driver and its Python workers), sampled every 20 ms. The JVM's heap is fixed by
``spark.driver.memory`` and is not counted. Each variant runs ``--repeats`` times, interleaved; medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=4000, help="probe rows of the large stage run (and ingest size)")
    p.add_argument("--small", type=int, default=400, help="probe rows where both the naive way and the stage run")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--work-dir", default="/tmp/bench_correlate")
    p.add_argument("--variant", help=argparse.SUPPRESS)     # internal: run one variant in this process
    p.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    return p


def _conf(work: str, *extra):
    """The benchmark's config (:func:`common.make_conf`): 640x360 scenes, 90% of them train."""
    return common.make_conf(work, "ingest.render_hw=[360,640]", "ingest.split={train: 0.9, val: 0.05, test: 0.05}",
                            *extra)


def _nets(in_hw):
    import torch

    from pipeline.models import build_model

    torch.manual_seed(0)
    a = build_model("lane_classifier", 6, in_hw, 0.5).eval()
    torch.manual_seed(1)
    b = build_model("lane_classifier", 6, in_hw, 0.5).eval()
    return a, b


def naive(work: str, rows: int) -> dict:
    import numpy as np
    import torch

    from pipeline.analysis.probe import Probe  # noqa: F401  (same probe definition as the stage, below)
    from pipeline.train.loader import rows as read_rows, to_tensor
    from pipeline.train.spec import make_spec

    torch.set_num_threads(2)
    spec = make_spec(_conf(work))
    a, b = _nets(spec.in_hw)
    from pipeline.analysis.correlate import random_net

    r = random_net(a, 2)
    tic = time.perf_counter()
    import pyarrow.parquet as pq
    from pyspark.sql.functions import xxhash64  # noqa: F401  (the stage orders rows by Spark's xxhash64)

    from pipeline.data.store import filesystem
    from schemas.datasets import SCHEMAS, field_decoders

    fs, path = filesystem(spec.split_url("train"))
    order = json.loads(Path(work, "order.json").read_text())[:rows]
    table = pq.ParquetDataset(path, filesystem=fs, filters=[("id", "in", order)]).read(columns=["id", "image"])
    index = {i: k for k, i in enumerate(table.column("id").to_pylist())}
    decode = field_decoders(SCHEMAS[spec.kind], ["image"])["image"]
    images = table.column("image")
    acts = {(n, l): [] for n in "abrp" for l in LAYERS}
    partner = order[1:] + order[:1]          # the same work as the stage's permuted baseline: net b on other images
    for start in range(0, len(order), 32):
        batch = np.stack([decode(images[index[i]].as_py()) for i in order[start:start + 32]])
        other = np.stack([decode(images[index[i]].as_py()) for i in partner[start:start + 32]])
        with torch.no_grad():
            for name, net, x in (("a", a, batch), ("b", b, batch), ("r", r, batch), ("p", b, other)):
                for layer, act in net.features_at(to_tensor(x), LAYERS).items():
                    acts[(name, layer)].append(act.double().mean((2, 3)).numpy())
    out = {}
    for layer in LAYERS:
        x, y, z, w = (np.concatenate(acts[(n, layer)]) for n in "abrp")
        out[layer] = np.corrcoef(np.c_[x, y, z], rowvar=False)
        out[layer + "~"] = np.corrcoef(np.c_[x, w], rowvar=False)
    n = out["conv3"].shape[0] // 3
    return {"seconds": time.perf_counter() - tic, "checksum": float(np.abs(np.nan_to_num(out["conv3"][:n, n:2 * n])).sum())}


def stage(work: str, rows: int) -> dict:
    import numpy as np

    from pipeline.analysis import correlate
    from pipeline.analysis.probe import Probe, layer_shapes
    from pipeline.session import build_session
    from pipeline.train.spec import make_spec

    conf = _conf(work)
    spark = build_session(conf)
    spec = make_spec(conf)
    a, b = _nets(spec.in_hw)
    nets = {"net0": a, "net1": b, correlate.RANDOM: correlate.random_net(a, 2)}
    shapes = layer_shapes(a, spec.in_hw, LAYERS)
    probe = Probe(spec.split_url("train"), spec.kind, LAYERS, "mean", 32, rows, 0)
    correlate.first_pass(spark, Probe(spec.split_url("train"), spec.kind, LAYERS, "mean", 32, 8, 0), nets, shapes)
    tic = time.perf_counter()                                  # (untimed warm-up above: workers and imports)
    sums = correlate.first_pass(spark, probe, nets, shapes)
    corr = {l: sums.mean.correlation(correlate.block("net0", l), correlate.block("net1", l)) for l in LAYERS}
    seconds = time.perf_counter() - tic
    spark.stop()
    return {"seconds": seconds, "samples": sums.mean.n, "checksum": float(np.abs(corr["conv3"]).sum())}


def measure(variant: str, work: str, rows: int) -> dict:
    """Run one variant in a child process; sample the memory of its Python processes (not the JVM)."""
    cmd = [sys.executable, __file__, "--variant", variant, "--rows", str(rows), "--work-dir", work]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    root, peak, stop = psutil.Process(proc.pid), [0], threading.Event()

    def sample():
        while not stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                rss = sum(p.memory_info().rss for p in procs if "java" not in p.name())
                peak[0] = max(peak[0], rss)
            except psutil.Error:
                pass
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"{variant} failed ({proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_mb"] = peak[0] / 2 ** 20
    return result


def prepare(work: str, frames: int) -> None:
    from pipeline.session import build_session

    conf = _conf(work, f"ingest.num_frames={int(frames / 0.88) + 50}")
    if common.ensure_dataset(lambda: build_session(conf), conf, name="synthetic") is not None:
        build_session(conf).stop()                    # (the session the ingest ran on)
    if not Path(work, "order.json").exists():        # the stage's probe order: Spark's xxhash64 of the id, then id
        from pyspark.sql import functions as F

        from pipeline.train.spec import make_spec

        spark = build_session(conf)
        spec = make_spec(conf)
        ids = [r["id"] for r in spark.read.parquet(spec.split_url("train")).select("id")
               .withColumn("h", F.xxhash64("id")).orderBy("h", "id").collect()]
        Path(work, "order.json").write_text(json.dumps(ids))
        spark.stop()


def main() -> None:
    args = args_parser().parse_args()
    if args.variant:
        print(json.dumps({"naive": naive, "stage": stage}[args.variant](args.work_dir, args.rows)))
        return
    os.makedirs(args.work_dir, exist_ok=True)
    prepare(args.work_dir, args.frames)
    available = len(json.loads(Path(args.work_dir, "order.json").read_text()))
    if available < args.frames:
        raise SystemExit(f"only {available} train rows for --frames {args.frames}")
    print(f"bench_correlate  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  cpus={os.cpu_count()}")
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    runs = {"naive": [], "stage": [], "stage_large": []}
    for r in range(args.repeats):
        for name, variant, rows in (("naive", "naive", args.small), ("stage", "stage", args.small),
                                    ("stage_large", "stage", args.frames)):
            result = measure(variant, args.work_dir, rows)
            runs[name].append(result)
            print(f"repeat {r + 1} {name:12s} rows={rows:5d} {result['seconds']:7.2f} s  peak {result['peak_mb']:7.1f} MB"
                  f"  (checksum {result['checksum']:.6g})", flush=True)
    med = {name: {k: statistics.median(x[k] for x in v) for k in ("seconds", "peak_mb")} for name, v in runs.items()}
    print()
    print(f"| variant | probe images | time (median) | peak memory (median) |")
    print(f"| --- | ---: | ---: | ---: |")
    for name, rows in (("naive", args.small), ("stage", args.small), ("stage_large", args.frames)):
        print(f"| {name} | {rows} | {med[name]['seconds']:.2f} s | {med[name]['peak_mb']:.0f} MB |")
    print()
    print(f"stage / naive time at {args.small} images: {med['stage']['seconds'] / med['naive']['seconds']:.2f}x")
    print(f"stage / naive peak memory at {args.small} images: {med['stage']['peak_mb'] / med['naive']['peak_mb']:.2f}x")
    print(f"stage peak memory at {args.frames} / at {args.small} images: "
          f"{med['stage_large']['peak_mb'] / med['stage']['peak_mb']:.3f}x (goal: within 1.10x)")


if __name__ == "__main__":
    main()
