"""Source readers: turn the files of datasets users already have into :class:`SourceRecord` lists.

Readers run on the Spark driver. They only parse annotation files and resolve image paths: they
never open or decode an image, and they list every folder they look at at most once (existence
checks are answered from cached directory listings, not one ``stat`` per file).

A source is a local path or a URL: everything is read through fsspec, so ``s3://``, ``hdfs://``,
``file://`` or ``memory://`` works like a local folder (:mod:`.common` says how paths are written).

Every input frame becomes exactly one record. A frame that cannot be used is still emitted, with
``reason`` set, so ingest can quarantine and count it. Only a file that cannot be parsed at all
(invalid YAML/JSON, missing header or top-level key) raises :class:`AnnotationError`; a dataset
root that does not exist raises ``FileNotFoundError``/``NotADirectoryError``; a URL no filesystem
opens raises :class:`SourceError`.

Reasons a reader sets (the text before the first ``:`` is the category):

``path_escapes_root:<path>``    the annotation names a path outside the dataset root after
                                normalising (``..`` or an absolute path); never opened. On a
                                local disk a path leading out through a symlink is outside too;
                                a dataset root that is itself symlinked into place works.
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
if an id would otherwise repeat. ``path`` is the image's absolute local path for a local source
(a plain path or a ``file://`` URL), its full URL (scheme and host kept) for any other, or
``None`` when the file is missing or outside the root. Records keep the order of the annotation
files (sorted names for folder walks), so the output is deterministic.

The package: :mod:`.common` (filesystems, listing, path resolution, reading annotation files),
:mod:`.fields` (numbers and boxes), then one module per family of formats: :mod:`.folders`
(ImageFolder), :mod:`.lights` (Bosch, LISA, DTLD), :mod:`.lanes` (TuSimple, CULane),
:mod:`.coco` (COCO).
"""
from __future__ import annotations

from typing import Callable, Optional

from pipeline.data.readers.coco import read_coco
from pipeline.data.readers.common import (IMAGE_EXTENSIONS, AnnotationError, Source,
                                          SourceError)
from pipeline.data.readers.folders import GROUP_SEPARATOR, SPLIT_FOLDERS, read_imagefolder
from pipeline.data.readers.lanes import read_culane, read_tusimple
from pipeline.data.readers.lights import (BOSCH_STATES, DTLD_STATES, LISA_STATES, read_bosch,
                                          read_dtld, read_lisa)
from pipeline.data.records import SourceRecord

__all__ = [
    "AnnotationError", "SourceError", "IMAGE_EXTENSIONS", "SPLIT_FOLDERS", "GROUP_SEPARATOR",
    "BOSCH_STATES", "LISA_STATES", "DTLD_STATES",
    "read_imagefolder", "read_bosch", "read_lisa", "read_dtld", "read_tusimple", "read_culane",
    "read_coco", "READERS", "IMAGE_ROOT_FORMATS", "read_source",
]

#: The resolver of one read under the name tests/data/test_readers.py::test_resolve_never_leaves_root
#: has always used (the readers' own modules use :class:`.common.Source`).
_Source = Source

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
    """Read ``path`` (a local path or a URL) with the reader for ``fmt`` (a key of READERS, any case).

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
