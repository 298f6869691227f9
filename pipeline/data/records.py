"""Canonical records: what every source reader produces and what ingest consumes.

A reader turns the files of one dataset format into :class:`SourceRecord` objects. A record that
cannot be used is still emitted, with ``reason`` set, so ingest can quarantine it and account for
every input (rows in = rows written + rows quarantined).

Boxes are in the pixel coordinates of the *source* image as stored on disk (before any EXIF
rotation); ingest applies orientation, swaps/clips and scales them together with the image.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, asdict
from typing import Optional



def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process and on every machine (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


@dataclass
class Box:
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    label: str                      # one of TL_STATES for traffic lights, else the dataset's class name
    occluded: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SourceRecord:
    source_id: str                  # unique and stable within one source (e.g. relative path + frame key)
    path: Optional[str]             # absolute path / URL of the image file; None when the image is missing
    group: str                      # sequence / clip / track / folder: the unit splits are made by
    label: Optional[str] = None     # image-level class (ImageFolder class, lane class), if any
    boxes: list = field(default_factory=list)      # list[Box]
    lanes: list = field(default_factory=list)      # list of polylines, each a list of (x, y)
    split: Optional[str] = None     # a split fixed by the source (ImageFolder train/val/test), else None
    reason: Optional[str] = None    # set => quarantine this record with this reason
    fixes: list = field(default_factory=list)      # counted repairs, e.g. "duplicate_frame", "box_swapped"
    decode: str = "auto"            # decoder hint: "auto" (by content) or "bayer_gb12" (DriveU 12-bit Bayer TIFF)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["boxes"] = [b if isinstance(b, dict) else asdict(b) for b in self.boxes]
        return d
