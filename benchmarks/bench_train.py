"""Training throughput: the Petastorm loader against tensors already in memory, and 1 vs 2 processes.

    .venv/bin/python benchmarks/bench_train.py [--task lane_classifier] [--steps 40] [--repeats 3]

1. loader cost: the same model and optimizer take ``--steps`` SGD steps fed (a) from batches preloaded into
   memory, (b) from the Petastorm loader (sharded reader + decode + collate, prefetched in a thread);
   loader cost = 1 - (b)/(a), median over repeats, alternating (a) and (b). Also the fraction of step time
   spent waiting for data.
2. processes: TorchDistributor(local_mode=True) with 1 and 2 processes, a fixed number of samples in total;
   samples/s of the second epoch as rank 0 measured it (process start-up excluded) and wall time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402
from pipeline.tasks import TASKS  # noqa: E402
from pipeline.train import loader  # noqa: E402
from pipeline.train.run import _loss_fn, build, distribute  # noqa: E402
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
    p.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "bench_train"))
    return p


def ensure_data(args) -> object:
    overrides = [f"paths.work_dir={args.work_dir}", f"ingest.num_frames={args.frames}", "spark.master=local[2]",
                 f"train.task={args.task}", f"train.batch_size={args.batch_size}", f"train.width={args.width}",
                 "train.epochs=2", f"train.use_gpu={args.device == 'cuda'}"]
    conf = load_config("local", overrides=overrides)
    from pipeline.data import store
    from pipeline.session import build_session

    spark = build_session(conf)  # TorchDistributor needs an active session
    if not store.exists(f"{store.dataset_root(conf.paths.data_url, conf.ingest.name)}/{store.META}"):
        from pipeline.stages import get_stage, run_stage
        from pipeline.tracking import Tracker

        print(f"ingesting {args.frames} synthetic frames into {args.work_dir} (once) ...", flush=True)
        run_stage(get_stage("ingest"), spark, conf, Tracker(conf))
    return conf


def timed_steps(model, optimizer, loss_fn, batches, device) -> tuple[float, float, int]:
    """(seconds, seconds waiting for data, samples) over the given batches, after 3 warm-up steps."""
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
    return time.perf_counter() - start, waiting, seen


def loader_cost(conf, args) -> dict:
    spec = make_spec(conf)
    device = torch.device(args.device)
    model, optimizer, _, _ = build(spec)
    model.to(device)
    loss_fn = _loss_fn(spec.task)
    train = spec.loader("train")
    steps = args.steps + 3
    memory = list(loader.batches(train, steps, epoch=99))  # decoded and collated once, before timing
    mem_sps, pet_sps, wait_frac = [], [], []
    for r in range(args.repeats):
        secs, _, n = timed_steps(model, optimizer, loss_fn, memory, device)
        mem_sps.append(n / secs)
        secs, waited, n = timed_steps(model, optimizer, loss_fn, loader.batches(train, steps, epoch=r), device)
        pet_sps.append(n / secs)
        wait_frac.append(waited / secs)
        print(f"  repeat {r + 1}: in-memory {mem_sps[-1]:.1f}/s, petastorm {pet_sps[-1]:.1f}/s, "
              f"waiting for data {wait_frac[-1]:.1%}", flush=True)
    mem, pet = statistics.median(mem_sps), statistics.median(pet_sps)
    return {"in_memory_sps": mem, "petastorm_sps": pet, "loader_cost": 1 - pet / mem,
            "data_wait": statistics.median(wait_frac)}


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
    conf = ensure_data(args)
    print(f"task={args.task} device={args.device} batch={args.batch_size} width={args.width} "
          f"steps={args.steps} repeats={args.repeats} torch threads={torch.get_num_threads()}")
    cost = loader_cost(conf, args)
    print(f"in-memory tensors : {cost['in_memory_sps']:.1f} samples/s (median)")
    print(f"petastorm loader  : {cost['petastorm_sps']:.1f} samples/s (median)")
    print(f"loader cost       : {cost['loader_cost']:.1%} (goal < 10%)")
    print(f"waiting for data  : {cost['data_wait']:.1%} of step time")
    if not args.skip_processes:
        procs = processes(conf, args)
        print(f"2 vs 1 processes  : {procs[2]['epoch2_sps'] / procs[1]['epoch2_sps']:.2f}x samples/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
