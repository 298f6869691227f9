"""COCO detection JSON: images, boxes labelled by category name."""
from __future__ import annotations

import posixpath
import re
from typing import Optional

from pipeline.data.readers.common import Source, address, load_json, parent, top_list
from pipeline.data.readers.fields import add_box, flag, frame, is_id, number
from pipeline.data.records import SourceRecord

COCO_SPLIT_JSON = re.compile(r"instances_(.+)\.json")   # COCO's annotations/instances_<split>.json


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
    data = load_json(json_path)
    images = top_list(data, "images", json_path)
    annotations = top_list(data, "annotations", json_path, required=False)
    categories = top_list(data, "categories", json_path, required=False)
    names = {c["id"]: str(c["name"]) for c in categories
             if isinstance(c, dict) and is_id(c.get("id")) and "name" in c}
    src = Source(image_root) if image_root else _default_source(json_path)
    annotation = src.rel(address(json_path))
    by_id = _coco_images(src, annotation, images)
    for i, ann in enumerate(annotations):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if not isinstance(ann, dict) or not is_id(image_id) or image_id not in by_id:
            what = f"expected an object, got {type(ann).__name__}" if not isinstance(ann, dict) \
                else f"image_id {image_id!r} not in images"
            src.malformed(annotation, f"annotations[{i}]", "malformed_entry", what)
            continue
        if by_id[image_id] is not None:
            _coco_box(by_id[image_id], ann, names)
    return src.records


def _default_source(json_path: str) -> Source:
    """The roots searched without ``image_root``: the JSON's folder, then for
    ``instances_<split>.json`` the folder ``<split>`` beside the JSON's folder."""
    folder = parent(json_path)
    split = COCO_SPLIT_JSON.fullmatch(posixpath.basename(address(json_path)))
    return Source(folder, [posixpath.join(parent(folder), split.group(1))] if split else [])


def _coco_images(src: Source, annotation: str, images: list) -> dict:
    """Emit a record per image entry; returns image id -> its record, or None when that listing
    was a duplicate frame (its annotations are dropped with it)."""
    by_id: dict = {}
    for i, image in enumerate(images):
        error = _coco_image_error(image, by_id)
        if error:
            src.malformed(annotation, f"images[{i}]", "malformed_entry", error)
            continue
        res = src.resolve(image["file_name"])
        record = frame(res, res.parent if res.parent != "." else str(image["id"]))
        by_id[image["id"]] = record if src.add(record, res.key) else None
    return by_id


def _coco_box(record: SourceRecord, ann: dict, names: dict) -> None:
    """Add one annotation's ``bbox`` to ``record``, labelled with its category's name."""
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        flag(record, f"box_invalid:bbox must be [x, y, w, h], got {bbox!r}")
        return
    try:
        x, y, w, h = (number(v) for v in bbox)
    except ValueError as exc:
        flag(record, f"box_invalid:{exc}")
        return
    category = ann.get("category_id")
    label = names.get(category) if is_id(category) else None
    if label is None:
        flag(record, f"unknown_label:{category}")
        label = str(category)
    add_box(record, (x, y, x + w, y + h), label)


def _coco_image_error(image, seen: dict) -> Optional[str]:
    """What is wrong with one ``images`` entry (``seen``: the ids so far), or None."""
    if not isinstance(image, dict):
        return f"expected an object, got {type(image).__name__}"
    if not is_id(image.get("id")):
        return "missing or invalid 'id'"
    if not isinstance(image.get("file_name"), str) or not image["file_name"]:
        return "missing or empty 'file_name'"
    if image["id"] in seen:
        return f"duplicate image id {image['id']!r}"
    return None
