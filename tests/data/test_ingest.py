"""The ingest stage end to end on the shared SparkSession: real Petastorm datasets, real MLflow store."""
from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.data import ingest, parts, store
from pipeline.data.ingest import near_duplicate_pairs, phash64, split_of
from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker
from tests.conftest import make_conf
from tests.datasets import read_dataset

SMALL_SYNTH = ["ingest.num_frames=24", "ingest.frames_per_sequence=4", "ingest.render_hw=[180,320]",
               "ingest.frame_hw=[72,128]", "ingest.road_hw=[64,64]", "ingest.split={train: 0.5, val: 0.25, test: 0.25}"]


def run_ingest(spark, conf):
    return run_stage(get_stage("ingest"), spark, conf, Tracker(conf))


def read_rows(url: str) -> list:
    return sorted(read_dataset(url).values(), key=lambda r: r["id"])


def ledger(spark, conf):
    return {r["source_id"]: r.asDict() for r in spark.read.parquet(f"{store.dataset_root(conf.paths.data_url, conf.ingest.name)}/ledger").collect()}


def noisy(h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ pure parts

def test_split_is_by_group_deterministic_and_follows_fractions():
    groups = [f"seq-{i}" for i in range(3000)]
    splits = [split_of(g, (0.7, 0.15, 0.15)) for g in groups]
    assert splits == [split_of(g, (0.7, 0.15, 0.15)) for g in groups]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(share["train"] - 0.7) < 0.04 and abs(share["val"] - 0.15) < 0.03
    assert split_of("seq-1", (0.7, 0.15, 0.15), preset="test") == "test"


def test_near_duplicate_pairs_finds_close_hashes_across_splits_only(spark):
    def signed(v):
        v &= (1 << 64) - 1
        return v - (1 << 64) if v >= 1 << 63 else v

    base = phash64(noisy(seed=1))
    rows = [("a", "train", base), ("b", "test", base ^ 0b1011), ("c", "test", base ^ (0xFF << 20)),
            ("d", "train", base ^ 0b1), ("e", "val", base ^ (1 << 63) ^ 1)]
    df = spark.createDataFrame([(i, s, "written", signed(h)) for i, s, h in rows],
                               "input_id string, split string, status string, phash long")
    pairs = {(r["id_a"], r["id_b"], r["distance"]) for r in near_duplicate_pairs(df, 4).collect()}
    # c is 8+ bits from everything; a-d share a split; the rest are within 4 bits (the top bit counts too)
    assert pairs == {("b", "a", 3), ("a", "e", 2), ("b", "d", 2), ("b", "e", 3), ("d", "e", 1)}


# ------------------------------------------------------------------------------- synthetic default

@pytest.fixture(scope="module")
def synthetic(spark, tmp_path_factory):
    conf = make_conf(tmp_path_factory.mktemp("synth"), *SMALL_SYNTH)
    return conf, run_ingest(spark, conf)


def test_synthetic_ingest_writes_three_petastorm_datasets_split_by_sequence(synthetic, spark):
    conf, results = synthetic
    assert results["rows_in"] == results["rows_written"] == 24 and results["rows_quarantined"] == 0
    root = store.dataset_root(conf.paths.data_url, conf.ingest.name)
    meta = store.read_meta(root)
    road = [r for split in meta["datasets"]["road_frames"]["splits"] for r in read_rows(f"{root}/road_frames/{split}")]
    assert len(road) == 24 and len({r["id"] for r in road}) == 24
    assert road[0]["image"].shape == (64, 64, 3) and road[0]["lane_mask"].shape == (64, 64)
    split_of_group = {}
    for r in road:
        assert split_of_group.setdefault(r["group"], r["split"]) == r["split"]   # a sequence never straddles
    assert len(split_of_group) == 6
    frames = [r for s in meta["datasets"]["tl_frames"]["splits"] for r in read_rows(f"{root}/tl_frames/{s}")]
    assert frames[0]["image"].shape == (72, 128, 3)
    with_boxes = [r for r in frames if len(r["boxes"])]
    assert with_boxes and all(len(r["boxes"]) == len(r["states"]) == len(r["distances"]) for r in frames)
    b = np.concatenate([r["boxes"] for r in with_boxes])
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 128).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= 72).all()
    crops = meta["datasets"]["tl_crops"]
    assert crops["classes"]["background"] == 24            # negatives_per_frame=1
    assert crops["rows"] == 24 + sum(len(r["boxes"]) for r in frames)


