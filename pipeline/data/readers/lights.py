"""Traffic-light datasets: Bosch Small Traffic Lights (YAML), LISA (CSV per clip) and DriveU DTLD
(JSON), each mapping its own light labels to the canonical states."""
from __future__ import annotations

import posixpath
from typing import Optional

from pipeline.data.readers.common import (AnnotationError, Resolved, Source, address,
                                          annotation_root, is_image, lines, load_json,
                                          require_dir, top_list, walk, yaml_items)
from pipeline.data.readers.fields import add_box, flag, frame, number, truthy
from pipeline.data.records import SourceRecord
from pipeline.vocab import TL_STATES

BOSCH_STATES = {
    **dict.fromkeys(("Green", "GreenLeft", "GreenRight", "GreenStraight", "GreenStraightLeft",
                     "GreenStraightRight"), "green"),
    **dict.fromkeys(("Red", "RedLeft", "RedRight", "RedStraight", "RedStraightLeft",
                     "RedStraightRight"), "red"),
    "Yellow": "yellow",
    "off": "off",
}
LISA_STATES = {
    "go": "green", "goLeft": "green", "goForward": "green",
    "stop": "red", "stopLeft": "red",
    "warning": "yellow", "warningLeft": "yellow",
}
DTLD_STATES = {"red": "red", "yellow": "yellow", "red_yellow": "yellow", "green": "green",
               "off": "off"}
assert set(BOSCH_STATES.values()) | set(LISA_STATES.values()) | set(DTLD_STATES.values()) \
    <= set(TL_STATES)

LISA_ANNOTATION_FILE = "frameAnnotationsBOX.csv"
LISA_HEADER = ("Filename", "Annotation tag", "Upper left corner X", "Upper left corner Y",
               "Lower right corner X", "Lower right corner Y", "Origin file",
               "Origin frame number", "Origin track", "Origin track frame number")


# --------------------------------------------------------------------------------------------
# Bosch Small Traffic Lights


def read_bosch(yaml_path: str, image_root: Optional[str] = None) -> list[SourceRecord]:
    """Read a Bosch Small Traffic Lights YAML (``train.yaml``/``test.yaml``).

    Entries are ``{path, boxes: [{label, occluded, x_min, x_max, y_min, y_max}]}`` with ``path``
    relative to ``image_root`` (default: the YAML's folder, where Bosch puts it beside ``rgb/``).
    The YAML is read with YAML 1.2 booleans (:mod:`pipeline.yamltext`), so an unquoted label
    ``off`` is the label "off". Labels map to red/yellow/green/off (arrows are dropped).
    ``group`` is the path's parent folder (one drive). A broken entry becomes a record with
    reason ``malformed_line:<line of the entry>: ...``.

    Note: Bosch's published ``test.yaml`` names absolute paths on Bosch's servers; those are
    outside the root and come back as ``path_escapes_root``.
    """
    src = Source(annotation_root(yaml_path, image_root))
    annotation = src.rel(address(yaml_path))
    for line, entry, error in yaml_items(yaml_path):
        error = error or _bosch_entry_error(entry)
        if error:
            src.malformed(annotation, line, "malformed_line", error)
            continue
        res = src.resolve(entry["path"])
        record = frame(res, res.parent)
        for box in entry.get("boxes") or ():
            if not isinstance(box, dict):
                flag(record, f"box_invalid:expected a mapping, got {box!r}")
                continue
            add_box(record, (box.get("x_min"), box.get("y_min"), box.get("x_max"),
                             box.get("y_max")),
                    box.get("label"), truthy(box.get("occluded", False)), BOSCH_STATES)
        src.add(record, res.key)
    return src.records


def _bosch_entry_error(entry) -> Optional[str]:
    """What is wrong with one YAML entry, or None."""
    if not isinstance(entry, dict):
        return f"expected a mapping with 'path' and 'boxes', got {type(entry).__name__}"
    if not isinstance(entry.get("path"), str) or not entry["path"]:
        return "missing or empty 'path'"
    if not isinstance(entry.get("boxes") or [], list):
        return "'boxes' must be a list"
    return None


# --------------------------------------------------------------------------------------------
# LISA Traffic Light


def read_lisa(root: str) -> list[SourceRecord]:
    """Read the LISA Traffic Light dataset rooted at ``root`` (the folder holding
    ``Annotations/`` and the frame folders).

    Every ``frameAnnotationsBOX.csv`` under root is read (BULB files are ignored); rows of one
    Filename form one record with one box per row. Frames are found by stem in one index of all
    images under root, because the CSV's folder and extension do not match the files on disk; if
    a stem occurs several times, the one with the clip name (the CSV's parent folder name) as a
    folder in its path is taken, else reason ``ambiguous_file``. ``group`` is the Origin file
    column. A broken row becomes a record ``<csv>:<line>`` with reason ``malformed_line``; a CSV
    without the expected header raises AnnotationError. No CSV at all -> FileNotFoundError.
    """
    src = Source(require_dir(root))
    csvs, index = [], {}
    for folder, files in walk(src.root):
        for name in files:
            if name.lower() == LISA_ANNOTATION_FILE.lower():
                csvs.append(posixpath.join(folder, name))
            elif is_image(name):
                index.setdefault(posixpath.splitext(name)[0], []).append(posixpath.join(folder, name))
    if not csvs:
        raise FileNotFoundError(f"no {LISA_ANNOTATION_FILE} under {root}")
    for csv_path in csvs:
        _read_lisa_csv(src, csv_path, index)
    return src.records


