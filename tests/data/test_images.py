"""Tests for pipeline.data.images. Every image is generated here; nothing is downloaded."""
from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image, ImageOps

from pipeline.data.images import (
    Decoded, ImageError, crop, decode_image, encode_png, fix_boxes, inverse_orientation,
    read_bytes, resize_with_boxes, transform_boxes,
)
from pipeline.data.records import Box

RNG = np.random.default_rng(1234)


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------

def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _cv_encode(ext: str, array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, array)
    assert ok
    return buf.tobytes()


def _random_rgb(h: int = 24, w: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth_rgb(h: int, w: int) -> np.ndarray:
    """A gradient image: compresses well as JPEG, so decoded values are close to the source."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.dstack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                      (xx + yy) * 255 // max(w + h - 2, 1)]).astype(np.uint8)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _decode(data: bytes, **kw) -> Decoded:
    return decode_image(data, min_size=1, **kw)


def _reason(data: bytes, **kw) -> str:
    with pytest.raises(ImageError) as info:
        decode_image(data, **kw)
    return info.value.reason


def _bbox_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x_min, y_min, x_max, y_max) of the True pixels, as continuous coordinates."""
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


# ------------------------------------------------------------------------------------------
# reading and decoding by content
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,fmt", [("photo.JPG", "PNG"), ("IMAGE.PNG", "JPEG"),
                                      ("frame.tiff", "PNG"), ("no_extension", "BMP")])
def test_decodes_by_content_not_extension(tmp_path, name, fmt):
    rgb = _smooth_rgb(20, 30)
    path = tmp_path / name
    path.write_bytes(_save(Image.fromarray(rgb), fmt))
    for ref in (str(path), path.as_uri()):
        out = decode_image(read_bytes(ref))
        assert out.rgb.shape == (20, 30, 3) and out.rgb.dtype == np.uint8
        assert (out.width, out.height, out.scale, out.orientation) == (30, 20, 1.0, 1)
        assert np.abs(out.rgb.astype(int) - rgb).max() <= 12


def test_read_bytes_missing_file(tmp_path):
    with pytest.raises(ImageError) as info:
        read_bytes(str(tmp_path / "nope.png"))
    assert info.value.reason == "missing_file"


def test_rgb_png_is_exact_and_has_no_notes():
    rgb = _random_rgb()
    out = _decode(_save(Image.fromarray(rgb), "PNG"))
    np.testing.assert_array_equal(out.rgb, rgb)
    assert out.notes == [] and out.rgb.flags.c_contiguous


# ------------------------------------------------------------------------------------------
# odd but valid input
# ------------------------------------------------------------------------------------------

def test_grayscale_png_replicated_to_rgb():
    gray = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    out = _decode(_save(Image.fromarray(gray), "PNG"))
    np.testing.assert_array_equal(out.rgb, np.dstack([gray] * 3))
    assert out.notes == ["grayscale"]


def test_gray_alpha_png_drops_alpha():
    gray = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    la = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)])
    out = _decode(_save(la, "PNG"))
    np.testing.assert_array_equal(out.rgb, np.dstack([gray] * 3))
    assert out.notes == ["grayscale", "rgba_alpha_dropped"]


def test_rgba_png_keeps_colour_channels_as_stored():
    rgba = np.dstack([_random_rgb(), RNG.integers(0, 256, (24, 32), dtype=np.uint8)])
    rgba[0, 0] = (10, 20, 30, 0)                    # fully transparent: colour still kept
    out = _decode(_save(Image.fromarray(rgba), "PNG"))
    np.testing.assert_array_equal(out.rgb, rgba[..., :3])
    assert out.notes == ["rgba_alpha_dropped"]


@pytest.mark.parametrize("transparency", [None, 1])
def test_palette_png_expanded(transparency):
    index = RNG.integers(0, 4, (20, 30), dtype=np.uint8)
    palette = [10, 20, 30, 200, 100, 50, 0, 255, 0, 90, 90, 250]
    pal = Image.fromarray(index)
    pal = pal.convert("P")
    pal.putdata(index.ravel().tolist())
    pal.putpalette(palette)
    kw = {} if transparency is None else {"transparency": transparency}
    out = _decode(_save(pal, "PNG", **kw))
    np.testing.assert_array_equal(out.rgb, np.array(palette, np.uint8).reshape(4, 3)[index])
    expected = ["palette"] + ([] if transparency is None else ["rgba_alpha_dropped"])
    assert out.notes == expected


