"""The ingest stage: sources -> decoded, validated, resized, split rows -> Petastorm datasets + quarantine.

extract   : plan the inputs on the driver (synthetic frame indices, or a reader's canonical records;
            :func:`extract`);
transform : Spark tasks render / read + decode their own inputs (paths travel, not bytes), validate, resize,
            and emit one ledger row per input plus the dataset rows it yields (``process_partition``);
load      : the same tasks write their rows themselves, a Parquet file per dataset and task
            (``write_partition``, :mod:`pipeline.data.parts`): one Spark job in all (:func:`write_job`). The
            driver commits the files, adds the Petastorm metadata, checks the footers and accounts for every input
            (:func:`load`); every dataset of one ingest is written under a temporary folder and swapped in whole
            (:mod:`pipeline.data.writer`).

Accounting: every input yields exactly one ledger row, ``written`` or ``quarantined`` with its reason,
so rows in = rows written + rows quarantined is checked on every run.

Splits: by a hash of the input's *group* (a sequence, clip, track or folder), so near-identical frames of one
group never straddle splits; a split fixed by the source (ImageFolder ``train/``, ``test/``) is kept.

* ``ingest.split_by=frame`` hashes the input id instead: frames of one sequence land in different splits. It is
  the leak the independence audit (:mod:`pipeline.analysis.independence`) measures, never for real models.
  Rows and the ledger keep the original group, so the leak stays visible (``groups_across_splits``).
* ``ingest.group_near_duplicates=true`` adds a first Spark pass (:func:`hash_partition`): every input is read,
  decoded, validated and resized exactly as the ingest pass does, and the stored image's perceptual hash (the
  ledger's ``phash``) computed. Pairs of inputs of *different* groups within ``ingest.near_duplicate_bits``
  bits are found by the same band join as :func:`near_duplicate_pairs` (:func:`close_pairs`); the driver
  joins their groups (union-find over the distinct group pairs, :func:`merge_groups`) and each merged group
  takes the name of its smallest member (so unmerged groups, and their splits, are unchanged). The ingest pass
  then splits by merged group: rows carry the merged group in ``group``; the ledger keeps the original
  ``group`` and records the merged one in ``split_group``. A split fixed by the source still wins: free
  inputs of a merged group follow its fixed inputs when those agree on one split; a merged group whose fixed
  inputs lie in several splits cannot be kept together (nothing moves), is counted
  (``near_duplicate_merges_spanning_fixed_splits``) and its pairs stay in ``near_duplicates_across_splits``.
  A val carved out of a train folder is carved by merged group.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from pipeline.config import Config, IngestSection
from pipeline.data import store, writer
from pipeline.data.images import resize
from pipeline.data.records import Box, stable_hash
from pipeline.data.writer import AccountingError
from pipeline.errors import UserError
from pipeline.vocab import CROP_CLASSES, DISTANCES, TL_STATES, distance_bucket

log = logging.getLogger(__name__)

LEDGER = "ledger"
# ``group``: the input's own group, as the source gave it; ``split_group``: what its split was decided by (the
# group, the merged group of ``ingest.group_near_duplicates``, or the input id with ``ingest.split_by=frame``).
LEDGER_COLUMNS = ("input_id", "source_id", "path", "group", "split_group", "split", "label", "status", "reason",
                  "fixes", "phash")
QUARANTINE = "quarantine"
# What an ingest run logs, named once for the report: the summary file, the metric names, the figures
SUMMARY_FILE = "ingest_summary.json"
COUNTS = ("rows_in", "rows_written", "rows_quarantined", "near_duplicates_across_splits", "groups_across_splits")
QUARANTINE_METRIC, FIX_METRIC = "quarantine.{reason}", "fixes.{fix}"
SPLIT_METRIC, CLASS_METRIC = "{kind}.{split}", "{kind}.class.{name}"
SAMPLES_FIGURE, NEAR_DUPLICATES_FIGURE = "samples_{kind}", "near_duplicates"
NOTE_TAGS = ("ingest.split_note", "ingest.group_near_duplicates", "ingest.val_carve")   # the plan's notes, as tags
QUARANTINE_COLUMNS = ("input_id", "source_id", "path", "group", "reason")


class IngestError(UserError):
    """A source that cannot be read at all (missing path, no images): the message names the fix."""


# ------------------------------------------------------------------------------------------ options

@dataclass(frozen=True)
class IngestOptions:
    """What a Spark task needs to turn one input into rows: the config section itself (it pickles) and
    what the driver derived from the source (the image-level class names, in index order) and, with
    ``ingest.group_near_duplicates``, from the first pass: ``merged`` maps each group that was joined with
    another (by its stored name, :func:`storable`) to its merged group; ``forced`` maps a merged group to the
    one split its source-fixed inputs share, which its free inputs follow."""
    section: IngestSection
    classes: tuple
    merged: dict = field(default_factory=dict)
    forced: dict = field(default_factory=dict)

    @property
    def kinds(self) -> tuple:
        return self.section.kinds

    @property
    def fractions(self) -> tuple:
        split = self.section.split
        return split.train, split.val, split.test

    def synth_config(self):
        from pipeline.data.synth import SynthConfig

        c = self.section
        return SynthConfig(width=c.render_hw[1], height=c.render_hw[0], frames_per_sequence=c.frames_per_sequence,
                           context_bias=c.context_bias, distance_buckets=tuple(c.distance_buckets))


# ------------------------------------------------------------------------------------------ extract

def plan_inputs(conf: Config, regroup: Optional[Callable[[list], dict]] = None) -> tuple[list[dict], tuple, dict]:
    """The inputs of one ingest, as small dicts, the image-level class names (in index order), and what the
    plan changed (``{"val_carved": n}`` when a val split was carved out of a train folder).

    ``regroup`` (``ingest.group_near_duplicates``) is called with the planned inputs before any split is decided
    and returns ``{group: merged group}`` (stored names); a val carve then moves merged groups whole."""
    c = conf.ingest
    if c.source == "synthetic":
        from pipeline.data.synth import LANE_CLASSES

        inputs = [{"index": i} for i in range(c.num_frames)]
        if regroup is not None:
            regroup(inputs)
        return inputs, tuple(LANE_CLASSES), {}
    if not c.source_path:
        raise IngestError(f"ingest.source={c.source} needs ingest.source_path=<the dataset's folder or "
                          f"annotation file>")
    from pipeline.data.readers import read_source

    try:
        records = read_source(c.source, c.source_path, image_root=c.image_root)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        raise IngestError(f"ingest.source={c.source} cannot read ingest.source_path={c.source_path}: {exc}") from None
    if not records:
        raise IngestError(f"no images found for ingest.source={c.source} at {c.source_path}")
    merged = regroup([{"record": r.as_dict()} for r in records]) if regroup is not None else {}
    if c.split_by == "frame":
        def unit(r):
            return r.source_id
    else:
        def unit(r):
            return merged.get(storable(r.group), r.group)
    carved = carve_val(records, c.val_share, key=unit)
    classes = tuple(sorted({r.label for r in records if r.label is not None and r.reason is None}))
    return [{"record": r.as_dict()} for r in records], classes or ("unlabelled",), \
        ({"val_carved": carved} if carved is not None else {})


def carve_val(records: list, share: float, key: Optional[Callable] = None) -> Optional[int]:
    """A source that fixes train and test by folder but has no val (ImageFolder ``train/`` + ``test/``): move
    ``share`` of the train folder's groups to val, by group hash (a group never straddles). The test folder is
    never touched. Returns the number of records moved, or None when the source needs no carve. ``key``: the
    unit carved whole (default the record's group; the merged group, or the record itself with
    ``ingest.split_by=frame``)."""
    fixed = {r.split for r in records}
    if not ({"train", "test"} <= fixed) or "val" in fixed or share <= 0:
        return None
    key = key or (lambda r: r.group)
    moved = 0
    for r in records:
        if r.split == "train" and stable_hash(f"val-carve:{key(r)}") / 2 ** 64 < share:
            r.split = "val"
            moved += 1
    return moved


# ---------------------------------------------------------------------------------------- transform

def split_of(group: str, fractions: tuple, preset: Optional[str] = None) -> str:
    """Deterministic split by group: a hash of the group id, never of the frame."""
    if preset in ("train", "val", "test"):
        return preset
    u = stable_hash(group) / 2 ** 64
    train, val, _ = fractions
    return "train" if u < train else "val" if u < train + val else "test"


def split_for(opts: IngestOptions, item_id: str, group: str, preset: Optional[str] = None) -> tuple[str, str, str]:
    """``(split, split_group, row group)`` of one input under the ingest options: by the input id with
    ``split_by=frame`` (rows keep their own group), else by the group or the merged group it was joined into
    (which rows then carry). A split fixed by the source always wins; a free input of a merged group follows the
    split its fixed inputs share (``opts.forced``)."""
    if opts.section.split_by == "frame":
        return split_of(item_id, opts.fractions, preset), item_id, group
    unit = opts.merged.get(storable(group), group)
    return split_of(unit, opts.fractions, preset or opts.forced.get(unit)), unit, unit


def phash64(rgb: np.ndarray) -> int:
    """64-bit perceptual hash (ImageHash's pHash: DCT of a 32x32 grey image) as a signed int64 (a Parquet long)."""
    import imagehash
    from PIL import Image

    value = int(str(imagehash.phash(Image.fromarray(rgb))), 16)
    return value - (1 << 64) if value >= 1 << 63 else value


def _rng_for(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, stable_hash(key)])


