"""Source readers: turn the files of datasets users already have into :class:`SourceRecord` lists.

Readers run on the Spark driver. They only parse annotation files and resolve image paths: they
never open or decode an image, and they list every folder they look at at most once (existence
checks are answered from cached directory listings, not one ``stat`` per file).

Every input frame becomes exactly one record. A frame that cannot be used is still emitted, with
``reason`` set, so ingest can quarantine and count it. Only a file that cannot be parsed at all
(invalid YAML/JSON, missing header or top-level key) raises :class:`AnnotationError`; a dataset
root that does not exist raises ``FileNotFoundError``/``NotADirectoryError``.

Reasons a reader sets (the text before the first ``:`` is the category):

``path_escapes_root:<path>``    the annotation names a path outside the dataset root after
                                ``os.path.normpath`` (``..`` or an absolute path); never opened.
                                Symlinks are not resolved, so a dataset symlinked into place works.
``missing_file:<path>``         the named image does not exist (``path`` is ``None``); readers of
                                an annotation file add `` (looked in <folder>[, ...]; set
                                ingest.image_root ...)`` naming the image root(s) searched.
``ambiguous_file:<name>``       LISA: several images share the frame's stem, none preferred.
``unknown_label:<label>``       a box label (or COCO category id) outside the format's list.
``box_zero_area``               a box has zero (or, after swapping, negative) width or height.
``box_invalid:<what>``          a box with missing or non-numeric (or non-finite) coordinates.
``malformed_line:<n>: <what>``  a line of a line-based file (LISA CSV, TuSimple JSON lines, Bosch
                                YAML entry starting on line n, CULane ``.lines.txt``) is broken.
``malformed_entry:<where>: <what>``  a JSON entry is broken, ``<where>`` like ``images[3]``
                                (DTLD, COCO; JSON gives no per-entry line numbers).
``no_class_folder``             ImageFolder: an image lying outside any class folder.

A record's ``reason`` is its *first* problem; later problems of the same record are not recorded.

Fixes (counted repairs, appended to ``SourceRecord.fixes`` once per occurrence):

``duplicate_frame``  the same image listed again (same normalised path): the first listing is
                     kept as it is, later listings are dropped, one fix per dropped listing.
``box_swapped``      a box with x_min > x_max and/or y_min > y_max got its corners swapped (also
                     a box given as x, y, w, h with negative w or h).
``duplicate_box``    an exact repeat of a box already on the record was dropped.

Readers of an annotation file that may lie apart from its images (Bosch, DTLD, TuSimple, COCO:
:data:`IMAGE_ROOT_FORMATS`) take ``image_root``, the folder the annotation's image paths are
relative to (config ``ingest.image_root``); it is then the dataset root. By default it is the
annotation file's folder; COCO also tries the published layout's ``<root>/<split>`` beside
``<root>/annotations/instances_<split>.json``.

``source_id`` is the image path relative to the dataset root (posix separators), the raw
annotation text for paths that escape it, or ``<annotation file>:<line>`` /
``<annotation file>:<where>`` for malformed lines and entries; a ``#<n>`` suffix is added only
if an id would otherwise repeat. ``path`` is an absolute local path, or ``None`` when the file is
missing or outside the root. Records keep the order of the annotation files (sorted names for
folder walks), so the output is deterministic.
"""
from __future__ import annotations

import codecs
import json
import math
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import yaml

from pipeline import yamltext
from pipeline.data.records import TL_STATES, Box, SourceRecord
from pipeline.errors import UserError

__all__ = [
    "AnnotationError", "IMAGE_EXTENSIONS", "SPLIT_FOLDERS", "GROUP_SEPARATOR",
    "read_imagefolder", "read_bosch", "read_lisa", "read_dtld", "read_tusimple", "read_culane",
    "read_coco", "READERS", "IMAGE_ROOT_FORMATS", "read_source",
]

