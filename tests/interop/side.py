"""One side of the interop test (tests/interop/test_interop.py), run with one pin set's own Python.

    python tests/interop/side.py read URL [URL ...]        every row of each dataset, decoded and digested
    python tests/interop/side.py write-petastorm ROOT ROWS  datasets written by Petastorm's materialize_dataset

``read`` reads with the set's reader (tests/datasets.py: Petastorm's ``make_reader`` on the petastorm set, the
project's pyarrow reader on the current set) and prints JSON: which reader, and ``{url: {id: {field: digest}}}``.
``write-petastorm`` (petastorm set only) writes, for every schema of ``schemas/datasets.py``, ROWS rows of known
values with Petastorm's own writer (``materialize_dataset`` around a Spark DataFrame of ``dict_to_spark_row``
rows, Petastorm's documented way) and prints the digests of the values it wrote, in the same form.
A digest is a value's dtype, shape and SHA-256: equal digests are equal arrays, scalars compare as text.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.datasets import CURRENT_STACK, read_dataset, sample  # noqa: E402


def digest(value) -> str:
    if isinstance(value, np.ndarray):
        data = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:20]
        return f"{value.dtype.str}{list(value.shape)}:{data}"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode()
    return f"{type(value).__name__}:{value}"


def digest_rows(rows: dict) -> dict:
    return {str(key): {name: digest(v) for name, v in sorted(row.items())} for key, row in rows.items()}


def read(urls) -> dict:
    reader = "pyarrow (the project's reader)" if CURRENT_STACK else "petastorm.make_reader"
    return {"reader": reader, "datasets": {url: digest_rows(read_dataset(url)) for url in urls}}


def schemas_to_write() -> dict:
    """{folder under ROOT: schema}: every kind plain and augmented, and one with raw (``.npy``) images."""
    from schemas.datasets import AUGMENTED_SCHEMAS, SCHEMAS, with_image_format

    out = {f"plain/{kind}/train": schema for kind, schema in SCHEMAS.items()}
    out.update({f"augmented/{kind}/train": schema for kind, schema in AUGMENTED_SCHEMAS.items()})
    out["raw/tl_crops/train"] = with_image_format(SCHEMAS["tl_crops"], "raw")
    return out


def write_petastorm(root: str, rows: int) -> dict:
    from petastorm.etl.dataset_metadata import materialize_dataset
    from petastorm.unischema import dict_to_spark_row
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark's Python workers: this venv's Python
    spark = (SparkSession.builder.master("local[1]").appName("interop-petastorm-writer")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "3").getOrCreate())
    written = {}
    try:
        for folder, schema in schemas_to_write().items():
            unischema = schema.as_unischema()  # Petastorm's own Unischema class, built from the declaration
            rng = np.random.default_rng(len(folder))
            values = {}
            for i in range(rows):
                row = {name: sample(field, rng, i) for name, field in schema.fields.items()}
                row["id"] = f"{folder.split('/')[0]}-{i:04d}"
                values[row["id"]] = row
            url = f"{root.rstrip('/')}/{folder}"
            with materialize_dataset(spark, url, unischema, row_group_size_mb=1):
                frame = spark.createDataFrame([dict_to_spark_row(unischema, row) for row in values.values()],
                                              unischema.as_spark_schema())
                frame.repartition(3).write.mode("overwrite").parquet(url)  # three files: three row groups
            written[url] = digest_rows(values)
    finally:
        spark.stop()
    return {"writer": "petastorm.etl.dataset_metadata.materialize_dataset", "datasets": written}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("read").add_argument("urls", nargs="+")
    writer = sub.add_parser("write-petastorm")
    writer.add_argument("root")
    writer.add_argument("rows", type=int)
    args = parser.parse_args(argv)
    if args.command == "read":
        out = read(args.urls)
    else:
        if CURRENT_STACK:
            parser.error("write-petastorm needs Petastorm: run it with the petastorm set's Python")
        out = write_petastorm(args.root, args.rows)
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