def _negative_boxes(rng, boxes: list, width: int, height: int, count: int) -> list:
    """Background windows that touch no light, sized like the lights (or like a mid-size light)."""
    out = []
    heights = [b.y_max - b.y_min for b in boxes] or [height * 0.08]
    for _ in range(count * 20):
        if len(out) == count:
            break
        h = float(rng.choice(heights)) * rng.uniform(0.8, 1.5)
        w = h * rng.uniform(0.4, 1.0)
        if w >= width or h >= height:
            continue
        x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        cand = Box(x0, y0, x0 + w, y0 + h, "background")
        pad = 0.5 * h
        if all(cand.x_max + pad < b.x_min or cand.x_min - pad > b.x_max or cand.y_max + pad < b.y_min
               or cand.y_min - pad > b.y_max for b in boxes):
            out.append(cand)
    return out


class _Emitter:
    """Builds Petastorm rows (encoded with the Unischemas' codecs, in the task) for one input."""

    def __init__(self, opts: IngestOptions):
        from schemas.datasets import SCHEMAS

        self.opts = opts
        self._schemas = SCHEMAS

    def row(self, kind: str, **fields):
        from pipeline.data.parts import encode_row

        section = self.opts.section
        return kind, encode_row(self._schemas[kind], fields, section.png_compression, section.image_format)

    def light_rows(self, ident: dict, full: np.ndarray, boxes: list) -> Iterator[tuple]:
        """The detector frame (resized) and the classifier crops (from the full-resolution image)."""
        from pipeline.data.images import crop, resize_with_boxes

        o = self.opts.section
        height = full.shape[0]
        frame, scaled = resize_with_boxes(full, boxes, o.frame_hw)
        distances = [distance_bucket(b.y_max - b.y_min, height, o.distance_buckets) for b in boxes]
        yield self.row("tl_frames", **ident, image=frame,
                       boxes=np.array([[b.x_min, b.y_min, b.x_max, b.y_max] for b in scaled],
                                      np.float32).reshape(-1, 4),
                       states=np.array([TL_STATES.index(b.label) for b in boxes], np.int32),
                       distances=np.array([DISTANCES.index(d) for d in distances], np.int32),
                       phash=phash64(frame))
        for k, (box, dist) in enumerate(zip(boxes, distances)):
            yield self.row("tl_crops", **{**ident, "id": f"{ident['id']}#{k}"}, image=crop(full, box, o.crop_hw),
                           label=CROP_CLASSES.index(box.label), label_name=box.label, distance=dist)
        rng = _rng_for(o.seed, ident["id"])
        negatives = _negative_boxes(rng, boxes, full.shape[1], height, o.negatives_per_frame)
        for k, box in enumerate(negatives):
            yield self.row("tl_crops", **{**ident, "id": f"{ident['id']}#bg{k}"}, image=crop(full, box, o.crop_hw),
                           label=CROP_CLASSES.index("background"), label_name="background", distance="")


