"""The independence audit's library: near-duplicates of train, scores with and without them, figure, verdict."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from pipeline.analysis.independence import (SplitComparison, TrainTwins, WithAndWithout, accuracy_with_and_without,
                                            example_pairs, independence_figure, near_duplicates_of_train, verdict)
from pipeline.data import store
from pipeline.stages import get_stage, run_stage
from pipeline.tasks import get_task
from pipeline.tracking import Tracker
from pipeline.train.evaluate import evaluate_classifier, evaluate_detector
from pipeline.train.loader import LoaderSpec, eval_batches
from tests.conftest import make_conf

SYNTH = ["ingest.num_frames=48", "ingest.frames_per_sequence=4", "ingest.render_hw=[180,320]",
         "ingest.frame_hw=[36,64]", "ingest.road_hw=[64,64]", "ingest.crop_hw=[16,16]", "ingest.partitions=2",
         "ingest.near_duplicate_bits=8", "ingest.split={train: 0.5, val: 0.25, test: 0.25}", "ingest.split_by=frame"]


def signed(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def popcount(a: int, b: int) -> int:
    return bin((a ^ b) & ((1 << 64) - 1)).count("1")


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k]) for k in a)


# ------------------------------------------------------------------------------ planted hashes

@pytest.fixture
def planted(spark, tmp_path):
    """class_images train/test and tl_crops test + ledger as plain Parquet, with hand-made hashes."""
    rng = np.random.default_rng(7)
    t = [int.from_bytes(rng.bytes(8), "big") for _ in range(6)]     # full 64-bit hashes, top bit included
    t[4] = t[3] ^ 0b11                                       # two train twins 2 bits apart
    train = [(f"t{i}", signed(h)) for i, h in enumerate(t)]
    test = [("e0", signed(t[0] ^ 0b10101)),                   # 3 bits from t0
            ("e1", signed(t[1])),                             # identical to t1
            ("e2", signed(t[2] ^ 0b11111)),                   # 5 bits: not a near-duplicate at 4
            ("e3", signed(int.from_bytes(rng.bytes(8), "big"))),   # unrelated
            ("e4", signed(t[3] ^ 0b100)),                     # 1 bit from t3, 3 from t4
            ("e5", signed(t[5] ^ (1 << 63) ^ 1))]             # the top bit counts too: 2 bits
    root = tmp_path / "ds"
    for split, rows in (("train", train), ("test", test)):
        url = (root / "class_images" / split).as_uri()
        spark.createDataFrame(rows, "id string, phash long").write.parquet(url)
    ledger = [(f, "written", s, h) for s, rows in (("train", train), ("test", test)) for f, h in rows]
    ledger.append(("gone", "quarantined", "test", 0))
    spark.createDataFrame(ledger, "input_id string, status string, split string, phash long") \
        .write.parquet((root / "ledger").as_uri())
    crops = ["e0#0", "e0#bg0", "e1#bg0", "e2#0", "e3#1", "e4#bg1", "weird#name#0"]
    spark.createDataFrame([(c,) for c in crops], "id string").write.parquet((root / "tl_crops" / "test").as_uri())
    return root.as_uri(), t


def test_near_duplicates_of_train_finds_exactly_the_planted_pairs(spark, planted):
    root, t = planted
    twins = near_duplicates_of_train(spark, root, "class_images", "test", 4)
    assert twins.rows == 6 and twins.ids == {"e0", "e1", "e4", "e5"}
    assert twins.pairs == (("e1", "t1", 0), ("e4", "t3", 1), ("e5", "t5", 2), ("e0", "t0", 3), ("e4", "t4", 3))
    assert twins.closest() == {"e1": ("t1", 0), "e4": ("t3", 1), "e5": ("t5", 2), "e0": ("t0", 3)}
    assert twins.share == pytest.approx(4 / 6) and twins.twin_kind == "class_images"
    wider = near_duplicates_of_train(spark, root, "class_images", "test", 5)
    assert ("e2", "t2", 5) in wider.pairs and wider.ids == twins.ids | {"e2"}
    assert near_duplicates_of_train(spark, root, "class_images", "test", 0).pairs == (("e1", "t1", 0),)


def test_crops_inherit_their_frames_near_duplicates_through_the_ledger(spark, planted):
    root, _ = planted
    twins = near_duplicates_of_train(spark, root, "tl_crops", "test", 4)
    assert twins.rows == 7                                 # a crop whose frame is not in the ledger still counts
    assert twins.ids == {"e0#0", "e0#bg0", "e1#bg0", "e4#bg1"}
    assert set(twins.pairs) == {("e0#0", "t0", 3), ("e0#bg0", "t0", 3), ("e1#bg0", "t1", 0), ("e4#bg1", "t3", 1),
                                ("e4#bg1", "t4", 3)}
    assert twins.twin_kind == "tl_frames"                  # no summary here: the light datasets' frame kind


def test_near_duplicates_of_train_refuses_train_and_missing_splits(spark, planted):
    root, _ = planted
    with pytest.raises(ValueError, match="split=test or split=val"):
        near_duplicates_of_train(spark, root, "class_images", "train", 4)
    with pytest.raises(store.DatasetNotFound, match="no class_images rows of split val"):
        near_duplicates_of_train(spark, root, "class_images", "val", 4)
    with pytest.raises(ValueError, match="0..63"):
        near_duplicates_of_train(spark, root, "class_images", "test", 64)


# ------------------------------------------------------------------ a real frame-split ingest

@pytest.fixture(scope="module")
def leaky(spark, tmp_path_factory):
    conf = make_conf(tmp_path_factory.mktemp("leaky"), *SYNTH)
    run_stage(get_stage("ingest"), spark, conf, Tracker(conf))
    return conf, store.dataset_root(conf.paths.data_url, conf.ingest.name)


def _brute(eval_rows: list, train_rows: list, bits: int) -> set:
    return {(e, t, popcount(he, ht)) for e, he in eval_rows for t, ht in train_rows if popcount(he, ht) <= bits}


def test_on_a_frame_split_ingest_the_pairs_match_brute_force_for_frames_and_crops(spark, leaky):
    _, root = leaky
    rows = {s: [(r["id"], r["phash"]) for r in spark.read.parquet(f"{root}/road_frames/{s}").collect()]
            for s in ("train", "test")}
    twins = near_duplicates_of_train(spark, root, "road_frames", "test", 8)
    expected = _brute(rows["test"], rows["train"], 8)
    assert set(twins.pairs) == expected and len(twins.pairs) == len(expected)
    assert twins.rows == len(rows["test"]) and len(twins.ids) >= 3      # the leak of the frame-level split
    ledger = {r["input_id"]: r for r in spark.read.parquet(f"{root}/ledger").collect()}
    crops = [r["id"] for r in spark.read.parquet(f"{root}/tl_crops/test").collect()]
    train_frames = [(i, r["phash"]) for i, r in ledger.items() if r["split"] == "train"]
    crop_twins = near_duplicates_of_train(spark, root, "tl_crops", "test", 8)
    assert set(crop_twins.pairs) == _brute([(c, ledger[c.rsplit("#", 1)[0]]["phash"]) for c in crops],
                                           train_frames, 8)
    assert {c.rsplit("#", 1)[0] for c in crop_twins.ids} == twins.ids    # road hashes are the ledger's
    assert crop_twins.twin_kind == "road_frames"


def test_example_pairs_figure_and_verdict_on_real_rows(spark, leaky):
    _, root = leaky
    twins = near_duplicates_of_train(spark, root, "road_frames", "test", 8)
    examples = example_pairs(spark, root, twins, n=3)
    assert len(examples) == min(3, len(twins.ids))
    assert [e["distance"] for e in examples] == sorted(e["distance"] for e in examples)
    assert all(e["eval_image"].shape == e["train_image"].shape == (64, 64, 3) for e in examples)
    assert len({e["eval_id"] for e in examples}) == len(examples)
    crop_examples = example_pairs(spark, root, near_duplicates_of_train(spark, root, "tl_crops", "test", 8), n=2)
    assert all(e["eval_image"].shape == (16, 16, 3) and e["train_image"].shape == (64, 64, 3) for e in crop_examples)
    result = WithAndWithout("accuracy", "test", 0.9, 0.6, twins.rows, twins.rows - len(twins.ids))
    fig = independence_figure(result, twins, examples, SplitComparison(group=0.55, frame=0.93))
    assert len(fig.axes) == 2 + 2 * len(examples)
    labels = [t.get_text() for ax in fig.axes[:2] for t in ax.get_xticklabels()]
    assert "val, frame split\n(inflated)" in labels and "val, group split" in labels
    assert f"{len(twins.ids)} of {twins.rows} test frames" in fig._suptitle.get_text()
    titles = [ax.get_title() for ax in fig.axes[2:]]
    assert titles[0].startswith("test: ") and titles[1].startswith("train: ")
    text = verdict(result, twins)
    assert text == (f"test accuracy 0.90 on the whole split, 0.60 without the {len(twins.ids)} of {twins.rows} test "
                    f"frames that have a near-duplicate in train (pHash <= 8 bits): inflated by 0.30.")


# -------------------------------------------------------------------------------- scores

@pytest.fixture(scope="module")
def shades(spark, tmp_path_factory):
    """ImageFolder train/ + test/ of flat dark and bright images; three test images sit in the wrong folder."""
    work = tmp_path_factory.mktemp("shades")
    root = work / "images"
    files = {"train/dark/x.png": 40, "train/bright/y.png": 210}
    files.update({f"test/dark/d{i}.png": 40 for i in range(6)})
    files.update({f"test/bright/b{i}.png": 210 for i in range(6)})
    files.update({"test/dark/w0.png": 210, "test/dark/w1.png": 210, "test/bright/w2.png": 40})
    for rel, value in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), np.full((20, 20, 3), value, np.uint8))
    conf = make_conf(work, "ingest.source=imagefolder", f"ingest.source_path={root}", "ingest.name=shades",
                     "ingest.class_hw=[16,16]", "ingest.min_size=4", "ingest.val_from_train=0")
    run_stage(get_stage("ingest"), spark, conf, Tracker(conf))
    return f"{store.dataset_root(conf.paths.data_url, 'shades')}/class_images/test"


class Brightness(nn.Module):
    """Class 0 ("bright") when the normalised image is above the mean grey, else class 1 ("dark")."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([m, -m], dim=1)


