"""Sources given as URLs: every format read through fsspec from a ``file://`` URL and from fsspec's
in-memory filesystem gives the records a local read of the same files gives (labels, boxes, groups,
splits, flags, in order), with image paths a worker opens; an ingest of a ``file://`` source.

The in-memory copy keeps the local tree's paths (``memory:///tmp/...``), so absolute paths written in
annotation files mean the same files, and the local tree is deleted before the in-memory read: a
reader that looked at the local disk instead of the URL finds nothing."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import fsspec
import numpy as np
import pytest

from pipeline.data import readers, store
from pipeline.data.images import read_bytes
from pipeline.data.readers import AnnotationError, SourceError, read_source
from pipeline.data.readers.common import url_prefix
from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker
from tests.conftest import make_conf
from tests.data.test_readers import (BOSCH_YAML, PNG, dtld_label, make_coco, make_lisa,
                                     tusimple_line, write_image, write_text, write_tiff)

MEMORY = fsspec.filesystem("memory")


# ------------------------------------------------------------------------------------------------
# One small tree per format, and the reads (format, source, image root) each is checked with


def imagefolder_tree(top: Path) -> list[tuple]:
    for rel in ("red/a.png", "red/ünïcödé name 1.PNG", "green/B.JPG", "green/deep/c.jpeg",
                "green/.hidden.png", "loose.jpg", "split/train/red/drive7__0001.png",
                "split/val/green/drive7__0002.png", "split/Test/red/z z.jpg", "split/train/stray.png"):
        write_image(top / "ds" / rel)
    write_text(top / "ds" / "green" / "notes.txt", "not an image")
    return [("imagefolder", "ds", None), ("imagefolder", "ds/split", None)]


def bosch_tree(top: Path) -> list[tuple]:
    for name in ("drive_a/100.png", "drive_a/101.png", "drive b/ünï 102.png", "drive_b/103.png",
                 "drive_b/104.png", "drive_b/105.png"):
        write_image(top / "bosch" / "rgb" / "train" / name)
    write_text(top / "bosch" / "train.yaml", BOSCH_YAML)
    img = write_image(top / "bosch" / "rgb" / "x.png")
    write_text(top / "bosch" / "abs.yaml", f"- path: {img}\n  boxes: []\n")
    write_image(top / "images" / "rgb" / "train" / "d" / "1.png")
    write_text(top / "labels" / "train.yaml", "- boxes: []\n  path: ./rgb/train/d/1.png\n")
    return [("bosch", "bosch/train.yaml", None), ("bosch", "bosch/abs.yaml", None),
            ("bosch", "labels/train.yaml", "images"), ("bosch", "labels/train.yaml", None)]


def lisa_tree(top: Path) -> list[tuple]:
    make_lisa(top)
    return [("lisa", "lisa", None)]


def dtld_tree(top: Path) -> list[tuple]:
    seq = top / "dtld" / "Berlin" / "Berlin1" / "2015-04-17"
    for i in range(3):
        write_tiff(seq / f"img{i}.tiff")
    write_text(top / "dtld" / "DTLD_all.json", json.dumps({"images": [
        {"image_path": "Berlin/Berlin1/2015-04-17/img0.tiff",
         "labels": [dtld_label(10, 20, 5, 12, "red", 7), dtld_label(30, 20, 5, 12, "red_yellow", 8, "occluded")]},
        {"image_path": str(seq / "img1.tiff"), "labels": []},
        {"image_path": "./Berlin/Berlin1/2015-04-17/img2.tiff", "labels": [dtld_label(10, 20, -5, 12, "blue", 3)]},
        {"image_path": "/etc/passwd", "labels": []},
        {"image_path": "Berlin/Berlin1/2015-04-17/gone.tiff", "labels": []},
        {"image_path": "Berlin/Berlin1/2015-04-17/img0.tiff", "labels": []},
        {"labels": []},
    ]}, indent=1))
    write_text(top / "labels" / "DTLD_train.json", json.dumps({"images": [
        {"image_path": "Berlin/Berlin1/2015-04-17/img0.tiff", "labels": [dtld_label(1, 2, 3, 4, "red", 1)]}]}))
    return [("dtld", "dtld/DTLD_all.json", None), ("dtld", "labels/DTLD_train.json", "dtld")]


def tusimple_tree(top: Path) -> list[tuple]:
    root = top / "tusimple"
    for clip in ("0313-1/6040", "0313-1/6080"):
        write_image(root / "clips" / clip / "20.jpg")
    write_text(root / "label_data_0313.json", "\n".join([
        tusimple_line("clips/0313-1/6040/20.jpg", [[-2, 100, 110], [200, 210, -2], [-2, -2, -2]]),
        '{"lanes": [[1, 2, 3]], "h_samples": [1, 2, 3], "raw_file": ',
        tusimple_line("clips/0313-1/6080/20.jpg", [[1, 2]]),
        tusimple_line("clips/9999/1/20.jpg", []),
        tusimple_line("../../secret.jpg", []),
    ]) + "\n")
    write_text(root / "label_data_0531.json", tusimple_line("clips/0313-1/6040/20.jpg", [[1, 1, 1]]) + "\n")
    write_text(top / "test_label.json", tusimple_line("clips/0313-1/6080/20.jpg", []) + "\n")
    return [("tusimple", "tusimple", None), ("tusimple", "test_label.json", "tusimple"),
            ("tusimple", "tusimple/label_data_0531.json", None)]


def culane_tree(top: Path) -> list[tuple]:
    clip = top / "culane" / "driver_23_30frame" / "05151649_0422.MP4"
    write_image(clip / "00000.jpg")
    write_text(clip / "00000.lines.txt", "10.5 590 20 580 \n-3.2 590 40.25 570\n")
    write_image(clip / "00030.JPG")
    write_image(clip / "00060.jpg")
    write_text(clip / "00060.lines.txt", "1 2 3\n")
    write_text(clip / "00120.lines.txt", "1 2 3 4\n")
    write_image(top / "culane" / "laneseg_label_w16" / "driver_23_30frame" / "00000.png")
    return [("culane", "culane", None)]


def coco_tree(top: Path) -> list[tuple]:
    write_image(top / "coco" / "a.jpg")
    write_image(top / "coco" / "sub dir" / "b.PNG")
    write_text(top / "coco" / "instances.json", json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "sub dir/b.PNG"},
                   {"id": 3, "file_name": "c.jpg"}, {"id": 4, "file_name": "../x.jpg"},
                   {"id": 5, "file_name": "./a.jpg"}, {"file_name": "z.png"}],
        "annotations": [{"image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 10},
                        {"image_id": 2, "bbox": [0, 0, 2, 2], "category_id": 99},
                        {"image_id": 77, "bbox": [0, 0, 2, 2], "category_id": 10}],
        "categories": [{"id": 10, "name": "traffic light"}]}))
    make_coco(top / "published", "train2017")         # images found in <root>/train2017, beside annotations/
    return [("coco", "coco/instances.json", None),
            ("coco", "published/annotations/instances_train2017.json", None),
            ("coco", "published/annotations/instances_train2017.json", "published/train2017"),
            ("coco", "published/annotations/instances_train2017.json", "coco")]


TREES = {"imagefolder": imagefolder_tree, "bosch": bosch_tree, "lisa": lisa_tree, "dtld": dtld_tree,
         "tusimple": tusimple_tree, "culane": culane_tree, "coco": coco_tree}


def read_all(reads: list[tuple], where) -> list[list[dict]]:
    """The records of every read, the source and image root written by ``where(relative path)``."""
    return [[r.as_dict() for r in read_source(fmt, where(path), image_root=root and where(root))]
            for fmt, path, root in reads]


def to_memory(top: Path) -> str:
    """Copy the tree under ``top`` to the in-memory filesystem at the same path, delete it from the
    disk, and return its URL."""
    for folder, dirs, files in os.walk(top):
        MEMORY.mkdir(folder, create_parents=True)
        for name in files:
            MEMORY.pipe(os.path.join(folder, name), Path(folder, name).read_bytes())
    shutil.rmtree(top)
    return "memory://" + str(top)


def in_memory(records: list[dict], top: Path) -> list[dict]:
    """``records`` of a local read of ``top`` as a read of its in-memory copy gives them: image
    paths, and the folders named in reasons, as ``memory://`` URLs."""
    local, url = str(top), "memory://" + str(top)
    return [{**r, "path": r["path"] and url + r["path"][len(local):],
             "reason": r["reason"] and r["reason"].replace(local, url)} for r in records]