def storable(text: str) -> str:
    """A file name as valid UTF-8 for Parquet: undecodable bytes (surrogate escapes) become \\xNN."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _ledger(item_id: str, rec: dict, split: str, status: str, reason: str = "", fixes=(), phash: int = 0,
            split_group: Optional[str] = None):
    return LEDGER, {"input_id": storable(item_id), "source_id": storable(rec.get("source_id", item_id)),
                    "path": storable(rec.get("path") or ""), "group": storable(rec.get("group", "")),
                    "split_group": storable(rec.get("group", "") if split_group is None else split_group),
                    "split": split, "label": storable(rec.get("label") or ""),
                    "status": status, "reason": storable(reason), "fixes": ",".join(fixes), "phash": phash}


def _synthetic(index: int, opts: IngestOptions, emit: _Emitter) -> Iterator[tuple]:
    from pipeline.data.synth import render_frame

    c = opts.section
    frame = render_frame(c.seed, index, opts.synth_config())
    split, unit, group = split_for(opts, frame.frame_id, frame.sequence_id)
    ident = {"id": frame.frame_id, "group": group, "split": split, "source": f"synthetic:{c.seed}"}
    road = resize(frame.image, c.road_hw)
    phash = phash64(road)     # hash_partition hashes the same image
    yield emit.row("road_frames", **ident, image=road, label=opts.classes.index(frame.lane_class),
                   label_name=frame.lane_class, lane_mask=resize(frame.lane_mask, c.road_hw, nearest=True),
                   context=frame.context["time_of_day"], phash=phash)
    yield from emit.light_rows(ident, frame.image, list(frame.boxes))
    rec = {"source_id": frame.frame_id, "group": frame.sequence_id, "label": frame.lane_class}
    yield _ledger(frame.frame_id, rec, split, "written", phash=phash, split_group=unit)


def _prepare(rec: dict, opts: IngestOptions) -> tuple[Optional[tuple], str, list]:
    """Read, decode and validate one canonical record: ``((rgb, boxes), "", fixes)`` (boxes fixed, oriented
    and mapped), or ``(None, reason, fixes)`` when it must be quarantined. Shared by the ingest pass and the
    hash pass of ``ingest.group_near_duplicates``, so both see the same pixels."""
    from pipeline.data.images import ImageError, decode_image, fix_boxes, read_bytes, transform_boxes

    c, kinds = opts.section, opts.kinds
    fixes = list(rec.get("fixes", ()))
    if rec.get("reason"):
        return None, rec["reason"], fixes
    try:
        data = read_bytes(rec["path"])
        target = max(stored_hw(c, kind) for kind in kinds)
        decoded = decode_image(data, min_size=c.min_size, max_pixels=c.max_pixels,
                               hint=rec.get("decode", "auto"),
                               target_hw=None if rec.get("boxes") else tuple(target))
    except ImageError as exc:
        return None, exc.reason, fixes
    except OSError as exc:
        return None, f"unreadable:{type(exc).__name__}", fixes
    label_map = c.label_map
    boxes = [Box(**{**b, "label": label_map.get(b["label"], b["label"])}) for b in rec.get("boxes", ())]
    boxes = [b for b in boxes if b.label != "drop"]
    if boxes:
        stored_w, stored_h = ((decoded.height, decoded.width) if decoded.orientation in (5, 6, 7, 8)
                              else (decoded.width, decoded.height))
        boxes, box_fixes, reason = fix_boxes(boxes, stored_w, stored_h)  # in stored pixels, then orient
        fixes += box_fixes
        if reason:
            return None, reason, fixes
        boxes = transform_boxes(boxes, decoded.orientation, stored_w, stored_h)
    unknown = sorted({b.label for b in boxes if b.label not in TL_STATES})
    if "tl_frames" in kinds and unknown:
        return None, f"unknown_label:{unknown[0]}", fixes
    return (decoded.rgb, boxes), "", fixes


def hashed_kind(kinds) -> str:
    """The kind whose stored image a record's ledger ``phash`` is the hash of: the last of road_frames,
    class_images, tl_frames that the source yields, as :func:`_from_record` computes them (every reader yields
    one of them). Synthetic inputs are not records: their ledger hashes the road frame."""
    return [k for k in ("road_frames", "class_images", "tl_frames") if k in kinds][-1]


def _from_record(rec: dict, opts: IngestOptions, emit: _Emitter) -> Iterator[tuple]:
    """Read, decode and validate one canonical record; quarantine it (with its reason) if unusable."""
    c, kinds = opts.section, opts.kinds
    item_id = rec["source_id"]
    split, unit, group = split_for(opts, item_id, rec["group"], rec.get("split"))
    prepared, reason, fixes = _prepare(rec, opts)
    if prepared is None:
        yield _ledger(item_id, rec, split, "quarantined", reason, fixes, split_group=unit)
        return
    rgb, boxes = prepared
    ident = {"id": storable(item_id), "group": storable(group), "split": split, "source": storable(rec["path"])}
    phash = 0
    label = rec.get("label")
    labelled = {"label": opts.classes.index(label) if label in opts.classes else -1,
                "label_name": storable(label or "")}
    if "road_frames" in kinds:
        road = resize(rgb, c.road_hw)
        phash = phash64(road)
        yield emit.row("road_frames", **ident, image=road, **labelled,
                       lane_mask=_lane_mask(rec.get("lanes", ()), rgb.shape, c.road_hw), context="", phash=phash)
    if "class_images" in kinds:
        image = resize(rgb, c.class_hw)
        phash = phash64(image)
        yield emit.row("class_images", **ident, image=image, **labelled, phash=phash)
    if "tl_frames" in kinds:
        rows = list(emit.light_rows(ident, rgb, boxes))
        phash = rows[0][1]["phash"]
        yield from rows
    yield _ledger(item_id, rec, split, "written", fixes=fixes, phash=phash, split_group=unit)


def stored_hw(section: IngestSection, kind: str) -> tuple:
    """The size (height, width) rows of ``kind`` are stored at."""
    return tuple({"road_frames": section.road_hw, "class_images": section.class_hw, "tl_frames": section.frame_hw,
                  "tl_crops": section.crop_hw}[kind])


def _lane_mask(lanes: Iterable, full_shape: tuple, hw: tuple) -> np.ndarray:
    """Rasterise lane polylines (TuSimple / CULane) into a mask of the stored size."""
    import cv2

    mask = np.zeros(hw, np.uint8)
    sy, sx = hw[0] / full_shape[0], hw[1] / full_shape[1]
    for lane in lanes:
        pts = np.array([[x * sx, y * sy] for x, y in lane], np.int32)
        if len(pts) >= 2:
            cv2.polylines(mask, [pts], False, 1, thickness=max(1, round(hw[0] / 64)))
    return mask


def process_partition(items: Iterable[dict], opts: IngestOptions) -> Iterator[tuple]:
    """The Spark task: one input dict -> (kind, row) pairs, always exactly one ledger row per input."""
    import cv2

    from pipeline.session import quiet_warnings

    quiet_warnings()
    cv2.setNumThreads(1)  # Spark already runs one task per core
    emit = _Emitter(opts)
    for item in items:
        if "index" in item:
            yield from _synthetic(item["index"], opts, emit)
            continue
        rec = item["record"]
        try:
            rows = list(_from_record(rec, opts, emit))  # all of an input's rows, or none of them
        except Exception as exc:  # a bug or an input nobody foresaw: quarantine it, loudly, and go on
            log.exception("unexpected error on %s", rec.get("source_id"))
            split, unit, _ = split_for(opts, rec["source_id"], rec.get("group", ""), rec.get("split"))
            yield _ledger(rec["source_id"], rec, split, "quarantined", f"error:{type(exc).__name__}: {exc}"[:300],
                          split_group=unit)
        else:
            yield from rows


def hash_partition(items: Iterable[dict], opts: IngestOptions) -> Iterator[tuple]:
    """The Spark task of the first pass of ``ingest.group_near_duplicates``: ``(input id, group, phash)`` (stored
    names) of every input the ingest pass will write, its phash the one the ledger gets: the hash of the image
    ingest stores, read, decoded, validated and resized by the same code. Inputs the ingest pass quarantines
    yield nothing (they join no group)."""
    import cv2

    from pipeline.session import quiet_warnings

    quiet_warnings()
    cv2.setNumThreads(1)
    kind = hashed_kind(opts.kinds)
    hw = stored_hw(opts.section, kind)
    for item in items:
        if "index" in item:
            from pipeline.data.synth import render_frame

            frame = render_frame(opts.section.seed, item["index"], opts.synth_config())
            yield frame.frame_id, frame.sequence_id, phash64(resize(frame.image, opts.section.road_hw))
            continue
        rec = item["record"]
        try:
            prepared, _, _ = _prepare(rec, opts)
        except Exception:  # the ingest pass quarantines it (error:...), and says why
            continue
        if prepared is not None:
            yield storable(rec["source_id"]), storable(rec["group"]), phash64(resize(prepared[0], hw))


def merge_groups(pairs: Iterable[tuple]) -> dict:
    """Union-find over pairs of groups that share a near-duplicate: ``{group: merged group}`` for every group of
    a component of two or more, the merged group being the component's smallest name (whatever the order of
    the pairs: deterministic, and an unmerged group keeps its name)."""
    parent: dict = {}

    def find(x):
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:              # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in pairs:
        ra, rb = find(a), find(b)
        parent.setdefault(ra, ra)
        parent.setdefault(rb, rb)
        if ra != rb:
            lo, hi = sorted((ra, rb))
            parent[hi] = lo
    return {g: find(g) for g in sorted(parent)}


@dataclass
class Regrouping:
    """What the first pass of ``ingest.group_near_duplicates`` found and merged."""
    merged: dict = field(default_factory=dict)   # group -> merged group, for the groups that were joined
    inputs_hashed: int = 0                        # inputs the ingest pass will write (the rest are not hashed)
    pairs_across_groups: int = 0                  # near-duplicate pairs of inputs in different groups

    @property
    def groups_merged(self) -> int:
        """Groups that lost their own split to another's: members of merged groups minus the merged groups."""
        return len(self.merged) - len(set(self.merged.values()))


