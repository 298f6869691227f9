"""Is a test (or val) split independent of train? Near-duplicates across the split, and what they are worth.

A split made frame by frame (``ingest.split_by=frame``) puts near-identical frames of one sequence on both sides:
a net that memorised its train frames then scores well on their twins, and the score says little about new
scenes. This library measures it, for the audit stage (it reads no config: the caller passes Spark, URLs, a
model in eval mode and the task):

* :func:`near_duplicates_of_train`: the rows of a split that have a near-duplicate in the train split
  (perceptual-hash distance <= ``max_bits``), found in Spark by ingest's band join
  (:func:`pipeline.data.ingest.close_pairs`), with the pairs (eval id, train id, distance);
* :func:`accuracy_with_and_without`: the model's key metric on the whole split and on the split without those
  rows, in one pass (classifiers: accuracy; the detector: AP by default, any of its metrics on request);
* :func:`independence_figure`: side-by-side bars (whole split against the split without its near-duplicates,
  and, when given, the group-split against the frame-split score, the inflated one labelled) above a grid of
  example pairs; :func:`example_pairs` fetches their images;
* :func:`verdict`: the finding as one or two sentences.

Hashes: ``road_frames``, ``class_images`` and ``tl_frames`` rows carry their own ``phash``. ``tl_crops`` rows
have none: a crop *inherits* its frame's near-duplicate status. Its frame is the ledger input whose id is the
crop id up to its last ``#`` (ingest names crops ``<frame id>#<k>`` and ``<frame id>#bg<k>``); the frame's hash
is the ledger's ``phash`` (the hash of the frame image ingest stored: road frames for synthetic data, traffic-
light frames for the light datasets), compared with the hashes of the ledger's written train inputs, so a crop's
pairs name a train *frame* (``TrainTwins.twin_kind`` says which dataset holds it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

FRAME_KINDS = ("road_frames", "class_images", "tl_frames")     # kinds whose rows carry a phash
_UNIT = {"road_frames": "frames", "tl_frames": "frames", "tl_crops": "crops", "class_images": "images"}


# ------------------------------------------------------------------------------------- near-duplicates

@dataclass(frozen=True)
class TrainTwins:
    """The rows of one split with a near-duplicate in train, and the pairs."""
    kind: str                     # the dataset kind audited
    split: str                    # the split audited (test, val)
    max_bits: int                 # the pHash distance at or below which two images are near-duplicates
    rows: int                     # rows of the split
    ids: frozenset                # ids of its rows that have a near-duplicate in train
    pairs: tuple                  # (eval id, train id, distance), closest first, then by ids
    twin_kind: str                # the dataset kind whose train split holds the train ids (tl_crops: a frame kind)

    @property
    def share(self) -> float:
        """The fraction of the split's rows with a near-duplicate in train."""
        return len(self.ids) / self.rows if self.rows else 0.0

    def closest(self) -> dict:
        """``{eval id: (train id, distance)}``: each row's closest train twin (ties: the smallest train id)."""
        out: dict = {}
        for eval_id, train_id, distance in self.pairs:      # closest first
            out.setdefault(eval_id, (train_id, distance))
        return out


def _frame_of_crop(column):
    """A crop id's frame id: everything before its last ``#`` (Spark column expression)."""
    from pyspark.sql import functions as F

    return F.expr(f"substring({column}, 1, length({column}) - length(substring_index({column}, '#', -1)) - 1)")


def _hashed_kind(data_root: str) -> str:
    """The dataset kind whose stored images the ledger's hashes are of (ingest's rule: synthetic data hashes its
    road frames, every other source the one frame kind it yields)."""
    from pipeline.data import store

    kinds = store.read_meta(data_root).get("kinds", []) if store.exists(f"{data_root}/{store.META}") else []
    return next((k for k in FRAME_KINDS if k in kinds), "tl_frames")