def test_cmyk_jpeg_colours_match_pillow():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))        # red
    cmyk.paste((255, 0, 255, 0), (16, 0, 32, 32))               # green
    data = _save(cmyk, "JPEG", quality=95)
    out = _decode(data)
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert np.abs(out.rgb.astype(int) - reference).max() <= 2
    assert np.abs(out.rgb[16, 4].astype(int) - (255, 0, 0)).max() <= 12
    assert np.abs(out.rgb[16, 28].astype(int) - (0, 255, 0)).max() <= 12
    assert out.notes == ["cmyk"]


def test_grayscale_jpeg():
    gray = _smooth_rgb(24, 32)[..., 0]
    out = _decode(_save(Image.fromarray(gray), "JPEG", quality=95))
    assert out.rgb.shape == (24, 32, 3) and out.notes == ["grayscale"]
    assert (out.rgb[..., 0] == out.rgb[..., 2]).all()
    assert np.abs(out.rgb[..., 0].astype(int) - gray).max() <= 6


def test_16bit_png_scaled_by_high_byte():
    gray16 = RNG.integers(0, 65536, (20, 30), dtype=np.uint16)
    bgr16 = RNG.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    gray = _decode(_cv_encode(".png", gray16))
    np.testing.assert_array_equal(gray.rgb, np.dstack([(gray16 >> 8).astype(np.uint8)] * 3))
    assert gray.notes == ["grayscale", "16bit_scaled"]
    rgb = _decode(_cv_encode(".png", bgr16))
    np.testing.assert_array_equal(rgb.rgb, (bgr16[..., ::-1] >> 8).astype(np.uint8))
    assert rgb.notes == ["16bit_scaled"]


def test_16bit_grayscale_tiff_through_pillow():
    gray16 = RNG.integers(0, 65536, (20, 30), dtype=np.uint16)
    out = _decode(_cv_encode(".tiff", gray16))
    np.testing.assert_array_equal(out.rgb[..., 1], (gray16 >> 8).astype(np.uint8))
    assert out.notes == ["grayscale", "16bit_scaled"]


# ------------------------------------------------------------------------------------------
# EXIF orientation: pixels and boxes move together
# ------------------------------------------------------------------------------------------

STORED_W, STORED_H = 40, 24
SQUARE = Box(5, 3, 13, 9, "red")        # bright square in stored coordinates


def _oriented_test_image(orientation: int, fmt: str) -> bytes:
    stored = np.full((STORED_H, STORED_W, 3), 20, np.uint8)
    stored[SQUARE.y_min:SQUARE.y_max, SQUARE.x_min:SQUARE.x_max] = 250
    kw = {"quality": 95} if fmt == "JPEG" else {}
    return _save(Image.fromarray(stored), fmt, exif=_exif(orientation), **kw)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_moves_pixels_and_boxes_together(orientation, fmt):
    data = _oriented_test_image(orientation, fmt)
    out = _decode(data)
    assert out.orientation == orientation
    assert ("exif_rotated" in out.notes) == (orientation != 1)
    swapped = orientation >= 5
    assert (out.width, out.height) == ((STORED_H, STORED_W) if swapped else (STORED_W, STORED_H))
    assert out.rgb.shape == (out.height, out.width, 3)

    [box] = transform_boxes([SQUARE], orientation, STORED_W, STORED_H)
    x0, y0, x1, y1 = _bbox_of(out.rgb[..., 0] > 128)
    if fmt == "PNG":                                     # lossless: exact
        assert (x0, y0, x1, y1) == (box.x_min, box.y_min, box.x_max, box.y_max)
    else:                                                # JPEG ringing: within one pixel
        assert box.x_min - 1 <= x0 and x1 <= box.x_max + 1
        assert box.y_min - 1 <= y0 and y1 <= box.y_max + 1
    inside = out.rgb[int(box.y_min) + 1:int(box.y_max) - 1, int(box.x_min) + 1:int(box.x_max) - 1]
    assert inside.min() > 200

    # The orientation convention is the standard one, as implemented by Pillow.
    reference = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert np.abs(out.rgb.astype(int) - reference).mean() < 1.0


@given(st.integers(1, 8), st.integers(1, 200), st.integers(1, 200),
       st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)),
                max_size=5))
