"""The train stage: TorchDistributor runs ``train_fn`` on every rank (DDP: gloo on CPU, nccl on GPU).

The driver resolves everything a rank needs into a picklable :class:`TrainSpec` (dataset URLs, classes,
steps per epoch, the MLflow run id) so ranks never read the config or build a SparkSession. Rank 0 logs
params, per-epoch metrics, checkpoints and the final model into the driver's run.
"""
from __future__ import annotations

import io
import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch

from pipeline.config import Config, ConfigError
from pipeline.train.evaluate import is_key_metric
from pipeline.train.loader import TASK_DATASET, LoaderSpec, batches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSpec:
    task: str
    kind: str
    data_root: str
    classes: tuple
    in_hw: tuple
    width: float
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    seed: int
    steps_per_epoch: int
    eval_batches: int
    loader_workers: int
    augment_policy: Optional[str]
    use_gpu: bool
    amp: bool
    checkpoint_url: str
    resume: bool
    run_id: Optional[str] = None
    tracking_uri: Optional[str] = None

    def split_url(self, split: str) -> str:
        return f"{self.data_root}/{self.kind}/{split}"

    def loader(self, split: str) -> LoaderSpec:
        """The loader of one split; the train split gets the online augmentation policy, if any."""
        policy = None
        if split == "train" and self.augment_policy:
            from pipeline.augment.policy import get_policy

            policy = get_policy(self.augment_policy, self.seed)
        return LoaderSpec(self.split_url(split), self.kind, self.batch_size, self.seed, self.loader_workers,
                          policy=policy)


# ------------------------------------------------------------------------------------- checkpoints

def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def save_checkpoint(url: str, state: dict) -> None:
    """Write ``last.pt`` atomically (temp file, then rename): a kill mid-write leaves the previous one."""
    fs, path = _fs(url)
    fs.makedirs(path, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    tmp = f"{path}/last.pt.tmp"
    with fs.open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
    fs.mv(tmp, f"{path}/last.pt")


def load_checkpoint(url: str) -> Optional[dict]:
    fs, path = _fs(url)
    if not fs.exists(f"{path}/last.pt"):
        return None
    with fs.open(f"{path}/last.pt", "rb") as fh:
        return torch.load(io.BytesIO(fh.read()), map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------- ranks

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _loss_fn(task: str):
    if task == "tl_detector":
        def heat_loss(logits, target):  # lights are rare: weigh cells near a light up
            weight = 1.0 + 20.0 * target
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, weight=weight)
        return heat_loss
    return torch.nn.functional.cross_entropy


def _setup_distributed(spec: TrainSpec):
    import torch.distributed as dist

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = spec.use_gpu and torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return rank, world, device


def build(spec: TrainSpec):
    from pipeline.models import build_model

    seed_everything(spec.seed)
    num_classes = None if spec.task == "tl_detector" else len(spec.classes)
    model = build_model(spec.task, num_classes, spec.in_hw, spec.width)
    if spec.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum,
                                    weight_decay=spec.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs * spec.steps_per_epoch)
    return model, optimizer, scheduler


def train_fn(spec: TrainSpec) -> None:
    """One rank's training loop. Returns nothing: results go to MLflow and storage (see STACK.md)."""
    import torch.distributed as dist

    from pipeline.session import quiet_warnings

    quiet_warnings()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", 1))))
    rank, world, device = _setup_distributed(spec)
    model, optimizer, scheduler = build(spec)
    start = 0
    state = load_checkpoint(spec.checkpoint_url) if spec.resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        start = int(state["epoch"]) + 1
    model.to(device)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    use_amp = spec.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = _loss_fn(spec.task)
    tracker = _RankTracker(spec) if rank == 0 else None
    if tracker and state is not None:
        tracker.log({"resumed_from_epoch": start - 1}, step=start - 1)
    for epoch in range(start, spec.epochs):
        seed_everything(spec.seed * 1000 + epoch * 16 + rank)  # resume-safe: depends on (seed, epoch, rank)
        net.train()
        tic, total, seen = time.perf_counter(), 0.0, 0
        for x, y in batches(spec.loader("train"), spec.steps_per_epoch, rank=rank, world=world, epoch=epoch):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss = loss_fn(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += loss.item() * len(x)
            seen += len(x)
        elapsed = time.perf_counter() - tic
        if world > 1:
            dist.barrier()
        if rank == 0:
            metrics = {"train_loss": total / max(seen, 1), "samples_per_s": seen * world / elapsed,
                       "lr": scheduler.get_last_lr()[0]}
            metrics.update(_validate(model, spec, device))
            tracker.log(metrics, step=epoch)
            save_checkpoint(spec.checkpoint_url, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                                  "lr_scheduler": scheduler.state_dict(), "epoch": epoch,
                                                  "args": _plain(asdict(spec))})
        if world > 1:
            dist.barrier()
    if rank == 0:
        tracker.finish(model.cpu())
    if world > 1:
        dist.destroy_process_group()