def find_near_duplicate_groups(spark, inputs: list, opts: IngestOptions, max_bits: int,
                               partitions: int) -> Regrouping:
    """The first pass: hash every input in Spark (:func:`hash_partition`), find the near-duplicate pairs of
    inputs in different groups with the band join, and merge their groups on the driver (:func:`merge_groups`:
    only the distinct group pairs come back)."""
    from pyspark.sql import functions as F

    if not inputs:
        return Regrouping()
    hashed = (spark.sparkContext.parallelize(inputs, min(len(inputs), partitions))
              .mapPartitions(lambda items: hash_partition(items, opts)))
    frames = spark.createDataFrame(hashed, "input_id string, group string, phash long").cache()
    try:
        count = frames.count()
        pairs = close_pairs(frames, frames, max_bits, {"id_a": "a.input_id", "id_b": "b.input_id",
                                                       "group_a": "a.group", "group_b": "b.group"},
                            F.col("a.group") < F.col("b.group")).dropDuplicates(["id_a", "id_b"]).cache()
        n_pairs = pairs.count()
        group_pairs = [(r["group_a"], r["group_b"])
                       for r in pairs.select("group_a", "group_b").distinct().orderBy("group_a", "group_b").collect()]
        pairs.unpersist()
    finally:
        frames.unpersist()
    return Regrouping(merge_groups(group_pairs), count, n_pairs)


