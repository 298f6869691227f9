"""Tests for pipeline.data.readers: tiny generated datasets of every supported format."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pipeline.data import readers
from pipeline.data.readers import (AnnotationError, READERS, read_bosch, read_coco, read_culane,
                                   read_dtld, read_imagefolder, read_lisa, read_source,
                                   read_tusimple)
from pipeline.data.records import Box
from pipeline.vocab import TL_STATES

_PIXELS = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
PNG = cv2.imencode(".png", _PIXELS)[1].tobytes()
JPG = cv2.imencode(".jpg", _PIXELS)[1].tobytes()


def write_image(path: Path, data: bytes | None = None) -> Path:
    """Write a small generated image (PNG or JPEG bytes chosen by extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = PNG if path.suffix.lower() == ".png" else JPG
    path.write_bytes(data)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def by_id(records) -> dict:
    """Records keyed by source_id, after checking the invariants every reader must keep."""
    ids = [r.source_id for r in records]
    assert len(ids) == len(set(ids)), "source ids must be unique"
    for r in records:
        if r.path is not None:
            assert os.path.isabs(r.path) and os.path.isfile(r.path), r
        if r.reason is None:
            assert r.path is not None, r
        assert isinstance(r.group, str) and r.group
    return dict(zip(ids, records))


def box(x0, y0, x1, y1, label, occluded=False) -> Box:
    return Box(float(x0), float(y0), float(x1), float(y1), label, occluded)


# ------------------------------------------------------------------------------------------------
# ImageFolder


def test_imagefolder_classes_extensions_and_names(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "red" / "a.png")
    write_image(root / "red" / "ünïcödé name 1.PNG")
    write_image(root / "green" / "B.JPG")
    write_image(root / "green" / "deep" / "c.jpeg")
    write_image(root / "green" / "d.Tiff")
    write_image(root / "green" / "e.webp")
    write_image(root / "green" / "f.BMP")
    write_text(root / "green" / "notes.txt", "not an image")
    write_text(root / "green" / "labels.csv", "x")
    write_image(root / "green" / ".hidden.png")
    write_image(root / "loose.jpg")

    recs = by_id(read_imagefolder(str(root)))

    assert set(recs) == {"red/a.png", "red/ünïcödé name 1.PNG", "green/B.JPG", "green/deep/c.jpeg",
                         "green/d.Tiff", "green/e.webp", "green/f.BMP", "loose.jpg"}
    assert recs["red/ünïcödé name 1.PNG"].label == "red"
    assert recs["red/ünïcödé name 1.PNG"].path == str(root / "red" / "ünïcödé name 1.PNG")
    assert recs["green/deep/c.jpeg"].label == "green"
    assert all(r.split is None for r in recs.values())
    # each image is its own group
    assert recs["green/B.JPG"].group == "green/B.JPG"
    assert recs["loose.jpg"].reason == "no_class_folder" and recs["loose.jpg"].label is None
    assert all(r.reason is None for k, r in recs.items() if k != "loose.jpg")


def test_imagefolder_split_folders_and_group_prefix(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "train" / "red" / "drive7__0001.png")
    write_image(root / "train" / "green" / "x.png")
    write_image(root / "val" / "green" / "drive7__0002.png")
    write_image(root / "Test" / "red" / "z z.jpg")
    write_image(root / "train" / "stray.png")

    recs = by_id(read_imagefolder(str(root)))

    assert {k: (r.split, r.label) for k, r in recs.items()} == {
        "train/red/drive7__0001.png": ("train", "red"),
        "train/green/x.png": ("train", "green"),
        "val/green/drive7__0002.png": ("val", "green"),
        "Test/red/z z.jpg": ("test", "red"),
        "train/stray.png": ("train", None),
    }
    assert recs["train/red/drive7__0001.png"].group == "drive7"
    assert recs["val/green/drive7__0002.png"].group == "drive7"
    assert recs["train/green/x.png"].group == "train/green/x.png"
    assert recs["train/stray.png"].reason == "no_class_folder"


def test_imagefolder_split_named_folder_without_subfolders_is_a_class(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "test" / "a.png")
    write_image(root / "other" / "b.png")
    recs = by_id(read_imagefolder(str(root)))
    assert {k: (r.label, r.split) for k, r in recs.items()} == {
        "test/a.png": ("test", None), "other/b.png": ("other", None)}


def test_imagefolder_group_prefix_needs_both_parts(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "c" / "__x.png")
    write_image(root / "c" / "g__.png")
    recs = by_id(read_imagefolder(str(root)))
    assert recs["c/__x.png"].group == "c/__x.png"
    assert recs["c/g__.png"].group == "c/g__.png"


def test_imagefolder_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_imagefolder(str(tmp_path / "nope"))


# ------------------------------------------------------------------------------------------------
# Bosch

BOSCH_YAML = """\
- boxes:
  - {label: Green, occluded: false, x_max: 30, x_min: 10, y_max: 40, y_min: 20}
  - {label: RedLeft, occluded: true, x_max: 5, x_min: 1, y_max: 9, y_min: 2}
  path: ./rgb/train/drive_a/100.png
- boxes:
  - {label: GreenStraightRight, occluded: false, x_max: 10, x_min: 20, y_max: 5, y_min: 15}
  - {label: Yellow, occluded: false, x_max: 3, x_min: 1, y_max: 3, y_min: 1}
  - {label: 'off', occluded: false, x_max: 8, x_min: 6, y_max: 8, y_min: 6}
  path: ./rgb/train/drive_a/101.png
- boxes: []
  path: ./rgb/train/drive b/ünï 102.png
- boxes:
  - {label: Purple, occluded: false, x_max: 3, x_min: 1, y_max: 3, y_min: 1}
  path: ./rgb/train/drive_b/103.png
- boxes:
  - {label: Red, occluded: false, x_max: 5, x_min: 5, y_max: 9, y_min: 1}
  path: ./rgb/train/drive_b/104.png
- boxes: []
  path: ../../etc/passwd
- boxes: []
  path: /etc/hosts
- boxes: []
  path: ./rgb/train/drive_b/missing.png
- boxes:
  - {label: Red, occluded: false, x_max: 50, x_min: 40, y_max: 50, y_min: 40}
  path: rgb/train/drive_a/100.png
- boxes: []
- boxes: []
  path: ./rgb/train/drive_a/100.png
- boxes:
  - {label: Red, occluded: false, x_max: abc, x_min: 1, y_max: 3, y_min: 1}
  path: ./rgb/train/drive_b/105.png
"""


def test_bosch(tmp_path):
    root = tmp_path / "bosch"
    for name in ("drive_a/100.png", "drive_a/101.png", "drive b/ünï 102.png", "drive_b/103.png",
                 "drive_b/104.png", "drive_b/105.png"):
        write_image(root / "rgb" / "train" / name)
    yaml_path = write_text(root / "train.yaml", BOSCH_YAML)

    records = read_bosch(str(yaml_path))
    recs = by_id(records)

    a100 = recs["rgb/train/drive_a/100.png"]
    assert a100.path == str(root / "rgb/train/drive_a/100.png")
    assert a100.group == "rgb/train/drive_a"
    assert a100.reason is None
    # first listing kept, later listings only counted
    assert a100.boxes == [box(10, 20, 30, 40, "green"), box(1, 2, 5, 9, "red", occluded=True)]
    assert a100.fixes.count("duplicate_frame") == 2

    a101 = recs["rgb/train/drive_a/101.png"]
    assert a101.reason is None
    assert a101.boxes == [box(10, 5, 20, 15, "green"), box(1, 1, 3, 3, "yellow"),
                          box(6, 6, 8, 8, "off")]
    assert a101.fixes == ["box_swapped"]

    b102 = recs["rgb/train/drive b/ünï 102.png"]
    assert b102.reason is None and b102.boxes == [] and b102.group == "rgb/train/drive b"

    assert recs["rgb/train/drive_b/103.png"].reason == "unknown_label:Purple"
    assert recs["rgb/train/drive_b/104.png"].reason == "box_zero_area"
    assert recs["rgb/train/drive_b/105.png"].reason.startswith("box_invalid:")

    assert recs["../../etc/passwd"].reason == "path_escapes_root:../../etc/passwd"
    assert recs["../../etc/passwd"].path is None
    assert recs["/etc/hosts"].reason == "path_escapes_root:/etc/hosts"
    missing = recs["rgb/train/drive_b/missing.png"]
    assert missing.reason.startswith("missing_file:./rgb/train/drive_b/missing.png (")
    assert str(root) in missing.reason and missing.path is None

    # the entry without a path starts on line 27 of the YAML
    bad = recs["train.yaml:27"]
    assert bad.reason.startswith("malformed_line:27: ") and "path" in bad.reason
    assert bad.path is None
    # 12 entries = 10 records + 2 duplicate listings
    assert len(records) == 10
    assert sum(r.fixes.count("duplicate_frame") for r in records) == 2


def test_bosch_absolute_path_inside_root(tmp_path):
    root = tmp_path / "bosch"
    img = write_image(root / "rgb" / "x.png")
    yaml_path = write_text(root / "t.yaml", f"- path: {img}\n  boxes: []\n")
    [rec] = read_bosch(str(yaml_path))
    assert rec.reason is None and rec.path == str(img) and rec.source_id == "rgb/x.png"


# As Bosch ships it: label off unquoted (YAML 1.1 would read it as the boolean False).
BOSCH_OFF_YAML = """\
- boxes: [{label: off, occluded: false, x_max: 8.5, x_min: 6.0, y_max: 1e1, y_min: 6}]
  path: ./rgb/train/2017-02-03-11-44-56_los_altos_mountain_view_traffic_lights_bag/207458.png
- boxes:
  - {label: off, occluded: true, x_max: 20, x_min: 10, y_max: 30, y_min: 20}
  - {label: Green, occluded: no, x_max: 40, x_min: 30, y_max: 30, y_min: 20}
  path: ./rgb/train/2017-02-03-11-44-56_los_altos_mountain_view_traffic_lights_bag/207459.png
"""


def test_bosch_unquoted_off_is_a_label(tmp_path):
    root = tmp_path / "bosch"
    drive = root / "rgb/train" / "2017-02-03-11-44-56_los_altos_mountain_view_traffic_lights_bag"
    write_image(drive / "207458.png")
    write_image(drive / "207459.png")
    yaml_path = write_text(root / "train.yaml", BOSCH_OFF_YAML)

    first, second = read_bosch(str(yaml_path))

    assert first.reason is None and first.path == str(drive / "207458.png")
    assert first.boxes == [box(6, 6, 8.5, 10, "off")]
    assert first.boxes[0].occluded is False
    assert second.reason is None
    assert second.boxes == [box(10, 20, 20, 30, "off", occluded=True), box(30, 20, 40, 30, "green")]


def test_bosch_image_root(tmp_path):
    img = write_image(tmp_path / "images" / "rgb" / "train" / "d" / "1.png")
    yaml_path = write_text(tmp_path / "labels" / "train.yaml",
                           "- boxes: []\n  path: ./rgb/train/d/1.png\n")
    [rec] = read_bosch(str(yaml_path), image_root=str(tmp_path / "images"))
    assert rec.reason is None and rec.path == str(img) and rec.source_id == "rgb/train/d/1.png"
    [rec] = read_source("bosch", str(yaml_path), image_root=str(tmp_path / "images"))
    assert rec.reason is None and rec.path == str(img)
    [missing] = read_bosch(str(yaml_path))
    assert missing.reason.startswith("missing_file:./rgb/train/d/1.png ")
    assert str(tmp_path / "labels") in missing.reason and "ingest.image_root" in missing.reason


@pytest.mark.parametrize("text, line, what", [
    ("- path: a.png\n  boxes: [\n- path: b.png\n", 3, "invalid YAML"),
    ("path: a.png\nboxes: []\n", 1, "expected a list"),
    ("", 1, "empty"),
])
def test_bosch_unparseable_file(tmp_path, text, line, what):
    yaml_path = write_text(tmp_path / "broken labels.yaml", text)
    with pytest.raises(AnnotationError) as info:
        read_bosch(str(yaml_path))
    assert "broken labels.yaml" in str(info.value)
    assert f"line {line}" in str(info.value) and info.value.line == line
    assert what in str(info.value)
    assert isinstance(info.value, ValueError)


# ------------------------------------------------------------------------------------------------
# LISA

LISA_HEADER = ("Filename;Annotation tag;Upper left corner X;Upper left corner Y;"
               "Lower right corner X;Lower right corner Y;Origin file;Origin frame number;"
               "Origin track;Origin track frame number")


def lisa_row(name, tag, x0, y0, x1, y1, origin="dayTraining/dayClip1--00000.avi"):
    return f"{name};{tag};{x0};{y0};{x1};{y1};{origin};0;{origin};0"


def make_lisa(tmp_path) -> Path:
    root = tmp_path / "lisa"
    frames = root / "dayTrain" / "dayTrain" / "dayClip1" / "frames"
    write_image(frames / "dayClip1--00000.jpg")
    write_image(frames / "dayClip1--00001.png")          # CSV says .jpg
    write_image(frames / "dayClip1--00002.JPG")
    write_image(frames / "dayClip1--00003.jpg")
    # a copy in the dataset's sample folder: the clip folder wins
    write_image(root / "sample-dayClip1" / "sample-dayClip1" / "frames" / "dayClip1--00000.jpg")
    # same stem twice, neither under a folder named dayClip1
    write_image(root / "extra1" / "dayClip1--00004.jpg")
    write_image(root / "extra2" / "dayClip1--00004.png")
    rows = [
        LISA_HEADER,
        lisa_row("dayTraining/dayClip1--00000.jpg", "go", 10, 20, 30, 40),
        lisa_row("dayTraining/dayClip1--00000.jpg", "stopLeft", 50, 60, 55, 70),
        "dayTraining/dayClip1--00001.jpg;go;1;2;3",                              # line 4
        lisa_row("dayTraining/dayClip1--00001.jpg", "warningLeft", 30, 40, 10, 20),
        lisa_row("dayTraining/dayClip1--00002.jpg", "goForward", "x1", 2, 3, 4),  # line 6
        lisa_row("dayTraining/dayClip1--00002.jpg", "warning", 1, 2, 3, 4),
        lisa_row("dayTraining/dayClip1--00002.jpg", "warning", 1, 2, 3, 4),
        lisa_row("dayTraining/dayClip1--00099.jpg", "go", 1, 2, 3, 4),
        lisa_row("dayTraining/dayClip1--00003.jpg", "goLeft", 1, 2, 3, 4),
        lisa_row("dayTraining/dayClip1--00003.jpg", "stop", 5, 6, 7, 8),
        lisa_row("dayTraining/dayClip1--00003.jpg", "flashing", 9, 9, 12, 12),
        lisa_row("dayTraining/dayClip1--00004.jpg", "go", 1, 2, 3, 4),
        lisa_row("../../../etc/passwd", "go", 1, 2, 3, 4),
        "",
    ]
    write_text(root / "Annotations" / "Annotations" / "dayTrain" / "dayClip1"
               / "frameAnnotationsBOX.csv", "\r\n".join(rows))
    # the BULB file must not produce records
    write_text(root / "Annotations" / "Annotations" / "dayTrain" / "dayClip1"
               / "frameAnnotationsBULB.csv",
               LISA_HEADER + "\n" + lisa_row("dayTraining/dayClip1--00005.jpg", "go", 1, 2, 3, 4))
    return root


def test_lisa(tmp_path):
    root = make_lisa(tmp_path)
    records = read_lisa(str(root))
    recs = by_id(records)
    frames = "dayTrain/dayTrain/dayClip1/frames/"
    csv = "Annotations/Annotations/dayTrain/dayClip1/frameAnnotationsBOX.csv"

    f0 = recs[frames + "dayClip1--00000.jpg"]
    assert f0.reason is None and f0.path == str(root / frames / "dayClip1--00000.jpg")
    assert f0.boxes == [box(10, 20, 30, 40, "green"), box(50, 60, 55, 70, "red")]
    assert f0.group == "dayTraining/dayClip1--00000.avi"

    f1 = recs[frames + "dayClip1--00001.png"]       # resolved across folder and extension
    assert f1.reason is None
    assert f1.boxes == [box(10, 20, 30, 40, "yellow")] and f1.fixes == ["box_swapped"]

    f2 = recs[frames + "dayClip1--00002.JPG"]
    assert f2.boxes == [box(1, 2, 3, 4, "yellow")] and f2.fixes == ["duplicate_box"]

    f3 = recs[frames + "dayClip1--00003.jpg"]
    assert f3.reason == "unknown_label:flashing"
    assert [b.label for b in f3.boxes[:2]] == ["green", "red"]

    missing = recs["dayTraining/dayClip1--00099.jpg"]
    assert missing.reason == "missing_file:dayTraining/dayClip1--00099.jpg" and missing.path is None
    ambiguous = recs["dayTraining/dayClip1--00004.jpg"]
    assert ambiguous.reason == "ambiguous_file:dayTraining/dayClip1--00004.jpg"
    assert recs["../../../etc/passwd"].reason == "path_escapes_root:../../../etc/passwd"

    assert recs[f"{csv}:4"].reason.startswith("malformed_line:4: expected 10")
    assert recs[f"{csv}:6"].reason.startswith("malformed_line:6: bad coordinate")
    assert recs[f"{csv}:6"].path is None
    assert not any("00005" in k for k in recs)        # BULB ignored
    assert len(records) == 9


def test_lisa_same_frame_in_two_csvs_is_a_duplicate(tmp_path):
    root = make_lisa(tmp_path)
    write_text(root / "Annotations" / "again" / "dayClip1" / "frameAnnotationsBOX.csv",
               LISA_HEADER + "\n" + lisa_row("x/dayClip1--00001.jpg", "stop", 1, 1, 2, 2))
    recs = by_id(read_lisa(str(root)))
    f1 = recs["dayTrain/dayTrain/dayClip1/frames/dayClip1--00001.png"]
    assert f1.fixes.count("duplicate_frame") == 1
    assert [b.label for b in f1.boxes] == ["yellow"]   # first listing kept


def test_lisa_bad_header(tmp_path):
    root = tmp_path / "lisa"
    write_image(root / "frames" / "a.jpg")
    write_text(root / "clip" / "frameAnnotationsBOX.csv", "Filename,Tag\n" + "a.jpg,go\n")
    with pytest.raises(AnnotationError) as info:
        read_lisa(str(root))
    assert "frameAnnotationsBOX.csv" in str(info.value) and "line 1" in str(info.value)


def test_lisa_without_annotations(tmp_path):
    write_image(tmp_path / "lisa" / "a.jpg")
    with pytest.raises(FileNotFoundError):
        read_lisa(str(tmp_path / "lisa"))


# ------------------------------------------------------------------------------------------------
# DTLD


def write_tiff(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), (np.arange(8 * 8, dtype=np.uint16).reshape(8, 8) * 64))
    return path


