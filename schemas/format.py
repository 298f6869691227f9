"""Petastorm's dataset format, written and read with pyarrow, NumPy and OpenCV alone.

A dataset is a folder of Parquet files and a ``_common_metadata`` file whose Arrow schema carries two keys that
Petastorm reads: :data:`UNISCHEMA_KEY` (the dataset's Unischema, pickled) and :data:`ROW_GROUPS_PER_FILE_KEY`
(``{file: row groups}`` as JSON). Column encodings are Petastorm's codecs': scalars as Parquet strings and
integers (``ScalarCodec``), images as PNG bytes of the BGR image (``CompressedImageCodec('png')``), arrays as
NumPy ``.npy`` bytes (``NdarrayCodec``).

The classes here store the same bytes as those codecs and pickle as them (:func:`unischema_bytes`), so Petastorm's
own readers read what this project writes, and this project reads datasets Petastorm wrote, on either pin set:
on the current one (pyarrow >= 16, NumPy 2) Petastorm itself does not import. This module imports neither
Petastorm nor Spark's session: only ``pyspark.sql.types``, whose objects name a scalar column's type (and are
pickled as Petastorm pickles them).

Reading never unpickles: a reader takes the schema from :mod:`schemas.datasets` (code), not from the file.
"""
from __future__ import annotations

import io
import json
import pickle
from collections import OrderedDict
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

# The keys of Petastorm's _common_metadata (petastorm.etl.dataset_metadata), as bytes in the Arrow metadata.
UNISCHEMA_KEY = b"dataset-toolkit.unischema.v1"
ROW_GROUPS_PER_FILE_KEY = b"dataset-toolkit.num_row_groups_per_file.v1"


def _compliant(shape, expected) -> bool:
    return len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected))


class PngCodec:
    """Petastorm's ``CompressedImageCodec('png')``: an RGB (H, W, 3) or grey (H, W) uint8 array as the PNG of
    its BGR image (OpenCV's), decoded back to RGB (here C-contiguous: the codec's own ``[..., (2, 1, 0)]`` is a
    strided view that every later step, stack or to tensor, copies again)."""

    def __init__(self, image_codec: str = "png"):
        if image_codec != "png":
            raise ValueError(f"only PNG images are stored losslessly here, not {image_codec!r}")
        self._image_codec = "." + image_codec   # (a string of its own per codec, as Petastorm's: the same pickle)
        self._quality = 80          # (the codec's JPEG quality, unused by PNG; kept: it is part of the pickle)

    def encode(self, field, value) -> bytearray:
        import cv2

        if field.numpy_dtype != value.dtype:
            raise ValueError(f"Unexpected type of {field.name} feature, expected {field.numpy_dtype}, "
                             f"got {value.dtype}")
        if not _compliant(value.shape, field.shape):
            raise ValueError(f"Unexpected dimensions of {field.name} feature, expected {field.shape}, "
                             f"got {value.shape}")
        if value.ndim == 3 and value.shape[2] == 3:
            value = value[:, :, (2, 1, 0)]
        elif value.ndim != 2:
            raise ValueError(f"Unexpected image dimensions. Supported dimensions are (H, W) or (H, W, 3). "
                             f"Got {value.shape}")
        # (Petastorm also passes IMWRITE_JPEG_QUALITY, which PNG ignores: the same bytes; OpenCV 5 warns about it.)
        _, contents = cv2.imencode(".png", value)
        return bytearray(contents)

    def decode(self, field, value) -> np.ndarray:
        import cv2

        image = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError(f"{field.name}: not a PNG (its first bytes: {bytes(value[:8])!r})")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


class NpyCodec:
    """Petastorm's ``NdarrayCodec``: an array as the bytes ``np.save`` writes; read without pickles."""

    def encode(self, field, value) -> bytearray:
        if not isinstance(value, np.ndarray):
            raise ValueError(f"Unexpected type of {field.name} feature. Expected ndarray of {field.numpy_dtype}. "
                             f"Got {type(value)}")
        if field.numpy_dtype != value.dtype.type:
            raise ValueError(f"Unexpected type of {field.name} feature. Expected {field.numpy_dtype}. "
                             f"Got {value.dtype}")
        if not _compliant(value.shape, field.shape):
            raise ValueError(f"Unexpected dimensions of {field.name} feature. Expected {field.shape}. "
                             f"Got {value.shape}")
        out = io.BytesIO()
        np.save(out, value)
        return bytearray(out.getvalue())

    def decode(self, field, value) -> np.ndarray:
        return np.load(io.BytesIO(value), allow_pickle=False)


class ScalarCodec:
    """Petastorm's ``ScalarCodec``: a scalar stored as itself, in the Parquet type of ``spark_type`` (a
    ``pyspark.sql.types`` instance)."""

    def __init__(self, spark_type):
        self._spark_type = spark_type

    def encode(self, field, value):
        from pyspark.sql import types

        if not (isinstance(value, np.ndarray) and value.shape == ()) and hasattr(value, "__len__") \
                and not isinstance(value, str):
            raise TypeError(f"Expected a scalar as a value for field '{field.name}'. Got a non-numpy type "
                            f"'{type(value)}'")
        if isinstance(self._spark_type, (types.ByteType, types.ShortType, types.IntegerType, types.LongType)):
            return int(value)
        if isinstance(self._spark_type, (types.FloatType, types.DoubleType)):
            return float(value)
        if isinstance(self._spark_type, types.BooleanType):
            return bool(value)
        if isinstance(self._spark_type, types.StringType):
            if not isinstance(value, str):
                raise ValueError(f"Expected a string value for field {field.name}. Got type {type(value)}")
            return str(value)
        return value

    def decode(self, field, value):
        return field.numpy_dtype(value)