def test_synthetic_ingest_is_tracked_in_mlflow(synthetic):
    conf, results = synthetic
    client = MlflowClient(conf.mlflow.tracking_uri)
    run = client.get_run(results["run_id"])
    assert run.data.metrics["rows_in"] == 24 and run.data.metrics["rows_quarantined"] == 0
    assert run.data.metrics["road_frames.train"] + run.data.metrics.get("road_frames.val", 0) \
        + run.data.metrics.get("road_frames.test", 0) == 24
    assert "near_duplicates_across_splits" in run.data.metrics
    figures = {a.path for a in client.list_artifacts(results["run_id"], "figures")}
    assert {"figures/samples_road_frames.png", "figures/samples_tl_frames.png",
            "figures/samples_tl_crops.png"} <= figures
    names = {i.dataset.name for i in run.inputs.dataset_inputs}
    assert names == {"synthetic/road_frames", "synthetic/tl_frames", "synthetic/tl_crops"}
    assert run.data.tags["mlflow.parentRunId"]


def test_rerun_after_a_crash_keeps_the_old_dataset_and_gives_the_same_rows(synthetic, spark, monkeypatch):
    conf, _ = synthetic
    root = store.dataset_root(conf.paths.data_url, conf.ingest.name)
    data_dir = Path(conf.paths.work_dir) / "data"
    before = read_rows(f"{root}/road_frames/train")

    real_finalize = parts.finalize
    calls = []

    def finalize_then_crash(*args, **kwargs):   # the tasks wrote their files; killed while finishing them
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt("killed midway")
        return real_finalize(*args, **kwargs)

    monkeypatch.setattr(parts, "finalize", finalize_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_ingest(spark, conf)
    again = read_rows(f"{root}/road_frames/train")                       # the old dataset is untouched
    assert [r["id"] for r in again] == [r["id"] for r in before]
    leftovers = [p.name for p in data_dir.iterdir() if ".tmp-" in p.name]
    assert leftovers == []         # a stage that raises removes its partial output at once (a SIGKILLed one
                                   # leaves it to recover(): tests/faults/test_driver_kill.py kills for real)
    monkeypatch.setattr(parts, "finalize", real_finalize)
    run_ingest(spark, conf)
    after = read_rows(f"{root}/road_frames/train")
    assert [r["id"] for r in after] == [r["id"] for r in before]
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(after, before))
    assert not [p.name for p in data_dir.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_recover_restores_a_dataset_caught_mid_swap(tmp_path):
    data = tmp_path / "data"
    (data / "ds.old-1234" / "road_frames").mkdir(parents=True)
    (data / "ds.tmp-5678").mkdir()
    store.recover((data / "ds").as_uri())
    assert (data / "ds" / "road_frames").is_dir()
    assert sorted(p.name for p in data.iterdir()) == ["ds"]


# ------------------------------------------------------------------------- files: odd and bad input

def _png(arr):
    return cv2.imencode(".png", arr)[1].tobytes()


def _bomb_png():
    import struct
    import zlib

    data = bytearray(_png(noisy(20, 20)))
    ihdr = data[12:29]
    ihdr[4:12] = struct.pack(">II", 30000, 30000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def _jpeg(arr, **save):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, **save)
    return buf.getvalue()


@pytest.fixture(scope="module")
def folder_ingest(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("folder")
    root = tmp / "images"
    good = {
        "lanes/train/solid/plain.png": _png(noisy(seed=2)),
        "lanes/train/solid/grey scale ü.PNG": _png(noisy(seed=3)[:, :, 0]),
        "lanes/train/dashed/rgba.png": _png(np.dstack([noisy(seed=4), np.full((48, 64), 128, np.uint8)])),
        "lanes/train/dashed/sixteen.png": _png((noisy(seed=5).astype(np.uint16) * 257)),
        "lanes/train/dashed/cmyk.jpg": _jpeg(noisy(seed=6)),
        "lanes/val/solid/palette.png": None,
        "lanes/test/solid/dup_of_plain.png": _png(noisy(seed=2)),   # the same frame as train/solid/plain.png
    }
    bad = {
        "lanes/train/solid/truncated.jpg": _jpeg(noisy(seed=7))[:400],
        "lanes/train/solid/empty.png": b"",
        "lanes/train/solid/text.png": b"hello, I am not a picture\n" * 4,
        "lanes/train/dashed/tiny.png": _png(noisy(1, 1)),
        "lanes/train/dashed/bomb.png": _bomb_png(),
    }
    for rel, data in {**good, **bad}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("palette.png"):
            Image.fromarray(noisy(seed=8)).convert("P").save(path)
        elif rel.endswith("cmyk.jpg"):
            Image.fromarray(noisy(seed=6)).convert("CMYK").save(path, format="JPEG")
        else:
            path.write_bytes(data)
    conf = make_conf(tmp, "ingest.source=imagefolder", f"ingest.source_path={root / 'lanes'}",
                     "ingest.class_hw=[32,32]", "ingest.min_size=4")
    return conf, run_ingest(spark, conf), good, bad


def test_folder_odd_input_is_converted_and_bad_input_quarantined_with_reasons(folder_ingest, spark):
    conf, results, good, bad = folder_ingest
    assert results["rows_in"] == len(good) + len(bad)
    assert results["rows_written"] == len(good) and results["rows_quarantined"] == len(bad)
    rows = ledger(spark, conf)
    reasons = {sid.split("/")[-1]: r["reason"].split(":")[0] for sid, r in rows.items() if r["status"] == "quarantined"}
    assert reasons == {"truncated.jpg": "truncated", "empty.png": "empty_file", "text.png": "not_an_image",
                       "tiny.png": "too_small", "bomb.png": "too_large"}
    quarantine = spark.read.parquet(f"{store.dataset_root(conf.paths.data_url, conf.ingest.name)}/quarantine").collect()
    assert {Path(q["path"]).name for q in quarantine} == set(reasons)
    root = store.dataset_root(conf.paths.data_url, conf.ingest.name)
    assert store.read_meta(root)["kinds"] == ["class_images"]     # ImageFolder rows are named for what they are
    written = read_rows(f"{root}/class_images/train") + read_rows(f"{root}/class_images/val") \
        + read_rows(f"{root}/class_images/test")
    assert {Path(r["source"]).name for r in written} == {Path(p).name for p in good}
    assert all(r["image"].shape == (32, 32, 3) and r["image"].dtype == np.uint8 for r in written)
    assert {r["label_name"] for r in written} == {"solid", "dashed"}
    assert {r["split"] for r in written} == {"train", "val", "test"}     # the folders' own split is kept


def test_near_duplicates_across_folder_splits_are_counted(folder_ingest):
    conf, results, _, _ = folder_ingest
    assert results["near_duplicates_across_splits"] >= 1
    client = MlflowClient(conf.mlflow.tracking_uri)
    assert "figures/near_duplicates.png" in {a.path for a in client.list_artifacts(results["run_id"], "figures")}


def test_annotation_box_problems_are_fixed_counted_or_quarantined(spark, tmp_path):
    """Bosch YAML: swapped corners, partly outside, wholly outside, zero area, unknown label, missing file,
    path escaping the root, the same frame twice, and an EXIF-rotated frame whose box must follow the pixels."""
    root = tmp_path / "bosch"
    (root / "rgb").mkdir(parents=True)
    img = np.full((60, 80, 3), 40, np.uint8)
    img[10:30, 20:28] = 250                                     # a bright 'light' at x 20-28, y 10-30
    for name in ("ok", "swapped", "clipped", "outside", "zero", "unknown", "dup"):
        cv2.imwrite(str(root / "rgb" / f"{name}.png"), img)
    exif = Image.Exif()
    exif[0x0112] = 6                                            # stored rotated: displayed turned 90° clockwise
    Image.fromarray(img).save(root / "rgb" / "rotated.jpg", format="JPEG", quality=98, exif=exif.tobytes())

    def entry(name, x0, y0, x1, y1, label="Red", ext="png"):
        return {"path": f"./rgb/{name}.{ext}", "boxes": [
            {"label": label, "occluded": False, "x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1}]}

    entries = [entry("ok", 20, 10, 28, 30), entry("swapped", 28, 30, 20, 10), entry("clipped", 70, 10, 95, 30),
               entry("outside", 100, 70, 120, 90), entry("zero", 20, 10, 20, 30), entry("unknown", 20, 10, 28, 30,
               label="Purple"), entry("missing", 1, 1, 5, 5), {"path": "../../etc/passwd", "boxes": []},
               entry("dup", 20, 10, 28, 30), entry("dup", 20, 10, 28, 30), entry("rotated", 20, 10, 28, 30, ext="jpg")]
    (root / "labels.yaml").write_text(yaml.safe_dump(entries))
    conf = make_conf(tmp_path, "ingest.source=bosch", f"ingest.source_path={root / 'labels.yaml'}",
                     "ingest.frame_hw=[60,80]", "ingest.crop_hw=[16,16]", "ingest.min_size=4",
                     "ingest.split={train: 1.0, val: 0.0, test: 0.0}")
    results = run_ingest(spark, conf)
    rows = ledger(spark, conf)
    assert results["rows_in"] == len(rows) == 10                # the duplicate listing is one input
    status = {Path(r["source_id"]).stem: (r["status"], r["reason"].split(":")[0], r["fixes"]) for r in rows.values()}
    assert status["ok"] == ("written", "", "")
    assert status["swapped"] == ("written", "", "box_swapped")
    assert status["clipped"] == ("written", "", "box_clipped")
    assert status["dup"] == ("written", "", "duplicate_frame")
    assert status["outside"][:2] == ("quarantined", "box_outside_image")
    assert status["zero"][:2] == ("quarantined", "box_zero_area")
    assert status["unknown"][:2] == ("quarantined", "unknown_label")
    assert status["missing"][:2] == ("quarantined", "missing_file")
    assert [s for k, s in status.items() if s[1] == "path_escapes_root"]
    assert results["rows_written"] + results["rows_quarantined"] == 10
    frames = {Path(r["source"]).stem: r for r in read_rows(f"{store.dataset_root(conf.paths.data_url, conf.ingest.name)}/tl_frames/train")}
    np.testing.assert_allclose(frames["swapped"]["boxes"], [[20, 10, 28, 30]])
    np.testing.assert_allclose(frames["clipped"]["boxes"], [[70, 10, 80, 30]])
    rot = frames["rotated"]
    assert rot["image"].shape == (60, 80, 3)                    # resized to frame_hw after orientation
    x0, y0, x1, y1 = rot["boxes"][0]
    h, w = rot["image"].shape[:2]
    inside = rot["image"][int(np.ceil(y0)):int(y1), int(np.ceil(x0)):int(x1)].mean()
    assert inside > 200, "after EXIF rotation the box must still cover the bright light"
    assert rot["image"].mean() < 80
    metrics = MlflowClient(conf.mlflow.tracking_uri).get_run(results["run_id"]).data.metrics
    assert metrics["fixes.box_swapped"] == 1 and metrics["fixes.box_clipped"] == 1
    assert metrics["quarantine.box_outside_image"] == 1 and metrics["quarantine.missing_file"] == 1


def test_source_without_path_is_a_clear_error(spark, tmp_path):
    conf = make_conf(tmp_path, "ingest.source=lisa")
    with pytest.raises(ingest.IngestError, match="ingest.source=lisa needs ingest.source_path="):
        run_ingest(spark, conf)


def test_coco_categories_map_to_states_or_are_dropped(spark, tmp_path):
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "a.png"), noisy(60, 80, seed=9))
    coco = {"images": [{"id": 1, "file_name": "images/a.png", "width": 80, "height": 60}],
            "annotations": [{"image_id": 1, "bbox": [10, 10, 6, 14], "category_id": 10},
                            {"image_id": 1, "bbox": [40, 30, 20, 10], "category_id": 3}],
            "categories": [{"id": 10, "name": "traffic light"}, {"id": 3, "name": "car"}]}
    (root / "instances.json").write_text(json.dumps(coco))
    common = ["ingest.source=coco", f"ingest.source_path={root / 'instances.json'}", "ingest.frame_hw=[60,80]",
              "ingest.min_size=4", "ingest.split={train: 1.0, val: 0.0, test: 0.0}"]
    unmapped = run_ingest(spark, make_conf(tmp_path / "a", *common))
    assert unmapped["rows_quarantined"] == 1                 # "traffic light" is no state: quarantined, named
    conf = make_conf(tmp_path / "b", *common, 'ingest.label_map={"traffic light": "off", "car": "drop"}')
    assert run_ingest(spark, conf)["rows_written"] == 1
    frame = read_rows(f"{store.dataset_root(conf.paths.data_url, conf.ingest.name)}/tl_frames/train")[0]
    np.testing.assert_allclose(frame["boxes"], [[10, 10, 16, 24]])
    assert list(frame["states"]) == [3]


def test_label_map_values_are_checked():
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="ingest.label_map.*one of: red, yellow, green, off, drop"):
        load_config("local", overrides=['ingest.label_map={"car": "blue"}'])


def test_undecodable_file_names_are_stored_escaped():
    assert ingest.storable("plain ü.png") == "plain ü.png"
    assert ingest.storable("bad\udcff.png") == "bad\\xff.png"     # os.listdir's surrogate escape of byte 0xff


# ------------------------------------------------------------- ImageFolder with train/ and test/ only

def test_imagefolder_without_val_gets_val_carved_from_train_and_trains_either_classifier(spark, tmp_path, capsys):
    from pipeline.config import ConfigError
    from pipeline.train.spec import make_spec

    root = tmp_path / "crops"
    for split, count in (("train", 24), ("test", 6)):
        for cls, seed in (("red", 0), ("green", 100)):
            for i in range(count):
                path = root / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(_png(noisy(20, 12, seed=seed + i)))
    conf = make_conf(tmp_path, "ingest.source=imagefolder", f"ingest.source_path={root}", "ingest.name=crops",
                     "ingest.class_hw=[16,16]", "ingest.min_size=4", "train.data=crops", "train.batch_size=4",
                     "ingest.val_from_train=0.25")
    results = run_ingest(spark, conf)
    assert "no val: " in capsys.readouterr().out
    meta = store.read_meta(store.dataset_root(conf.paths.data_url, "crops"))
    splits = meta["datasets"]["class_images"]["splits"]
    assert splits["test"] == 12 and splits["train"] + splits["val"] == 48 and 4 <= splits["val"] <= 20
    assert meta["val_carved"] == splits["val"]
    run = MlflowClient(conf.mlflow.tracking_uri).get_run(results["run_id"])
    assert run.data.metrics["val_carved_from_train"] == splits["val"]
    tests = read_rows(f"{store.dataset_root(conf.paths.data_url, 'crops')}/class_images/test")
    assert all("/test/" in r["source"] for r in tests)                # the test folder is never touched
    for task in ("tl_classifier", "lane_classifier"):                  # the one kind that fits, found by itself
        spec = make_spec(make_conf(tmp_path, *[f"{k}={v}" for k, v in (("ingest.source", "imagefolder"),)],
                                   "train.data=crops", "train.batch_size=4", f"train.task={task}"))
        assert spec.kind == "class_images" and spec.classes == ("green", "red") and spec.in_hw == (16, 16)
    with pytest.raises(ConfigError, match=r"train.task=tl_detector trains on tl_frames, and the dataset has only "
                                          r"class_images: train tl_classifier or lane_classifier on it"):
        make_spec(make_conf(tmp_path, "train.data=crops", "train.task=tl_detector"))