#: Image file extensions recognised by folder walks (compared case-insensitively).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
#: ImageFolder top-level folder names that fix a record's split (compared case-insensitively).
SPLIT_FOLDERS = ("train", "val", "test")
#: ImageFolder: a file named ``<group>__<rest>`` belongs to group ``<group>``.
GROUP_SEPARATOR = "__"

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
CULANE_IMAGE_EXTENSIONS = (".jpg", ".jpeg")   # not IMAGE_EXTENSIONS: CULane's label masks are .png
CULANE_LINES_SUFFIX = ".lines.txt"
TUSIMPLE_NO_POINT = -2
COCO_SPLIT_JSON = re.compile(r"instances_(.+)\.json")   # COCO's annotations/instances_<split>.json


class SourceError(UserError, ValueError):
    """A source that cannot be read as configured (unknown format, a key that does not apply to it)."""


class AnnotationError(UserError, ValueError):
    """A whole annotation file cannot be parsed.

    The message reads ``<file>: line <n>: <what>`` (``n`` 1-based); the parts are also available
    as the attributes ``path``, ``line`` and ``what``.
    """

    def __init__(self, path: str, line: int, what: str):
        self.path, self.line, self.what = str(path), int(line), what
        super().__init__(f"{self.path}: line {self.line}: {what}")


# --------------------------------------------------------------------------------------------
# Shared helpers


@dataclass(frozen=True)
class _Resolved:
    """An annotation's image path, checked against the dataset root."""
    key: str                 # identity of the frame, for duplicate detection
    rel: str                 # root-relative posix path (raw text when outside root): the source_id
    path: Optional[str]      # absolute path when the file exists inside the root, else None
    reason: Optional[str]    # path_escapes_root / missing_file / ambiguous_file, else None

    @property
    def parent(self) -> str:
        """The folder part of ``rel`` (``"."`` for a file directly in the root)."""
        return posixpath.dirname(self.rel) or "."


class _Source:
    """State of one read: the dataset root (and further image roots to try), cached directory
    listings, and the records emitted so far (the first listing of a frame wins; source ids are
    kept unique)."""

    def __init__(self, root: str, also: Sequence[str] = ()):
        self.root = os.path.abspath(root)
        self.roots = [self.root]
        for other in map(os.path.abspath, also):
            if other not in self.roots:
                self.roots.append(other)
        self._listings: dict[str, frozenset] = {}
        self._records: list[SourceRecord] = []
        self._by_key: dict[str, SourceRecord] = {}
        self._ids: set[str] = set()

    def rel(self, path: str) -> str:
        """``path`` relative to the root with ``/`` separators; the base name if outside it."""
        path = os.path.abspath(path)
        if not _inside(path, self.root):
            return os.path.basename(path)
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def files_in(self, folder: str) -> frozenset:
        """Names of the regular files in ``folder`` (empty if unreadable), listed once."""
        names = self._listings.get(folder)
        if names is None:
            try:
                with os.scandir(folder) as entries:
                    names = frozenset(e.name for e in entries if _is_file(e))
            except (OSError, ValueError):
                names = frozenset()
            self._listings[folder] = names
        return names

    def resolve(self, raw: str) -> _Resolved:
        """Resolve an annotation's path (absolute, or relative to the root) without opening it.
        With further roots, the first root that has the file wins; if none has it, the result
        for the root itself, a missing file's reason naming every root searched."""
        first = None
        for root in self.roots:
            candidate = os.path.normpath(raw if os.path.isabs(raw) else os.path.join(root, raw))
            # the text must stay inside the root, and so must where it leads (a symlink may lead out)
            if not _inside(candidate, root) or not _inside(os.path.realpath(candidate), os.path.realpath(root)):
                res = _Resolved(candidate, raw, None, f"path_escapes_root:{raw}")
            else:
                rel = os.path.relpath(candidate, root).replace(os.sep, "/")
                folder, name = os.path.split(candidate)
                if name in self.files_in(folder):
                    return _Resolved(candidate, rel, candidate, None)
                res = _Resolved(candidate, rel, None,
                                f"missing_file:{raw} (looked in {', '.join(self.roots)}; set "
                                f"ingest.image_root to the folder image paths are relative to)")
            first = first or res
        return first

    def add(self, record: SourceRecord, key: Optional[str] = None) -> bool:
        """Emit ``record``; if ``key`` was emitted before, drop it instead, count
        ``duplicate_frame`` on the first record and return False."""
        if key is not None:
            first = self._by_key.get(key)
            if first is not None:
                first.fixes.append("duplicate_frame")
                return False
            self._by_key[key] = record
        source_id, n = record.source_id, 1
        while source_id in self._ids:
            n += 1
            source_id = f"{record.source_id}#{n}"
        record.source_id = source_id
        self._ids.add(source_id)
        self._records.append(record)
        return True

    def malformed(self, annotation: str, where, reason: str, what: str) -> None:
        """Emit a quarantined record for a broken line/entry of the file ``annotation`` (relative)."""
        self.add(SourceRecord(source_id=f"{annotation}:{where}", path=None, group=annotation,
                              reason=f"{reason}:{where}: {what}"))

    @property
    def records(self) -> list[SourceRecord]:
        return self._records


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _frame(res: _Resolved, group: str, **fields) -> SourceRecord:
    """A record for the frame at ``res``; inherits the path problem as its reason."""
    return SourceRecord(source_id=res.rel, path=res.path, group=group, reason=res.reason, **fields)


