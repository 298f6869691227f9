"""Training throughput: the Petastorm loader against tensors already in memory, and 1 vs 2 processes.

    .venv/bin/python benchmarks/bench_train.py [--task lane_classifier] [--steps 40] [--repeats 3]

1. loader cost: the same model and optimizer take ``--steps`` SGD steps fed (a) from batches preloaded into
   memory, (b) from the Petastorm loader (sharded reader + decode + collate, prefetched in a thread) on the
   dataset of each ``--formats`` image format (``ingest.image_format``; one ingest each, cached);
   loader cost = 1 - (b)/(a), median over repeats, (a) and each (b) alternating in every repeat. Also the
   fraction of step time spent waiting for data, the per-repeat spread, and the CPU other processes used
   during each measurement (a repeat with others above 0.3 cores is marked: that figure is noise).
   On this VM whole measurements run up to 30% slower at random, in-memory ones too, while no other process
   uses CPU: a cost from throughput per repeat then moves by tens of points. The loader's cost is in every
   step, those slow spells are not, so the figure that holds is the cost by median step time over all steps of
   all repeats (also given for the odd and even repeats alone: two independent halves that must agree).
2. processes: TorchDistributor(local_mode=True) with 1 and 2 processes, a fixed number of samples in total;
   samples/s of the second epoch as rank 0 measured it (process start-up excluded) and wall time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repo root on sys.path too)

from pipeline.tasks import TASKS  # noqa: E402
from pipeline.train import loader  # noqa: E402
from pipeline.train.run import build, distribute, task_loss  # noqa: E402
from pipeline.train.spec import make_spec  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="lane_classifier", choices=list(TASKS))
    p.add_argument("--frames", type=int, default=600, help="synthetic frames to ingest (once)")
    p.add_argument("--steps", type=int, default=40, help="SGD steps per measurement")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-processes", action="store_true", help="only the loader-cost measurement")
    p.add_argument("--formats", default="png,raw", help="image formats of the datasets fed (ingest.image_format)")
    p.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--probe-tolerance", type=float, default=0.05,
                   help="a repeat whose speed probes differ by more than this fraction is left out of the cost")
    p.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "bench_train"))
    return p


def ensure_data(args, image_format: str = "png") -> object:
    """The config of the dataset ingested with ``image_format`` (once, :func:`common.ensure_dataset`)."""
    from pipeline.session import build_session

    conf = common.make_conf(args.work_dir, f"ingest.num_frames={args.frames}", f"train.task={args.task}",
                            f"train.batch_size={args.batch_size}", f"train.width={args.width}", "train.epochs=2",
                            f"train.use_gpu={args.device == 'cuda'}", f"ingest.image_format={image_format}",
                            f"ingest.name=synthetic-{image_format}", f"train.data=synthetic-{image_format}")
    spark = build_session(conf)  # TorchDistributor needs an active session
    common.ensure_dataset(spark, conf, say=f"ingesting {args.frames} synthetic frames ({image_format}) into "
                                           f"{args.work_dir} (once) ...")
    return conf


STEP_TIMES: list = []   # the last timed_steps call's time per step (data wait included), after the warm-up


def timed_steps(model, optimizer, loss_fn, batches, device) -> tuple[float, float, int]:
    """(seconds, seconds waiting for data, samples) over the given batches, after 3 warm-up steps; each step's
    time in STEP_TIMES."""
    STEP_TIMES.clear()
    it = iter(batches)
    model.train()
    seen, waiting, start = 0, 0.0, None
    step = 0
    while True:
        t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        step += 1
        if step == 3:
            start = time.perf_counter()
        elif step > 3:
            waiting += t1 - t0
            seen += len(x)
            STEP_TIMES.append(time.perf_counter() - t0)
    return time.perf_counter() - start, waiting, seen


def _busy_cores() -> float:
    """CPU seconds the whole machine has been busy (for the noise: the machine's minus this process's)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def probe() -> float:
    """Seconds of a fixed CPU workload (a 2-thread float matmul loop, ~50 ms): the machine's speed right now."""
    a = torch.ones(384, 384)
    tic = time.perf_counter()
    for _ in range(40):
        a = (a @ a).clamp_(max=1.0)
    return time.perf_counter() - tic


