"""Datasets written by the Spark tasks themselves: one Parquet file per task and folder, then Petastorm metadata.

Why: a stage that filters one cached RDD into a ``DataFrame.write`` per (kind, split) pays a Spark job, a
query plan and a Petastorm metadata job for each of them (benchmarks/RESULTS.md: most of the ingest and augment
stages' fixed cost). Here one job does the work: every task encodes its rows with the Unischema's codecs and
writes them with pyarrow, a file per folder it has rows for, and returns what it wrote (files, row groups, rows)
to the driver, which adds the Petastorm metadata (the pickled Unischema and the row groups per file) from that
alone, with no second pass over the data.

Re-runnable: a task writes its file under a hidden name unique to the attempt (``.<name>.<uuid>.inprogress``,
which no reader lists) and reports that name; only the driver, after the job, renames the reported file of each
task to its final name (fixed by the task's input, never by the attempt) and deletes every other hidden file. So
a retried, speculative or zombie attempt can neither add a second copy of its rows nor touch a committed file,
and a killed job leaves nothing a reader would see.
"""
from __future__ import annotations

import uuid
from typing import Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.store import filesystem


def arrow_schema(unischema) -> pa.Schema:
    """The Arrow schema Spark would write for a schema (same column types, so either reads the other)."""
    return unischema.arrow_schema()


def encode_png(field, value, level: int) -> bytearray:
    """What Petastorm's ``CompressedImageCodec('png')`` stores (RGB in, BGR PNG bytes; any PNG decodes with the
    same codec), at a chosen zlib level: the codec itself always uses OpenCV's default."""
    import numpy as np

    from pipeline.data.images import encode_png as png

    if not isinstance(value, np.ndarray) or value.dtype != field.numpy_dtype or value.ndim != len(field.shape) \
            or any(f is not None and f != v for f, v in zip(field.shape, value.shape)):
        raise ValueError(f"Unexpected value of {field.name} feature: expected {field.numpy_dtype} of shape "
                         f"{field.shape}, got {getattr(value, 'dtype', type(value))} of shape "
                         f"{getattr(value, 'shape', None)}")
    return bytearray(png(value, level))


def encode_row(unischema, values: dict, png_level: Optional[int] = None, image_format: str = "png") -> dict:
    """Numpy values -> the stored values, with the Unischema's codecs (as ``dict_to_spark_row``, without a Row);
    with ``png_level``, the ``image`` field's PNG is written at that zlib level (see :func:`encode_png`); with
    ``image_format="raw"``, the image is stored as its array (``schemas.datasets.with_image_format``)."""
    from schemas.datasets import with_image_format

    unischema = with_image_format(unischema, image_format)
    fields = unischema.fields
    if values.keys() != fields.keys():
        missing, extra = sorted(fields.keys() - values.keys()), sorted(values.keys() - fields.keys())
        raise ValueError(f"{unischema._name}: row fields do not match the schema "
                         f"(missing {missing}, unexpected {extra})")
    out = {}
    for name, value in values.items():
        field = fields[name]
        if value is None:
            if not field.nullable:
                raise ValueError(f"{unischema._name}.{name} is not nullable")
            out[name] = None
        elif png_level is not None and name == "image" and getattr(field.codec, "_image_codec", None) == ".png":
            out[name] = encode_png(field, value, png_level)
        else:
            out[name] = field.codec.encode(field, value) if field.codec is not None else value
    return out


def row_groups(url: str, columns: list) -> Iterator[pa.Table]:
    """The row groups of one Parquet file at ``url``, one Arrow table at a time (bounded memory), with
    ``columns`` only: how a task reads a source file of a dataset it derives another from."""
    fs, path = filesystem(url)
    with fs.open(path, "rb") as fh:
        source = pq.ParquetFile(fh)
        for group in range(source.num_row_groups):
            yield source.read_row_group(group, columns=columns)


class _Folder:
    def __init__(self, fs, directory: str, name: str, schema: pa.Schema, rowgroup_bytes: int):
        self.fs, self.directory, self.name, self.schema = fs, directory, name, schema
        self.rowgroup_bytes = rowgroup_bytes
        self.columns = {f.name: [] for f in schema}
        self.buffered = self.rows = self.row_groups = 0
        self.writer = self.handle = None
        self.hidden = f"{directory}/.{name}.{uuid.uuid4().hex[:8]}.inprogress"

    def add(self, row: dict) -> None:
        for name, column in self.columns.items():
            value = row[name]
            column.append(value)
            self.buffered += len(value) if isinstance(value, (bytes, bytearray, str)) else 8
        self.rows += 1
        if self.buffered >= self.rowgroup_bytes:
            self._flush()

    def _open(self) -> None:
        if self.writer is None:
            self.fs.makedirs(self.directory, exist_ok=True)
            self.handle = self.fs.open(self.hidden, "wb")
            self.writer = pq.ParquetWriter(self.handle, self.schema)

    def _flush(self) -> None:
        self._open()
        if self.buffered:  # (an empty table would still make a row group: pyarrow writes one for 0 rows)
            table = pa.table({n: pa.array(v, type=self.schema.field(n).type) for n, v in self.columns.items()},
                             schema=self.schema)
            self.writer.write_table(table, row_group_size=len(table))
            self.row_groups += 1
        self.columns = {n: [] for n in self.columns}
        self.buffered = 0

    def add_table(self, table: pa.Table) -> None:
        if self.buffered:
            self._flush()
        self._open()
        per_group = max(1, int(len(table) * self.rowgroup_bytes / max(table.nbytes, 1)))
        for start in range(0, len(table), per_group):
            self.writer.write_table(table.slice(start, per_group), row_group_size=per_group)
            self.row_groups += 1
        self.rows += len(table)

    def close(self) -> dict:
        """Finish the hidden file; the driver commits it (:func:`commit`)."""
        self._flush()
        self.writer.close()
        self.handle.close()
        return {"file": self.name, "hidden": self.hidden.rsplit("/", 1)[-1], "rows": self.rows,
                "row_groups": self.row_groups}


