"""The train stage: TorchDistributor runs ``train_fn`` on every rank (DDP: gloo on CPU, nccl on GPU).

The driver resolves everything a rank needs into a picklable :class:`TrainSpec` (dataset URLs, classes,
steps per epoch, the MLflow run id) so ranks never read the config or build a SparkSession. Rank 0 logs
params, per-epoch metrics and checkpoints into the driver's run. The driver then logs the final weights as the
run's LoggedModel, named for the task (:mod:`pipeline.models.stored`: safetensors and a net card, nothing
pickled), links its dataset and its held-out metrics to it, and registers it (``registry.enabled``).
"""
from __future__ import annotations

import logging
import os
import random
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import Config, ConfigError
from pipeline.data.splits import check_split, skip_part
from pipeline.errors import EmptySplit
from pipeline.tasks import is_key_metric
from pipeline.train.checkpoints import load_checkpoint, save_checkpoint
from pipeline.train.evaluate import evaluate
from pipeline.train.loader import batches
from pipeline.train.spec import TrainSpec, make_spec

log = logging.getLogger(__name__)

# What a train run logs besides the evaluation's <split>_* metrics, named once for the report
TRAIN_LOSS, SAMPLES_PER_S, EPOCHS_RUN = "train_loss", "samples_per_s", "epochs_run"   # per epoch; ranks
TRAIN_SECONDS = "train_seconds"
CLASSES_PARAM, DATASET_PARAM = "train.classes", "train.dataset_url"


# ------------------------------------------------------------------------------------------- ranks

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def heat_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """The detector's loss: the penalty-reduced focal loss of heat-map detectors (CenterNet, Zhou et al. 2019).
    A light's centre cell (target 1) costs ``-(1 - p)^alpha log p``; every other cell ``-(1 - t)^beta p^alpha
    log(1 - p)``, so cells near a light (``t`` close to 1) are barely penalised and easy background counts little;
    the sum is divided by the number of lights. Measured against BCE with the cells near a light weighed x21 (the
    loss before), same crops and steps: far-light AP 0.93 against 0.10 (benchmarks/RESULTS.md: the detector)."""
    logits, target = logits.float(), target.float()
    p = torch.sigmoid(logits)
    centre = (target >= 1.0).float()
    on = -((1 - p) ** alpha) * F.logsigmoid(logits) * centre
    off = -((1 - target) ** beta) * p ** alpha * F.logsigmoid(-logits) * (1 - centre)
    return (on.sum() + off.sum()) / centre.sum().clamp(min=1.0)


def task_loss(task):
    """The task's loss: cross-entropy for classifiers; for the detector, :func:`heat_loss` on the heat map."""
    return heat_loss if task.detector else F.cross_entropy


def _setup_distributed(spec: TrainSpec):
    import torch.distributed as dist

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = spec.train.use_gpu and torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return rank, world, device


def build(spec: TrainSpec):
    """The net (with its second head when ``spec.aux``), its optimizer and LR schedule, from ``spec``: layers
    ``spec.init_layers`` copied from the checkpoint at ``spec.init_url`` (transfer), frozen with ``spec.freeze``
    (the optimizer then holds only the rest). Returns ``(model, optimizer, scheduler, joint)``: ``joint`` is the
    module trained (the model, or the model with its auxiliary head)."""
    from pipeline.vocab import DISTANCES
    from pipeline.models import WithAux, build_model

    t = spec.train
    seed_everything(t.seed)
    num_classes = None if spec.task.detector else len(spec.classes)
    model = build_model(t.task, num_classes, spec.in_hw, t.width)
    if spec.init_url:
        copy_layers(model, spec.init_url, spec.init_layers, freeze=spec.freeze, head=spec.init_head)
        for name in spec.freeze_layers:                   # train.init_freeze: these of the copied ones stay fixed
            getattr(model, name).requires_grad_(False)
    joint = WithAux(model, spec.aux, outputs=len(DISTANCES) + 1) if spec.aux else model
    copied = {id(p) for n in (spec.init_layers if spec.init_url else ()) for p in getattr(model, n).parameters()}
    rest = [p for p in joint.parameters() if p.requires_grad and id(p) not in copied]
    tuned = [p for p in joint.parameters() if p.requires_grad and id(p) in copied]
    params = [{"params": rest}] + ([{"params": tuned, "lr": t.lr * spec.init_lr_scale}] if tuned else [])
    if t.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs * spec.steps_per_epoch)
    return model, optimizer, scheduler, joint