def _read_lisa_csv(src: Source, csv_path: str, index: dict) -> None:
    """Emit the frames of one CSV, found in ``index`` (image stem -> addresses)."""
    annotation = src.rel(csv_path)
    clip = posixpath.basename(posixpath.dirname(csv_path))
    frames: dict[str, list] = {}     # Filename -> [(tag, corners, origin file)], in file order
    rows = lines(csv_path)
    _lisa_header(csv_path, next(rows, None))
    for n, text, error in rows:
        if error is None and not text.strip():
            continue
        fields, corners, error = _lisa_row(text) if error is None else (None, None, error)
        if error:
            src.malformed(annotation, n, "malformed_line", error)
            continue
        frames.setdefault(fields[0], []).append((fields[1], corners, fields[6]))
    for name, boxes in frames.items():
        res = _lisa_resolve(src, name, clip, index)
        record = frame(res, boxes[0][2] or clip)
        for tag, corners, _ in boxes:
            add_box(record, corners, tag, False, LISA_STATES)
        src.add(record, res.key)


def _lisa_header(csv_path: str, first) -> None:
    """AnnotationError unless the CSV's first line (from :func:`lines`) is LISA's header."""
    header = None if first is None or first[1] is None else \
        tuple(f.strip() for f in first[1].split(";"))
    if header != LISA_HEADER:
        raise AnnotationError(csv_path, 1, "expected the header " + ";".join(LISA_HEADER))


def _lisa_row(text: str) -> tuple[Optional[list], Optional[list], Optional[str]]:
    """(the row's fields, its box corners, None), or (None, None, what is wrong)."""
    fields = [f.strip() for f in text.split(";")]
    if len(fields) != len(LISA_HEADER):
        return None, None, f"expected {len(LISA_HEADER)} ';'-separated columns, got {len(fields)}"
    if not fields[0]:
        return None, None, "empty Filename"
    try:
        return fields, [number(v) for v in fields[2:6]], None
    except ValueError as exc:
        return None, None, f"bad coordinate: {exc}"


def _lisa_resolve(src: Source, name: str, clip: str, index: dict) -> Resolved:
    """The image a CSV's Filename means: by stem, preferring one under a folder named ``clip``."""
    norm = posixpath.normpath(name.replace("\\", "/"))
    if posixpath.isabs(norm) or norm == ".." or norm.startswith("../"):
        return Resolved("unresolved:" + norm, name, None, f"path_escapes_root:{name}")
    found = index.get(posixpath.splitext(posixpath.basename(norm))[0], [])
    candidates = found
    if len(found) > 1:
        candidates = [p for p in found if clip in src.rel(p).split("/")[:-1]]
    if len(candidates) == 1:
        return Resolved(candidates[0], src.rel(candidates[0]), candidates[0], None)
    reason = f"ambiguous_file:{name}" if found else f"missing_file:{name}"
    return Resolved("unresolved:" + norm, norm, None, reason)


# --------------------------------------------------------------------------------------------
# DriveU Traffic Light Dataset


def read_dtld(json_path: str, image_root: Optional[str] = None) -> list[SourceRecord]:
    """Read a DriveU (DTLD) label JSON ``{"images": [{"image_path", "labels": [...]}]}``.

    ``image_path`` is absolute or relative to ``image_root`` (default: the JSON's folder), the
    dataset root; absolute paths outside it are ``path_escapes_root`` (DTLD's published JSONs
    carry the authors' absolute paths: rewrite them relative first). Each label's ``x, y, w, h``
    becomes a box; ``attributes.state`` red/yellow/red_yellow(->yellow)/green/off;
    ``attributes.occlusion`` of "occluded" (or true) marks the box occluded. Every record has
    ``decode="bayer_gb12"``. ``group`` is the first label's ``track_id``, or the image's parent
    folder without labels.
    """
    images = top_list(load_json(json_path), "images", json_path)
    src = Source(annotation_root(json_path, image_root))
    annotation = src.rel(address(json_path))
    for i, entry in enumerate(images):
        error = _dtld_entry_error(entry)
        if error:
            src.malformed(annotation, f"images[{i}]", "malformed_entry", error)
            continue
        res = src.resolve(entry["image_path"])
        labels = entry.get("labels") or []
        first = labels[0] if labels else None
        track = first.get("track_id") if isinstance(first, dict) else None
        record = frame(res, str(track) if track is not None else res.parent, decode="bayer_gb12")
        for label in labels:
            _dtld_box(record, label)
        src.add(record, res.key)
    return src.records


def _dtld_box(record: SourceRecord, label) -> None:
    """Add one DTLD label (``x, y, w, h`` and ``attributes``) to ``record`` as a box."""
    if not isinstance(label, dict):
        flag(record, f"box_invalid:expected an object, got {label!r}")
        return
    attrs = label.get("attributes")
    attrs = attrs if isinstance(attrs, dict) else {}
    try:
        x, y, w, h = (number(label.get(k)) for k in ("x", "y", "w", "h"))
    except ValueError as exc:
        flag(record, f"box_invalid:{exc}")
        return
    add_box(record, (x, y, x + w, y + h), attrs.get("state"),
            truthy(attrs.get("occlusion", False)), DTLD_STATES)


def _dtld_entry_error(entry) -> Optional[str]:
    """What is wrong with one ``images`` entry, or None."""
    if not isinstance(entry, dict):
        return f"expected an object, got {type(entry).__name__}"
    if not isinstance(entry.get("image_path"), str) or not entry["image_path"]:
        return "missing or empty 'image_path'"
    if not isinstance(entry.get("labels") or [], list):
        return "'labels' must be a list"
    return None