def dtld_label(x, y, w, h, state, track, occlusion="not_occluded"):
    return {"x": x, "y": y, "w": w, "h": h, "unique_id": 1, "track_id": track,
            "attributes": {"state": state, "pictogram": "circle", "relevance": "relevant",
                           "occlusion": occlusion}}


def test_dtld(tmp_path):
    root = tmp_path / "dtld"
    seq = root / "Berlin" / "Berlin1" / "2015-04-17"
    for i in range(5):
        write_tiff(seq / f"img{i}.tiff")
    data = {"images": [
        {"image_path": "Berlin/Berlin1/2015-04-17/img0.tiff", "labels": [
            dtld_label(10, 20, 5, 12, "red", 7),
            dtld_label(30, 20, 5, 12, "red_yellow", 8, "occluded"),
            dtld_label(40, 20, 5, 12, "green", 9),
            dtld_label(50, 20, 5, 12, "off", 9)]},
        {"image_path": str(seq / "img1.tiff"), "labels": []},
        {"image_path": "./Berlin/Berlin1/2015-04-17/img2.tiff",
         "labels": [dtld_label(10, 20, -5, 12, "yellow", 3)]},
        {"image_path": "Berlin/Berlin1/2015-04-17/img3.tiff",
         "labels": [dtld_label(10, 20, 5, 12, "blue", 4)]},
        {"image_path": "Berlin/Berlin1/2015-04-17/img4.tiff",
         "labels": [dtld_label(10, 20, 0, 12, "red", 5)]},
        {"image_path": "/etc/passwd", "labels": []},
        {"image_path": "Berlin/Berlin1/2015-04-17/gone.tiff", "labels": []},
        {"image_path": "Berlin/Berlin1/2015-04-17/img0.tiff", "labels": []},
        {"labels": []},
    ]}
    json_path = write_text(root / "DTLD_all.json", json.dumps(data, indent=1))

    records = read_dtld(str(json_path))
    recs = by_id(records)
    assert all(r.decode == "bayer_gb12" for r in records if not r.source_id.startswith("DTLD_"))

    r0 = recs["Berlin/Berlin1/2015-04-17/img0.tiff"]
    assert r0.reason is None and r0.group == "7"
    assert r0.boxes == [box(10, 20, 15, 32, "red"), box(30, 20, 35, 32, "yellow", True),
                        box(40, 20, 45, 32, "green"), box(50, 20, 55, 32, "off")]
    assert r0.fixes == ["duplicate_frame"]

    r1 = recs["Berlin/Berlin1/2015-04-17/img1.tiff"]   # absolute inside root, no labels
    assert r1.reason is None and r1.group == "Berlin/Berlin1/2015-04-17"
    assert r1.path == str(seq / "img1.tiff")

    r2 = recs["Berlin/Berlin1/2015-04-17/img2.tiff"]
    assert r2.boxes == [box(5, 20, 10, 32, "yellow")] and r2.fixes == ["box_swapped"]
    assert recs["Berlin/Berlin1/2015-04-17/img3.tiff"].reason == "unknown_label:blue"
    assert recs["Berlin/Berlin1/2015-04-17/img4.tiff"].reason == "box_zero_area"
    assert recs["/etc/passwd"].reason == "path_escapes_root:/etc/passwd"
    assert recs["Berlin/Berlin1/2015-04-17/gone.tiff"].reason.startswith("missing_file:")
    bad = recs["DTLD_all.json:images[8]"]
    assert bad.reason.startswith("malformed_entry:images[8]: ") and "image_path" in bad.reason
    assert len(records) == 8