def copy_layers(model, url: str, layers, *, freeze: bool, head: bool = False) -> None:
    """Copy the weights of ``layers`` from the checkpoint under ``url`` into ``model`` (same architecture and
    width; the head may differ, and is copied only with ``head``: a source of the same classes), and freeze them
    with ``freeze``."""
    state = load_checkpoint(url)
    if state is None:
        raise RuntimeError(f"no checkpoint under {url} to copy layers {', '.join(layers)} from")
    unknown = [n for n in layers if n not in (model.layer_names if head else model.transferable())]
    if unknown:
        raise ValueError(f"cannot copy {unknown}: {type(model).__name__} transfers {', '.join(model.transferable())}")
    source = state["model"]
    for name in layers:
        layer = getattr(model, name)
        for key in ("weight", "bias"):
            value = source[f"{name}.{key}"]
            if value.shape != getattr(layer, key).shape:
                raise ValueError(f"{url}: {name}.{key} has shape {tuple(value.shape)}, this net's "
                                 f"{tuple(getattr(layer, key).shape)} (train both with the same width and size)")
            with torch.no_grad():
                getattr(layer, key).copy_(value)
            getattr(layer, key).requires_grad_(not freeze)


def where_am_i() -> dict:
    """This process's place in the cluster: the Spark executor it runs under (a standalone / local-cluster
    executor runs in ``<worker dir>/<app id>/<executor id>``; on the driver, in local mode: "driver"), the host
    and the process id."""
    import socket

    cwd = os.getcwd()
    parent = os.path.basename(os.path.dirname(cwd))
    executor = os.environ.get("SPARK_EXECUTOR_ID") or (os.path.basename(cwd) if parent.startswith("app-")
                                                         else "driver")
    return {"executor": executor, "host": socket.gethostname(), "pid": os.getpid()}


def train_fn(spec: TrainSpec) -> None:
    """One rank's training: set up, resume, then :func:`train_one_epoch` per epoch with validation, metrics and a
    checkpoint on rank 0. Returns nothing: results go to MLflow and storage (in local mode every rank writes the
    same result file, so a return value is unreliable)."""
    import torch.distributed as dist

    from pipeline.session import quiet_warnings

    quiet_warnings()
    t = spec.train
    torch.set_num_threads(spec.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", 1))))
    rank, world, device = _setup_distributed(spec)
    places = [None] * world
    if world > 1:
        dist.all_gather_object(places, where_am_i())
    else:
        places = [where_am_i()]
    model, optimizer, scheduler, joint = build(spec)
    step = Step(optimizer, scheduler, device, t.amp, t.channels_last)
    state = load_checkpoint(spec.checkpoint_url) if t.resume else None
    start = resume(state, model, optimizer, scheduler, step.scaler, joint if spec.aux else None)
    joint.to(device, memory_format=step.memory_format)
    net = torch.nn.parallel.DistributedDataParallel(joint) if world > 1 else joint
    loss_fn = loss_of(spec)
    tracker = _RankTracker(spec) if rank == 0 else None
    if tracker:
        tracker.ranks(places, epochs_to_run=max(0, t.epochs - start))
        if state is not None:
            tracker.resumed(start - 1)
    for epoch in range(start, t.epochs):
        seed_everything(t.seed * 1000 + epoch * 16 + rank)  # resume-safe: depends on (seed, epoch, rank)
        ops: dict = {}
        data = batches(spec.loader("train"), spec.steps_per_epoch, rank=rank, world=world, epoch=epoch, op_counts=ops)
        loss, seen, elapsed = train_one_epoch(net, data, loss_fn, step)
        if world > 1:
            dist.barrier()
        if rank == 0:
            metrics = {TRAIN_LOSS: loss, SAMPLES_PER_S: seen * world / elapsed,
                       "lr": scheduler.get_last_lr()[0], **augment_counts(ops, epoch)}
            if spec.validate:
                metrics.update(_validate(model, spec, device))
            tracker.log(metrics, step=epoch)
            save_checkpoint(spec.checkpoint_url, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "scaler": step.scaler.state_dict(), "epoch": epoch,
                "args": spec.checkpoint_args(), **({"aux": joint.head.state_dict()} if spec.aux else {})})
        if world > 1:
            dist.barrier()
    if world > 1:
        dist.destroy_process_group()