def _flag(record: SourceRecord, reason: str) -> None:
    """Set ``reason`` unless the record already has one (the first problem wins)."""
    if record.reason is None:
        record.reason = reason


def _number(value) -> float:
    """A finite float from a number or numeric string; ValueError naming the value otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {value!r}") from None
    if not math.isfinite(result):
        raise ValueError(f"not a finite number: {value!r}")
    return result


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1", "occluded")
    return bool(value)


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _add_box(record: SourceRecord, corners, label, occluded=False,
             states: Optional[dict] = None) -> None:
    """Append a box given as (x0, y0, x1, y1) to ``record``.

    ``states`` maps the dataset's label to a canonical state; a label outside it flags
    ``unknown_label`` (the box keeps the raw label). Reversed corners are swapped
    (``box_swapped``), exact repeats dropped (``duplicate_box``), zero-area boxes flag
    ``box_zero_area`` and unparseable coordinates ``box_invalid``.
    """
    try:
        x0, y0, x1, y1 = (_number(v) for v in corners)
    except ValueError as exc:
        _flag(record, f"box_invalid:{exc}")
        return
    if states is not None:
        state = states.get(label) if isinstance(label, str) else None
        if state is None:
            _flag(record, f"unknown_label:{label}")
        else:
            label = state
    if x0 > x1 or y0 > y1:
        x0, x1 = min(x0, x1), max(x0, x1)
        y0, y1 = min(y0, y1), max(y0, y1)
        record.fixes.append("box_swapped")
    box = Box(x0, y0, x1, y1, str(label), bool(occluded))
    if box in record.boxes:
        record.fixes.append("duplicate_box")
        return
    record.boxes.append(box)
    if x1 <= x0 or y1 <= y0:
        _flag(record, "box_zero_area")


def _image_root(annotation_path: str, image_root: Optional[str]) -> str:
    """The folder an annotation file's image paths are relative to: ``image_root`` if given,
    else the annotation file's folder."""
    return image_root or os.path.dirname(os.path.abspath(annotation_path))


def _require_dir(root: str) -> str:
    if not os.path.exists(root):
        raise FileNotFoundError(f"dataset root does not exist: {root}")
    if not os.path.isdir(root):
        raise NotADirectoryError(f"dataset root is not a folder: {root}")
    return os.path.abspath(root)


