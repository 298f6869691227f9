"""Robust image decoding, validation and box geometry for the ingest job (runs inside Spark tasks).

Decoding is by content (magic bytes), never by file extension:

* PNG and JPEG are decoded with OpenCV (``cv2.imdecode``), which is the fast path. Width and height
  are read from the PNG IHDR / JPEG SOF header first, so oversized images are refused before any
  pixel is decoded, and truncation is detected from the stream structure (PNG: an ``IEND`` chunk;
  JPEG: an ``EOI`` marker after the first scan), because OpenCV silently grey-fills truncated JPEGs.
* CMYK/YCCK JPEGs and every other format Pillow knows (TIFF, BMP, GIF, WebP, ...) go through Pillow.
* ``hint="bayer_gb12"``: a single-channel 16-bit TIFF holding 12-bit raw sensor data with a GBRG
  Bayer pattern (first row G B G B ..., second row R G R G ...), as in DriveU (DTLD).

EXIF orientation is never applied by the decoder library: OpenCV is called with
``IMREAD_UNCHANGED`` (which ignores orientation) or with ``IMREAD_IGNORE_ORIENTATION``; the tag is
read here and applied by :func:`_orient`, and :func:`transform_boxes` applies exactly the same
mapping to boxes.

Conversions of odd but valid input (recorded in :attr:`Decoded.notes`):

* ``grayscale``: 1-channel (and gray+alpha) input is replicated to RGB.
* ``rgba_alpha_dropped``: an alpha channel or transparency (tRNS) was discarded. The colour channels
  are kept as stored; nothing is composited onto a background.
* ``palette``: a palette PNG was expanded to RGB.
* ``cmyk``: a CMYK/YCCK JPEG was converted to RGB by Pillow.
* ``16bit_scaled``: 16-bit samples were reduced to 8 bits by keeping the high byte (``value >> 8``,
  the same as libpng's strip-16), which inverts the 8->16 bit expansion ``v * 257`` exactly.
* ``exif_rotated``: an EXIF orientation other than 1 was applied (this includes mirror-only tags).
* ``bayer_demosaiced`` and ``12bit_scaled``: Bayer data demosaiced, then 12 -> 8 bits by ``>> 4``.

Box coordinates are continuous pixel coordinates: the image covers ``[0, width] x [0, height]`` and
pixel ``(col, row)`` is the unit square starting at ``(col, row)``.

Threads: this module never calls ``cv2.setNumThreads``. OpenCV's own thread pool competes with
Spark's one-task-per-core scheduling, so the caller should call ``cv2.setNumThreads(1)`` at the
start of each Spark task (e.g. at the top of the ``mapPartitions`` function), not at import time.
"""
from __future__ import annotations

import io
import math
import struct
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace
from typing import Optional

import cv2
import numpy as np
from PIL import Image

from pipeline.data.records import Box

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"          # chunk type + its fixed CRC
_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
# SOFn markers (C4 = DHT, C8 = JPG extension and CC = DAC are not frame headers).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and RST0-7 (SOI/EOI never occur inside the header walk).
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_EXIF_ORIENTATION = 0x0112
_PNG_COLOR_TYPES = {0: "gray", 2: "rgb", 3: "palette", 4: "gray_alpha", 6: "rgba"}
_PIL_16BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# Reduced-scale JPEG decode flags, largest reduction first.
_REDUCED_FLAGS = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  2: cv2.IMREAD_REDUCED_COLOR_2}
HINTS = ("auto", "bayer_gb12")    # accepted values of decode_image(hint=...)