def loss_of(spec: TrainSpec):
    """The loss a rank minimises: the task's (:func:`task_loss`), plus ``aux_weight`` times the second loss when
    the spec trains one (its net then returns (logits, aux output) and the loader a third tensor)."""
    class_loss = task_loss(spec.task)
    if not spec.aux:
        return class_loss
    from pipeline.models import aux_loss

    def joint_loss(out, y, extra):
        logits, aux_out = out
        return class_loss(logits, y) + spec.aux_weight * aux_loss(spec.aux, aux_out, extra)
    return joint_loss


def resume(state: Optional[dict], model, optimizer, scheduler, scaler, joint=None) -> int:
    """Load a checkpoint's state (None: nothing to resume) into the training objects (``joint``: the net with its
    second head, when the spec trains one); the first epoch to run."""
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["lr_scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if joint is not None:
        joint.head.load_state_dict(state["aux"])
    return int(state["epoch"]) + 1


class Step:
    """One optimisation step as every epoch takes it: the device, the memory format, mixed precision on CUDA
    (bf16 where the GPU has it: fp32's range, so no loss scaling; else fp16 with a GradScaler)."""

    def __init__(self, optimizer, scheduler, device, amp: bool, channels_last: bool):
        self.optimizer, self.scheduler, self.device = optimizer, scheduler, device
        self.amp = amp and device.type == "cuda"
        self.dtype = torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.dtype == torch.float16)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, net, loss_fn, batch) -> tuple[float, int]:
        """Forward, backward, optimiser and scheduler step on one batch; (its loss, its rows)."""
        x, y, *extra = (b.to(self.device, non_blocking=True) for b in batch)
        x = x.contiguous(memory_format=self.memory_format)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.amp):
            loss = loss_fn(net(x), y, *extra)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.item(), len(x)


def train_one_epoch(net, data, loss_fn, step: Step) -> tuple[float, int, float]:
    """One pass over ``data`` (batches of one rank): (mean loss per row, rows seen, seconds)."""
    net.train()
    tic, total, seen = time.perf_counter(), 0.0, 0
    for batch in data:
        loss, rows = step(net, loss_fn, batch)
        total += loss * rows
        seen += rows
    return total / max(seen, 1), seen, time.perf_counter() - tic


def augment_counts(ops: dict, epoch: int) -> dict:
    """Rank 0's online-augmentation counts of one epoch as metrics (``augment.<op>.applied`` / ``.skipped``);
    an op skipped for every row it was drawn for does nothing, and says so."""
    metrics = {}
    for op, (applied, skipped) in sorted(ops.items()):
        metrics[f"augment.{op}.applied"] = applied
        metrics[f"augment.{op}.skipped"] = skipped
        if skipped and not applied:
            log.warning("online augmentation: %s was skipped for all %d rows it was drawn for in epoch %d (it "
                        "changed nothing)", op, skipped, epoch + 1)
            print(f"warning: augmentation op {op} was skipped for all {skipped} rows it was drawn for in epoch "
                  f"{epoch + 1}: it changed nothing", flush=True)
    return metrics