def near_duplicates_of_train(spark, data_root: str, kind: str, split: str, max_bits: int) -> TrainTwins:
    """Which rows of ``split`` of dataset ``<data_root>/<kind>`` have a near-duplicate (pHash Hamming distance
    <= ``max_bits``) in its train split: their ids and every (eval id, train id, distance) pair, computed in
    Spark with ingest's band join (only the pairs come back). ``tl_crops`` rows inherit their frame's status
    (module docstring); a split without a train split has no twins."""
    from pyspark.sql import functions as F

    from pipeline.data import store
    from pipeline.data.ingest import LEDGER, close_pairs

    if split == "train":
        raise ValueError("near_duplicates_of_train compares a split with train: give split=test or split=val")
    if not 0 <= max_bits <= 63:
        raise ValueError(f"max_bits must be 0..63 (a 64-bit hash), got {max_bits}")
    root = data_root.rstrip("/")
    url = f"{root}/{kind}/{split}"
    if not store.exists(url):
        raise store.DatasetNotFound(f"no {kind} rows of split {split} at {url}: ingest the dataset first, or "
                                    f"audit a split it has")
    if kind == "tl_crops":
        ledger_url = f"{root}/{LEDGER}"
        if not store.exists(ledger_url):
            raise store.DatasetNotFound(f"tl_crops rows have no hash of their own and there is no ledger at "
                                        f"{ledger_url} to take their frames' hashes from: re-ingest the dataset")
        ledger = (spark.read.parquet(ledger_url).filter(F.col("status") == "written")
                  .select(F.col("input_id").alias("frame"), "split", "phash"))
        crops = spark.read.parquet(url).select("id").withColumn("frame", _frame_of_crop("id"))
        evaluated = crops.join(ledger.drop("split"), "frame", "left").select("id", "phash")
        train = ledger.filter(F.col("split") == "train").select(F.col("frame").alias("id"), "phash")
        twin_kind = _hashed_kind(root)
    else:
        evaluated = spark.read.parquet(url).select("id", "phash")
        train_url = f"{root}/{kind}/train"
        train = spark.read.parquet(train_url).select("id", "phash") if store.exists(train_url) else None
        twin_kind = kind
    rows = evaluated.count()
    if train is None:
        return TrainTwins(kind, split, max_bits, rows, frozenset(), (), twin_kind)
    found = (close_pairs(evaluated.filter(F.col("phash").isNotNull()), train, max_bits,
                         {"eval_id": "a.id", "train_id": "b.id"})
             .dropDuplicates(["eval_id", "train_id"]).collect())
    pairs = tuple(sorted(((r["eval_id"], r["train_id"], int(r["distance"])) for r in found),
                         key=lambda p: (p[2], p[0], p[1])))
    return TrainTwins(kind, split, max_bits, rows, frozenset(p[0] for p in pairs), pairs, twin_kind)


# ------------------------------------------------------------------------------------------- scores

@dataclass(frozen=True)
class WithAndWithout:
    """A model's key metric on a whole split and on the split without the excluded rows."""
    metric: str                   # "accuracy" (classifiers) | a detector metric ("ap" unless asked otherwise)
    split: str                    # the split evaluated (the loader URL's last part)
    whole: float
    without: float                # nan when every row was excluded
    rows: int                     # rows evaluated
    rows_without: int             # of them not excluded
    metrics: dict = field(default_factory=dict)   # {"whole": {...}, "without": {...}}: every metric, no prefix

    @property
    def excluded(self) -> int:
        return self.rows - self.rows_without

    @property
    def inflation(self) -> float:
        """How much the excluded rows lift the metric: whole - without."""
        return self.whole - self.without


def accuracy_with_and_without(model, task, loader_spec, classes, exclude_ids: Iterable, *, limit: Optional[int] = None,
                              device: str = "cpu", metric: Optional[str] = None, threshold: float = 0.5,
                              match_radius: float = 0.5) -> WithAndWithout:
    """The model's key metric on the split ``loader_spec`` reads, over all its rows and over the rows whose id is
    not in ``exclude_ids``, in one pass of the scorer every stage uses (:mod:`pipeline.train.scoring`):
    classifiers (``task.detector`` false) get accuracy (and precision / recall / F1 per class, macro F1 in
    ``metrics``); the detector gets its heat-map peak metrics
    (:class:`pipeline.train.scoring.DetectorTally`: precision, recall, AP, recall at precision 0.9, overall and
    per distance), headline ``metric`` "ap" unless another is named. ``limit``: batches, as evaluate's."""
    from pipeline.train.scoring import classify, detect

    excluded = set(exclude_ids)
    metric = metric or ("ap" if task.detector else "accuracy")
    split = loader_spec.url.rstrip("/").rsplit("/", 1)[-1]
    if task.detector:
        scored = detect(model, loader_spec, limit, device, threshold, match_radius,
                        groups=lambda row: ("whole",) if row["id"] in excluded else ("whole", "without"))
        rows, kept = scored.rows, scored.group_rows.get("without", 0)
        both = {part: scored.tally(part).metrics("", threshold)[0] for part in ("whole", "without")}
    else:
        scored = classify(model, loader_spec, limit, device)
        keep = np.array([i not in excluded for i in scored.ids], bool)
        rows, kept = len(keep), int(keep.sum())
        both = {"whole": scored.metrics(list(classes), ""),
                "without": scored.metrics(list(classes), "", keep) if kept else {}}
        for part in both.values():
            part.pop("_confusion", None)
    if not rows:
        raise ValueError(f"no rows to evaluate in {loader_spec.url}")
    if metric not in both["whole"]:
        raise ValueError(f"metric {metric!r} is not one the evaluation gives; it gives: "
                         f"{', '.join(sorted(both['whole']))}")
    nan = float("nan")
    return WithAndWithout(metric, split, float(both["whole"][metric]),
                          float(both["without"].get(metric, nan)) if kept else nan, rows, kept, both)