def forced_splits(inputs: list, merged: dict) -> tuple[dict, int]:
    """Where a source fixes some splits (ImageFolder ``train/``, ``test/``, a carved val): ``{merged group: split}``
    for merged groups whose fixed inputs all lie in one split (its free inputs follow it), and the number of
    merged groups whose fixed inputs lie in several splits (they stay split: nothing can move)."""
    fixed: dict = {}
    for item in inputs:
        rec = item.get("record")
        if rec is None:
            continue
        unit = merged.get(storable(rec["group"]))
        if unit is not None and rec.get("split") in ("train", "val", "test"):
            fixed.setdefault(unit, set()).add(rec["split"])
    forced = {unit: next(iter(splits)) for unit, splits in fixed.items() if len(splits) == 1}
    return forced, sum(len(splits) > 1 for splits in fixed.values())


# --------------------------------------------------------------------------------------------- load

def _table_schema(columns: tuple):
    import pyarrow as pa

    return pa.schema([pa.field(c, pa.int64() if c == "phash" else pa.string(), nullable=False) for c in columns])


def write_partition(index: int, items: Iterable[dict], opts: IngestOptions, out_url: str,
                    rowgroup_size_mb: float) -> Iterator[dict]:
    """The Spark task: runs :func:`process_partition` and writes its rows itself, one Parquet file per
    dataset (``<kind>/<split>``) plus its part of the ledger and the quarantine table, all named after the
    partition; yields one small report: files written, ledger counts, classes and a few sample rows."""
    from collections import Counter

    from pipeline.data.parts import PartWriter, arrow_schema
    from schemas.datasets import SCHEMAS

    writer = PartWriter(out_url, f"part-{index:05d}", rowgroup_size_mb)
    ledger_schema, quarantine_schema = _table_schema(LEDGER_COLUMNS), _table_schema(QUARANTINE_COLUMNS)
    writer.ensure(LEDGER, ledger_schema)
    writer.ensure(QUARANTINE, quarantine_schema)
    schemas = {kind: arrow_schema(schema) for kind, schema in SCHEMAS.items()}
    statuses, fixes, classes, samples = Counter(), Counter(), Counter(), {}
    for kind, row in process_partition(items, opts):
        if kind == LEDGER:
            writer.add(LEDGER, ledger_schema, row)
            statuses[(row["status"], row["split"], row["label"], row["reason"])] += 1
            fixes.update(f for f in row["fixes"].split(",") if f)
            if row["status"] == "quarantined":
                writer.add(QUARANTINE, quarantine_schema, {c: row[c] for c in QUARANTINE_COLUMNS})
            continue
        writer.add(f"{kind}/{row['split']}", schemas[kind], row)
        if "label_name" in row:
            classes[(kind, row["label_name"])] += 1
        kept = samples.setdefault(kind, [])
        if index < 4 and len(kept) < opts.section.samples:  # the sample grid: a few tasks' worth, not every task's
            kept.append(row)
    yield {"files": writer.close(), "statuses": list(statuses.items()), "fixes": dict(fixes),
           "classes": list(classes.items()), "samples": samples}


def hash_bands(frames, max_bits: int):
    """``frames`` (with a 64-bit ``phash`` column) with one row per band of its hash: columns ``band``, ``value``.

    Pigeonhole banding: split the 64-bit hash into max_bits + 1 bands; two hashes within max_bits bits agree
    exactly on at least one band, so a join on (band, value) finds every candidate without an n^2 scan.
    """
    from pyspark.sql import functions as F

    if not 0 <= max_bits <= 63:
        raise ValueError(f"max_bits must be 0..63, got {max_bits}")
    bands = max_bits + 1
    width = 64 // bands

    def band(b: int):  # bits [b*width, (b+1)*width) of the hash; the last band takes the remaining bits
        shifted = F.shiftrightunsigned("phash", b * width)
        return shifted if b == bands - 1 else shifted.bitwiseAND((1 << width) - 1)

    return frames.select("*", F.explode(F.array(*[
        F.struct(F.lit(b).alias("band"), band(b).alias("value")) for b in range(bands)])).alias("bv")) \
        .select(*frames.columns, "bv.band", "bv.value")


def close_pairs(left, right, max_bits: int, columns: dict, condition=None):
    """Rows of ``left`` (alias ``a``) and ``right`` (alias ``b``), both with a ``phash`` column, whose hashes
    differ in <= max_bits bits: the band join of :func:`hash_bands`. ``columns`` names the output columns
    (``{"id_a": "a.input_id", ...}``), ``condition`` an extra join condition on ``a.*`` / ``b.*``; a
    ``distance`` column (the Hamming distance) is added. A pair may come once per band it agrees on: callers
    drop duplicates on their ids."""
    from pyspark.sql import functions as F

    banded_left = hash_bands(left, max_bits)
    banded_right = banded_left if right is left else hash_bands(right, max_bits)
    a, b = banded_left.alias("a"), banded_right.alias("b")
    on = (F.col("a.band") == F.col("b.band")) & (F.col("a.value") == F.col("b.value"))
    if condition is not None:
        on = on & condition
    return (a.join(b, on)
            .select(*[F.col(source).alias(name) for name, source in columns.items()],
                    F.bit_count(F.col("a.phash").bitwiseXOR(F.col("b.phash"))).alias("distance"))
            .filter(F.col("distance") <= max_bits))