def _validate(model, spec: TrainSpec, device) -> dict:
    result = evaluate(model, spec.task, spec.loader("val"), list(spec.classes), "val_",
                      limit=spec.train.eval_batches or None, device=device, figures=False)
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

    def ranks(self, places: list, epochs_to_run: int) -> None:
        """Where each rank runs (world size, executor, host, pid) and how many epochs this invocation trains."""
        executors = sorted({p["executor"] for p in places})
        print(f"training on {len(places)} rank(s), executors {', '.join(executors)}; "
              f"{epochs_to_run} epoch(s) to run", flush=True)
        if self.client:
            params = {"train.world_size": str(len(places)), "train.executors": ",".join(executors)}
            params.update({f"train.rank{r}": f"{p['executor']}@{p['host']}:{p['pid']}"
                           for r, p in enumerate(places)})
            for key, value in params.items():
                self.client.set_tag(self.spec.run_id, key, value)
            self.client.log_metric(self.spec.run_id, EPOCHS_RUN, epochs_to_run)

    def resumed(self, epoch: int) -> None:
        print(f"resuming from the checkpoint of epoch {epoch + 1}/{self.spec.train.epochs}", flush=True)
        if self.client:
            self.client.log_metric(self.spec.run_id, "resumed_from_epoch", epoch, step=epoch)

    def log(self, metrics: dict, step: int) -> None:
        line = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if is_key_metric(k))
        print(f"epoch {step + 1}/{self.spec.train.epochs}: {line}", flush=True)
        if self.client:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.client.log_batch(self.spec.run_id, metrics=[Metric(k, float(v), now, step)
                                                             for k, v in metrics.items() if v == v])


def _requirements() -> list:
    """The installed package's own pins (setup.py reads them from its pin set's requirements file), for the
    logged model. Read from the metadata pip installed into this Python's environment first: an editable
    install also leaves ``road_pipeline.egg-info`` in the source tree, which is on ``sys.path`` when a job runs
    from there and holds the pins of whichever pin set was installed last (README: "Two pin sets")."""
    import sysconfig
    from importlib.metadata import distributions
    from itertools import chain

    paths = sysconfig.get_paths()
    dist = next(chain(distributions(name="road-pipeline", path=[paths["purelib"], paths["platlib"]]),
                      distributions(name="road-pipeline")), None)
    if dist is None:  # running from a source tree that was never installed
        return []
    return [r for r in dist.requires or [] if "extra ==" not in r]


# -------------------------------------------------------------------------------------------- driver

def distribute(spec: TrainSpec, num_processes: int, local_mode: bool, use_gpu: bool) -> None:
    from pyspark.ml.torch.distributor import TorchDistributor

    from pipeline.session import quiet_warnings

    quiet_warnings()
    TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu).run(train_fn, spec)


def resolve_devices(conf: Config) -> Config:
    """``conf`` with ``train.num_processes=0`` made one per visible GPU (use_gpu, local mode) or 1; asking for
    GPUs on a driver that has none (local mode) is a :class:`ConfigError` that says how to train on the CPU."""
    t = conf.train
    processes = t.num_processes
    if t.use_gpu and t.local_mode:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus == 0:
            raise ConfigError("train.use_gpu=true (e.g. --profile gpu) but torch sees no CUDA GPU on this machine "
                              "(torch.cuda.is_available() is False): train on the CPU with --profile local, or "
                              "train.use_gpu=false")
        processes = processes or gpus
        if processes > gpus:
            raise ConfigError(f"train.num_processes={processes} but torch sees {gpus} GPU(s) on this machine: "
                              f"set train.num_processes={gpus} (or 0: one per GPU)")
    elif t.use_gpu and not processes:
        raise ConfigError("train.num_processes=0 (one per GPU) needs the GPUs on this machine (train.local_mode="
                          "true); on a cluster set train.num_processes to the GPUs to use")
    processes = processes or 1
    if processes == t.num_processes:
        return conf
    return conf.model_copy(update={"train": t.model_copy(update={"num_processes": processes})})