def test_dtld_image_root(tmp_path):
    img = write_tiff(tmp_path / "images" / "Berlin" / "Berlin1" / "img0.tiff")
    json_path = write_text(tmp_path / "labels" / "DTLD_train.json", json.dumps({"images": [
        {"image_path": "Berlin/Berlin1/img0.tiff", "labels": [dtld_label(1, 2, 3, 4, "red", 1)]}]}))
    [rec] = read_dtld(str(json_path), image_root=str(tmp_path / "images"))
    assert rec.reason is None and rec.path == str(img) and rec.boxes == [box(1, 2, 4, 6, "red")]
    [rec] = read_source("DTLD", str(json_path), image_root=str(tmp_path / "images"))
    assert rec.reason is None and rec.path == str(img)
    [missing] = read_dtld(str(json_path))
    assert missing.reason.startswith("missing_file:Berlin/Berlin1/img0.tiff (")
    assert str(tmp_path / "labels") in missing.reason and "ingest.image_root" in missing.reason


@pytest.mark.parametrize("text, line, what", [
    ('{\n "images": [\n  {"image_path": "a.tiff",}\n ]\n}\n', 3, "invalid JSON"),
    ('{\n "frames": []\n}\n', 1, "images"),
    ('[]', 1, "object"),
])
def test_dtld_unparseable_file(tmp_path, text, line, what):
    json_path = write_text(tmp_path / "labels.json", text)
    with pytest.raises(AnnotationError) as info:
        read_dtld(str(json_path))
    assert "labels.json" in str(info.value) and f"line {line}" in str(info.value)
    assert what in str(info.value)