def _plain(d: dict) -> dict:
    """Only str/int/float/bool/None/list/dict values: what torch.load(weights_only=True) accepts."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _validate(model, spec: TrainSpec, device) -> dict:
    from pipeline.train.evaluate import evaluate

    result = evaluate(model, spec.task, spec.loader("val"), list(spec.classes), "val_",
                      limit=spec.eval_batches or None, device=device)
    for fig in result.figures.values():
        import matplotlib.pyplot as plt

        plt.close(fig)
    model.train()
    return result.metrics


class _RankTracker:
    """Rank 0's handle on the driver's MLflow run (given by id and tracking URI)."""

    def __init__(self, spec: TrainSpec):
        self.spec = spec
        self.client = None
        if spec.run_id:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(spec.tracking_uri)

    def log(self, metrics: dict, step: int) -> None:
        line = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if is_key_metric(k))
        print(f"epoch {step + 1}/{self.spec.epochs}: {line}", flush=True)
        if self.client:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.client.log_batch(self.spec.run_id, metrics=[Metric(k, float(v), now, step)
                                                             for k, v in metrics.items() if v == v])

    def finish(self, model) -> None:
        """Log the trained model (input example + signature) into the run."""
        if not self.client:
            return
        import mlflow
        import mlflow.pytorch
        from mlflow.models import infer_signature

        example = np.zeros((1, 3, *self.spec.in_hw), np.float32)
        model.eval()
        with torch.no_grad():
            output = model(torch.from_numpy(example)).numpy()
        mlflow.set_tracking_uri(self.spec.tracking_uri)
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # pickle is deliberate: any input size
        with mlflow.start_run(run_id=self.spec.run_id):
            mlflow.pytorch.log_model(model, name="model", input_example=example,
                                     signature=infer_signature(example, output), serialization_format="pickle",
                                     pip_requirements=_requirements())


def _requirements() -> list:
    from pathlib import Path

    req = Path(__file__).resolve().parents[2] / "requirements.txt"
    return [l.strip() for l in req.read_text().splitlines() if l.strip() and not l.startswith("#")] \
        if req.exists() else []


# -------------------------------------------------------------------------------------------- driver

def make_spec(conf: Config, run_id: Optional[str] = None) -> TrainSpec:
    """Resolve the config and the ingested dataset's summary into what every rank needs."""
    from pipeline.data.ingest import dataset_root, read_meta

    t = conf.train
    kind = t.dataset or TASK_DATASET[t.task]
    root = dataset_root(conf, t.data)
    meta = read_meta(root)
    if kind not in meta["datasets"]:
        raise ConfigError(f"dataset '{t.data}' has no {kind} (it has {', '.join(meta['datasets'])}): "
                         f"set train.dataset= to one of those, or ingest a source that yields {kind}")
    info = meta["datasets"][kind]
    train_rows = info["splits"].get("train", 0)
    if train_rows < t.batch_size * t.num_processes:
        raise ConfigError(f"{root}/{kind}/train has {train_rows} rows, fewer than train.batch_size x "
                         f"train.num_processes = {t.batch_size * t.num_processes}: ingest more or lower the batch size")
    if "val" not in info["splits"]:
        raise ConfigError(f"{root}/{kind} has no val split: set ingest.split so val gets a share")
    classes = _classes(kind, meta)
    in_hw = _stored_hw(LoaderSpec(f"{root}/{kind}/train", kind, 1))  # the train split is non-empty (checked above)
    steps = t.steps_per_epoch or max(1, train_rows // (t.batch_size * t.num_processes))
    if t.augment_policy:
        from pipeline.augment.policy import get_policy

        get_policy(t.augment_policy, t.seed)  # an unknown policy fails here, on the driver, by name
    return TrainSpec(
        task=t.task, kind=kind, data_root=root, classes=tuple(classes), in_hw=in_hw, width=t.width,
        epochs=t.epochs, batch_size=t.batch_size, optimizer=t.optimizer, lr=t.lr, momentum=t.momentum,
        weight_decay=t.weight_decay,
        seed=t.seed, steps_per_epoch=steps, eval_batches=t.eval_batches, loader_workers=t.loader_workers,
        augment_policy=t.augment_policy,
        use_gpu=t.use_gpu, amp=t.amp, checkpoint_url=f"{conf.paths.checkpoint_url.rstrip('/')}/{t.data}/{t.task}",
        resume=t.resume, run_id=run_id, tracking_uri=conf.mlflow.tracking_uri)


def _classes(kind: str, meta: dict) -> list:
    from pipeline.data.ingest import CROP_CLASSES

    if kind == "tl_crops":
        return list(CROP_CLASSES)
    if kind == "road_frames":
        return list(meta["classes"])
    return ["light"]


def _stored_hw(spec: LoaderSpec) -> tuple:
    """The image size actually stored (the config may have changed since ingest)."""
    from contextlib import closing

    from pipeline.train.loader import rows

    with closing(rows(spec)) as first:  # stops the reader at once
        return tuple(next(first)["image"].shape[:2])


def distribute(spec: TrainSpec, num_processes: int, local_mode: bool, use_gpu: bool) -> None:
    from pyspark.ml.torch.distributor import TorchDistributor

    from pipeline.session import quiet_warnings

    quiet_warnings()
    TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu).run(train_fn, spec)