@pytest.fixture
def top(tmp_path):
    """A folder for one test's tree (with unusual characters, which ``file://`` URLs escape), whose
    in-memory copy is removed afterwards."""
    top = tmp_path / "data [1] #x"
    yield top
    if MEMORY.exists(str(top)):        # one by one: fsspec's rm reads "[1]" as a glob
        for path in sorted(MEMORY.find(str(top), withdirs=True), reverse=True):   # top included
            (MEMORY.rmdir if MEMORY.isdir(path) else MEMORY.rm_file)(path)


# ------------------------------------------------------------------------------------------------
# Every format, local and through URLs


@pytest.mark.parametrize("fmt", TREES)
def test_a_file_url_reads_like_the_local_path(fmt, top):
    reads = TREES[fmt](top)
    local = read_all(reads, lambda rel: str(top / rel))
    assert all(local) and any(r["path"] for recs in local for r in recs)
    assert any(r["reason"] for recs in local for r in recs)           # flags are compared too
    assert read_all(reads, lambda rel: (top / rel).as_uri()) == local


@pytest.mark.parametrize("fmt", TREES)
def test_an_in_memory_source_reads_like_the_local_files(fmt, top):
    reads = TREES[fmt](top)
    local = read_all(reads, lambda rel: str(top / rel))
    url = to_memory(top)
    assert not top.exists()
    got = read_all(reads, lambda rel: f"{url}/{Path(rel).as_posix()}")
    assert got == [in_memory(recs, top) for recs in local]
    paths = [r["path"] for recs in got for r in recs if r["path"]]
    assert paths and all(p.startswith(url + "/") and MEMORY.isfile(p) for p in paths)