# ------------------------------------------------------------------------------------------------
# TuSimple


def tusimple_line(raw_file, lanes, h_samples=(160, 170, 180)):
    return json.dumps({"lanes": lanes, "h_samples": list(h_samples), "raw_file": raw_file})


def test_tusimple(tmp_path):
    root = tmp_path / "tusimple"
    for clip in ("0313-1/6040", "0313-1/6080", "0531/1492"):
        write_image(root / "clips" / clip / "20.jpg")
    write_text(root / "label_data_0313.json", "\n".join([
        tusimple_line("clips/0313-1/6040/20.jpg", [[-2, 100, 110], [200, 210, -2], [-2, -2, -2]]),
        '{"lanes": [[1, 2, 3]], "h_samples": [1, 2, 3], "raw_file": ',            # line 2
        tusimple_line("clips/0313-1/6080/20.jpg", [[1, 2]]),                        # line 3
        "",
        tusimple_line("clips/0531/1492/20.jpg", [[5, 6, 7]]),
        json.dumps({"lanes": [], "h_samples": []}),                                 # line 6
        tusimple_line("clips/9999/1/20.jpg", []),
        tusimple_line("../../secret.jpg", []),
    ]) + "\n")
    write_text(root / "label_data_0531.json",
               tusimple_line("clips/0313-1/6040/20.jpg", [[1, 1, 1]]) + "\n")
    write_text(root / "test_label.json", tusimple_line("clips/0313-1/6080/20.jpg", []) + "\n")

    records = read_tusimple(str(root))
    recs = by_id(records)
    first = recs["clips/0313-1/6040/20.jpg"]
    assert first.reason is None and first.label is None
    assert first.group == "clips/0313-1/6040"
    assert first.lanes == [[(100.0, 170.0), (110.0, 180.0)], [(200.0, 160.0), (210.0, 170.0)]]
    assert first.fixes == ["duplicate_frame"]
    assert recs["clips/0531/1492/20.jpg"].lanes == [[(5.0, 160.0), (6.0, 170.0), (7.0, 180.0)]]
    assert recs["label_data_0313.json:2"].reason.startswith("malformed_line:2: invalid JSON")
    assert recs["label_data_0313.json:3"].reason.startswith("malformed_line:3: lane 0 has 2")
    assert recs["label_data_0313.json:6"].reason == "malformed_line:6: missing key 'raw_file'"
    assert recs["clips/9999/1/20.jpg"].reason.startswith("missing_file:clips/9999/1/20.jpg (")
    assert recs["../../secret.jpg"].reason == "path_escapes_root:../../secret.jpg"
    assert "clips/0313-1/6080/20.jpg" not in recs        # only in test_label.json / a bad line
    assert len(records) == 7

    # a single label file can be named directly
    [only] = read_tusimple(str(root / "test_label.json"))
    assert only.source_id == "clips/0313-1/6080/20.jpg" and only.reason is None