def loader_cost(confs: dict, args) -> dict:
    """Per image format: in-memory vs loader samples/s, loader cost and data wait, medians and per repeat."""
    first = make_spec(next(iter(confs.values())))
    device = torch.device(args.device)
    model, optimizer, _, _ = build(first)
    model.to(device)
    loss_fn = task_loss(first.task)
    steps = args.steps + 3
    trains = {fmt: make_spec(conf).loader("train") for fmt, conf in confs.items()}
    memory = list(loader.batches(trains[next(iter(trains))], steps, epoch=99))  # decoded and collated before timing
    got: dict = {"memory": []}

    def timed(name, batches):
        import psutil

        machine, own, stolen = _busy_cores(), _own_cpu(), getattr(psutil.cpu_times(), "steal", 0.0)
        secs, waited, n = timed_steps(model, optimizer, loss_fn, batches, device)
        spent = _own_cpu() - own
        steal = (getattr(psutil.cpu_times(), "steal", 0.0) - stolen) / secs
        others = max(0.0, (_busy_cores() - machine) - spent) / secs - steal
        got.setdefault(name, []).append({"sps": n / secs, "wait": waited / secs, "others": max(0.0, others),
                                         "steps": list(STEP_TIMES), "cpu_per_sample": spent / n, "steal": steal})
        return got[name][-1]

    stable: list = []   # per repeat: did the machine keep its speed through it (probes within PROBE_TOLERANCE)

    for r in range(args.repeats):
        probes = [min(probe() for _ in range(3))]
        m = timed('memory', memory)
        probes.append(min(probe() for _ in range(3)))
        line = [f"in-memory {m['sps']:.1f}/s ({m['cpu_per_sample'] * 1e3:.2f} CPU ms/sample, steal {m['steal']:.2f})"]
        for fmt, train in trains.items():
            m = timed(fmt, loader.batches(train, steps, epoch=r))
            probes.append(min(probe() for _ in range(3)))
            line.append(f"{fmt} {m['sps']:.1f}/s (cost {1 - m['sps'] / got['memory'][-1]['sps']:.1%}, "
                        f"{m['cpu_per_sample'] * 1e3:.2f} CPU ms/sample, waiting {m['wait']:.1%}, steal "
                        f"{m['steal']:.2f})")
        noisy = max(m["others"] for runs in got.values() for m in runs[-1:])
        drift = max(probes) / min(probes) - 1
        stable.append(drift <= args.probe_tolerance and noisy <= 0.3)
        print(f"  repeat {r + 1}: " + ", ".join(line) + f"; others used up to {noisy:.2f} cores"
              + ("  NOISY" if noisy > 0.3 else "") + f"; speed probes {' '.join(f'{p * 1e3:.0f}' for p in probes)} ms"
              + ("" if drift <= args.probe_tolerance else f"  MACHINE SPEED CHANGED {drift:.0%}: repeat left out"),
              flush=True)
    mem = statistics.median(m["sps"] for m in got["memory"])
    mem_step = statistics.median(t for m in got["memory"] for t in m["steps"])
    out = {"in_memory_sps": mem, "in_memory_step_ms": mem_step * 1e3, "formats": {}}
    for fmt in trains:
        costs = [1 - m["sps"] / b["sps"] for m, b in zip(got[fmt], got["memory"])]   # per repeat, paired
        sps = statistics.median(m["sps"] for m in got[fmt])
        step = statistics.median(t for m in got[fmt] for t in m["steps"])
        halves = [1 - statistics.median(t for b in got["memory"][h::2] for t in b["steps"])
                  / statistics.median(t for m in got[fmt][h::2] for t in m["steps"]) for h in (0, 1)]
        cpu = [1 - b["cpu_per_sample"] / m["cpu_per_sample"] for m, b in zip(got[fmt], got["memory"])]
        kept = [c for c, ok in zip(costs, stable) if ok]
        out["formats"][fmt] = {"sps": sps, "loader_cost": 1 - sps / mem, "per_repeat": costs, "cpu_cost": cpu,
                               "stable_costs": kept, "stable_cost": statistics.median(kept) if kept else None,
                               "data_wait": statistics.median(m["wait"] for m in got[fmt]),
                               "step_ms": step * 1e3, "step_cost": 1 - mem_step / step, "step_cost_halves": halves}
    out["others_max"] = max(m["others"] for runs in got.values() for m in runs)
    return out