def near_duplicate_pairs(ledger, max_bits: int):
    """Pairs of written frames in *different* splits whose perceptual hashes differ in <= max_bits bits
    (columns id_a, split_a, id_b, split_b, distance; split_a < split_b), by the band join of :func:`close_pairs`."""
    from pyspark.sql import functions as F

    frames = ledger.filter(F.col("status") == "written").select("input_id", "split", "phash")
    return (close_pairs(frames, frames, max_bits, {"id_a": "a.input_id", "split_a": "a.split",
                                                   "id_b": "b.input_id", "split_b": "b.split"},
                        F.col("a.split") < F.col("b.split"))
            .dropDuplicates(["id_a", "id_b"]))


def groups_across_splits(ledger) -> int:
    """Groups (as the source gave them) whose written inputs lie in more than one split."""
    from pyspark.sql import functions as F

    return (ledger.filter(F.col("status") == "written").groupBy("group")
            .agg(F.countDistinct("split").alias("splits")).filter(F.col("splits") > 1).count())


# ------------------------------------------------------------------------------------------- stage

def run(spark, conf: Config, tracker) -> dict:
    """The ingest stage (registered in pipeline.stages): plan the inputs (extract), one Spark job transforms and
    writes them (:func:`write_job`), the tasks' files are committed and every input accounted for (load), and
    the dataset is described and swapped in whole."""
    c = conf.ingest
    plan = extract(spark, conf)
    say_plan(plan)
    out = writer.Output(store.dataset_root(conf.paths.data_url, c.name))
    reports = write_job(spark, plan.inputs, plan.opts, out.tmp, c.rowgroup_size_mb,
                        task_count(spark, c, len(plan.inputs))).collect()
    summary = load(out, reports, plan)
    pairs = describe(spark, f"{out.tmp}/{LEDGER}", plan, summary)
    out.publish(summary)
    log_run(tracker, conf, out.root, summary, samples_of(reports, summary["kinds"], conf.ingest.samples), pairs)
    pairs.unpersist()
    return stage_results(summary, say_empty_splits(out.root, summary), out.root)


# ----------------------------------------------------------------------------------- extract (driver)

@dataclass
class IngestPlan:
    """What the driver planned before the Spark job: the inputs, the options every task gets, what the plan
    changed (``{"val_carved": n}``), and with ``ingest.group_near_duplicates`` what the first pass merged and how
    many merged groups have source-fixed inputs in several splits (``spanning``)."""
    inputs: list
    opts: IngestOptions
    changes: dict
    regrouping: Regrouping
    spanning: int = 0

    @property
    def section(self) -> IngestSection:
        return self.opts.section


def check_options(c: IngestSection) -> None:
    """Refuse options that contradict each other, naming the fix."""
    if c.split_by == "frame" and c.group_near_duplicates:
        raise IngestError("ingest.split_by=frame splits every frame on its own, so ingest.group_near_duplicates=true "
                          "would join groups for nothing: set ingest.split_by=group to keep near-duplicates "
                          "together, or ingest.group_near_duplicates=false to measure the frame-level leak")


def extract(spark, conf: Config) -> IngestPlan:
    """Plan the inputs (:func:`plan_inputs`); with ``ingest.group_near_duplicates`` the first Spark pass joins
    the groups of near-duplicates (:func:`find_near_duplicate_groups`) before any split is decided."""
    c = conf.ingest
    check_options(c)
    regrouping = Regrouping()

    def regroup(items: list) -> dict:
        nonlocal regrouping
        regrouping = find_near_duplicate_groups(spark, items, IngestOptions(c, ()), c.near_duplicate_bits,
                                                task_count(spark, c, len(items)))
        return regrouping.merged

    inputs, classes, changes = plan_inputs(conf, regroup if c.group_near_duplicates else None)
    forced, spanning = forced_splits(inputs, regrouping.merged)
    return IngestPlan(inputs, IngestOptions(c, classes, regrouping.merged, forced), changes, regrouping, spanning)


def plan_notes(plan: IngestPlan) -> dict:
    """``{MLflow tag: line}``: what the stage says about its plan (a leaky split, the groups it joined, a val
    carved out of a train folder), in the order it says them."""
    c, regrouping, notes = plan.section, plan.regrouping, {}
    if c.split_by == "frame":
        notes[NOTE_TAGS[0]] = (
            "ingest.split_by=frame: every frame is split on its own, so frames of one sequence / group land in "
            "different splits (the leak the independence audit measures); never for real models")
    if c.group_near_duplicates:
        note = (f"ingest.group_near_duplicates: {regrouping.pairs_across_groups} near-duplicate pairs (<= "
                f"{c.near_duplicate_bits} bits) between groups among {regrouping.inputs_hashed} hashed inputs; "
                f"{regrouping.groups_merged} groups joined another's, "
                f"{len(set(regrouping.merged.values()))} merged groups")
        if plan.spanning:
            note += (f"; {plan.spanning} merged groups have inputs whose splits the source fixes to different "
                     f"splits: they stay split (nothing can move) and their pairs remain in "
                     f"near_duplicates_across_splits")
        notes[NOTE_TAGS[1]] = note
    if "val_carved" in plan.changes:
        notes[NOTE_TAGS[2]] = (
            f"ingest: the source fixes train and test but has no val: {plan.changes['val_carved']} train inputs "
            f"(ingest.val_from_train={c.val_share:.3g} of the train folder's groups) became val; test untouched")
    return notes