def test_accuracy_with_and_without_counts_the_right_rows(shades):
    spec = LoaderSpec(shades, "class_images", batch_size=4)
    exclude = {"test/dark/w0.png", "test/dark/w1.png", "test/bright/b0.png", "test/bright/b1.png",
               "test/bright/b2.png", "not/in/the/split.png"}
    result = accuracy_with_and_without(Brightness(), get_task("lane_classifier"), spec, ["bright", "dark"], exclude)
    assert (result.metric, result.split, result.rows, result.rows_without, result.excluded) == \
        ("accuracy", "test", 15, 10, 5)
    assert result.whole == pytest.approx(12 / 15) and result.without == pytest.approx(9 / 10)
    assert result.inflation == pytest.approx(12 / 15 - 9 / 10)
    reference = evaluate_classifier(Brightness(), spec, ["bright", "dark"], "").metrics
    assert same(result.metrics["whole"], reference)          # the evaluate module's own numbers
    assert result.metrics["without"]["recall_dark"] == pytest.approx(6 / 6)
    nothing = accuracy_with_and_without(Brightness(), get_task("tl_classifier"), spec, ["bright", "dark"], ())
    assert nothing.whole == nothing.without == pytest.approx(0.8) and nothing.rows_without == 15
    everything = accuracy_with_and_without(Brightness(), get_task("lane_classifier"), spec, ["bright", "dark"],
                                           [r["id"] for *_, rows in eval_batches(spec) for r in rows])
    assert everything.rows_without == 0 and math.isnan(everything.without)
    with pytest.raises(ValueError, match="metric 'ap' is not one"):
        accuracy_with_and_without(Brightness(), get_task("lane_classifier"), spec, ["bright", "dark"], (), metric="ap")