def processes(conf, args) -> dict:
    import mlflow
    from mlflow.tracking import MlflowClient

    out = {}
    uri = f"sqlite:///{args.work_dir}/bench_mlflow.db"
    mlflow.set_tracking_uri(uri)
    base = make_spec(conf)
    batch = base.train.batch_size
    total = batch * args.steps * 2                                # samples per epoch, whatever the world size
    for n in (1, 2):
        with mlflow.start_run() as run:
            spec = replace(base, steps_per_epoch=total // (batch * n), run_id=run.info.run_id, tracking_uri=uri,
                           checkpoint_url=f"file://{args.work_dir}/ckpt-{n}",
                           train=base.train.model_copy(update={"eval_batches": 1}))
            tic = time.perf_counter()
            distribute(spec, n, True, args.device == "cuda")
            wall = time.perf_counter() - tic
        history = MlflowClient(uri).get_metric_history(run.info.run_id, "samples_per_s")
        out[n] = {"epoch2_sps": history[-1].value, "wall_s": wall}
        print(f"  {n} process(es): {out[n]['epoch2_sps']:.1f} samples/s (epoch 2), {wall:.1f} s wall for 2 epochs",
              flush=True)
    return out


def main(args) -> int:
    torch.manual_seed(0)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    confs = {fmt: ensure_data(args, fmt) for fmt in args.formats.split(",")}
    conf = next(iter(confs.values()))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "?") if os.path.exists("/proc/cpuinfo") else "?"
    print(f"task={args.task} device={args.device} batch={args.batch_size} width={args.width} "
          f"steps={args.steps} repeats={args.repeats} torch threads={torch.get_num_threads()} cpus={os.cpu_count()} "
          f"cpu={cpu!r} load={os.getloadavg()}")
    cost = loader_cost(confs, args)
    print(f"in-memory tensors : {cost['in_memory_sps']:.1f} samples/s (median); median step "
          f"{cost['in_memory_step_ms']:.1f} ms")
    for fmt, c in cost["formats"].items():
        kept = c["stable_costs"]
        print(f"loader, {fmt:4s}      : LOADER COST over the {len(kept)} of {len(c['per_repeat'])} repeats at a steady "
              f"machine speed: median " + (f"{c['stable_cost']:.1%} (each: {', '.join(f'{x:.1%}' for x in kept)})"
                                          if kept else "n/a: the machine never held its speed; re-run"))
        print(f"loader, {fmt:4s}      : CPU share of the loader (1 - CPU per sample in memory / with the loader), "
              f"median {statistics.median(c['cpu_cost']):.1%} (per repeat {', '.join(f'{x:.1%}' for x in c['cpu_cost'])})")
        print(f"loader, {fmt:4s}      : median step {c['step_ms']:.1f} ms: loader cost by median step "
              f"{c['step_cost']:.1%} (odd / even repeats alone: {c['step_cost_halves'][0]:.1%} / "
              f"{c['step_cost_halves'][1]:.1%})")
        spread = max(c["per_repeat"]) - min(c["per_repeat"])
        print(f"loader, {fmt:4s}      : {c['sps']:.1f} samples/s (median); loader cost {c['loader_cost']:.1%} "
              f"(per repeat {', '.join(f'{x:.1%}' for x in c['per_repeat'])}; spread {spread:.1%}); waiting for "
              f"data {c['data_wait']:.1%} of step time" + ("  UNSTABLE: spread > 5 points" if spread > 0.05 else ""))
    print(f"others used up to {cost['others_max']:.2f} cores during one measurement"
          + ("  (NOISY: re-run on a quiet machine)" if cost["others_max"] > 0.3 else ""))
    if not args.skip_processes:
        procs = processes(conf, args)
        print(f"2 vs 1 processes  : {procs[2]['epoch2_sps'] / procs[1]['epoch2_sps']:.2f}x samples/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