class ImageError(ValueError):
    """An image that cannot be used; ``reason`` is short and machine-readable (e.g. ``"truncated"``,
    ``"too_small:1x1"``) so that ingest can quarantine the record and count reasons."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Decoded:
    """A decoded image.

    ``rgb`` is ``(H, W, 3)`` uint8 RGB with the EXIF orientation applied. ``width``/``height`` are
    the full-resolution size after orientation; when a reduced-scale JPEG decode was used, ``rgb``
    is smaller by ``scale`` (its size is ``ceil(full / k)`` with ``scale = 1 / k``).
    """

    rgb: np.ndarray
    width: int
    height: int
    scale: float = 1.0
    orientation: int = 1
    notes: list[str] = field(default_factory=list)


@dataclass
class _Header:
    """What is known from the container header, before any pixel is decoded."""

    fmt: str                        # "png" or "jpeg"
    width: int
    height: int
    exif: Optional[bytes] = None    # raw EXIF payload (PNG eXIf / JPEG APP1), if any
    png_color: str = ""             # PNG colour type name (see _PNG_COLOR_TYPES)
    png_trns: bool = False          # PNG has a tRNS (transparency) chunk
    jpeg_components: int = 0


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def read_bytes(path: str) -> bytes:
    """Read a whole file: a local path, a ``file://`` URL, or any other URL through fsspec.

    Raises :class:`ImageError` with ``missing_file``, ``read_error`` or ``unsupported_scheme:<s>``.
    """
    parts = urllib.parse.urlsplit(path)
    scheme = parts.scheme
    try:
        if scheme == "file":
            return _read_local(urllib.request.url2pathname(parts.path))
        if len(scheme) <= 1:        # no scheme, or a Windows drive letter
            return _read_local(path)
        return _read_fsspec(path, scheme)
    except FileNotFoundError as exc:
        raise ImageError("missing_file") from exc
    except OSError as exc:
        raise ImageError("read_error") from exc


def _read_local(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _read_fsspec(url: str, scheme: str) -> bytes:
    try:
        import fsspec
    except ImportError as exc:
        raise ImageError(f"unsupported_scheme:{scheme}") from exc
    with fsspec.open(url, "rb") as f:
        return f.read()


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------

def decode_image(data: bytes, *, min_size: int = 16, max_pixels: int = 50_000_000,
                 hint: str = "auto", target_hw: tuple[int, int] | None = None) -> Decoded:
    """Decode and validate one image from its bytes.

    ``min_size``: both sides must be at least this many pixels (else ``too_small:WxH``).
    ``max_pixels``: larger images are refused from the header alone (``too_large:WxH``).
    ``hint``: ``"auto"`` (detect by content) or ``"bayer_gb12"`` (see module docstring).
    ``target_hw``: the size the caller will resize to; it only enables a faster reduced-scale
    decode for JPEGs with orientation 1 that are at least 2x/4x/8x larger in both dimensions.
    The result is not resized to it.

    Any failure raises :class:`ImageError`; no other exception type escapes.
    """
    try:
        if not data:
            raise ImageError("empty_file")
        if hint not in HINTS:
            raise ImageError(f"unknown_hint:{hint}")
        if hint == "bayer_gb12":
            return _decode_bayer_gb12(data, min_size, max_pixels)
        return _decode_auto(data, min_size, max_pixels, target_hw)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:     # only for formats whose size we do not parse
        raise ImageError("too_large:unknown") from exc
    except Exception as exc:                        # contract: callers only ever see ImageError
        raise ImageError(f"decode_failed:{type(exc).__name__}") from exc


def _decode_auto(data: bytes, min_size: int, max_pixels: int,
                 target_hw: tuple[int, int] | None) -> Decoded:
    if data.startswith(_PNG_MAGIC):
        header = _png_header(data)
    elif data.startswith(_JPEG_MAGIC):
        header = _jpeg_header(data)
    else:
        return _decode_with_pillow(data, min_size, max_pixels)
    _check_size(header.width, header.height, min_size, max_pixels)
    orientation = _orientation_from_bytes(header.exif)
    factor = 1
    if header.fmt == "png":
        rgb, notes = _decode_png(data, header)
    elif header.jpeg_components == 4:                   # CMYK / YCCK
        rgb, notes = _pil_to_rgb(_open_pil(data))
    else:
        if orientation == 1:
            factor = _reduction_factor(header, target_hw)
        rgb, notes = _decode_jpeg(data, header, factor)
    return _finish(rgb, notes, header.width, header.height, orientation, 1.0 / factor)


def _decode_with_pillow(data: bytes, min_size: int, max_pixels: int) -> Decoded:
    """Formats other than PNG/JPEG: Pillow reads the header lazily, so size is checked first."""
    pil = _open_pil(data)
    _check_size(pil.width, pil.height, min_size, max_pixels)
    rgb, notes = _pil_to_rgb(pil)
    orientation = _orientation_value(pil.getexif())
    return _finish(rgb, notes, pil.width, pil.height, orientation, 1.0)


def _finish(rgb: np.ndarray, notes: list[str], stored_width: int, stored_height: int,
            orientation: int, scale: float) -> Decoded:
    """Apply the orientation to the pixels and build the result."""
    if orientation != 1:
        rgb = _orient(rgb, orientation)
        notes.append("exif_rotated")
    width, height = _oriented_size(stored_width, stored_height, orientation)
    return Decoded(rgb=rgb, width=width, height=height, scale=scale,
                   orientation=orientation, notes=notes)


def _check_size(width: int, height: int, min_size: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(f"too_large:{width}x{height}")
    if width < min_size or height < min_size:
        raise ImageError(f"too_small:{width}x{height}")


def _png_header(data: bytes) -> _Header:
    """Parse IHDR and the chunks before the first IDAT; require an IEND chunk after it."""
    if len(data) < 33:
        raise ImageError("truncated")
    if data[12:16] != b"IHDR":
        raise ImageError("corrupt")
    width, height = struct.unpack(">II", data[16:24])
    color = data[25]                        # byte 24 is the bit depth
    if color not in _PNG_COLOR_TYPES:
        raise ImageError("corrupt")
    header = _Header(fmt="png", width=width, height=height, png_color=_PNG_COLOR_TYPES[color])
    pos = 8
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        if ctype == b"IDAT":
            break
        if ctype == b"tRNS":
            header.png_trns = True
        elif ctype == b"eXIf":
            header.exif = data[pos + 8:pos + 8 + length]
        pos += 12 + length
    else:
        raise ImageError("truncated")       # no image data at all
    if data.rfind(_PNG_IEND, pos) < 0:
        raise ImageError("truncated")
    return header


def _jpeg_header(data: bytes) -> _Header:
    """Walk the JPEG markers up to the first SOS; require an EOI marker after it."""
    header = _Header(fmt="jpeg", width=0, height=0)
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageError("corrupt")
        marker = data[pos + 1]
        if marker == 0xFF:                  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker == 0xDA:                  # start of scan: entropy-coded data follows
            break
        seg_end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        segment = data[pos + 4:seg_end]
        if marker in _JPEG_SOF and len(segment) >= 6:
            # precision (1 byte), height, width, number of components
            header.height, header.width, header.jpeg_components = struct.unpack(
                ">HHB", segment[1:6])
        elif marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            header.exif = segment
        pos = seg_end
    else:
        raise ImageError("truncated")       # ran out of data before the first scan
    if header.jpeg_components == 0:
        raise ImageError("corrupt")         # a scan without a frame header
    if data.rfind(_JPEG_EOI, pos) < 0:
        raise ImageError("truncated")
    return header


def _orientation_from_bytes(raw: Optional[bytes]) -> int:
    """The orientation tag from a raw EXIF payload; 1 if absent or unreadable."""
    if raw is None:
        return 1
    exif = Image.Exif()
    try:
        exif.load(raw)
    except Exception:                       # a broken EXIF block must not reject the pixels
        return 1
    return _orientation_value(exif)


def _orientation_value(exif: Image.Exif) -> int:
    """The orientation tag (1..8) of parsed EXIF; 1 if absent or out of range."""
    value = exif.get(_EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _imdecode(data: bytes, flags: int) -> np.ndarray:
    array = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if array is None:
        raise ImageError("decode_failed")
    return array


def _decode_png(data: bytes, header: _Header) -> tuple[np.ndarray, list[str]]:
    """OpenCV decode of any PNG (palette and tRNS included: checked equal to Pillow's)."""
    notes = []
    if header.png_color == "palette":
        notes.append("palette")
    elif header.png_color.startswith("gray"):
        notes.append("grayscale")
    if header.png_color in ("gray_alpha", "rgba") or header.png_trns:
        notes.append("rgba_alpha_dropped")
    array = _imdecode(data, cv2.IMREAD_UNCHANGED)
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
        notes.append("16bit_scaled")
    return _cv_to_rgb(array), notes


def _decode_jpeg(data: bytes, header: _Header, factor: int) -> tuple[np.ndarray, list[str]]:
    """OpenCV decode of a 1- or 3-component JPEG, at 1/factor scale; orientation not applied."""
    notes = ["grayscale"] if header.jpeg_components == 1 else []
    if factor == 1:
        array = _imdecode(data, cv2.IMREAD_UNCHANGED)   # UNCHANGED ignores EXIF orientation
    else:
        array = _imdecode(data, _REDUCED_FLAGS[factor] | cv2.IMREAD_IGNORE_ORIENTATION)
    return _cv_to_rgb(array), notes


def _reduction_factor(header: _Header, target_hw: tuple[int, int] | None) -> int:
    """The largest k in (8, 4, 2) with the image at least k times the target in both axes."""
    if target_hw is None:
        return 1
    target_h, target_w = target_hw
    for factor in _REDUCED_FLAGS:
        if header.width >= factor * target_w and header.height >= factor * target_h:
            return factor
    return 1


def _cv_to_rgb(array: np.ndarray) -> np.ndarray:
    """OpenCV's gray / BGR / BGRA uint8 array -> contiguous RGB."""
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


def _open_pil(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError as exc:
        raise ImageError("not_an_image") from exc


def _load_pil(pil: Image.Image) -> None:
    """Decode the pixels of a lazily opened Pillow image."""
    try:
        pil.load()
    except OSError as exc:
        raise ImageError("truncated" if "truncated" in str(exc) else "decode_failed") from exc


def _pil_to_rgb(pil: Image.Image) -> tuple[np.ndarray, list[str]]:
    """Decode a lazily opened Pillow image to RGB uint8, noting the conversion made.

    Mode "I" (32-bit integer) is assumed to hold 16-bit samples, as Pillow reads 16-bit TIFFs.
    """
    _load_pil(pil)
    mode, notes = pil.mode, []
    if mode in _PIL_16BIT_MODES or mode == "I":
        gray = (np.clip(np.asarray(pil, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB), ["grayscale", "16bit_scaled"]
    if mode in ("1", "L", "LA", "La", "F"):
        notes.append("grayscale")
    elif mode in ("P", "PA"):
        notes.append("palette")
    elif mode == "CMYK":
        notes.append("cmyk")
    if "A" in mode or "a" in mode or "transparency" in pil.info:
        notes.append("rgba_alpha_dropped")
    return np.asarray(pil.convert("RGB")), notes


def _decode_bayer_gb12(data: bytes, min_size: int, max_pixels: int) -> Decoded:
    """12-bit GBRG Bayer in a 1-channel 16-bit image -> demosaiced 8-bit RGB (no orientation)."""
    pil = _open_pil(data)
    if pil.mode not in _PIL_16BIT_MODES:
        raise ImageError("bad_bayer")
    _check_size(pil.width, pil.height, min_size, max_pixels)
    _load_pil(pil)
    mosaic = np.asarray(pil).astype(np.uint16)
    if mosaic.max() > 4095:                 # not 12-bit data
        raise ImageError("bad_bayer")
    rgb16 = cv2.cvtColor(mosaic, cv2.COLOR_BayerGBRG2RGB)
    rgb = (rgb16 >> 4).astype(np.uint8)
    return Decoded(rgb=rgb, width=pil.width, height=pil.height,
                   notes=["bayer_demosaiced", "12bit_scaled"])


# --------------------------------------------------------------------------------------------
# Orientation
# --------------------------------------------------------------------------------------------
# EXIF orientation o says how the stored pixels must be transformed for display (as Pillow's
# ImageOps.exif_transpose does). With W, H the stored size, a stored point (x, y) goes to:
#   1: (x, y)          2: (W-x, y)        3: (W-x, H-y)      4: (x, H-y)
#   5: (y, x)          6: (H-y, x)        7: (H-y, W-x)      8: (y, W-x)
# Orientations 5..8 swap width and height.

_INVERSE_ORIENTATION = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an (H, W, C) array (see the mapping table above)."""
    views = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
        7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
        8: lambda a: a.transpose(1, 0, 2)[::-1],
    }
    return np.ascontiguousarray(views[orientation](rgb))


def _oriented_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    return (height, width) if orientation >= 5 else (width, height)


def _orient_point(x: float, y: float, orientation: int, width: int, height: int):
    return {
        1: (x, y), 2: (width - x, y), 3: (width - x, height - y), 4: (x, height - y),
        5: (y, x), 6: (height - y, x), 7: (height - y, width - x), 8: (y, width - x),
    }[orientation]


def inverse_orientation(orientation: int) -> int:
    """The orientation that undoes ``orientation`` (6 and 8 swap; the others are involutions)."""
    return _INVERSE_ORIENTATION[orientation]


def transform_boxes(boxes: list[Box], orientation: int, width: int, height: int) -> list[Box]:
    """Map boxes from stored-pixel coordinates (pre-EXIF) into the oriented image's coordinates.

    ``width``/``height`` are the *stored* image's size. The mapping is exactly the one
    :func:`decode_image` applies to the pixels. Corners are re-sorted, so call :func:`fix_boxes`
    (in stored coordinates) first if swapped corners should be counted.
    """
    if orientation not in _INVERSE_ORIENTATION:
        raise ValueError(f"EXIF orientation must be 1..8, got {orientation}")
    out = []
    for box in boxes:
        x0, y0 = _orient_point(box.x_min, box.y_min, orientation, width, height)
        x1, y1 = _orient_point(box.x_max, box.y_max, orientation, width, height)
        out.append(replace(box, x_min=min(x0, x1), y_min=min(y0, y1),
                           x_max=max(x0, x1), y_max=max(y0, y1)))
    return out


# --------------------------------------------------------------------------------------------
# Boxes, resizing, encoding, crops
# --------------------------------------------------------------------------------------------

def fix_boxes(boxes: list[Box], width: int, height: int) -> tuple[list[Box], list[str], str | None]:
    """Repair boxes against an image of ``width`` x ``height``.

    Swapped corners are swapped back (fix ``box_swapped``) and boxes partly outside are clipped
    (``box_clipped``); ``fixes`` has one entry per repair. A box with a non-finite coordinate,
    zero area, or no overlap with the image makes the whole record unusable: then the input boxes
    are returned unchanged with no fixes and ``reason`` set to ``box_not_finite``,
    ``box_zero_area`` or ``box_outside_image``. Otherwise ``reason`` is None and every returned
    box lies within ``[0, width] x [0, height]`` with positive area.
    """
    fixed, fixes = [], []
    for box in boxes:
        result = _fix_box(box, width, height)
        if isinstance(result, str):
            return list(boxes), [], result
        fixed.append(result[0])
        fixes.extend(result[1])
    return fixed, fixes, None


def _fix_box(box: Box, width: int, height: int):
    """One box -> (fixed box, fixes) or a reason string."""
    coords = (box.x_min, box.y_min, box.x_max, box.y_max)
    if not all(math.isfinite(c) for c in coords):
        return "box_not_finite"
    fixes = []
    x0, x1 = sorted((box.x_min, box.x_max))
    y0, y1 = sorted((box.y_min, box.y_max))
    if (x0, x1, y0, y1) != (box.x_min, box.x_max, box.y_min, box.y_max):
        fixes.append("box_swapped")
    if x0 == x1 or y0 == y1:
        return "box_zero_area"
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        return "box_outside_image"
    clipped = (max(x0, 0), min(x1, width), max(y0, 0), min(y1, height))
    if clipped != (x0, x1, y0, y1):
        fixes.append("box_clipped")
    if clipped[0] >= clipped[1] or clipped[2] >= clipped[3]:
        return "box_zero_area"              # positive area lost to float rounding at the edge
    return replace(box, x_min=clipped[0], x_max=clipped[1],
                   y_min=clipped[2], y_max=clipped[3]), fixes


def resize(image: np.ndarray, out_hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize an image (or, with ``nearest``, a label mask) to ``out_hw`` = (height, width):
    ``INTER_AREA`` when shrinking in both axes, ``INTER_LINEAR`` otherwise."""
    out_h, out_w = out_hw
    if image.shape[:2] == (out_h, out_w):
        return image
    shrinking = out_h <= image.shape[0] and out_w <= image.shape[1]
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (out_w, out_h), interpolation=interpolation)


def resize_with_boxes(rgb: np.ndarray, boxes: list[Box],
                      out_hw: tuple[int, int]) -> tuple[np.ndarray, list[Box]]:
    """Resize to ``out_hw`` = (height, width) and scale the boxes per axis to match.

    Uses ``INTER_AREA`` when shrinking in both axes, ``INTER_LINEAR`` otherwise.
    """
    sx, sy = out_hw[1] / rgb.shape[1], out_hw[0] / rgb.shape[0]
    scaled = [replace(b, x_min=b.x_min * sx, x_max=b.x_max * sx,
                      y_min=b.y_min * sy, y_max=b.y_max * sy) for b in boxes]
    return resize(rgb, out_hw), scaled


def encode_png(image: np.ndarray, level: int = 1) -> bytes:
    """Encode an (H, W, 3) uint8 RGB or (H, W) uint8 grey array as PNG at zlib ``level`` (OpenCV; stored as
    BGR, as Petastorm's ``CompressedImageCodec('png')`` stores it). The one PNG encoder of the pipeline."""
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected (H, W, 3) uint8 RGB or (H, W) uint8 grey, got {image.shape} {image.dtype}")
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, int(level)])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def crop(rgb: np.ndarray, box: Box, out_hw: tuple[int, int], pad: float = 0.15) -> np.ndarray:
    """A padded crop around ``box``, resized to ``out_hw`` = (height, width) without distortion.

    The box is grown by ``pad`` times its longer side on every side, then its shorter dimension is
    widened (around the box centre) to the aspect ratio of ``out_hw``, i.e. square-ish for a square
    output. Parts of that region outside the image are filled with zeros (black).
    """
    out_h, out_w = out_hw
    margin = pad * max(box.x_max - box.x_min, box.y_max - box.y_min)
    region_w = box.x_max - box.x_min + 2 * margin
    region_h = box.y_max - box.y_min + 2 * margin
    aspect = out_w / out_h
    region_w, region_h = max(region_w, region_h * aspect), max(region_h, region_w / aspect)
    cx, cy = (box.x_min + box.x_max) / 2, (box.y_min + box.y_max) / 2
    x0, x1 = _pixel_span(cx, region_w)
    y0, y1 = _pixel_span(cy, region_h)
    return resize(_padded_slice(rgb, x0, x1, y0, y1), out_hw)


def _pixel_span(centre: float, size: float) -> tuple[int, int]:
    """Integer pixel range [start, stop) covering ``centre +- size / 2``, at least one pixel."""
    start = math.floor(centre - size / 2)
    return start, max(math.ceil(centre + size / 2), start + 1)


def _padded_slice(rgb: np.ndarray, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
    """rgb[y0:y1, x0:x1] where out-of-image pixels are zero."""
    height, width = rgb.shape[:2]
    out = np.zeros((y1 - y0, x1 - x0, rgb.shape[2]), dtype=rgb.dtype)
    sx0, sx1 = max(x0, 0), min(x1, width)
    sy0, sy1 = max(y0, 0), min(y1, height)
    if sx0 < sx1 and sy0 < sy1:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    return out