def run(spark, conf: Config, tracker) -> dict:
    """The train stage (registered in pipeline.stages)."""
    import mlflow

    conf = resolve_devices(conf)
    spec = make_spec(conf, run_id=mlflow.active_run().info.run_id)
    if conf.train.init_model:
        from pipeline.train.finetune import resolve

        spec, params = resolve(spec, conf)
        mlflow.log_params(params)
        if params.get("train.init_source_run"):
            mlflow.set_tag("pipeline.init_source_run", params["train.init_source_run"])
    job = f"train.{spec.task.name}"
    if not spec.validate:
        skip_part(f"{job}: per-epoch validation", _empty(spec, "val"))
    if spec.keep_ids is not None:
        mlflow.log_param("train.rows_resolved", len(spec.keep_ids))
    mlflow.log_params({"train.steps_per_epoch_resolved": spec.steps_per_epoch, CLASSES_PARAM: ",".join(spec.classes),
                       "train.in_hw": f"{spec.in_hw[0]}x{spec.in_hw[1]}", DATASET_PARAM: spec.split_url("train")})
    tic = time.perf_counter()
    distribute(spec, conf.train.num_processes, conf.train.local_mode, conf.train.use_gpu)
    train_seconds = time.perf_counter() - tic
    mlflow.log_metric(TRAIN_SECONDS, train_seconds)
    model = load_trained(spec)
    logged = log_trained(model, spec, conf, tracker) if spec.log_model else None
    results = {TRAIN_SECONDS: train_seconds}
    run = tracker.client.get_run(spec.run_id)
    results.update({k: v for k, v in run.data.metrics.items() if k.startswith("val_") and is_key_metric(k)})
    empty = _empty(spec, "test")
    if empty is not None:
        skip_part(f"{job}: the test pass", empty)
    else:
        result = evaluate(model, spec.task, spec.loader("test"), list(spec.classes), "test_",
                          threshold=conf.evaluate.threshold, match_radius=conf.evaluate.match_radius)
        mlflow.log_metrics(result.metrics, model_id=logged.model_id if logged else None,   # the Models page's
                           dataset=tracker.dataset_of(f"{spec.train.data}/{spec.kind}/test", spec.split_url("test")))
        for name, fig in result.figures.items():
            tracker.log_figure(fig, name)
        results.update({k: v for k, v in result.metrics.items() if is_key_metric(k)})
    if logged is not None:
        results["model_uri"] = logged.model_uri
        from pipeline.models.lookup import ROLE_TAG

        if conf.registry.enabled and not run.data.tags.get(ROLE_TAG):   # not a net of an analysis
            from pipeline.registry import register

            version = register(conf, spec.task.name, logged.model_id, spec.run_id)
            results["model_version"] = f"models:/{version.name}/{version.version}"
    return results


def log_trained(model, spec: TrainSpec, conf: Config, tracker):
    """Log the trained net as this run's LoggedModel named for its task (weights and a net card: nothing
    pickled), with the train split as its dataset; tag the run with its URI. Returns MLflow's ModelInfo."""
    import mlflow
    from mlflow.entities import LoggedModelInput

    from pipeline.models import stored
    from pipeline.models.lookup import MODEL_TAG

    info = stored.card(spec.task.name, spec.classes, spec.in_hw, spec.train.width, spec.kind,
                       data=spec.train.data, seed=spec.train.seed, epochs=spec.train.epochs)
    logged = stored.log_model(model, info, spec.task.name, _requirements(),
                              params={"task": spec.task.name, "data": spec.train.data, "kind": spec.kind,
                                      "classes": ",".join(spec.classes), "in_hw": "x".join(map(str, spec.in_hw)),
                                      "width": spec.train.width, "seed": spec.train.seed})
    dataset = tracker.dataset_of(f"{spec.train.data}/{spec.kind}/{spec.train_split}", spec.split_url("train"))
    if dataset is not None:
        mlflow.log_input(dataset, context="training", model=LoggedModelInput(logged.model_id))
    mlflow.set_tag(MODEL_TAG, logged.model_uri)
    print(f"train: logged {logged.model_uri} ({spec.task.name})", flush=True)
    return logged


def _empty(spec: TrainSpec, split: str) -> Optional[EmptySplit]:
    """The :class:`EmptySplit` of ``split`` of the dataset ``spec`` trains on, or None when it has rows."""
    try:
        check_split(spec.data_root, spec.kind, split)
    except EmptySplit as exc:
        return exc
    return None


def load_trained(spec: TrainSpec):
    """The final weights, from the checkpoint rank 0 wrote (the same weights the logged model holds)."""
    import dataclasses

    model, _, _, _ = build(dataclasses.replace(spec, init_url=None, aux=None))  # the weights come next
    state = load_checkpoint(spec.checkpoint_url)
    if state is None:
        raise RuntimeError(f"training wrote no checkpoint under {spec.checkpoint_url}")
    model.load_state_dict(state["model"])
    return model
