"""The schemas of every dataset the pipeline writes, declared once, in Petastorm's format (:mod:`schemas.format`:
its Unischema, fields and codecs, without importing Petastorm).

Images are stored as PNG (lossless; Petastorm's codec takes and returns RGB), or with ``ingest.image_format=raw``
as the uint8 array itself (Petastorm's ``NdarrayCodec``: NumPy's ``.npy`` bytes), which decodes by a copy: the
dataset's stored Unischema then says so (:func:`with_image_format`), and every reader here tells the two apart by
their first bytes (:func:`decode_image`). Every row carries its
``id`` (unique within the dataset), ``group`` (the unit splits are made by), ``split`` and ``source``
(where it came from), so any row can be traced back to its input.
"""
import io

import numpy as np
from schemas.format import Field, NpyCodec, PngCodec, ScalarCodec, Schema
from pyspark.sql.types import IntegerType, LongType, StringType

_ID = [
    Field("id", np.str_, (), ScalarCodec(StringType()), False),
    Field("group", np.str_, (), ScalarCodec(StringType()), False),
    Field("split", np.str_, (), ScalarCodec(StringType()), False),
    Field("source", np.str_, (), ScalarCodec(StringType()), False),
]
_IMAGE = Field("image", np.uint8, (None, None, 3), PngCodec(), False)

# Whole road frames with an image-level class (the lane class of synthetic data; none for TuSimple / CULane, -1).
RoadFrameSchema = Schema("RoadFrameSchema", _ID + [
    _IMAGE,
    Field("label", np.int32, (), ScalarCodec(IntegerType()), False),
    Field("label_name", np.str_, (), ScalarCodec(StringType()), False),
    Field("lane_mask", np.uint8, (None, None), PngCodec(), False),  # 1 = marking
    Field("context", np.str_, (), ScalarCodec(StringType()), False),   # e.g. time of day; "" if unknown
    Field("phash", np.int64, (), ScalarCodec(LongType()), False),      # 64-bit perceptual hash
])

# Frames with traffic-light boxes (the detector's data). Boxes are (x_min, y_min, x_max, y_max) in pixels of
# the stored image; states index pipeline.data.records.TL_STATES, distances index DISTANCES.
TLFrameSchema = Schema("TLFrameSchema", _ID + [
    _IMAGE,
    Field("boxes", np.float32, (None, 4), NpyCodec(), False),
    Field("states", np.int32, (None,), NpyCodec(), False),
    Field("distances", np.int32, (None,), NpyCodec(), False),
    Field("phash", np.int64, (), ScalarCodec(LongType()), False),
])

# Crops around traffic lights plus background crops ("not a light"): the traffic-light classifier's data.
TLCropSchema = Schema("TLCropSchema", _ID + [
    _IMAGE,
    Field("label", np.int32, (), ScalarCodec(IntegerType()), False),
    Field("label_name", np.str_, (), ScalarCodec(StringType()), False),
    Field("distance", np.str_, (), ScalarCodec(StringType()), False),  # "" for background crops
])

# Images with a class from their folder name (ImageFolder): crops, patches or whole frames.
ClassImageSchema = Schema("ClassImageSchema", _ID + [
    _IMAGE,
    Field("label", np.int32, (), ScalarCodec(IntegerType()), False),
    Field("label_name", np.str_, (), ScalarCodec(StringType()), False),
    Field("phash", np.int64, (), ScalarCodec(LongType()), False),
])

# One schema per dataset kind (pipeline.tasks.KINDS).
SCHEMAS = {"road_frames": RoadFrameSchema, "class_images": ClassImageSchema, "tl_frames": TLFrameSchema,
           "tl_crops": TLCropSchema}

# Augmented datasets: the same rows plus where each came from. ``parent_id`` is the source row's id (itself for
# the originals, copy 0), ``ops`` the applied ops with their drawn parameters as JSON. The fields are the same
# objects as above, so a reader asking for the base fields reads either kind of dataset.
_LINEAGE = [
    Field("parent_id", np.str_, (), ScalarCodec(StringType()), False),
    Field("copy", np.int32, (), ScalarCodec(IntegerType()), False),
    Field("ops", np.str_, (), ScalarCodec(StringType()), False),
]
AUGMENTED_SCHEMAS = {kind: Schema(f"Augmented{schema._name}", list(schema.fields.values()) + _LINEAGE)
                     for kind, schema in SCHEMAS.items()}


IMAGE_FORMATS = ("png", "raw")
_NPY_MAGIC = b"\x93NUMPY"
_RAW_IMAGE = Field("image", np.uint8, (None, None, 3), NpyCodec(), False)
_RAW_SCHEMAS: dict = {}


def with_image_format(schema: Schema, image_format: str) -> Schema:
    """``schema`` as a dataset stored with ``image_format`` records it: for ``raw``, the ``image`` field with
    Petastorm's ``NdarrayCodec`` (so ``make_reader`` decodes either form); the same columns and types."""
    if image_format == "png":
        return schema
    if image_format != "raw":
        raise ValueError(f"unknown image format {image_format!r}; known: {', '.join(IMAGE_FORMATS)}")
    if schema._name not in _RAW_SCHEMAS:
        fields = [_RAW_IMAGE if f.name == "image" else f for f in schema.fields.values()]
        _RAW_SCHEMAS[schema._name] = Schema(f"{schema._name}Raw", fields)
    return _RAW_SCHEMAS[schema._name]


def decode_image(value) -> np.ndarray:
    """A stored image (PNG bytes, or ``.npy`` bytes of a raw-stored dataset) -> uint8 (H, W, 3) or (H, W)."""
    if bytes(value[:6]) == _NPY_MAGIC:
        return np.load(io.BytesIO(value), allow_pickle=False)
    return _IMAGE.codec.decode(_IMAGE, value)      # (RGB or grey, C-contiguous: schemas.format.PngCodec)


def decode_images(values) -> "np.ndarray | None":
    """A column of raw-stored images of one shape -> one uint8 (N, H, W, C) array in one copy (no per-image
    work); None when they are not all raw with the same header (PNG, or mixed shapes: decode one by one)."""
    if not len(values):
        return None
    first = values[0]
    if bytes(first[:6]) != _NPY_MAGIC:
        return None
    size = len(first)
    if any(len(v) != size for v in values):
        return None
    stream = io.BytesIO(first)
    version = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(stream)
    offset = stream.tell()
    if fortran or dtype != np.uint8 or offset + int(np.prod(shape)) != size:
        return None
    flat = np.frombuffer(b"".join(values), np.uint8).reshape(len(values), size)
    if not (flat[:, :offset] == flat[:1, :offset]).all():
        return None
    return flat[:, offset:].reshape(len(values), *shape)


def field_decoders(schema: Schema, names) -> dict:
    """``{name: stored value -> numpy value}`` for the encoded fields among ``names`` (scalars are stored as
    they are and need none). The one decoder of stored rows: the training loader, augment and figures."""
    out = {}
    for name in names:
        field = schema.fields[name]
        if field.codec is None or isinstance(field.codec, ScalarCodec):
            continue
        out[name] = decode_image if isinstance(field.codec, PngCodec) or name == "image" \
            else (lambda value, f=field: f.codec.decode(f, value))
    return out


def decode_row(schema: Schema, row) -> dict:
    """A Spark Row (or dict) of stored values back to numpy values, for the fields it has."""
    get = row.asDict() if hasattr(row, "asDict") else row
    decoders = field_decoders(schema, [name for name in get if name in schema.fields])
    return {name: decoders[name](value) if name in decoders and value is not None else value
            for name, value in get.items()}