class Field(NamedTuple):
    """Petastorm's ``UnischemaField``: name, NumPy type, shape (None: any length), codec, nullable."""
    name: str
    numpy_dtype: Any
    shape: Tuple[Optional[int], ...]
    codec: Any = None
    nullable: bool = False


# Attributes of Petastorm's Unischema class: a field of one of these names gets no attribute of its own there.
_UNISCHEMA_ATTRIBUTES = frozenset({"_get_namedtuple", "as_spark_schema", "create_schema_view", "fields",
                                   "from_arrow_schema", "make_namedtuple", "make_namedtuple_tf"})


class Schema:
    """Petastorm's ``Unischema``: a name and fields in order."""

    def __init__(self, name: str, fields):
        self._name = name
        self._fields = OrderedDict((f.name, f) for f in fields)

    @property
    def fields(self) -> "OrderedDict[str, Field]":
        return self._fields

    def __repr__(self) -> str:
        return f"Schema({self._name!r}, {list(self._fields)})"

    def arrow_schema(self):
        """The Arrow schema of the Parquet files (what Spark writes for these fields: the same column types)."""
        import pyarrow as pa

        return pa.schema([pa.field(f.name, _arrow_type(f), nullable=f.nullable) for f in self._fields.values()])

    def metadata(self, row_groups_per_file: dict) -> dict:
        """The ``_common_metadata`` keys Petastorm reads, for these files."""
        return {UNISCHEMA_KEY: unischema_bytes(self),
                ROW_GROUPS_PER_FILE_KEY: json.dumps(row_groups_per_file).encode()}

    def as_unischema(self):
        """The same schema as Petastorm's own ``Unischema``, to hand to Petastorm's readers and writers (needs
        Petastorm installed: the pin set for Spark 3.5 and 4.0 clusters)."""
        from petastorm import codecs, unischema

        def codec(c):
            if isinstance(c, PngCodec):
                return codecs.CompressedImageCodec("png", c._quality)
            if isinstance(c, NpyCodec):
                return codecs.NdarrayCodec()
            return codecs.ScalarCodec(c._spark_type) if isinstance(c, ScalarCodec) else c

        return unischema.Unischema(self._name, [unischema.UnischemaField(f.name, f.numpy_dtype, f.shape,
                                                                          codec(f.codec), f.nullable)
                                                for f in self._fields.values()])


def _arrow_type(field: Field):
    import pyarrow as pa

    if isinstance(field.codec, ScalarCodec):
        name = type(field.codec._spark_type).__name__
        types = {"StringType": pa.string(), "IntegerType": pa.int32(), "LongType": pa.int64(),
                 "ShortType": pa.int16(), "ByteType": pa.int8(), "FloatType": pa.float32(),
                 "DoubleType": pa.float64(), "BooleanType": pa.bool_()}
        if name not in types:
            raise ValueError(f"{field.name}: no Parquet type for {name}")
        return types[name]
    return pa.binary()


# ------------------------------------------------------------------------------------------ the pickle

_PETASTORM_NAMES = {Field: ("petastorm.unischema", "UnischemaField"), Schema: ("petastorm.unischema", "Unischema"),
                    PngCodec: ("petastorm.codecs", "CompressedImageCodec"), NpyCodec: ("petastorm.codecs",
                                                                                      "NdarrayCodec"),
                    ScalarCodec: ("petastorm.codecs", "ScalarCodec")}


class _AsPetastorm(pickle._Pickler):
    """Pickles this module's classes under Petastorm's names, as Petastorm's objects pickle (protocol 4:
    ``cls.__new__(cls, *args)``, then the instance's ``__dict__``), without importing Petastorm."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_class(self, cls) -> None:
        memo = self.memo.get(id(cls))
        if memo is not None:
            self.write(self.get(memo[0]))
            return
        module, name = _PETASTORM_NAMES[cls]
        self.save(module)
        self.save(name)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(cls)

    def _save_new(self, obj, args: tuple, state: Optional[dict]) -> None:
        self._save_class(type(obj))
        self.save(args)
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        if state is not None:
            self.save(state)
            self.write(pickle.BUILD)

    def _save_field(self, obj: Field) -> None:
        self._save_new(obj, tuple(obj), None)          # a NamedTuple: its values are the arguments of __new__

    def _save_schema(self, obj: Schema) -> None:
        state = {"_name": obj._name, "_fields": obj._fields}
        state.update((f.name, f) for f in obj._fields.values() if f.name not in _UNISCHEMA_ATTRIBUTES)
        self._save_new(obj, (), state)

    def _save_codec(self, obj) -> None:
        self._save_new(obj, (), vars(obj) or None)     # an empty __dict__ pickles as no state

    dispatch[Field] = _save_field
    dispatch[Schema] = _save_schema
    dispatch[PngCodec] = _save_codec
    dispatch[NpyCodec] = _save_codec
    dispatch[ScalarCodec] = _save_codec


def unischema_bytes(schema: Schema) -> bytes:
    """``schema`` pickled as Petastorm's Unischema of the same fields: what ``materialize_dataset`` stores under
    :data:`UNISCHEMA_KEY` (Petastorm's ``make_reader`` needs it to decode the columns)."""
    out = io.BytesIO()
    _AsPetastorm(out, protocol=4).dump(schema)
    return out.getvalue()