def test_an_image_listed_in_memory_is_read_by_the_workers_reader(top):
    write_image(top / "ds" / "red" / "a.png")
    write_image(top / "ds" / "green" / "b.jpg")
    url = to_memory(top)
    records = read_source("imagefolder", f"{url}/ds")
    assert [(r.path, r.label) for r in records] == [(f"{url}/ds/green/b.jpg", "green"),
                                                     (f"{url}/ds/red/a.png", "red")]
    assert read_bytes(records[1].path) == PNG
    assert read_bytes(records[0].path) == MEMORY.cat_file(str(top / "ds" / "green" / "b.jpg"))


# ------------------------------------------------------------------------------------------------
# Safety and errors off the local disk


def test_in_memory_annotation_paths_cannot_leave_the_root(top):
    for rel in ("root/rgb/frame.png", "outside/a.png", "outside/b.png", "outside/c.png"):
        write_image(top / rel)                        # every file named below exists
    escaping = ["../outside/a.png", str(top / "outside" / "b.png"), "rgb/../../outside/c.png"]
    write_text(top / "root" / "train.yaml", "".join(f"- path: {json.dumps(p)}\n  boxes: []\n"
                                                    for p in ["./rgb/frame.png", *escaping]))
    url = to_memory(top)
    got = {r.source_id: (r.reason, r.path) for r in read_source("bosch", f"{url}/root/train.yaml")}
    assert got == {"rgb/frame.png": (None, f"{url}/root/rgb/frame.png"),
                   **{p: (f"path_escapes_root:{p}", None) for p in escaping}}