def _scan(folder: str) -> tuple[list[str], list[str]]:
    """One listing of ``folder``: sorted (sub-folder names, file names); hidden names skipped."""
    dirs, files = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    dirs.append(entry.name)
                elif entry.is_file():
                    files.append(entry.name)
            except OSError:
                continue
    dirs.sort()
    files.sort()
    return dirs, files


def _walk(top: str, listing: Optional[tuple[list[str], list[str]]] = None
          ) -> Iterator[tuple[str, list[str]]]:
    """Yield (folder, file names) for ``top`` and every folder below it, in name order, listing
    each folder once (``listing`` is ``top``'s if already scanned). Symlinked folders are followed,
    each real folder visited once."""
    seen = set()
    stack = [(top, listing)]
    while stack:
        folder, listing = stack.pop()
        try:
            st = os.stat(folder)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs, files = listing if listing is not None else _scan(folder)
        yield folder, files
        stack.extend((os.path.join(folder, d), None) for d in reversed(dirs))


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _read_text(path: str) -> str:
    """A whole UTF-8 file (BOM allowed); AnnotationError with the line of a bad byte."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise AnnotationError(path, line, f"not UTF-8 text ({exc.reason})") from None


def _lines(path: str) -> Iterator[tuple[int, Optional[str], Optional[str]]]:
    """Yield (1-based line number, text without the line end, None) per line, or
    (n, None, error) for a line that is not UTF-8, so one bad line does not stop the file."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if n == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield n, raw.decode("utf-8").rstrip("\r\n"), None
            except UnicodeDecodeError as exc:
                yield n, None, f"not UTF-8 text ({exc.reason})"


def _load_json(path: str):
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})") \
            from None


def _top_list(data, key: str, path: str, required: bool = True) -> list:
    """``data[key]`` of a JSON annotation file, which must be a list."""
    if not isinstance(data, dict):
        raise AnnotationError(path, 1, "expected a JSON object at the top level")
    if key not in data:
        if required:
            raise AnnotationError(path, 1, f"missing top-level key '{key}'")
        return []
    if not isinstance(data[key], list):
        raise AnnotationError(path, 1, f"top-level key '{key}' must be a list")
    return data[key]


#: YAML 1.2 booleans: a Bosch label ``off`` stays the string "off" (YAML 1.1 reads it as False).
_YamlLoader = yamltext.Loader


def _yaml_items(path: str) -> Iterator[tuple[int, object, Optional[str]]]:
    """Yield (first line, value, None) for each item of a YAML file holding one list, or
    (line, None, error) for an item that cannot be constructed. Whole-file problems raise
    AnnotationError with the line YAML reports."""
    loader = _YamlLoader(_read_text(path))
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            what = getattr(exc, "problem", None) or str(exc)
            raise AnnotationError(path, mark.line + 1 if mark else 1, f"invalid YAML: {what}") \
                from None
        if node is None:
            raise AnnotationError(path, 1, "empty file, expected a list of frames")
        if not isinstance(node, yaml.SequenceNode):
            raise AnnotationError(path, node.start_mark.line + 1, "expected a list of frames")
        for child in node.value:
            line = child.start_mark.line + 1
            try:
                value = loader.construct_document(child)
            except yaml.YAMLError as exc:
                yield line, None, f"invalid YAML: {getattr(exc, 'problem', None) or exc}"
                continue
            yield line, value, None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------------------------
# ImageFolder


