"""Lane datasets: TuSimple (JSON-lines label files naming clip frames) and CULane (a lines file
beside each frame)."""
from __future__ import annotations

import json
import posixpath
from typing import Optional

from pipeline.data.readers.common import (Source, address, annotation_root, is_file, lines,
                                          require_dir, scan, walk)
from pipeline.data.readers.fields import flag, frame, number
from pipeline.data.records import SourceRecord

CULANE_IMAGE_EXTENSIONS = (".jpg", ".jpeg")   # not IMAGE_EXTENSIONS: CULane's label masks are .png
CULANE_LINES_SUFFIX = ".lines.txt"
TUSIMPLE_NO_POINT = -2


# --------------------------------------------------------------------------------------------
# TuSimple


def read_tusimple(root: str, image_root: Optional[str] = None) -> list[SourceRecord]:
    """Read TuSimple lane labels: every ``label_data*.json`` (JSON lines) in ``root`` (not below
    it), or ``root`` itself if it is one such file (e.g. ``test_label.json``).

    Each line ``{"lanes": [[x, ...]], "h_samples": [y, ...], "raw_file"}`` gives one record whose
    ``lanes`` are polylines ``[(x, y), ...]`` without the -2 (no point) samples; lanes with no
    point at all are left out. ``raw_file`` is relative to ``image_root`` (default: the label
    files' folder; TuSimple ships ``test_label.json`` apart from ``test_set/``); ``group`` is its
    parent folder (the clip). A line that is not valid JSON, lacks a key, or has a lane whose
    length differs from ``h_samples`` becomes a record ``<file>:<line>`` with reason
    ``malformed_line``; the rest of the file is still read. No label file -> FileNotFoundError.
    """
    files = _tusimple_files(root)
    src = Source(annotation_root(files[0], image_root))
    for path in files:
        annotation = src.rel(path)
        for n, text, error in lines(path):
            if error is None and not text.strip():
                continue
            obj, lanes = None, None
            if error is None:
                obj, lanes, error = _tusimple_line(text)
            if error:
                src.malformed(annotation, n, "malformed_line", error)
                continue
            res = src.resolve(obj["raw_file"])
            src.add(frame(res, res.parent, lanes=lanes), res.key)
    return src.records


def _tusimple_files(root: str) -> list[str]:
    """Addresses of the label files ``root`` names: itself if a file, else its ``label_data*.json``."""
    if is_file(root):
        return [address(root)]
    folder = require_dir(root)
    files = [posixpath.join(folder, name) for name in scan(folder)[1]
             if name.startswith("label_data") and name.endswith(".json")]
    if not files:
        raise FileNotFoundError(f"no label_data*.json in {root}")
    return files


def _tusimple_line(text: str) -> tuple[Optional[dict], Optional[list], Optional[str]]:
    """(the line's object, its lanes, None), or (None, None, what is wrong)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, None, f"invalid JSON: {exc.msg} (column {exc.colno})"
    lanes, error = _tusimple_lanes(obj)
    return obj, lanes, error


def _tusimple_lanes(obj) -> tuple[Optional[list], Optional[str]]:
    """The polylines of one label line, or (None, what is wrong)."""
    if not isinstance(obj, dict):
        return None, f"expected an object, got {type(obj).__name__}"
    for key in ("lanes", "h_samples", "raw_file"):
        if key not in obj:
            return None, f"missing key '{key}'"
    if not isinstance(obj["raw_file"], str) or not obj["raw_file"]:
        return None, "'raw_file' must be a non-empty string"
    if not isinstance(obj["h_samples"], list) or not isinstance(obj["lanes"], list):
        return None, "'lanes' and 'h_samples' must be lists"
    try:
        ys = [number(y) for y in obj["h_samples"]]
        lanes = []
        for i, lane in enumerate(obj["lanes"]):
            if not isinstance(lane, list) or len(lane) != len(ys):
                size = len(lane) if isinstance(lane, list) else type(lane).__name__
                return None, f"lane {i} has {size} points, h_samples has {len(ys)}"
            points = [(x, y) for x, y in zip(map(number, lane), ys) if x != TUSIMPLE_NO_POINT]
            if points:
                lanes.append(points)
    except ValueError as exc:
        return None, str(exc)
    return lanes, None


# --------------------------------------------------------------------------------------------
# CULane


def read_culane(root: str) -> list[SourceRecord]:
    """Read CULane: every ``*.jpg`` under root with its sibling ``<stem>.lines.txt`` (one lane per
    line, ``x y x y ...``). Only .jpg/.jpeg count as frames (CULane's ``laneseg_label_*`` masks
    are .png). An image without a lines file has ``lanes == []`` (a valid frame without lanes); a
    broken lines file (odd number of values, non-numeric) gives reason ``malformed_line:<n>: ...``
    on the image's record; a lines file without its image gives ``missing_file``. ``group`` is the
    image's parent folder relative to root.
    """
    src = Source(require_dir(root))
    for folder, files in walk(src.root):
        stems = _culane_frames(src, folder, files)
        _culane_orphans(src, folder, files, stems)
    return src.records


def _culane_frames(src: Source, folder: str, files: list[str]) -> set[str]:
    """Emit the frames of ``folder`` with their lanes; returns their stems."""
    group, names, stems = src.rel(folder), set(files), set()
    for name in files:
        stem, ext = posixpath.splitext(name)
        if ext.lower() not in CULANE_IMAGE_EXTENSIONS:
            continue
        stems.add(stem)
        path = posixpath.join(folder, name)
        record = SourceRecord(source_id=src.rel(path), path=path, group=group)
        if stem + CULANE_LINES_SUFFIX in names:
            record.lanes, reason = _culane_lanes(posixpath.join(folder, stem + CULANE_LINES_SUFFIX))
            if reason:
                flag(record, reason)
        src.add(record, path)
    return stems


def _culane_orphans(src: Source, folder: str, files: list[str], stems: set[str]) -> None:
    """Emit a ``missing_file`` record per lines file of ``folder`` without its frame."""
    group = src.rel(folder)
    for name in files:
        if name.endswith(CULANE_LINES_SUFFIX) and name[:-len(CULANE_LINES_SUFFIX)] not in stems:
            image = posixpath.join(folder, name[:-len(CULANE_LINES_SUFFIX)] + ".jpg")
            rel = src.rel(image)
            src.add(SourceRecord(source_id=rel, path=None, group=group,
                                 reason=f"missing_file:{rel}"), image)


def _culane_lanes(path: str) -> tuple[list, Optional[str]]:
    """The lanes of one ``.lines.txt``, or ([], ``malformed_line:<n>: ...``)."""
    lanes = []
    for n, text, error in lines(path):
        if error:
            return [], f"malformed_line:{n}: {error}"
        values = text.split()
        if not values:
            continue
        if len(values) % 2:
            return [], f"malformed_line:{n}: odd number of coordinates ({len(values)})"
        try:
            numbers = [number(v) for v in values]
        except ValueError as exc:
            return [], f"malformed_line:{n}: {exc}"
        lanes.append(list(zip(numbers[0::2], numbers[1::2])))
    return lanes, None