def run(spark, conf: Config, tracker) -> dict:
    """The train stage (registered in pipeline.stages)."""
    import mlflow

    from pipeline.train.evaluate import evaluate

    spec = make_spec(conf, run_id=mlflow.active_run().info.run_id)
    mlflow.log_params({"train.steps_per_epoch_resolved": spec.steps_per_epoch, "train.classes": ",".join(spec.classes),
                       "train.in_hw": f"{spec.in_hw[0]}x{spec.in_hw[1]}", "train.dataset_url": spec.split_url("train")})
    tic = time.perf_counter()
    distribute(spec, conf.train.num_processes, conf.train.local_mode, conf.train.use_gpu)
    train_seconds = time.perf_counter() - tic
    mlflow.log_metric("train_seconds", train_seconds)
    model_uri = f"runs:/{spec.run_id}/model"
    model = load_trained(spec)
    results = {"train_seconds": train_seconds}
    run = tracker.client.get_run(spec.run_id)
    results.update({k: v for k, v in run.data.metrics.items() if k.startswith("val_") and is_key_metric(k)})
    split = "test" if _has_split(spec, "test") else "val"
    result = evaluate(model, spec.task, spec.loader(split), list(spec.classes), f"{split}_",
                      threshold=conf.evaluate.threshold, match_distance=conf.evaluate.match_distance)
    mlflow.log_metrics(result.metrics)
    for name, fig in result.figures.items():
        tracker.log_figure(fig, name)
    results.update({k: v for k, v in result.metrics.items() if is_key_metric(k)})
    if conf.mlflow.register_model:
        mlflow.register_model(model_uri, f"road-pipeline-{spec.task}")
    results["model_uri"] = model_uri
    return results


def load_trained(spec: TrainSpec):
    """The final weights, from the checkpoint rank 0 wrote (the same weights the logged model holds)."""
    model, _, _ = build(spec)
    state = load_checkpoint(spec.checkpoint_url)
    if state is None:
        raise RuntimeError(f"training wrote no checkpoint under {spec.checkpoint_url}")
    model.load_state_dict(state["model"])
    return model


def _has_split(spec: TrainSpec, split: str) -> bool:
    fs, path = _fs(spec.split_url(split))
    return fs.exists(path)