def read_imagefolder(root: str) -> list[SourceRecord]:
    """Read ``root/<class>/<image>`` or ``root/{train,val,test}/<class>/<image>``.

    ``label`` is the class folder name; images in sub-folders of a class folder belong to that
    class. A top-level folder named train/val/test (any case) that has sub-folders is a split
    folder and sets ``split`` (lower case); other top-level folders are classes with ``split``
    None. ``group`` is the image's root-relative path (each image its own group), unless the file
    name is ``<group>__<rest>`` (non-empty ``<group>``): then the group is ``<group>``, shared by
    all files with that prefix across class and split folders (e.g. frames of one drive).
    Files with another extension and hidden files/folders (name starting with ".") are ignored;
    an image outside any class folder gets reason ``no_class_folder``.
    """
    src = _Source(_require_dir(root))
    dirs, files = _scan(src.root)
    _imagefolder_loose(src, src.root, files, split=None)
    for name in dirs:
        folder = os.path.join(src.root, name)
        sub_dirs, sub_files = _scan(folder)
        if name.lower() in SPLIT_FOLDERS and sub_dirs:
            split = name.lower()
            _imagefolder_loose(src, folder, sub_files, split)
            for cls in sub_dirs:
                _imagefolder_class(src, os.path.join(folder, cls), cls, split)
        else:
            _imagefolder_class(src, folder, name, None, (sub_dirs, sub_files))
    return src.records


def _imagefolder_group(name: str, rel: str) -> str:
    prefix, sep, rest = os.path.splitext(name)[0].partition(GROUP_SEPARATOR)
    return prefix if sep and prefix and rest else rel


def _imagefolder_loose(src: _Source, folder: str, files: list[str], split: Optional[str]) -> None:
    for name in files:
        if _is_image(name):
            path = os.path.join(folder, name)
            rel = src.rel(path)
            src.add(SourceRecord(source_id=rel, path=path, group=_imagefolder_group(name, rel),
                                 split=split, reason="no_class_folder"), path)


def _imagefolder_class(src: _Source, class_dir: str, label: str, split: Optional[str],
                       listing=None) -> None:
    for folder, files in _walk(class_dir, listing):
        for name in files:
            if _is_image(name):
                path = os.path.join(folder, name)
                rel = src.rel(path)
                src.add(SourceRecord(source_id=rel, path=path,
                                     group=_imagefolder_group(name, rel),
                                     label=label, split=split), path)


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
    src = _Source(_image_root(yaml_path, image_root))
    annotation = src.rel(yaml_path)
    for line, entry, error in _yaml_items(yaml_path):
        error = error or _bosch_entry_error(entry)
        if error:
            src.malformed(annotation, line, "malformed_line", error)
            continue
        res = src.resolve(entry["path"])
        record = _frame(res, res.parent)
        for box in entry.get("boxes") or ():
            if not isinstance(box, dict):
                _flag(record, f"box_invalid:expected a mapping, got {box!r}")
                continue
            _add_box(record, (box.get("x_min"), box.get("y_min"), box.get("x_max"),
                              box.get("y_max")),
                     box.get("label"), _truthy(box.get("occluded", False)), BOSCH_STATES)
        src.add(record, res.key)
    return src.records


def _bosch_entry_error(entry) -> Optional[str]:
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
    src = _Source(_require_dir(root))
    csvs, index = [], {}
    for folder, files in _walk(src.root):
        for name in files:
            if name.lower() == LISA_ANNOTATION_FILE.lower():
                csvs.append(os.path.join(folder, name))
            elif _is_image(name):
                index.setdefault(os.path.splitext(name)[0], []).append(os.path.join(folder, name))
    if not csvs:
        raise FileNotFoundError(f"no {LISA_ANNOTATION_FILE} under {root}")
    for csv_path in csvs:
        _read_lisa_csv(src, csv_path, index)
    return src.records