def test_transform_boxes_round_trips(orientation, width, height, fractions):
    boxes = [Box(min(a, b) * width, min(c, d) * height, max(a, b) * width, max(c, d) * height,
                 "x", occluded=True) for a, b, c, d in fractions]
    there = transform_boxes(boxes, orientation, width, height)
    new_w, new_h = (height, width) if orientation >= 5 else (width, height)
    for box in there:
        assert 0 <= box.x_min <= box.x_max <= new_w and 0 <= box.y_min <= box.y_max <= new_h
    back = transform_boxes(there, inverse_orientation(orientation), new_w, new_h)
    for got, want in zip(back, boxes):
        assert got.label == "x" and got.occluded
        np.testing.assert_allclose([got.x_min, got.y_min, got.x_max, got.y_max],
                                   [want.x_min, want.y_min, want.x_max, want.y_max], atol=1e-9)


# ------------------------------------------------------------------------------------------
# Bayer
# ------------------------------------------------------------------------------------------

BAYER_COLOURS = np.array([[4000, 300, 700], [200, 3500, 900],        # 12-bit RGB quadrants
                          [100, 600, 3900], [2500, 2500, 1200]])


def _gbrg_mosaic(rgb12: np.ndarray) -> np.ndarray:
    """GBRG sensor: even rows G B G B ..., odd rows R G R G ..."""
    mosaic = np.empty(rgb12.shape[:2], np.uint16)
    mosaic[0::2, 0::2] = rgb12[0::2, 0::2, 1]
    mosaic[0::2, 1::2] = rgb12[0::2, 1::2, 2]
    mosaic[1::2, 0::2] = rgb12[1::2, 0::2, 0]
    mosaic[1::2, 1::2] = rgb12[1::2, 1::2, 1]
    return mosaic


