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
