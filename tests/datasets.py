"""Reading a dataset back in tests, on either pin set (README: "Two pin sets").

On the petastorm set, rows are read back with Petastorm's own ``make_reader`` (which unpickles the schema the
project stored: every test that reads a dataset back also checks that Petastorm reads it). On the current set,
where Petastorm does not import (pyarrow >= 16, NumPy 2), they are read with the project's own reader (pyarrow,
the schema from ``schemas/``). Tests of Petastorm's package itself carry :data:`needs_petastorm`: they run on the
petastorm set only, where a Petastorm that fails to import fails them.
"""
from __future__ import annotations

import numpy as np
import pyarrow
import pytest

CURRENT_STACK = int(pyarrow.__version__.split(".")[0]) >= 16
needs_petastorm = pytest.mark.skipif(CURRENT_STACK, reason="tests Petastorm's own package, which does not import "
                                     "on the current pin set (pyarrow >= 16): run on the petastorm set")


def read_dataset(url: str, fields=None) -> dict:
    """``{id: {field: decoded value}}`` of every row of the dataset at ``url`` (``<root>/<kind>/<split>``): the
    ``fields`` asked for (all by default), and ``id``."""
    fields = (["id"] if "id" not in fields else []) + list(fields) if fields else None
    if not CURRENT_STACK:
        from petastorm import make_reader

        with make_reader(url, reader_pool_type="dummy", num_epochs=1, shuffle_row_groups=False,
                         schema_fields=fields) as reader:
            return {r.id: r._asdict() for r in reader}
    from pipeline.data import store
    from schemas.datasets import AUGMENTED_SCHEMAS, SCHEMAS, field_decoders

    kind = url.rstrip("/").split("/")[-2]
    pieces = store.row_groups_of(url)
    columns = pieces[0].physical_schema.names if pieces else []
    schema = (AUGMENTED_SCHEMAS if "parent_id" in columns else SCHEMAS)[kind]
    names = fields or list(schema.fields)
    decoders = field_decoders(schema, names)
    out = {}
    for piece in pieces:
        group = store.read_row_group(piece, names)
        for i, row_id in enumerate(group["id"]):
            out[row_id] = {n: decoders[n](group[n][i]) if n in decoders and group[n][i] is not None else group[n][i]
                           for n in names}
    return out


def sample(field, rng, row: int = 0):
    """A value of ``field`` (a ``schemas.format.Field``) as a writer gives it; ``row`` varies scalars and sizes."""
    from schemas import format as fmt

    if isinstance(field.codec, fmt.ScalarCodec):
        return {np.str_: f"near-{row}" if row else "near", np.int32: 3 + row,
                np.int64: -(2 ** 40) + row}[field.numpy_dtype]
    shape = [dim or 5 + i + row % 3 for i, dim in enumerate(field.shape)]
    if field.numpy_dtype == np.float32:
        return rng.normal(size=shape).astype(np.float32)
    return rng.integers(0, 256, shape).astype(field.numpy_dtype)