def _read_lisa_csv(src: _Source, csv_path: str, index: dict) -> None:
    annotation = src.rel(csv_path)
    clip = os.path.basename(os.path.dirname(csv_path))
    frames: dict[str, list] = {}     # Filename -> [(tag, corners, origin file)], in file order
    lines = _lines(csv_path)
    first = next(lines, None)
    header = None if first is None or first[1] is None else \
        tuple(f.strip() for f in first[1].split(";"))
    if header != LISA_HEADER:
        raise AnnotationError(csv_path, 1, "expected the header " + ";".join(LISA_HEADER))
    for n, text, error in lines:
        if error is None and not text.strip():
            continue
        if error is None:
            fields = [f.strip() for f in text.split(";")]
            if len(fields) != len(LISA_HEADER):
                error = f"expected {len(LISA_HEADER)} ';'-separated columns, got {len(fields)}"
            elif not fields[0]:
                error = "empty Filename"
        if error is None:
            try:
                corners = [_number(v) for v in fields[2:6]]
            except ValueError as exc:
                error = f"bad coordinate: {exc}"
        if error:
            src.malformed(annotation, n, "malformed_line", error)
            continue
        frames.setdefault(fields[0], []).append((fields[1], corners, fields[6]))
    for name, rows in frames.items():
        res = _lisa_resolve(src, name, clip, index)
        record = _frame(res, rows[0][2] or clip)
        for tag, corners, _ in rows:
            _add_box(record, corners, tag, False, LISA_STATES)
        src.add(record, res.key)


def _lisa_resolve(src: _Source, name: str, clip: str, index: dict) -> _Resolved:
    norm = posixpath.normpath(name.replace("\\", "/"))
    if posixpath.isabs(norm) or norm == ".." or norm.startswith("../"):
        return _Resolved("unresolved:" + norm, name, None, f"path_escapes_root:{name}")
    found = index.get(posixpath.splitext(posixpath.basename(norm))[0], [])
    candidates = found
    if len(found) > 1:
        candidates = [p for p in found if clip in src.rel(p).split("/")[:-1]]
    if len(candidates) == 1:
        return _Resolved(candidates[0], src.rel(candidates[0]), candidates[0], None)
    reason = f"ambiguous_file:{name}" if found else f"missing_file:{name}"
    return _Resolved("unresolved:" + norm, norm, None, reason)


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
    data = _load_json(json_path)
    images = _top_list(data, "images", json_path)
    src = _Source(_image_root(json_path, image_root))
    annotation = src.rel(json_path)
    for i, entry in enumerate(images):
        where = f"images[{i}]"
        error = _dtld_entry_error(entry)
        if error:
            src.malformed(annotation, where, "malformed_entry", error)
            continue
        res = src.resolve(entry["image_path"])
        labels = entry.get("labels") or []
        first = labels[0] if labels else None
        track = first.get("track_id") if isinstance(first, dict) else None
        record = _frame(res, str(track) if track is not None else res.parent,
                        decode="bayer_gb12")
        for label in labels:
            if not isinstance(label, dict):
                _flag(record, f"box_invalid:expected an object, got {label!r}")
                continue
            attrs = label.get("attributes")
            attrs = attrs if isinstance(attrs, dict) else {}
            try:
                x, y, w, h = (_number(label.get(k)) for k in ("x", "y", "w", "h"))
            except ValueError as exc:
                _flag(record, f"box_invalid:{exc}")
                continue
            _add_box(record, (x, y, x + w, y + h), attrs.get("state"),
                     _truthy(attrs.get("occlusion", False)), DTLD_STATES)
        src.add(record, res.key)
    return src.records


def _dtld_entry_error(entry) -> Optional[str]:
    if not isinstance(entry, dict):
        return f"expected an object, got {type(entry).__name__}"
    if not isinstance(entry.get("image_path"), str) or not entry["image_path"]:
        return "missing or empty 'image_path'"
    if not isinstance(entry.get("labels") or [], list):
        return "'labels' must be a list"
    return None


# --------------------------------------------------------------------------------------------
# TuSimple lanes


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
    if os.path.isfile(root):
        files = [os.path.abspath(root)]
    else:
        folder = _require_dir(root)
        files = [os.path.join(folder, name) for name in _scan(folder)[1]
                 if name.startswith("label_data") and name.endswith(".json")]
        if not files:
            raise FileNotFoundError(f"no label_data*.json in {root}")
    src = _Source(_image_root(files[0], image_root))
    for path in files:
        annotation = src.rel(path)
        for n, text, error in _lines(path):
            if error is None and not text.strip():
                continue
            lanes = None
            if error is None:
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    error = f"invalid JSON: {exc.msg} (column {exc.colno})"
                else:
                    lanes, error = _tusimple_lanes(obj)
            if error:
                src.malformed(annotation, n, "malformed_line", error)
                continue
            res = src.resolve(obj["raw_file"])
            src.add(_frame(res, res.parent, lanes=lanes), res.key)
    return src.records