@dataclass(frozen=True)
class SplitComparison:
    """The same metric on the same split name under two ways of splitting: by group (honest) and by frame."""
    group: float                  # e.g. val accuracy of a model trained and validated on the group-level split
    frame: float                  # the same, on the frame-level split (ingest.split_by=frame)
    split: str = "val"
    metric: str = "accuracy"

    @property
    def inflation(self) -> float:
        return self.frame - self.group


# ------------------------------------------------------------------------------------------ figures

def example_pairs(spark, data_root: str, twins: TrainTwins, n: int = 6) -> list:
    """Up to ``n`` pairs for the figure, the closest first and one per audited row: dicts with ``eval_id``,
    ``train_id``, ``distance``, ``eval_image`` and ``train_image`` (None when a row cannot be found), fetched by
    id (:func:`pipeline.analysis.probe.fetch_rows`)."""
    from pipeline.analysis.probe import fetch_rows

    chosen = sorted(((d, e, t) for e, (t, d) in twins.closest().items()))[:n]
    if not chosen:
        return []
    root = data_root.rstrip("/")
    evaluated = fetch_rows(spark, f"{root}/{twins.kind}/{twins.split}", twins.kind, [e for _, e, _ in chosen])
    train = fetch_rows(spark, f"{root}/{twins.twin_kind}/train", twins.twin_kind, [t for _, _, t in chosen])
    return [{"eval_id": e, "train_id": t, "distance": d, "eval_image": evaluated.get(e), "train_image": train.get(t)}
            for d, e, t in chosen]