def say_plan(plan: IngestPlan) -> None:
    """Print :func:`plan_notes` and tag the run with them; a carved val is also a metric."""
    import mlflow

    for tag, note in plan_notes(plan).items():
        print(note, flush=True)
        if tag == NOTE_TAGS[2]:
            mlflow.log_metric("val_carved_from_train", plan.changes["val_carved"])
        mlflow.set_tag(tag, note)


def task_count(spark, section: IngestSection, n: int) -> int:
    """The Spark tasks of an ingest of ``n`` inputs: ``ingest.partitions`` if set, else one task per core unless
    the inputs are many (>= 200 per task): measured fastest on 2 cores (benchmarks/RESULTS.md); every split
    still gets a file per task, enough row groups to shard."""
    default = max(spark.sparkContext.defaultParallelism, -(-n // 200))
    return max(1, min(n, section.partitions or default))


# -------------------------------------------------------------------------------------- load (driver)

def write_job(spark, inputs: list, opts: IngestOptions, out_url: str, rowgroup_size_mb: float, tasks: int):
    """The ingest's one Spark job, not run yet: the inputs in ``tasks`` contiguous runs
    (:func:`writer.plan_tasks`), each task transforming and writing its own (:func:`write_partition`) into
    ``out_url``; ``.collect()`` gives the tasks' reports."""
    return writer.task_job(spark, writer.plan_tasks(inputs, tasks),
                           lambda index, items: write_partition(index, items, opts, out_url, rowgroup_size_mb))


def _schema_of(folder: str):
    """The Unischema of a folder an ingest task writes: none for the plain ledger and quarantine tables."""
    from schemas.datasets import SCHEMAS

    return None if folder in (LEDGER, QUARANTINE) else SCHEMAS[folder.split("/")[0]]


def load(out: writer.Output, reports: list, plan: IngestPlan) -> dict:
    """Commit the files the tasks reported (datasets with their Petastorm metadata, footers checked) and account
    for every input (:func:`account`): the dataset's summary, with each kind's label names."""
    from pipeline.data import parts

    kinds = list(plan.opts.kinds)
    written = out.commit(parts.merge(r["files"] for r in reports), _schema_of, plan.section.image_format)
    summary = account(reports, written, kinds, len(plan.inputs))
    for kind in kinds:
        summary["datasets"][kind]["labels"] = list(CROP_CLASSES if kind == "tl_crops" else
                                                   ("light",) if kind == "tl_frames" else plan.opts.classes)
    return summary


def describe(spark, ledger_url: str, plan: IngestPlan, summary: dict):
    """Add to ``summary`` what the written ledger says about the splits (near-duplicates and groups across them,
    groups per split, what decided them, the near-duplicate grouping) and what was planned. Returns the
    near-duplicate pairs across splits (cached, for the figure; the caller unpersists them)."""
    c, regrouping = plan.section, plan.regrouping
    ledger = spark.read.parquet(ledger_url)
    pairs = near_duplicate_pairs(ledger, c.near_duplicate_bits).cache()
    summary["near_duplicates_across_splits"] = pairs.count()
    summary["split_by"] = c.split_by
    summary["groups_across_splits"] = groups_across_splits(ledger)
    summary["split_groups"] = split_groups(ledger)
    summary["split_rule"] = split_rule(c, plan.inputs)
    if c.group_near_duplicates:
        summary["near_duplicate_grouping"] = {
            "inputs_hashed": regrouping.inputs_hashed, "pairs_across_groups": regrouping.pairs_across_groups,
            "groups_merged": regrouping.groups_merged, "merged_groups": len(set(regrouping.merged.values())),
            "inputs_regrouped": ledger.filter((ledger["status"] == "written")
                                              & (ledger["group"] != ledger["split_group"])).count(),
            "merges_spanning_fixed_splits": plan.spanning}
        summary["near_duplicate_groups_merged"] = regrouping.groups_merged
    summary["classes"] = list(plan.opts.classes)
    summary["kinds"] = list(plan.opts.kinds)
    summary.update(plan.changes)
    return pairs


def samples_of(reports: list, kinds: list, n: int) -> dict:
    """``n`` written rows per kind for the sample figures (``ingest.samples``: the first tasks' first rows)."""
    return {kind: [row for r in reports for row in r["samples"].get(kind, [])][:n] for kind in kinds}


def stage_results(summary: dict, empty: list, root: str) -> dict:
    """What the stage returns (and ``pipeline run`` prints): its counts and the dataset's URL."""
    return {"rows_in": summary["rows_in"], "rows_written": summary["rows_written"],
            "rows_quarantined": summary["rows_quarantined"],
            "near_duplicates_across_splits": summary["near_duplicates_across_splits"],
            "groups_across_splits": summary["groups_across_splits"], "empty_splits": len(empty),
            **({"near_duplicate_groups_merged": summary["near_duplicate_groups_merged"]}
               if "near_duplicate_groups_merged" in summary else {}),
            "dataset_url": root}


def split_groups(ledger) -> dict:
    """``{split: groups}``: the distinct ``split_group`` values (what each input's split was decided by) of the
    written inputs in each split, 0 for a split that got none."""
    from pyspark.sql import functions as F

    found = {r["split"]: r["n"] for r in ledger.filter(F.col("status") == "written").groupBy("split")
             .agg(F.countDistinct("split_group").alias("n")).collect()}
    return {split: int(found.get(split, 0)) for split in ("train", "val", "test")}


def split_rule(c: IngestSection, inputs: list) -> dict:
    """What decided the splits, for the line a stage says when a split is empty (:mod:`pipeline.data.splits`)."""
    fixed = sorted({i["record"].get("split") for i in inputs if "record" in i} & {"train", "val", "test"})
    rule = {"source": c.source, "split_by": c.split_by, "inputs": len(inputs),
            "shares": {"train": c.split.train, "val": c.split.val, "test": c.split.test}, "fixed_splits": fixed,
            "val_from_train": c.val_share}
    if c.source == "synthetic":
        rule["frames_per_sequence"] = c.frames_per_sequence
    return rule


def say_empty_splits(root: str, summary: dict) -> list:
    """One line per split of each kind that came out empty (said last, before anything trains), also as the run's
    ``ingest.empty_splits`` tag. Returns ``[(kind, split)]``."""
    import mlflow

    from pipeline.data.splits import describe, empty_splits

    empty = empty_splits(summary)
    lines = [f"ingest: warning: {describe(root, summary, kind, split)}; the stages that read it will skip "
             f"(pipeline run exits 3)" for kind, split in empty]
    for line in lines:
        print(line, flush=True)
    if lines and mlflow.active_run() is not None:
        mlflow.set_tag("ingest.empty_splits", "; ".join(f"{k}/{s}" for k, s in empty))
    return empty


def account(reports: list, written_rows: dict, kinds: list, rows_in: int) -> dict:
    """Counts per status / split / class / reason from the tasks' reports, checked against the inputs the
    reader planned (``rows_in``, counted before the job) and the rows on disk (file footers). Raises
    :class:`AccountingError` unless rows in = written + quarantined, on disk as in the reports, and every input
    marked written has its rows."""
    by: dict = {}
    fixes: dict = {}
    classes: dict = {}
    for report in reports:
        for key, n in report["statuses"]:
            by[tuple(key)] = by.get(tuple(key), 0) + n
        for fix, n in report["fixes"].items():
            fixes[fix] = fixes.get(fix, 0) + n
        for (kind, name), n in report["classes"]:
            classes.setdefault(kind, {})
            classes[kind][name] = classes[kind].get(name, 0) + n
    written = sum(n for (status, *_), n in by.items() if status == "written")
    quarantined = sum(n for (status, *_), n in by.items() if status == "quarantined")
    ledger_rows, quarantine_rows = written_rows.get(LEDGER, 0), written_rows.get(QUARANTINE, 0)
    if written + quarantined != rows_in or ledger_rows != rows_in or quarantine_rows != quarantined:
        raise AccountingError(
            f"ingest lost rows: {rows_in} inputs in, {written} written + {quarantined} quarantined = "
            f"{written + quarantined} accounted for ({rows_in - written - quarantined} missing); on disk "
            f"{ledger_rows} ledger rows and {quarantine_rows} quarantine rows")
    datasets = {}
    for kind in kinds:
        per_split = {folder.split("/")[1]: n for folder, n in written_rows.items()
                     if folder.startswith(f"{kind}/") and n}
        datasets[kind] = {"rows": sum(per_split.values()), "splits": per_split, "classes": classes.get(kind, {})}
    primary = kinds[0]
    if datasets[primary]["rows"] != written:
        raise AccountingError(f"ingest wrote {datasets[primary]['rows']} {primary} rows for {written} inputs "
                              f"marked written")
    reasons = {}
    for (status, _, _, reason), n in by.items():
        if status == "quarantined":
            key = reason.split(":", 1)[0]
            reasons[key] = reasons.get(key, 0) + n
    return {"rows_in": rows_in, "rows_written": written, "rows_quarantined": quarantined,
            "quarantine_reasons": reasons, "fixes": fixes, "datasets": datasets}


def log_run(tracker, conf: Config, root: str, summary: dict, samples: dict, pairs) -> None:
    """The run's metrics (counts per status, split, class, quarantine reason and fix), the summary, the datasets
    with their fingerprints, and the sample and near-duplicate figures."""
    import mlflow

    from pipeline.data import figures
    from pipeline.tracking import fingerprint_files

    metrics = {**{name: summary[name] for name in COUNTS}, "split_by_frame": int(summary["split_by"] == "frame")}
    grouping = summary.get("near_duplicate_grouping")
    if grouping:
        metrics.update({"near_duplicate_groups_merged": grouping["groups_merged"],
                        "near_duplicate_merged_groups": grouping["merged_groups"],
                        "near_duplicate_pairs_across_groups": grouping["pairs_across_groups"],
                        "near_duplicate_inputs_regrouped": grouping["inputs_regrouped"],
                        "near_duplicate_merges_spanning_fixed_splits": grouping["merges_spanning_fixed_splits"]})
    metrics.update({QUARANTINE_METRIC.format(reason=k): v for k, v in summary["quarantine_reasons"].items()})
    metrics.update({FIX_METRIC.format(fix=k): v for k, v in summary["fixes"].items()})
    for kind, info in summary["datasets"].items():
        metrics.update({SPLIT_METRIC.format(kind=kind, split=split): n for split, n in info["splits"].items()})
        metrics.update({CLASS_METRIC.format(kind=kind, name=name): n for name, n in info["classes"].items()})
    mlflow.log_metrics({k.replace(" ", "_"): float(v) for k, v in metrics.items()})
    mlflow.log_dict(summary, SUMMARY_FILE)
    for kind, info in summary["datasets"].items():
        url = f"{root}/{kind}"
        tracker.log_dataset(f"{conf.ingest.name}/{kind}", url, info["rows"], fingerprint_files(url))
    for kind, rows in samples.items():
        if rows:
            tracker.log_figure(figures.sample_grid(kind, rows), SAMPLES_FIGURE.format(kind=kind))
    examples = pairs.orderBy("distance", "id_a").limit(6).collect()
    if examples:
        tracker.log_figure(figures.pair_grid(root, summary["kinds"][0], examples), NEAR_DUPLICATES_FIGURE)