def test_tusimple_colliding_source_ids_get_a_suffix(tmp_path):
    root = tmp_path / "tusimple"
    write_text(root / "label_data_a.json",
               "not json\n" + tusimple_line("label_data_a.json:1", []) + "\n")
    records = read_tusimple(str(root))
    assert [r.source_id for r in records] == ["label_data_a.json:1", "label_data_a.json:1#2"]
    assert records[1].reason.startswith("missing_file:label_data_a.json:1 (")


def test_tusimple_image_root(tmp_path):
    img = write_image(tmp_path / "test_set" / "clips" / "0530" / "1" / "20.jpg")
    label = write_text(tmp_path / "test_label.json",
                       tusimple_line("clips/0530/1/20.jpg", []) + "\n")
    [rec] = read_tusimple(str(label), image_root=str(tmp_path / "test_set"))
    assert rec.reason is None and rec.path == str(img) and rec.source_id == "clips/0530/1/20.jpg"
    [missing] = read_tusimple(str(label))
    assert missing.reason.startswith("missing_file:") and "ingest.image_root" in missing.reason


def test_tusimple_without_label_files(tmp_path):
    (tmp_path / "t").mkdir()
    with pytest.raises(FileNotFoundError):
        read_tusimple(str(tmp_path / "t"))


# ------------------------------------------------------------------------------------------------
# CULane


