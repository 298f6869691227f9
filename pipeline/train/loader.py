"""Datasets (Petastorm's format, read with pyarrow) -> torch batches, sharded per rank, reproducible per
(seed, epoch).

Each rank reads its own shard of row groups (every world-th from ``rank``). Shards are unequal, so every rank
takes exactly ``steps`` batches per epoch from its shard, read again from the start whenever it runs out (one
pass over the shard per round): all ranks run the same number of steps and DDP never waits on a
rank that ran dry. Fewer row groups than ranks: every
rank reads all row groups and keeps every world-th row instead.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from itertools import islice
from typing import Iterator, Optional

import numpy as np
import torch

from pipeline.models.normalize import DETECTOR_STRIDE, to_tensor

# The fields training reads of each dataset kind; an augmentation policy also gets what its ops need.
KIND_FIELDS = {"road_frames": ("id", "image", "label"), "class_images": ("id", "image", "label"),
               "tl_crops": ("id", "image", "label"), "tl_frames": ("id", "image", "boxes", "states", "distances")}
AUGMENT_FIELDS = {"road_frames": ("lane_mask", "label_name"), "class_images": ("label_name",),
                  "tl_crops": ("label_name",), "tl_frames": ()}
# A second loss from the same images (the talk's "multiple loss functions"): the target each kind carries.
AUX_TARGETS = {"road_frames": "lane_mask", "tl_crops": "distance"}

CROP_STREAM = 0x63726F70   # the crops' random stream, apart from the shuffle's (seed * 1000 + epoch)


def heat_target(boxes: np.ndarray, hw: tuple, stride: int = DETECTOR_STRIDE) -> np.ndarray:
    """A (1, ceil(H/stride), ceil(W/stride)) map: a Gaussian of peak 1 at each light's centre, sized by the box.
    Boxes may lie partly or wholly outside the image (a training crop): their Gaussian's part inside is kept,
    so a crop's target is the whole frame's target cut to the crop."""
    gh, gw = math.ceil(hw[0] / stride), math.ceil(hw[1] / stride)
    target = np.zeros((1, gh, gw), np.float32)
    ys, xs = np.mgrid[0:gh, 0:gw].astype(np.float32)
    for x0, y0, x1, y1 in np.asarray(boxes, np.float32).reshape(-1, 4):
        cx, cy = (x0 + x1) / 2 / stride - 0.5, (y0 + y1) / 2 / stride - 0.5
        sigma = max(0.5, 0.25 * max(x1 - x0, y1 - y0) / stride)
        blob = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))
        target[0] = np.maximum(target[0], blob)
        if -0.5 <= cy < gh - 0.5 and -0.5 <= cx < gw - 0.5:   # the cell holding the centre is exactly 1
            target[0, int(np.floor(cy + 0.5)), int(np.floor(cx + 0.5))] = 1.0   # (round() would go to even)
    return target


def crop_frames(batch: list, hw: tuple, rng: np.random.Generator, on_lights: float,
                stride: int = DETECTOR_STRIDE) -> list:
    """Training crops of detector frames, as detection training samples them: with probability ``on_lights``
    a crop holding one of the frame's lights (drawn uniformly) at a uniform place inside it, else a crop anywhere.
    Crops start on multiples of ``stride``, so their heat-map cells are the whole frame's cells; a frame no larger
    than ``hw`` stays whole. Every box is kept, shifted into the crop's pixels (:func:`heat_target` cuts them)."""
    out = []
    for row in batch:
        image = row["image"]
        height, width = image.shape[:2]
        ch, cw = min(hw[0], height), min(hw[1], width)
        boxes = np.asarray(row["boxes"], np.float32).reshape(-1, 4)
        if len(boxes) and rng.random() < on_lights:
            x0, y0, x1, y1 = boxes[rng.integers(len(boxes))]
            # less one cell of room: the crop's start is rounded down to a cell, and the centre stays inside
            top = (y0 + y1) / 2 - rng.uniform(0.0, max(ch - stride, 0))
            left = (x0 + x1) / 2 - rng.uniform(0.0, max(cw - stride, 0))
        else:
            top, left = rng.uniform(0, height - ch + 1), rng.uniform(0, width - cw + 1)
        top = int(np.clip(top, 0, height - ch)) // stride * stride
        left = int(np.clip(left, 0, width - cw)) // stride * stride
        out.append(dict(row, image=image[top:top + ch, left:left + cw],
                        boxes=boxes - np.array([left, top, left, top], np.float32)))
    return out