def test_in_memory_errors_name_the_url(top):
    write_text(top / "broken.yaml", "- path: a.png\n  boxes: [\n- path: b.png\n")
    write_image(top / "lisa" / "a.jpg")
    url = to_memory(top)
    with pytest.raises(AnnotationError, match=r"^memory://.*/broken\.yaml: line 3: invalid YAML"):
        read_source("bosch", f"{url}/broken.yaml")
    with pytest.raises(FileNotFoundError, match="dataset root does not exist: memory://.*/nope"):
        read_source("imagefolder", f"{url}/nope")
    with pytest.raises(NotADirectoryError, match="dataset root is not a folder"):
        read_source("culane", f"{url}/broken.yaml")
    with pytest.raises(FileNotFoundError, match="no frameAnnotationsBOX.csv under memory://"):
        read_source("lisa", f"{url}/lisa")


def test_a_url_no_filesystem_opens_is_a_source_error():
    with pytest.raises(SourceError, match="no filesystem opens nosuchfs://bucket/ds"):
        read_source("imagefolder", "nosuchfs://bucket/ds")


@pytest.mark.parametrize("url, path, prefix", [
    ("hdfs://namenode:8020/data/ds", "/data/ds", "hdfs://namenode:8020"),     # fsspec keeps the host apart
    ("hdfs://namenode:8020/data/ds/", "/data/ds", "hdfs://namenode:8020"),
    ("s3://bucket/data/ds", "bucket/data/ds", "s3://"),
    ("memory://data/ds", "/data/ds", "memory:/"),
    ("memory:///data/ds", "/data/ds", "memory://"),
])
def test_addresses_keep_the_scheme_and_host_of_the_source_url(url, path, prefix):
    assert url_prefix(url, path) == prefix
    assert prefix + path + "/x.png" == url.rstrip("/") + "/x.png"


def test_the_in_memory_url_forms_name_the_same_files(top):
    write_image(top / "ds" / "red" / "a.png")
    to_memory(top)
    for url in (f"memory://{str(top)[1:]}/ds", f"memory://{top}/ds/", f"memory://{top}/ds/red/../"):
        [rec] = read_source("imagefolder", url)
        assert rec.label == "red" and read_bytes(rec.path) == PNG, url


def test_a_file_url_is_decoded_as_the_workers_reader_decodes_it(tmp_path):
    write_image(tmp_path / "a b%" / "red" / "x.png")
    uri = (tmp_path / "a b%").as_uri()
    assert "%20" in uri and "%25" in uri
    [rec] = readers.read_imagefolder(uri)
    assert rec.path == str(tmp_path / "a b%" / "red" / "x.png") and read_bytes(rec.path) == PNG


# ------------------------------------------------------------------------------------------------
# End to end


def noisy_png(seed: int) -> bytes:
    """A 20x12 picture of noise (distinct seeds: no near-duplicates across splits)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (20, 12, 3), dtype=np.uint8)
    return cv2.imencode(".png", pixels)[1].tobytes()


def test_ingest_of_an_imagefolder_given_as_a_file_url(spark, tmp_path):
    root = tmp_path / "crops [x]"
    for i, (split, cls) in enumerate((s, c) for s in ("train", "val", "test") for c in ("red", "green")):
        write_image(root / split / cls / f"{split}.png", noisy_png(i))
    write_text(root / "train" / "red" / "text.png", "not a picture\n")
    conf = make_conf(tmp_path, "ingest.source=imagefolder", f"ingest.source_path={root.as_uri()}",
                     "ingest.name=crops", "ingest.class_hw=[16,16]", "ingest.min_size=4")
    results = run_stage(get_stage("ingest"), spark, conf, Tracker(conf))
    assert (results["rows_in"], results["rows_written"], results["rows_quarantined"]) == (7, 6, 1)
    ledger = spark.read.parquet(f"{store.dataset_root(conf.paths.data_url, 'crops')}/ledger").collect()
    local = read_source("imagefolder", str(root))              # the plain path's records
    assert sorted((r["source_id"], r["path"], r["split"], r["label"], r["status"]) for r in ledger) == sorted(
        (r.source_id, r.path, r.split, r.label, "quarantined" if r.source_id.endswith("text.png") else "written")
        for r in local)