def test_detector_scores_with_and_without_match_evaluate(leaky):
    _, root = leaky
    torch.manual_seed(0)
    model = nn.Sequential(nn.AvgPool2d(4, ceil_mode=True), nn.Conv2d(3, 1, 1)).eval()
    spec = LoaderSpec(f"{root}/tl_frames/test", "tl_frames", batch_size=4)
    first = [r["id"] for *_, rows in eval_batches(spec, limit=1) for r in rows]
    rest = [r["id"] for *_, rows in eval_batches(spec) for r in rows][len(first):]
    assert rest
    result = accuracy_with_and_without(model, get_task("tl_detector"), spec, ["light"], rest)
    assert result.metric == "ap" and result.rows_without == len(first) and result.excluded == len(rest)
    assert same(result.metrics["whole"], evaluate_detector(model, spec, "").metrics)
    assert same(result.metrics["without"], evaluate_detector(model, spec, "", limit=1).metrics)
    recall = accuracy_with_and_without(model, get_task("tl_detector"), spec, ["light"], rest, metric="recall")
    assert recall.whole == result.metrics["whole"]["recall"]


# ------------------------------------------------------------------------------- verdicts

def test_verdict_sentences():
    twins = TrainTwins("road_frames", "val", 4, 450, frozenset(f"f{i}" for i in range(412)), (), "road_frames")
    comparison = SplitComparison(group=0.71, frame=0.97)
    assert verdict(comparison=comparison, comparison_twins=twins) == (
        "val accuracy 0.97 with a frame-level split is inflated: 0.71 with the group split; 412 of 450 val frames "
        "have a near-duplicate in train.")
    assert "is not inflated: 0.96 with the group split (within 0.02)" in verdict(
        comparison=SplitComparison(group=0.96, frame=0.97))
    clean = TrainTwins("tl_crops", "test", 4, 80, frozenset(), (), "tl_frames")
    assert verdict(WithAndWithout("accuracy", "test", 0.88, 0.88, 80, 80), clean) == (
        "no test crop has a near-duplicate in train (pHash <= 4 bits): test accuracy 0.88 is measured on crops "
        "independent of train by this test.")
    small = WithAndWithout("ap", "test", 0.81, 0.80, 100, 90)
    assert verdict(small).endswith("without the 10 of 100 test rows that have a near-duplicate in train: not "
                                   "inflated (within 0.02).")
    assert verdict(twins=twins) == "412 of 450 val frames have a near-duplicate in train (pHash <= 4 bits)."
    assert verdict() == "nothing measured."