@dataclass(frozen=True)
class LoaderSpec:
    url: str                 # one split of one dataset, e.g. file:///.../synthetic/road_frames/train
    kind: str                # road_frames | tl_crops | tl_frames
    batch_size: int
    seed: int = 0
    workers: int = 1
    shuffle_buffer: int = 1024
    policy: Optional[object] = None  # a pipeline.augment.Policy applied online to training batches
    aux: Optional[str] = None        # an auxiliary target field (AUX_TARGETS): batches carry it third
    pin_memory: bool = False         # page-locked batches (training on CUDA: the copy to the GPU overlaps)
    extra: tuple = ()                # more stored fields the rows carry (analyses: e.g. group, lane_mask)
    keep: Optional[frozenset] = None # only the rows with these ids (train.max_rows); None: every row
    crop: Optional[tuple] = None     # detector training: random crops of this (height, width) (crop_frames)
    crop_on_lights: float = 0.5      # the share of crops placed on a light

    @property
    def fields(self) -> tuple:
        """What this loader reads: the kind's training fields, plus the masks and names ops use (context paste
        keeps the lane markings) when a policy is applied, plus the auxiliary target."""
        fields = KIND_FIELDS[self.kind] + (AUGMENT_FIELDS[self.kind] if self.policy is not None else ())
        fields = fields + ((self.aux,) if self.aux and self.aux not in fields else ())
        return fields + tuple(f for f in self.extra if f not in fields)


