"""Turning an annotation's values into record fields, the same way in every format: numbers, flags,
boxes, and the first problem of a record as its quarantine reason."""
from __future__ import annotations

import math
from typing import Optional

from pipeline.data.readers.common import Resolved
from pipeline.data.records import Box, SourceRecord


def frame(res: Resolved, group: str, **fields) -> SourceRecord:
    """A record for the frame at ``res``; inherits the path problem as its reason."""
    return SourceRecord(source_id=res.rel, path=res.path, group=group, reason=res.reason, **fields)


def flag(record: SourceRecord, reason: str) -> None:
    """Set ``reason`` unless the record already has one (the first problem wins)."""
    if record.reason is None:
        record.reason = reason


def number(value) -> float:
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


def truthy(value) -> bool:
    """An occlusion flag given as a bool, a number or a word ("true", "yes", "1", "occluded")."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1", "occluded")
    return bool(value)


def is_id(value) -> bool:
    """Whether ``value`` can be a JSON id (an int or a string, not a bool)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def add_box(record: SourceRecord, corners, label, occluded=False,
            states: Optional[dict] = None) -> None:
    """Append a box given as (x0, y0, x1, y1) to ``record``.

    ``states`` maps the dataset's label to a canonical state; a label outside it flags
    ``unknown_label`` (the box keeps the raw label). Reversed corners are swapped
    (``box_swapped``), exact repeats dropped (``duplicate_box``), zero-area boxes flag
    ``box_zero_area`` and unparseable coordinates ``box_invalid``.
    """
    try:
        x0, y0, x1, y1 = (number(v) for v in corners)
    except ValueError as exc:
        flag(record, f"box_invalid:{exc}")
        return
    if states is not None:
        state = states.get(label) if isinstance(label, str) else None
        if state is None:
            flag(record, f"unknown_label:{label}")
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
        flag(record, "box_zero_area")
