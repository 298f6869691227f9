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

# Whole road frames with an image-level class (lane class for synthetic data, folder name for ImageFolder).
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

SCHEMAS = {"road_frames": RoadFrameSchema, "tl_frames": TLFrameSchema, "tl_crops": TLCropSchema}

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


def decode_row(schema: Unischema, row) -> dict:
    """A Spark Row (or dict) of Petastorm-encoded values back to numpy values, for the fields it has."""
    get = row.asDict() if hasattr(row, "asDict") else row
    out = {}
    for name, value in get.items():
        field = schema.fields.get(name)
        out[name] = field.codec.decode(field, value) if field is not None and field.codec is not None \
            and value is not None else value
    return out