def _tusimple_lanes(obj) -> tuple[Optional[list], Optional[str]]:
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
        ys = [_number(y) for y in obj["h_samples"]]
        lanes = []
        for i, lane in enumerate(obj["lanes"]):
            if not isinstance(lane, list) or len(lane) != len(ys):
                size = len(lane) if isinstance(lane, list) else type(lane).__name__
                return None, f"lane {i} has {size} points, h_samples has {len(ys)}"
            points = [(x, y) for x, y in zip(map(_number, lane), ys) if x != TUSIMPLE_NO_POINT]
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
    src = _Source(_require_dir(root))
    for folder, files in _walk(src.root):
        group = src.rel(folder)
        names = set(files)
        stems = set()
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext.lower() not in CULANE_IMAGE_EXTENSIONS:
                continue
            stems.add(stem)
            path = os.path.join(folder, name)
            record = SourceRecord(source_id=src.rel(path), path=path, group=group)
            if stem + CULANE_LINES_SUFFIX in names:
                record.lanes, reason = _culane_lanes(os.path.join(folder, stem + CULANE_LINES_SUFFIX))
                if reason:
                    _flag(record, reason)
            src.add(record, path)
        for name in files:
            if name.endswith(CULANE_LINES_SUFFIX) and \
                    name[:-len(CULANE_LINES_SUFFIX)] not in stems:
                image = os.path.join(folder, name[:-len(CULANE_LINES_SUFFIX)] + ".jpg")
                rel = src.rel(image)
                src.add(SourceRecord(source_id=rel, path=None, group=group,
                                     reason=f"missing_file:{rel}"), image)
    return src.records


def _culane_lanes(path: str) -> tuple[list, Optional[str]]:
    lanes = []
    for n, text, error in _lines(path):
        if error:
            return [], f"malformed_line:{n}: {error}"
        values = text.split()
        if not values:
            continue
        if len(values) % 2:
            return [], f"malformed_line:{n}: odd number of coordinates ({len(values)})"
        try:
            numbers = [_number(v) for v in values]
        except ValueError as exc:
            return [], f"malformed_line:{n}: {exc}"
        lanes.append(list(zip(numbers[0::2], numbers[1::2])))
    return lanes, None


# --------------------------------------------------------------------------------------------
# COCO