def test_bayer_gb12_demosaics_known_colours():
    rgb12 = np.zeros((64, 64, 3), np.uint16)
    for i, colour in enumerate(BAYER_COLOURS):
        rgb12[(i // 2) * 32:(i // 2 + 1) * 32, (i % 2) * 32:(i % 2 + 1) * 32] = colour
    out = decode_image(_cv_encode(".tiff", _gbrg_mosaic(rgb12)), hint="bayer_gb12")
    assert out.rgb.shape == (64, 64, 3) and out.rgb.dtype == np.uint8
    assert (out.width, out.height, out.orientation) == (64, 64, 1)
    assert out.notes == ["bayer_demosaiced", "12bit_scaled"]
    for i, colour in enumerate(BAYER_COLOURS):
        y, x = (i // 2) * 32, (i % 2) * 32
        interior = out.rgb[y + 4:y + 28, x + 4:x + 28].reshape(-1, 3).astype(int)
        assert np.abs(interior - (colour >> 4)).max() <= 1, (i, interior[0])


@pytest.mark.parametrize("data", [
    _cv_encode(".png", np.zeros((32, 32, 3), np.uint8)),                      # 8-bit RGB
    _cv_encode(".tiff", np.zeros((32, 32), np.uint8)),                        # 8-bit gray
    _cv_encode(".tiff", np.zeros((32, 32, 3), np.uint16)),                    # 16-bit RGB
    _cv_encode(".tiff", np.full((32, 32), 5000, np.uint16)),                  # not 12-bit
], ids=["png_rgb8", "tiff_gray8", "tiff_rgb16", "over_12bit"])
def test_bayer_hint_rejects_wrong_input(data):
    assert _reason(data, hint="bayer_gb12") == "bad_bayer"


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------

def _tiny_png_claiming(width: int, height: int) -> bytes:
    """A valid 16x16 PNG whose IHDR is patched (with a correct CRC) to claim another size."""
    data = bytearray(_save(Image.new("RGB", (16, 16)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_empty_and_non_image():
    assert _reason(b"") == "empty_file"
    assert _reason(b"", hint="bayer_gb12") == "empty_file"
    assert _reason(b"this is a text file renamed to .png\n") == "not_an_image"
    assert _reason(b"hello", hint="bayer_gb12") == "not_an_image"


def test_unknown_hint():
    assert _reason(_save(Image.new("RGB", (16, 16)), "PNG"), hint="raw") == "unknown_hint:raw"


def test_too_small():
    data = _save(Image.new("RGB", (1, 1)), "PNG")
    assert _reason(data) == "too_small:1x1"
    assert decode_image(data, min_size=1).rgb.shape == (1, 1, 3)
    assert _reason(_save(Image.new("RGB", (40, 8)), "JPEG"), min_size=16) == "too_small:40x8"


def test_too_large_refused_from_header_before_decoding(monkeypatch):
    data = _tiny_png_claiming(30000, 30000)
    assert len(data) < 200

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoder called")
    monkeypatch.setattr(cv2, "imdecode", must_not_decode)
    monkeypatch.setattr(Image, "open", must_not_decode)
    assert _reason(data) == "too_large:30000x30000"
    assert _reason(_tiny_png_claiming(8000, 8000), max_pixels=50_000_000) == "too_large:8000x8000"


def test_too_large_jpeg_header():
    data = bytearray(_save(Image.fromarray(_random_rgb(16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 30000, 30000)
    assert _reason(bytes(data)) == "too_large:30000x30000"


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.3, 0.6, 0.9, 0.99])
def test_truncated_jpeg(fraction):
    data = _save(Image.fromarray(_random_rgb(64, 64)), "JPEG", quality=90)
    cut = data[:max(3, int(len(data) * fraction))]
    # OpenCV 4 alone would accept this and grey-fill the missing part (OpenCV 5, the current pin set's, refuses some).
    opencv4 = cv2.__version__.startswith("4.")
    assert fraction < 0.1 or not opencv4 or cv2.imdecode(np.frombuffer(cut, np.uint8), cv2.IMREAD_COLOR) is not None
    assert _reason(cut) == "truncated"


def test_truncated_jpeg_missing_only_eoi():
    data = _save(Image.fromarray(_random_rgb(64, 64)), "JPEG")
    assert _reason(data[:-2]) == "truncated"


def test_jpeg_with_trailing_bytes_after_eoi_is_fine():
    data = _save(Image.fromarray(_random_rgb(64, 64)), "JPEG")
    assert _decode(data + b"\x00" * 100).rgb.shape == (64, 64, 3)


@pytest.mark.parametrize("cut", [20, 40, 0.5, -12, -1])
def test_truncated_png(cut):
    data = _save(Image.fromarray(_random_rgb(64, 64)), "PNG")
    end = int(len(data) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(data) + cut)
    assert _reason(data[:end]) == "truncated"


def test_truncated_tiff_through_pillow():
    data = _save(Image.fromarray(_random_rgb(64, 64)), "TIFF")      # header first, then pixels
    assert _reason(data[:len(data) // 2]) == "truncated"


_VALID_SAMPLES = [_save(Image.fromarray(_smooth_rgb(24, 32)), fmt) for fmt in ("PNG", "JPEG", "GIF")]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(_VALID_SAMPLES),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
       st.integers(0, 10_000))
def test_corrupted_input_only_raises_image_error(data, edits, cut):
    corrupted = bytearray(data)
    for pos, value in edits:
        corrupted[pos % len(corrupted)] = value
    corrupted = bytes(corrupted[:max(1, len(corrupted) - cut % len(corrupted))])
    try:
        out = decode_image(corrupted, min_size=1)
    except ImageError as exc:
        assert exc.reason
    else:
        assert out.rgb.ndim == 3 and out.rgb.shape[2] == 3 and out.rgb.dtype == np.uint8


# ------------------------------------------------------------------------------------------
# reduced-scale JPEG decode
# ------------------------------------------------------------------------------------------

_BIG_JPEG = _save(Image.fromarray(_smooth_rgb(720, 1280)), "JPEG", quality=90)


def test_reduced_scale_decode_for_large_jpeg():
    out = decode_image(_BIG_JPEG, target_hw=(128, 128))
    assert out.scale == 0.25                             # 720 < 8 * 128, 720 >= 4 * 128
    assert out.rgb.shape == (180, 320, 3)
    assert (out.width, out.height) == (1280, 720)
    full = cv2.resize(decode_image(_BIG_JPEG).rgb, (320, 180), interpolation=cv2.INTER_AREA)
    assert np.abs(out.rgb.astype(int) - full).mean() < 2.0


@pytest.mark.parametrize("target_hw,scale", [((90, 160), 0.125), ((300, 500), 0.5),
                                             ((400, 400), 1.0), (None, 1.0)])
def test_reduction_factor_follows_both_dimensions(target_hw, scale):
    assert decode_image(_BIG_JPEG, target_hw=target_hw).scale == scale


def test_no_reduced_decode_when_rotated_or_png():
    rotated = _save(Image.fromarray(_smooth_rgb(720, 1280)), "JPEG", exif=_exif(6))
    out = decode_image(rotated, target_hw=(64, 64))
    assert out.scale == 1.0 and out.rgb.shape == (1280, 720, 3)
    png = _save(Image.fromarray(_smooth_rgb(256, 256)), "PNG")
    assert decode_image(png, target_hw=(32, 32)).scale == 1.0


# ------------------------------------------------------------------------------------------
# boxes
# ------------------------------------------------------------------------------------------

def test_fix_boxes_swaps_and_clips():
    boxes = [Box(30, 20, 10, 5, "red"), Box(-5, 10, 20, 80, "green"), Box(1, 1, 2, 2, "off")]
    fixed, fixes, reason = fix_boxes(boxes, 64, 48)
    assert reason is None
    assert fixes == ["box_swapped", "box_clipped"]
    assert [(b.x_min, b.y_min, b.x_max, b.y_max) for b in fixed] == [
        (10, 5, 30, 20), (0, 10, 20, 48), (1, 1, 2, 2)]
    assert [b.label for b in fixed] == ["red", "green", "off"]


@pytest.mark.parametrize("box,reason", [
    (Box(70, 10, 90, 20, "red"), "box_outside_image"),
    (Box(-20, -10, 0, 5, "red"), "box_outside_image"),
    (Box(10, 10, 10, 20, "red"), "box_zero_area"),
    (Box(10, float("nan"), 20, 20, "red"), "box_not_finite"),
])
def test_fix_boxes_rejects_record(box, reason):
    good = Box(1, 1, 5, 5, "green")
    boxes, fixes, got = fix_boxes([good, box], 64, 48)
    assert got == reason and fixes == [] and boxes == [good, box]


@given(st.integers(1, 500), st.integers(1, 500),
       st.lists(st.tuples(*[st.floats(-1e4, 1e4, allow_nan=False)] * 4).map(
           lambda c: Box(*c, label="red")), max_size=6))
def test_fix_boxes_output_inside_image_or_reason(width, height, boxes):
    fixed, fixes, reason = fix_boxes(boxes, width, height)
    if reason is not None:
        assert reason in ("box_outside_image", "box_zero_area")
        return
    assert len(fixed) == len(boxes)
    for box in fixed:
        assert 0 <= box.x_min < box.x_max <= width
        assert 0 <= box.y_min < box.y_max <= height
    assert set(fixes) <= {"box_swapped", "box_clipped"}


def test_resize_with_boxes_scales_per_axis_with_inter_area():
    rgb = _random_rgb(72, 128)
    boxes = [Box(32, 18, 64, 36, "red")]
    out, scaled = resize_with_boxes(rgb, boxes, (36, 32))
    np.testing.assert_array_equal(out, cv2.resize(rgb, (32, 36), interpolation=cv2.INTER_AREA))
    assert (scaled[0].x_min, scaled[0].y_min, scaled[0].x_max, scaled[0].y_max) == (8, 9, 16, 18)
    assert scaled[0].label == "red" and boxes[0].x_min == 32      # input not modified


def test_resize_with_boxes_upscales():
    out, [box] = resize_with_boxes(_random_rgb(10, 10), [Box(1, 2, 3, 4, "x")], (20, 40))
    assert out.shape == (20, 40, 3)
    assert (box.x_min, box.y_min, box.x_max, box.y_max) == (4, 4, 12, 8)


def test_encode_png_round_trip():
    rgb = _random_rgb()
    data = encode_png(rgb)
    assert data.startswith(b"\x89PNG")
    np.testing.assert_array_equal(_decode(data).rgb, rgb)
    with pytest.raises(ValueError):
        encode_png(rgb.astype(np.float32))


def test_crop_centred_box():
    rgb = np.zeros((100, 100, 3), np.uint8)
    rgb[40:60, 45:55] = 255                           # a tall 10x20 light
    out = crop(rgb, Box(45, 40, 55, 60, "red"), (32, 32))
    assert out.shape == (32, 32, 3)
    # region: 20 + 2 * 3 = 26 px square around the centre; the light spans 10/26 x 20/26 of it
    x0, y0, x1, y1 = _bbox_of(out[..., 0] > 128)
    assert abs((x0 + x1) / 2 - 16) <= 1 and abs((y0 + y1) / 2 - 16) <= 1
    assert 10 <= x1 - x0 <= 15 and 22 <= y1 - y0 <= 27


def test_crop_at_border_pads_with_zeros():
    rgb = np.full((50, 80, 3), 200, np.uint8)
    out = crop(rgb, Box(0, 0, 10, 10, "green"), (24, 24), pad=0.5)
    assert out.shape == (24, 24, 3)
    assert out[:4, :4].max() == 0                     # outside the image: zeros
    assert out[12:, 12:].min() > 150                  # inside the image


def test_crop_degenerate_box():
    out = crop(_random_rgb(), Box(5, 5, 5, 5, "x"), (8, 8))
    assert out.shape == (8, 8, 3)