def test_culane(tmp_path):
    root = tmp_path / "culane"
    clip = root / "driver_23_30frame" / "05151649_0422.MP4"
    write_image(clip / "00000.jpg")
    write_text(clip / "00000.lines.txt", "10.5 590 20 580 \n-3.2 590 40.25 570\n")
    write_image(clip / "00030.JPG")
    write_image(clip / "00060.jpg")
    write_text(clip / "00060.lines.txt", "1 2 3\n")
    write_image(clip / "00090.jpg")
    write_text(clip / "00090.lines.txt", "1 2 3 4\n1 2 x 4\n")
    write_text(clip / "00120.lines.txt", "1 2 3 4\n")
    write_image(root / "laneseg_label_w16" / "driver_23_30frame" / "05151649_0422.MP4" / "00000.png")
    write_text(root / "list" / "train_gt.txt", "/driver_23_30frame/00000.jpg\n")

    records = read_culane(str(root))
    recs = by_id(records)
    base = "driver_23_30frame/05151649_0422.MP4/"
    assert set(recs) == {base + n for n in ("00000.jpg", "00030.JPG", "00060.jpg", "00090.jpg",
                                            "00120.jpg")}
    r0 = recs[base + "00000.jpg"]
    assert r0.reason is None and r0.group == "driver_23_30frame/05151649_0422.MP4"
    assert r0.lanes == [[(10.5, 590.0), (20.0, 580.0)], [(-3.2, 590.0), (40.25, 570.0)]]
    assert recs[base + "00030.JPG"].reason is None and recs[base + "00030.JPG"].lanes == []
    assert recs[base + "00060.jpg"].reason.startswith("malformed_line:1: odd number")
    assert recs[base + "00090.jpg"].reason.startswith("malformed_line:2: not a number")
    assert recs[base + "00120.jpg"].reason == f"missing_file:{base}00120.jpg"