def _bars(ax, labels: list, values: list, colours: list, title: str, notes: list) -> None:
    x = np.arange(len(values))
    shown = [0.0 if math.isnan(v) else v for v in values]
    ax.bar(x, shown, color=colours, width=0.6)
    for xi, v, note in zip(x, values, notes):
        ax.text(xi, (0 if math.isnan(v) else v) + 0.02, ("n/a" if math.isnan(v) else f"{v:.3f}") + note,
                ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylim(0, 1.15)
    ax.set_title(title, fontsize=8)


def independence_figure(result: Optional[WithAndWithout] = None, twins: Optional[TrainTwins] = None,
                        examples: Iterable = (), comparison: Optional[SplitComparison] = None):
    """Bars of the whole split against the split without its near-duplicates of train (``result``), and, when
    given, of the group-split against the frame-split score (``comparison``; the frame-split bar is labelled
    inflated when it is higher), above a grid of ``examples`` (:func:`example_pairs`): each audited image
    beside its train twin, with their distance. Returns the matplotlib Figure (Agg)."""
    examples = list(examples)
    panels = [p for p in (result, comparison) if p is not None]
    pair_rows = math.ceil(len(examples) / 2)
    fig = plt.figure(figsize=(9, 3.2 + 2.1 * pair_rows))
    grid = fig.add_gridspec(1 + pair_rows, 4, height_ratios=[1.6] + [1] * pair_rows)
    width = 4 // max(len(panels), 1)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(grid[0, i * width:(i + 1) * width])
        if isinstance(panel, WithAndWithout):
            unit = _UNIT.get(twins.kind, "rows") if twins else "rows"
            _bars(ax, [f"whole {panel.split}", "without near-duplicates\nof train"], [panel.whole, panel.without],
                  ["tab:grey", "tab:blue"], f"{panel.split} {panel.metric}" + (f" (pHash <= {twins.max_bits} bits)"
                                                                                if twins else ""),
                  [f"\n{panel.rows} {unit}", f"\n{panel.rows_without} {unit}"])
        else:
            inflated = panel.inflation > 0
            _bars(ax, [f"{panel.split}, group split", f"{panel.split}, frame split" + ("\n(inflated)" if inflated
                                                                                         else "")],
                  [panel.group, panel.frame], ["tab:blue", "tab:red" if inflated else "tab:grey"],
                  f"{panel.split} {panel.metric}: split by group vs by frame", ["", ""])
    if not panels:
        ax = fig.add_subplot(grid[0, :])
        ax.axis("off")
        ax.text(0.5, 0.5, "no scores given", ha="center", va="center")
    for k, pair in enumerate(examples):
        row, col = 1 + k // 2, (k % 2) * 2
        for j, (key, name) in enumerate((("eval_image", "eval_id"), ("train_image", "train_id"))):
            ax = fig.add_subplot(grid[row, col + j])
            ax.axis("off")
            if pair.get(key) is not None:
                ax.imshow(pair[key])
            side = twins.split if (twins and j == 0) else "train" if j else "audited"
            ax.set_title(f"{side}: {str(pair[name])[-26:]}", fontsize=6)
        fig.axes[-2].text(0, -0.12, f"{pair['distance']} bits apart", transform=fig.axes[-2].transAxes, fontsize=7)
    title = "independence of the split from train"
    if twins is not None:
        title += (f": {len(twins.ids)} of {twins.rows} {twins.split} {_UNIT.get(twins.kind, 'rows')} have a "
                  f"near-duplicate in train")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ verdict

def verdict(result: Optional[WithAndWithout] = None, twins: Optional[TrainTwins] = None,
            comparison: Optional[SplitComparison] = None, comparison_twins: Optional[TrainTwins] = None,
            tolerance: float = 0.02) -> str:
    """The finding in words, e.g. "val accuracy 0.97 with a frame-level split is inflated: 0.71 with the group
    split; 412 of 450 val frames have a near-duplicate in train". A difference within ``tolerance`` is no
    inflation. ``comparison_twins``: the near-duplicates of the frame-split dataset's compared split."""
    sentences = []
    if comparison is not None:
        c = comparison
        head = f"{c.split} {c.metric} {c.frame:.2f} with a frame-level split"
        if c.inflation > tolerance:
            text = f"{head} is inflated: {c.group:.2f} with the group split"
        else:
            text = f"{head} is not inflated: {c.group:.2f} with the group split (within {tolerance:g})"
        if comparison_twins is not None:
            t = comparison_twins
            text += (f"; {len(t.ids)} of {t.rows} {t.split} {_UNIT.get(t.kind, 'rows')} have a near-duplicate "
                     f"in train")
        sentences.append(text)
    if result is not None:
        r = result
        unit = _UNIT.get(twins.kind, "rows") if twins else "rows"
        bits = f" (pHash <= {twins.max_bits} bits)" if twins else ""
        if r.excluded == 0:
            text = (f"no {r.split} {unit[:-1]} has a near-duplicate in train{bits}: {r.split} {r.metric} "
                    f"{r.whole:.2f} is measured on {unit} independent of train by this test")
        elif r.rows_without == 0:
            text = (f"every one of the {r.rows} {r.split} {unit} has a near-duplicate in train{bits}: {r.split} "
                    f"{r.metric} {r.whole:.2f} says nothing about unseen scenes")
        else:
            of = f"{len(twins.ids)} of {twins.rows}" if twins else f"{r.excluded} of {r.rows}"
            text = (f"{r.split} {r.metric} {r.whole:.2f} on the whole split, {r.without:.2f} without the {of} "
                    f"{r.split} {unit} that have a near-duplicate in train{bits}: ")
            text += (f"inflated by {r.inflation:.2f}" if r.inflation > tolerance
                     else f"not inflated (within {tolerance:g})")
        sentences.append(text)
    elif twins is not None:
        sentences.append(f"{len(twins.ids)} of {twins.rows} {twins.split} {_UNIT.get(twins.kind, 'rows')} have a "
                         f"near-duplicate in train (pHash <= {twins.max_bits} bits)")
    return ". ".join(sentences) + "." if sentences else "nothing measured."
