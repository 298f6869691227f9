"""The Petastorm Unischemas of every dataset the pipeline writes, declared once.

Images are stored as PNG (lossless; Petastorm's codec takes and returns RGB). Every row carries its
``id`` (unique within the dataset), ``group`` (the unit splits are made by), ``split`` and ``source``
(where it came from), so any row can be traced back to its input.
"""
import numpy as np
from petastorm.codecs import CompressedImageCodec, NdarrayCodec, ScalarCodec
from petastorm.unischema import Unischema, UnischemaField
from pyspark.sql.types import IntegerType, LongType, StringType

_ID = [
    UnischemaField("id", np.str_, (), ScalarCodec(StringType()), False),
    UnischemaField("group", np.str_, (), ScalarCodec(StringType()), False),
    UnischemaField("split", np.str_, (), ScalarCodec(StringType()), False),
    UnischemaField("source", np.str_, (), ScalarCodec(StringType()), False),
]
_IMAGE = UnischemaField("image", np.uint8, (None, None, 3), CompressedImageCodec("png"), False)

# Whole road frames with an image-level class (the lane class of synthetic data; none for TuSimple / CULane, -1).
RoadFrameSchema = Unischema("RoadFrameSchema", _ID + [
    _IMAGE,
    UnischemaField("label", np.int32, (), ScalarCodec(IntegerType()), False),
    UnischemaField("label_name", np.str_, (), ScalarCodec(StringType()), False),
    UnischemaField("lane_mask", np.uint8, (None, None), CompressedImageCodec("png"), False),  # 1 = marking
    UnischemaField("context", np.str_, (), ScalarCodec(StringType()), False),   # e.g. time of day; "" if unknown
    UnischemaField("phash", np.int64, (), ScalarCodec(LongType()), False),      # 64-bit perceptual hash
])

# Frames with traffic-light boxes (the detector's data). Boxes are (x_min, y_min, x_max, y_max) in pixels of
# the stored image; states index pipeline.data.records.TL_STATES, distances index DISTANCES.
TLFrameSchema = Unischema("TLFrameSchema", _ID + [
    _IMAGE,
    UnischemaField("boxes", np.float32, (None, 4), NdarrayCodec(), False),
    UnischemaField("states", np.int32, (None,), NdarrayCodec(), False),
    UnischemaField("distances", np.int32, (None,), NdarrayCodec(), False),
    UnischemaField("phash", np.int64, (), ScalarCodec(LongType()), False),
])

# Crops around traffic lights plus background crops ("not a light"): the traffic-light classifier's data.
TLCropSchema = Unischema("TLCropSchema", _ID + [
    _IMAGE,
    UnischemaField("label", np.int32, (), ScalarCodec(IntegerType()), False),
    UnischemaField("label_name", np.str_, (), ScalarCodec(StringType()), False),
    UnischemaField("distance", np.str_, (), ScalarCodec(StringType()), False),  # "" for background crops
])

# Images with a class from their folder name (ImageFolder): crops, patches or whole frames.
ClassImageSchema = Unischema("ClassImageSchema", _ID + [
    _IMAGE,
    UnischemaField("label", np.int32, (), ScalarCodec(IntegerType()), False),
    UnischemaField("label_name", np.str_, (), ScalarCodec(StringType()), False),
    UnischemaField("phash", np.int64, (), ScalarCodec(LongType()), False),
])

# One schema per dataset kind (pipeline.tasks.KINDS).
SCHEMAS = {"road_frames": RoadFrameSchema, "class_images": ClassImageSchema, "tl_frames": TLFrameSchema,
           "tl_crops": TLCropSchema}

# Augmented datasets: the same rows plus where each came from. ``parent_id`` is the source row's id (itself for
# the originals, copy 0), ``ops`` the applied ops with their drawn parameters as JSON. The fields are the same
# objects as above, so a reader asking for the base fields reads either kind of dataset.
_LINEAGE = [
    UnischemaField("parent_id", np.str_, (), ScalarCodec(StringType()), False),
    UnischemaField("copy", np.int32, (), ScalarCodec(IntegerType()), False),
    UnischemaField("ops", np.str_, (), ScalarCodec(StringType()), False),
]
AUGMENTED_SCHEMAS = {kind: Unischema(f"Augmented{schema._name}", list(schema.fields.values()) + _LINEAGE)
                     for kind, schema in SCHEMAS.items()}


def _decode_png(value) -> np.ndarray:
    """What ``CompressedImageCodec.decode`` returns (RGB, or grey), but C-contiguous: the codec's
    ``[..., (2, 1, 0)]`` gives a channel-planar array that every later step (stack, to tensor) copies again."""
    import cv2

    image = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


def field_decoders(schema: Unischema, names) -> dict:
    """``{name: stored value -> numpy value}`` for the encoded fields among ``names`` (scalars are stored as
    they are and need none). The one decoder of stored rows: the training loader, augment and figures."""
    out = {}
    for name in names:
        field = schema.fields[name]
        if field.codec is None or isinstance(field.codec, ScalarCodec):
            continue
        out[name] = _decode_png if isinstance(field.codec, CompressedImageCodec) \
            else (lambda value, f=field: f.codec.decode(f, value))
    return out


def decode_row(schema: Unischema, row) -> dict:
    """A Spark Row (or dict) of stored values back to numpy values, for the fields it has."""
    get = row.asDict() if hasattr(row, "asDict") else row
    decoders = field_decoders(schema, [name for name in get if name in schema.fields])
    return {name: decoders[name](value) if name in decoders and value is not None else value
            for name, value in get.items()}