def read_coco(json_path: str, image_root: Optional[str] = None) -> list[SourceRecord]:
    """Read a COCO detection JSON: ``images`` (id, file_name, ...), ``annotations`` (image_id,
    bbox [x, y, w, h], category_id) and ``categories`` (id, name).

    ``file_name`` is relative to ``image_root``. Without one, the JSON's folder is tried first,
    then, for a JSON named ``instances_<split>.json``, the folder ``<split>`` beside the JSON's
    folder (COCO's published layout: ``<root>/annotations/instances_val2017.json`` and
    ``<root>/val2017/<file_name>``); an image in neither is ``missing_file`` naming both. Boxes
    are labelled with the category name (a category id without a name -> ``unknown_label:<id>``).
    ``group`` is the parent folder of ``file_name``, or the image id for a flat layout. A broken
    image entry, a repeated image id, or an annotation whose image_id names no image becomes a
    record ``<json>:images[i]`` / ``<json>:annotations[i]`` with reason ``malformed_entry``.
    Annotations of an image listing dropped as a duplicate frame are dropped with it.
    """
    data = _load_json(json_path)
    images = _top_list(data, "images", json_path)
    annotations = _top_list(data, "annotations", json_path, required=False)
    categories = _top_list(data, "categories", json_path, required=False)
    names = {c["id"]: str(c["name"]) for c in categories
             if isinstance(c, dict) and _is_id(c.get("id")) and "name" in c}
    if image_root:
        src = _Source(image_root)
    else:
        folder = os.path.dirname(os.path.abspath(json_path))
        split = COCO_SPLIT_JSON.fullmatch(os.path.basename(json_path))
        sibling = os.path.join(os.path.dirname(folder), split.group(1)) if split else None
        src = _Source(folder, [sibling] if sibling else [])
    annotation = src.rel(json_path)
    by_id: dict = {}     # image id -> its record, or None when that listing was a duplicate
    for i, image in enumerate(images):
        error = _coco_image_error(image, by_id)
        if error:
            src.malformed(annotation, f"images[{i}]", "malformed_entry", error)
            continue
        res = src.resolve(image["file_name"])
        record = _frame(res, res.parent if res.parent != "." else str(image["id"]))
        by_id[image["id"]] = record if src.add(record, res.key) else None
    for i, ann in enumerate(annotations):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if not isinstance(ann, dict) or not _is_id(image_id) or image_id not in by_id:
            what = f"expected an object, got {type(ann).__name__}" if not isinstance(ann, dict) \
                else f"image_id {image_id!r} not in images"
            src.malformed(annotation, f"annotations[{i}]", "malformed_entry", what)
            continue
        record = by_id[image_id]
        if record is None:
            continue
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            _flag(record, f"box_invalid:bbox must be [x, y, w, h], got {bbox!r}")
            continue
        try:
            x, y, w, h = (_number(v) for v in bbox)
        except ValueError as exc:
            _flag(record, f"box_invalid:{exc}")
            continue
        category = ann.get("category_id")
        label = names.get(category) if _is_id(category) else None
        if label is None:
            _flag(record, f"unknown_label:{category}")
            label = str(category)
        _add_box(record, (x, y, x + w, y + h), label)
    return src.records


def _coco_image_error(image, seen: dict) -> Optional[str]:
    if not isinstance(image, dict):
        return f"expected an object, got {type(image).__name__}"
    if not _is_id(image.get("id")):
        return "missing or invalid 'id'"
    if not isinstance(image.get("file_name"), str) or not image["file_name"]:
        return "missing or empty 'file_name'"
    if image["id"] in seen:
        return f"duplicate image id {image['id']!r}"
    return None


# --------------------------------------------------------------------------------------------
# Dispatch

#: Format name -> reader taking the path the format expects (a folder or an annotation file).
READERS: dict[str, Callable[[str], list[SourceRecord]]] = {
    "imagefolder": read_imagefolder,
    "bosch": read_bosch,
    "lisa": read_lisa,
    "dtld": read_dtld,
    "tusimple": read_tusimple,
    "culane": read_culane,
    "coco": read_coco,
}


#: Formats whose reader takes ``image_root`` (their annotation file may lie apart from the images).
IMAGE_ROOT_FORMATS = ("bosch", "dtld", "tusimple", "coco")


def read_source(fmt: str, path: str, image_root: Optional[str] = None) -> list[SourceRecord]:
    """Read ``path`` with the reader for ``fmt`` (a key of READERS, any case).

    ``image_root`` (config ``ingest.image_root``) is the folder the annotation's image paths are
    relative to, for the formats in IMAGE_ROOT_FORMATS; None (or "") keeps the reader's default.
    Giving one for another format raises ValueError: those find their images under ``path``.
    """
    name = fmt.strip().lower() if isinstance(fmt, str) else None
    reader = READERS.get(name)
    if reader is None:
        raise SourceError(f"unknown source format {fmt!r}; valid formats: {', '.join(READERS)}")
    if not image_root:
        return reader(path)
    if name not in IMAGE_ROOT_FORMATS:
        raise SourceError(f"ingest.image_root applies to the formats {', '.join(IMAGE_ROOT_FORMATS)}"
                         f" only; {name} finds its images under ingest.source_path")
    return reader(path, image_root=image_root)