def decode_workers(loader_workers: int, processes: int) -> int:
    """``train.loader_workers``, where 0 means the cores per training process less one (the training thread)."""
    return loader_workers or max(1, (os.cpu_count() or 1) // max(1, processes) - 1)


def _reader(spec: LoaderSpec, *, rank: int, world: int) -> tuple:
    """``(row groups, stride, offset)``: this rank's share of the dataset's row groups (every world-th, in the
    dataset's fixed order), each read whole as columns; with fewer row groups than ranks, every row group, of
    which the rank keeps every ``stride``-th row from ``offset``. Shuffling is ours (a seeded buffer, below)."""
    from pipeline.data import store

    pieces = store.row_groups_of(spec.url)
    if world > 1 and len(pieces) >= world:
        pieces, stride, offset = pieces[rank::world], 1, 0
    else:
        stride, offset = world, rank
    # The schema comes from our code (schemas.datasets); the dataset's _common_metadata is never read
    return _read_ahead(pieces, spec.fields), stride, offset


def _read_ahead(pieces: list, columns: tuple, ahead: int = 2) -> Iterator[dict]:
    """The row groups' columns in order, each read by one reader thread up to ``ahead`` row groups before it is
    needed (pyarrow's read and decompression release the GIL: they overlap the decode and training threads)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.data import store

    todo = iter(pieces)
    with ThreadPoolExecutor(1, thread_name_prefix="read") as pool:
        pending = deque(pool.submit(store.read_row_group, piece, columns) for piece in islice(todo, ahead))
        while pending:
            columns_of_group = pending.popleft().result()
            following = next(todo, None)
            if following is not None:
                pending.append(pool.submit(store.read_row_group, following, columns))
            yield columns_of_group


def decode_columns(columns: dict, decoders: dict, pool=None) -> dict:
    """Decode the encoded columns of one row group: raw-stored images in one copy for the whole column
    (``decode_images``), PNGs and arrays one by one, on ``pool``'s threads when given (OpenCV's decode and
    NumPy's copies release the GIL, so threads scale with cores)."""
    from schemas.datasets import decode_images

    out = {}
    for name, decode in decoders.items():
        values = columns[name]
        whole = decode_images(values) if name == "image" else None
        if whole is not None:
            out[name] = whole
        elif pool is not None and len(values) > 1:
            out[name] = list(pool.map(decode, values))
        else:
            out[name] = [decode(v) for v in values]
    return out


def _shard(spec: LoaderSpec, rank: int, world: int) -> Iterator[dict]:
    """This rank's rows, decoded with the dataset schema's codecs (PNG or raw images, numpy arrays)."""
    from concurrent.futures import ThreadPoolExecutor

    from schemas.datasets import SCHEMAS, field_decoders

    decoders = field_decoders(SCHEMAS[spec.kind], spec.fields)
    reader, stride, offset = _reader(spec, rank=rank, world=world)
    pool = ThreadPoolExecutor(spec.workers, thread_name_prefix="decode") if spec.workers > 1 else None
    index = 0
    try:
        for columns in reader:
            count = len(columns["id"])
            keep = [i for i in range(index, index + count) if i % stride == offset]
            index += count
            if spec.keep is not None:
                ids = columns["id"]
                keep = [i for i in keep if ids[i - index + count] in spec.keep]
            if stride > 1 or spec.keep is not None:
                columns = {name: [values[i - index + count] for i in keep] for name, values in columns.items()}
            columns.update(decode_columns(columns, decoders, pool))
            for i in range(len(keep)):
                yield {name: values[i] for name, values in columns.items()}
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def rows(spec: LoaderSpec, *, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = False,
         infinite: bool = False) -> Iterator[dict]:
    """Decoded rows of this rank's shard, reproducibly: shuffled through a buffer seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    while True:  # one pass over the shard per round; a shard smaller than the buffer is fully permuted
        buffer: list = []
        for row in _shard(spec, rank, world):
            if not shuffle:
                yield row
                continue
            buffer.append(row)
            if len(buffer) >= spec.shuffle_buffer:
                yield buffer.pop(int(rng.integers(len(buffer))))
        rng.shuffle(buffer)
        yield from buffer
        if not infinite:
            return


def collate(kind: str, batch: list, aux: Optional[str] = None) -> tuple:
    """Rows -> (inputs, targets): class indices for classifiers, heat maps for the detector; with ``aux``, a
    third item: the lane masks (N, 1, H, W) in {0, 1}, or the light distance indices (DISTANCES, then one
    more for background crops)."""
    images = np.stack([r["image"] for r in batch])
    if kind == "tl_frames":
        hw = images.shape[1:3]
        return to_tensor(images), torch.from_numpy(np.stack([heat_target(r["boxes"], hw) for r in batch]))
    out = (to_tensor(images), torch.tensor([int(r["label"]) for r in batch], dtype=torch.long))
    if aux == "lane_mask":
        masks = np.stack([np.asarray(r["lane_mask"]) > 0 for r in batch])
        out += (torch.from_numpy(masks[:, None].astype(np.float32)),)
    elif aux == "distance":
        from pipeline.vocab import DISTANCES

        out += (torch.tensor([DISTANCES.index(r["distance"]) if r["distance"] in DISTANCES else len(DISTANCES)
                              for r in batch], dtype=torch.long),)
    elif aux is not None:
        raise ValueError(f"unknown auxiliary target {aux!r}; known: {sorted(set(AUX_TARGETS.values()))}")
    return out


def prefetch(iterator: Iterator, depth: int = 3) -> Iterator:
    """Run ``iterator`` in a background thread, ``depth`` items ahead (decode and collate overlap the step)."""
    import queue
    import threading

    items: queue.Queue = queue.Queue(depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(done)
        except BaseException as exc:  # hand the error to the consumer
            items.put(exc)
        finally:
            if hasattr(iterator, "close"):
                iterator.close()

    thread = threading.Thread(target=produce, daemon=True, name="batch-prefetch")
    thread.start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


def augment_batch(spec: LoaderSpec, batch: list, epoch: int, op_counts: Optional[dict] = None) -> list:
    """Online augmentation with the augment stage's own function: copy ``epoch + 1`` of each row (copy 0 is
    the original), another row of the batch as the background of context ops. ``op_counts`` gathers
    ``{op: [applied, skipped]}`` (an op that ran but found nothing to do reports itself skipped)."""
    from pipeline.augment.rows import augment_row

    out = []
    for i, row in enumerate(batch):
        augmented, applied = augment_row(spec.kind, row, spec.policy, row["id"], epoch + 1,
                                         background=batch[(i + 1) % len(batch)]["image"] if len(batch) > 1 else None)
        out.append(augmented)
        if op_counts is not None:
            for step in applied:
                counts = op_counts.setdefault(step["op"], [0, 0])
                counts[1 if "skipped" in step else 0] += 1
    return out


def _batches(spec: LoaderSpec, steps: int, rank: int, world: int, epoch: int, op_counts) -> Iterator[tuple]:
    source = rows(spec, rank=rank, world=world, seed=spec.seed * 1000 + epoch, shuffle=True, infinite=True)
    crops = np.random.default_rng([spec.seed, epoch, rank, CROP_STREAM]) if spec.crop else None
    try:
        for _ in range(steps):
            batch = [next(source) for _ in range(spec.batch_size)]
            if spec.policy is not None:   # on whole frames: context ops see the whole scene
                batch = augment_batch(spec, batch, epoch, op_counts)
            if crops is not None:
                batch = crop_frames(batch, spec.crop, crops, spec.crop_on_lights)
            out = collate(spec.kind, batch, spec.aux)
            yield tuple(t.pin_memory() for t in out) if spec.pin_memory and torch.cuda.is_available() else out
    finally:
        source.close()


def batches(spec: LoaderSpec, steps: int, *, rank: int = 0, world: int = 1, epoch: int = 0,
            op_counts: Optional[dict] = None) -> Iterator[tuple]:
    """Exactly ``steps`` training batches for this rank in this epoch (its shard cycles if it is short),
    prepared in a background thread; online augmentation counts its ops into ``op_counts``."""
    return prefetch(_batches(spec, steps, rank, world, epoch, op_counts))


def eval_batches(spec: LoaderSpec, limit: Optional[int] = None) -> Iterator[tuple]:
    """One ordered pass over a split: (inputs, targets, rows) per batch (rows keep boxes, ids, labels)."""
    chunk: list = []
    count = 0
    for row in rows(spec):
        chunk.append(row)
        if len(chunk) == spec.batch_size:
            yield (*collate(spec.kind, chunk), chunk)
            chunk, count = [], count + 1
            if limit and count >= limit:
                return
    if chunk:
        yield (*collate(spec.kind, chunk), chunk)