# ------------------------------------------------------------------------------------------------
# COCO


def test_coco(tmp_path):
    root = tmp_path / "coco"
    write_image(root / "a.jpg")
    write_image(root / "sub dir" / "b.PNG")
    write_image(root / "sub dir" / "z.png")
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 6, "height": 4},
            {"id": 2, "file_name": "sub dir/b.PNG", "width": 6, "height": 4},
            {"id": 3, "file_name": "c.jpg"},
            {"id": 4, "file_name": "../x.jpg"},
            {"id": 5, "file_name": "./a.jpg"},
            {"id": 1, "file_name": "sub dir/z.png"},
            {"file_name": "sub dir/z.png"},
            {"id": 6, "file_name": "sub dir/z.png"},
        ],
        "annotations": [
            {"image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 10},
            {"image_id": 2, "bbox": [0, 0, 2, 2], "category_id": 11},
            {"image_id": 2, "bbox": [0, 0, 2, 2], "category_id": 99},
            {"image_id": 77, "bbox": [0, 0, 2, 2], "category_id": 10},
            {"image_id": 5, "bbox": [0, 0, 2, 2], "category_id": 10},
            {"image_id": 6, "bbox": [1, 1, 0, 2], "category_id": 10},
        ],
        "categories": [{"id": 10, "name": "traffic light"}, {"id": 11, "name": "car"}],
    }
    json_path = write_text(root / "instances.json", json.dumps(data))

    records = read_coco(str(json_path))
    recs = by_id(records)
    a = recs["a.jpg"]
    assert a.reason is None and a.group == "1"
    assert a.boxes == [box(1, 2, 4, 6, "traffic light")]       # id 5's box dropped with it
    assert a.fixes == ["duplicate_frame"]
    b = recs["sub dir/b.PNG"]
    assert b.group == "sub dir" and b.boxes[0] == box(0, 0, 2, 2, "car")
    assert b.reason == "unknown_label:99"
    assert recs["c.jpg"].reason.startswith("missing_file:c.jpg (")
    assert str(root) in recs["c.jpg"].reason
    assert recs["../x.jpg"].reason == "path_escapes_root:../x.jpg"
    assert recs["instances.json:images[5]"].reason.startswith(
        "malformed_entry:images[5]: duplicate image id")
    assert recs["instances.json:images[6]"].reason.startswith("malformed_entry:images[6]: ")
    assert recs["instances.json:annotations[3]"].reason == \
        "malformed_entry:annotations[3]: image_id 77 not in images"
    assert recs["sub dir/z.png"].reason == "box_zero_area"
    assert len(records) == 8


def test_coco_image_root(tmp_path):
    write_image(tmp_path / "images" / "val2017" / "000001.jpg")
    json_path = write_text(tmp_path / "annotations" / "instances_val.json", json.dumps({
        "images": [{"id": 1, "file_name": "000001.jpg"}],
        "annotations": [], "categories": []}))
    [rec] = read_coco(str(json_path), image_root=str(tmp_path / "images" / "val2017"))
    assert rec.reason is None and rec.path == str(tmp_path / "images" / "val2017" / "000001.jpg")
    [missing] = read_coco(str(json_path))
    assert missing.reason.startswith("missing_file:000001.jpg (")
    # searched the JSON's folder, then <json's parent's parent>/<split of instances_<split>.json>
    assert str(tmp_path / "annotations") in missing.reason
    assert str(tmp_path / "val") in missing.reason
    assert "ingest.image_root" in missing.reason


def make_coco(root: Path, split: str = "val2017") -> Path:
    """COCO as published: <root>/annotations/instances_<split>.json beside <root>/<split>/*.jpg,
    ``file_name`` just the image's name."""
    write_image(root / split / "000000000139.jpg")
    write_image(root / split / "000000000285.png")
    return write_text(root / "annotations" / f"instances_{split}.json", json.dumps({
        "images": [{"id": 139, "file_name": "000000000139.jpg", "width": 6, "height": 4},
                   {"id": 285, "file_name": "000000000285.png", "width": 6, "height": 4}],
        "annotations": [{"id": 1, "image_id": 139, "bbox": [1, 1, 2, 2], "category_id": 10,
                         "area": 4, "iscrowd": 0}],
        "categories": [{"supercategory": "outdoor", "id": 10, "name": "traffic light"}]}))


def test_coco_real_layout_image_root_given(tmp_path):
    json_path = make_coco(tmp_path / "coco")
    images = tmp_path / "coco" / "val2017"
    for records in (read_coco(str(json_path), image_root=str(images)),
                    read_source("coco", str(json_path), image_root=str(images))):
        recs = by_id(records)
        assert set(recs) == {"000000000139.jpg", "000000000285.png"}
        assert all(r.reason is None for r in records)
        assert recs["000000000139.jpg"].path == str(images / "000000000139.jpg")
        assert recs["000000000139.jpg"].boxes == [box(1, 1, 3, 3, "traffic light")]
        assert recs["000000000285.png"].boxes == []


