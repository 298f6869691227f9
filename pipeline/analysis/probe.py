"""Inference over a dataset as one Spark job: the nets go to the executors once (a broadcast), each partition
decodes its rows, runs every net and folds the activations into something small (sufficient statistics,
histograms, top-k lists); the partials are merged with ``treeReduce``. Nothing the size of the dataset comes back
to the driver, and torch runs one thread per task (Spark already runs one task per core).

Rows are spread over partitions by a hash of their id, in buckets: every bucket is handled whole by one task,
streamed in id-hash order (sorted by Spark, a batch at a time, so a task's memory does not grow with the data), and
a row's *partner* (the next row of its bucket, used for permuted-image baselines) does not depend on the number of
partitions, and neither does any sum (up to float64 rounding). A bucket that the hash leaves with a single row (a
small split: 12 rows in 16 buckets) would give that row itself as its partner, so before partitioning, consecutive
buckets are joined until each holds two or more rows: a partner is always another image (unless the probe set has
one row).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

BUCKETS = 16


@dataclass(frozen=True)
class Probe:
    """What the executors need: a split of a dataset, the layers to read, how a unit's activation is sampled."""
    url: str                      # one split of one dataset, e.g. file:///.../synthetic/road_frames/val
    kind: str
    layers: tuple                 # layer names, as the nets define them
    unit: str = "mean"            # "mean": a unit's spatial mean per image; "position": every position a sample
    batch_size: int = 32
    max_rows: int = 0             # 0: every row of the split
    partitions: int = 0           # 0: Spark's default parallelism


def activations(nets: dict, images: np.ndarray, layers: tuple) -> dict:
    """``{(net, layer): activation}`` as float64 arrays, (N, C, H, W) for conv layers and (N, C) for the rest."""
    import torch

    from pipeline.models.normalize import to_tensor

    x = to_tensor(images)
    out = {}
    with torch.no_grad():
        for name, net in nets.items():
            for layer, act in net.features_at(x, layers).items():
                out[(name, layer)] = act.double().numpy()
    return out


def samples(act: np.ndarray, unit: str) -> np.ndarray:
    """(samples, units): a conv unit's spatial mean per image, or (``unit="position"``) every position of every
    image a sample, images in order; other layers: one sample per image."""
    if act.ndim == 2:
        return act
    if unit == "mean":
        return act.mean((2, 3))
    return act.transpose(0, 2, 3, 1).reshape(-1, act.shape[1])


def joined_buckets(counts: dict) -> dict:
    """``{bucket: the bucket it joins}`` from ``{bucket: rows}``: consecutive buckets (in bucket order) are joined
    into the last of them until each group holds two or more rows; a group left with one row at the end joins
    the first group. Depends only on the counts, so neither the partners nor the sums depend on the partitions."""
    joined, group, held = {}, [], 0
    for bucket in sorted(counts):
        group.append(bucket)
        held += counts[bucket]
        if held >= 2:
            joined.update({b: bucket for b in group})
            group, held = [], 0
    if group:
        target = joined[min(joined)] if joined else group[-1]
        joined.update({b: target for b in group})
    return joined


def _rows(spark, probe: Probe, partners: bool):
    from pyspark.sql import functions as F

    df = spark.read.parquet(probe.url).select("id", "image").withColumn("h", F.xxhash64("id"))
    if probe.max_rows:
        df = df.orderBy("h", "id").limit(probe.max_rows)
    df = df.withColumn("bucket", F.pmod(F.col("h"), F.lit(BUCKETS)))
    if partners:
        joined = joined_buckets({r["bucket"]: r["count"] for r in df.groupBy("bucket").count().collect()})
        pairs = [F.lit(x) for item in sorted(joined.items()) for x in item]
        df = df.withColumn("bucket", F.element_at(F.create_map(*pairs), F.col("bucket")))
    parts = probe.partitions or spark.sparkContext.defaultParallelism
    return df.repartition(parts, "bucket").sortWithinPartitions("bucket", "h", "id").rdd


def fold(spark, probe: Probe, nets: dict, zero: Callable, add: Callable, merge: Callable, partners: bool = True):
    """Run ``nets`` over the probe rows: per partition ``state = zero()``, then ``add(state, acts, partner, ids)``
    per batch (``acts`` as :func:`activations` returns; ``partner(names)`` gives the same for the named nets on
    each row's partner row, computed only when asked; ``ids`` the batch's row ids); the partition states are
    merged with ``merge(a, b) -> a``. Returns the merged state. ``partners=False`` (a pass that never asks for
    partners) skips counting the buckets' rows, so a single-row bucket's row may then be its own partner."""
    shared = spark.sparkContext.broadcast(nets)
    try:
        return _rows(spark, probe, partners).mapPartitions(
            lambda rows: _task(rows, probe, shared, zero, add)).treeReduce(merge, depth=2)
    finally:
        shared.unpersist()


def _task(rows, probe: Probe, shared, zero, add) -> Iterator:
    import torch

    from pipeline.session import quiet_warnings
    from schemas.datasets import SCHEMAS, field_decoders

    quiet_warnings()
    torch.set_num_threads(1)
    decode = field_decoders(SCHEMAS[probe.kind], ["image"])["image"]
    nets = shared.value
    for net in nets.values():
        net.eval()
    state = zero()
    for _, bucket in itertools.groupby(rows, key=lambda r: r["bucket"]):   # rows arrive sorted by bucket, hash
        for chunk, partners in _with_partners(bucket, probe.batch_size):
            images = np.stack([decode(r["image"]) for r in chunk])
            partner_images = np.stack([decode(r["image"]) for r in partners])
            add(state, activations(nets, images, probe.layers),
                lambda names, p=partner_images: activations({n: nets[n] for n in names}, p, probe.layers),
                [r["id"] for r in chunk])
    yield state


def fetch_rows(spark, url: str, kind: str, ids) -> dict:
    """``{id: decoded image}`` of a few rows of a dataset split, by id (a filter pushed down to the files)."""
    from pyspark.sql import functions as F

    from schemas.datasets import SCHEMAS, field_decoders

    ids = sorted(set(ids))
    if not ids:
        return {}
    rows = spark.read.parquet(url).select("id", "image").where(F.col("id").isin(ids)).collect()
    decode = field_decoders(SCHEMAS[kind], ["image"])["image"]
    return {r["id"]: decode(r["image"]) for r in rows}


def _with_partners(bucket, size: int):
    """Batches of a bucket's rows with each row's partner (the next row; the last row's is the first), holding
    at most ``size + 2`` rows: memory does not grow with the bucket."""
    rows = iter(bucket)
    first = next(rows, None)
    if first is None:
        return
    chunk, current = [], first
    for following in rows:
        chunk.append((current, following))
        current = following
        if len(chunk) == size:
            yield [c for c, _ in chunk], [p for _, p in chunk]
            chunk = []
    chunk.append((current, first))
    yield [c for c, _ in chunk], [p for _, p in chunk]


def layer_shapes(net, in_hw: tuple, layers: Optional[tuple] = None) -> dict:
    """``{layer: activation shape without the batch}`` for an input of ``in_hw``."""
    import torch

    names = layers or net.layer_names
    with torch.no_grad():
        acts = net.eval().features_at(torch.zeros(1, 3, *in_hw), names)
    return {name: tuple(a.shape[1:]) for name, a in acts.items()}