class PartWriter:
    """In a Spark task: rows into ``<root>/<folder>/<name>.parquet``, one file per folder, row groups of
    about ``rowgroup_size_mb``. ``close()`` returns ``{folder: {"file", "rows", "row_groups"}}``."""

    def __init__(self, root_url: str, name: str, rowgroup_size_mb: float):
        self.fs, self.root = filesystem(root_url)
        self.name = f"{name}.parquet"
        self.rowgroup_bytes = int(rowgroup_size_mb * 2 ** 20)
        self.folders: dict = {}

    def add(self, folder: str, schema: pa.Schema, row: dict) -> None:
        """One row of stored values (see :func:`encode_row`) to ``folder``, whose files all have ``schema``."""
        out = self.folders.get(folder)
        if out is None:
            out = self.folders[folder] = _Folder(self.fs, f"{self.root}/{folder}", self.name, schema,
                                                 self.rowgroup_bytes)
        out.add(row)

    def add_table(self, folder: str, table: pa.Table) -> None:
        """Whole rows already in Arrow form (no decoding), e.g. a source file with lineage columns added."""
        self.ensure(folder, table.schema)
        self.folders[folder].add_table(table)

    def ensure(self, folder: str, schema: pa.Schema) -> None:
        """Write ``folder``'s file even if it gets no rows (plain tables that readers expect to exist)."""
        if folder not in self.folders:
            self.folders[folder] = _Folder(self.fs, f"{self.root}/{folder}", self.name, schema, self.rowgroup_bytes)

    def close(self) -> dict:
        return {folder: out.close() for folder, out in self.folders.items()}


def merge(results: Iterable[dict]) -> dict:
    """Task results ``{folder: file info}`` -> ``{folder: [file infos]}``; a file reported twice (a retried
    task whose first attempt also got its result through) counts once."""
    out: dict = {}
    for result in results:
        for folder, info in result.items():
            files = out.setdefault(folder, {})
            files[info["file"]] = info
    return {folder: sorted(files.values(), key=lambda i: i["file"]) for folder, files in out.items()}


def commit(url: str, files: list, *, check: bool = True) -> int:
    """The driver's half of a write: rename each reported hidden file to its final name, delete every other
    hidden file (attempts that failed, lost the race or still run), refuse files nobody reported, and, with
    ``check``, read every footer and fail unless the rows and row groups on disk are the ones reported.
    Returns the number of rows."""
    from concurrent.futures import ThreadPoolExecutor

    fs, path = filesystem(url)
    reported = {i["hidden"] for i in files if "hidden" in i}
    for hidden in fs.glob(f"{path}/.*.inprogress"):
        if hidden.rsplit("/", 1)[-1] not in reported:
            fs.rm(hidden)
    for info in files:
        if "hidden" in info:
            final = f"{path}/{info['file']}"
            if fs.exists(final):
                fs.rm(final)
            fs.mv(f"{path}/{info['hidden']}", final)
    names = {i["file"] for i in files}
    on_disk = {p.rsplit("/", 1)[-1] for p in fs.glob(f"{path}/*.parquet")}
    if on_disk != names:
        raise RuntimeError(f"{url}: files on disk {sorted(on_disk - names)} not reported by a task, or reported "
                           f"files missing {sorted(names - on_disk)}")
    if check:
        def footer(info):
            with fs.open(f"{path}/{info['file']}", "rb") as fh:
                return info, pq.read_metadata(fh)

        with ThreadPoolExecutor(8) as pool:  # one round trip per file on remote storage
            for info, meta in pool.map(footer, files):
                if (meta.num_rows, meta.num_row_groups) != (info["rows"], info["row_groups"]):
                    raise RuntimeError(f"{url}/{info['file']}: {meta.num_rows} rows in {meta.num_row_groups} row "
                                       f"groups on disk, {info['rows']} in {info['row_groups']} reported")
    return sum(i["rows"] for i in files)


def finalize(url: str, unischema, files: list, *, check: bool = True, image_format: str = "png") -> int:
    """Commit a folder's files (:func:`commit`) and make it a Petastorm dataset: ``_common_metadata`` with the
    Unischema (as stored: ``image_format``) and the row groups per file (what ``materialize_dataset`` writes,
    from the tasks' reports instead of a Spark job over the files). Returns the number of rows."""
    from schemas.datasets import with_image_format

    unischema = with_image_format(unischema, image_format)

    if not files:
        raise RuntimeError(f"{url}: no task wrote any file for this dataset")
    rows = commit(url, files, check=check)
    fs, path = filesystem(url)
    schema = arrow_schema(unischema).with_metadata(unischema.metadata({i["file"]: i["row_groups"] for i in files}))
    with fs.open(f"{path}/_common_metadata", "wb") as fh:
        pq.write_metadata(schema, fh)
    return rows
