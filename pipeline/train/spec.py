"""What a task trains on: the picklable :class:`TrainSpec` every rank gets, resolved once on the driver.

The driver reads the config and the dataset's summary (kinds, classes, counts per split) and resolves the
dataset kind the task trains on (:func:`pipeline.tasks.pick_kind`), its classes in label order, the stored
image size and the steps per epoch, so ranks never read the config or build a SparkSession.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pipeline.config import Config, ConfigError, TrainSection
from pipeline.data import store
from pipeline.data.splits import check_split, rows_in
from pipeline.tasks import Task, get_task, pick_kind
from pipeline.train.loader import LoaderSpec


@dataclass(frozen=True)
class TrainSpec:
    train: TrainSection          # the config section as resolved (it pickles); the source of every knob
    kind: str                    # the dataset kind trained on (pipeline.tasks.KINDS)
    data_root: str               # <paths.data_url>/<train.data>
    classes: tuple               # class names in label-index order (the detector: ("light",))
    in_hw: tuple                 # the stored image size (height, width)
    steps_per_epoch: int         # resolved (train.steps_per_epoch, or train rows / global batch)
    checkpoint_url: str
    run_id: Optional[str] = None
    tracking_uri: Optional[str] = None
    init_url: Optional[str] = None   # a checkpoint folder to copy ``init_layers`` from (transfer); the rest is fresh
    init_layers: tuple = ()
    freeze: bool = False             # keep the copied layers fixed (else fine-tune them with the rest)
    init_lr_scale: float = 1.0       # fine-tuned copied layers learn at this times train.lr (the rest at train.lr)
    aux: Optional[str] = None        # a second loss from the same images: "lane_mask" | "distance" (AUX_TARGETS)
    aux_weight: float = 0.0
    threads: int = 0                 # torch threads per rank; 0: the host's cores / ranks
    log_model: bool = True           # log the trained model to the run (a transfer grid's cells keep checkpoints)
    train_split: str = "train"       # the folder trained on (a transfer half's nested subsets: train_n<size>)
    validate: bool = True            # validate every epoch (False: the val split is empty; the stage said so)
    augment: Optional[object] = None # train.augment_policy as a Policy, resolved on the driver (ranks read no conf/)
    init_head: bool = False          # init_layers include the head (a logged model of the same classes)
    freeze_layers: tuple = ()        # of init_layers, those kept fixed (train.init_freeze and the layers below it)
    keep_ids: Optional[frozenset] = None  # train.max_rows: the ids of the train rows trained on (None: all)

    @property
    def task(self) -> Task:
        return get_task(self.train.task)

    def split_url(self, split: str) -> str:
        return f"{self.data_root}/{self.kind}/{self.train_split if split == 'train' else split}"

    def has_split(self, split: str) -> bool:
        return store.exists(self.split_url(split))

    def loader(self, split: str) -> LoaderSpec:
        """The loader of one split; the train split gets the online augmentation policy, if any."""
        t = self.train
        policy = None
        if split == "train" and t.augment_policy:
            policy = self.augment
            if policy is None or (policy.name, policy.seed) != (t.augment_policy, t.seed):
                from pipeline.augment.policy import get_policy

                policy = get_policy(t.augment_policy, t.seed)
        from pipeline.train.loader import decode_workers

        return LoaderSpec(self.split_url(split), self.kind, t.batch_size, t.seed,
                          decode_workers(t.loader_workers, t.num_processes), policy=policy,
                          aux=self.aux if split == "train" else None, pin_memory=t.use_gpu,
                          keep=self.keep_ids if split == "train" else None,
                          crop=train_crop(t, self.task) if split == "train" else None,
                          crop_on_lights=t.crop_on_lights)

    def checkpoint_args(self) -> dict:
        """What a checkpoint records of the run (plain values: what ``torch.load(weights_only=True)`` accepts)."""
        return {"train": self.train.model_dump(mode="json"), "kind": self.kind, "data_root": self.data_root,
                "classes": list(self.classes), "in_hw": list(self.in_hw), "steps_per_epoch": self.steps_per_epoch,
                "init_url": self.init_url or "", "init_layers": list(self.init_layers), "freeze": self.freeze,
                "init_lr_scale": self.init_lr_scale, "init_head": self.init_head,
                "freeze_layers": list(self.freeze_layers), "train_rows": len(self.keep_ids) if self.keep_ids else 0,
                "aux": self.aux or "", "aux_weight": self.aux_weight}


def make_spec(conf: Config, run_id: Optional[str] = None) -> TrainSpec:
    """Resolve the config and the ingested dataset's summary into what every rank needs."""
    t = conf.train
    task = get_task(t.task)
    root = store.dataset_root(conf.paths.data_url, t.data)
    meta = store.read_meta(root)
    try:
        kind = pick_kind(task, meta["datasets"], t.kind)
    except ValueError as exc:
        raise ConfigError(f"train.data={t.data}: {exc}") from None
    info = meta["datasets"][kind]
    train_rows = check_split(root, kind, "train", meta=meta)   # none: EmptySplit, the one line
    keep = None
    if t.max_rows and t.max_rows < train_rows:
        keep = first_rows(f"{root}/{kind}/train", t.max_rows)
        train_rows = len(keep)
    processes = max(1, t.num_processes)  # (0, one per GPU, is resolved by the train stage; 1 for the rest)
    if train_rows < t.batch_size * processes:
        raise ConfigError(f"{root}/{kind}/train has {train_rows} rows, fewer than train.batch_size x "
                          f"train.num_processes = {t.batch_size * processes}: ingest more or lower the batch size")
    if not task.detector and len(info["labels"]) < 2:
        raise ConfigError(f"{root}/{kind} has one class ({', '.join(info['labels'])}): a classifier needs two or "
                          f"more; check the source's class folders or labels")
    policy = None
    if t.augment_policy:
        from pipeline.augment.policy import get_policy

        policy = get_policy(t.augment_policy, t.seed)  # an unknown one fails here, on the driver, by name
    in_hw = _stored_hw(LoaderSpec(f"{root}/{kind}/train", kind, 1))  # the train split is non-empty (checked above)
    return TrainSpec(
        train=t, kind=kind, data_root=root, classes=tuple(info["labels"]), in_hw=in_hw,
        steps_per_epoch=t.steps_per_epoch or max(1, train_rows * samples_per_row(t, task)
                                                  // (t.batch_size * processes)),
        checkpoint_url=f"{conf.paths.checkpoint_url.rstrip('/')}/{t.data}/{t.task}",
        run_id=run_id, tracking_uri=conf.mlflow.tracking_uri, augment=policy,
        validate=bool(rows_in(meta, kind, "val")), keep_ids=keep)


def train_crop(t: TrainSection, task: Task) -> Optional[tuple]:
    """The (height, width) of the crops the detector trains on (``train.crop_hw``); None: whole images (the
    classifiers, or ``crop_hw: null``)."""
    return tuple(t.crop_hw) if task.detector and t.crop_hw else None


def samples_per_row(t: TrainSection, task: Task) -> int:
    """Training samples one train row gives per epoch: ``train.crops_per_frame`` when it trains on crops (a crop
    is a small part of its frame), else 1."""
    return t.crops_per_frame if train_crop(t, task) else 1


def first_rows(url: str, n: int) -> frozenset:
    """The ids of the first ``n`` rows of a split in a stable order: groups by a hash of their name, rows of a
    group by a hash of their id. The order does not depend on the files' layout, so a smaller set lies inside
    every larger one, and whole groups come before the next one starts (a subset keeps sequences together)."""
    import pyarrow.parquet as pq

    from pipeline.data.records import stable_hash

    fs, path = store.filesystem(url)
    table = pq.read_table(path, columns=["id", "group"], filesystem=fs)
    order = sorted(zip(table.column("group").to_pylist(), table.column("id").to_pylist()),
                   key=lambda r: (stable_hash(r[0]), stable_hash(r[1])))
    return frozenset(i for _, i in order[:n])


def _stored_hw(spec: LoaderSpec) -> tuple:
    """The image size actually stored (the config may have changed since ingest)."""
    from contextlib import closing

    from pipeline.train.loader import rows

    with closing(rows(spec)) as first:  # stops the reader at once
        return tuple(next(first)["image"].shape[:2])