def test_coco_real_layout_image_root_inferred(tmp_path):
    json_path = make_coco(tmp_path / "coco", "train2017")
    for records in (read_coco(str(json_path)), read_source("coco", str(json_path))):
        recs = by_id(records)
        assert set(recs) == {"000000000139.jpg", "000000000285.png"}
        assert all(r.reason is None for r in records)
        assert recs["000000000139.jpg"].path == \
            str(tmp_path / "coco" / "train2017" / "000000000139.jpg")
        assert recs["000000000139.jpg"].boxes == [box(1, 1, 3, 3, "traffic light")]


def test_coco_json_folder_is_tried_before_the_split_folder(tmp_path):
    json_path = make_coco(tmp_path / "coco")
    beside = write_image(tmp_path / "coco" / "annotations" / "000000000139.jpg")
    recs = by_id(read_coco(str(json_path)))
    assert recs["000000000139.jpg"].path == str(beside)
    assert recs["000000000285.png"].path == str(tmp_path / "coco" / "val2017" / "000000000285.png")


def test_coco_wrong_image_root_quarantines_naming_the_folder(tmp_path):
    json_path = make_coco(tmp_path / "coco")
    wrong = tmp_path / "coco" / "train2017"
    wrong.mkdir()
    for records in (read_coco(str(json_path), image_root=str(wrong)),
                    read_source("coco", str(json_path), image_root=str(wrong)),
                    read_coco(str(json_path), image_root=str(tmp_path / "nowhere"))):
        recs = by_id(records)
        assert set(recs) == {"000000000139.jpg", "000000000285.png"}
        for name, rec in recs.items():
            assert rec.path is None
            assert rec.reason.startswith(f"missing_file:{name} (")
            assert "ingest.image_root" in rec.reason
    assert str(tmp_path / "nowhere") in recs["000000000139.jpg"].reason    # the last read
    # a given image root is the only folder searched
    [rec] = [r for r in read_coco(str(json_path), image_root=str(wrong))
             if r.source_id == "000000000139.jpg"]
    assert str(wrong) in rec.reason and str(tmp_path / "coco" / "val2017") not in rec.reason


def test_coco_missing_images_key(tmp_path):
    json_path = write_text(tmp_path / "c.json", json.dumps({"annotations": []}))
    with pytest.raises(AnnotationError, match=r"c\.json: line 1: missing top-level key 'images'"):
        read_coco(str(json_path))


# ------------------------------------------------------------------------------------------------
# Dispatch and shared rules


def test_read_source_dispatch(tmp_path):
    write_image(tmp_path / "ds" / "red" / "a.png")
    assert set(READERS) == {"imagefolder", "bosch", "lisa", "dtld", "tusimple", "culane", "coco"}
    [rec] = read_source("ImageFolder", str(tmp_path / "ds"))
    assert rec.label == "red"
    with pytest.raises(ValueError) as info:
        read_source("voc", str(tmp_path))
    assert "voc" in str(info.value)
    assert all(name in str(info.value) for name in READERS)


def test_read_source_image_root_only_where_it_applies(tmp_path):
    write_image(tmp_path / "ds" / "red" / "a.png")
    assert readers.IMAGE_ROOT_FORMATS == ("bosch", "dtld", "tusimple", "coco")
    [rec] = read_source("imagefolder", str(tmp_path / "ds"), image_root=None)
    assert rec.label == "red"
    for fmt in ("imagefolder", "lisa", "culane"):
        with pytest.raises(ValueError) as info:
            read_source(fmt, str(tmp_path / "ds"), image_root=str(tmp_path))
        assert "ingest.image_root" in str(info.value) and fmt in str(info.value)


def test_traffic_light_maps_cover_canonical_states_only():
    for states in (readers.BOSCH_STATES, readers.LISA_STATES, readers.DTLD_STATES):
        assert set(states.values()) <= set(TL_STATES)
    assert readers.BOSCH_STATES["GreenStraightLeft"] == "green"
    assert readers.BOSCH_STATES["RedStraightRight"] == "red"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["..", ".", "a", "b c", "ü"]), min_size=1, max_size=6))
def test_resolve_never_leaves_root(tmp_path_factory, parts):
    root = tmp_path_factory.getbasetemp() / "resolve_root"
    root.mkdir(exist_ok=True)
    raw = "/".join(parts)
    res = readers._Source(str(root)).resolve(raw)
    normalised = os.path.normpath(os.path.join(str(root), raw))
    outside = not (normalised + os.sep).startswith(str(root) + os.sep)
    assert (res.reason == f"path_escapes_root:{raw}") == outside
    assert res.path is None            # nothing exists under the empty root
    if not outside:
        assert res.reason.startswith(f"missing_file:{raw} (") and str(root) in res.reason
