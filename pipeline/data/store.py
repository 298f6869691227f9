"""Storage by URL: the one place that turns ``file://``, ``hdfs://``, ``s3://`` URLs into filesystems.

Datasets live at ``<paths.data_url>/<name>``; each kind of rows has one Petastorm dataset per split under it
(``<root>/<kind>/<split>``), and ``<root>/_ingest.json`` holds the summary its writer left (kinds, classes,
counts per split). A writer builds a whole dataset under a temporary folder and swaps it in (:func:`swap_in`);
:func:`recover` undoes what a killed writer left, and :func:`discard_unfinished` removes, when a stage fails, the
temporary folders it made and never swapped in (a full disk is freed at once). On local storage the swap is one
atomic exchange of the two folders, so the dataset's path holds the old or the new dataset at every instant,
even when the writer is SIGKILLed mid-swap; elsewhere it is two renames and :func:`recover` restores the old one.

A dataset is read with pyarrow (:func:`row_groups_of`, :func:`read_row_group`), its schema taken from our code:
nothing read from it is unpickled (Petastorm's own readers unpickle the Unischema in its ``_common_metadata``).
Imports nothing of ours but the error type and the fault hooks.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import threading
import uuid
from typing import Any, Optional

from pipeline.errors import UserError
from pipeline.faults import kill_point

log = logging.getLogger(__name__)

META = "_ingest.json"


class DatasetNotFound(UserError, FileNotFoundError):
    """No dataset (or no part of one) where the config points."""


def filesystem(url: str):
    """``(fsspec filesystem, path within it)`` for a URL or a local path."""
    import fsspec

    return fsspec.core.url_to_fs(url)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def read_json(url: str) -> Any:
    fs, path = filesystem(url)
    with fs.open(path, "r") as fh:
        return json.load(fh)


def write_json(url: str, value: Any) -> None:
    """Write ``value`` as JSON atomically (a temporary name, then a rename)."""
    write_bytes(url, json.dumps(value, indent=1, sort_keys=True, default=str).encode())


def write_bytes(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` atomically: a kill mid-write leaves the previous file (a rename on local
    and HDFS storage; object stores have no partial objects)."""
    fs, path = filesystem(url)
    fs.makedirs(path.rpartition("/")[0], exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open(tmp, "wb") as fh:
        fh.write(data)
    fs.mv(tmp, path)


def read_bytes(url: str) -> Optional[bytes]:
    """The file's bytes, or None when there is none."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as fh:
        return fh.read()


def dataset_root(data_url: str, name: str) -> str:
    """Where one dataset lives: ``<paths.data_url>/<name>``."""
    return f"{data_url.rstrip('/')}/{name}"


def write_meta(root_url: str, summary: dict) -> None:
    write_json(f"{root_url}/{META}", summary)


def read_meta(root_url: str) -> dict:
    """The summary a dataset's writer left next to it (kinds, classes, counts per split and class)."""
    url = f"{root_url}/{META}"
    if not exists(url):
        raise DatasetNotFound(f"no ingested dataset at {root_url}: run `pipeline ingest` first "
                              f"(or set train.data to the name of an ingested dataset)")
    return read_json(url)


def recover(root_url: str) -> None:
    """Undo what a killed writer left: stale temporary outputs go; a dataset caught mid-swap comes back."""
    fs, root = filesystem(root_url)
    parent, name = root.rstrip("/").rsplit("/", 1)
    if not fs.exists(parent):
        return
    leftovers = sorted(p for p in fs.ls(parent, detail=False) if p.rsplit("/", 1)[-1].startswith(f"{name}."))
    olds = [p for p in leftovers if ".old-" in p.rsplit("/", 1)[-1]]
    if olds and not fs.exists(root):
        fs.mv(olds[-1], root, recursive=True)
        log.warning("restored %s from an interrupted swap", root)
    for path in leftovers:
        if fs.exists(path):
            fs.rm(path, recursive=True)


_unfinished: set = set()        # temporary folders made by this process and not swapped in yet
_unfinished_lock = threading.Lock()


def temporary(root_url: str) -> str:
    """A fresh temporary folder beside the dataset (``<root>.tmp-<id>``), for :func:`swap_in`; until then
    :func:`discard_unfinished` removes it."""
    tmp = f"{root_url}.tmp-{uuid.uuid4().hex[:8]}"
    with _unfinished_lock:
        _unfinished.add(tmp)
    return tmp


def discard_unfinished() -> list:
    """Remove every temporary folder this process made and did not swap in (a stage failed: its partial output
    goes at once, which also frees a full disk). Returns the URLs removed. Best effort: a folder that cannot be
    removed now is left for :func:`recover` on the next run."""
    with _unfinished_lock:
        pending = sorted(_unfinished)
        _unfinished.clear()
    removed = []
    for url in pending:
        try:
            fs, path = filesystem(url)
            if fs.exists(path):
                fs.rm(path, recursive=True)
                removed.append(url)
        except OSError as exc:
            log.warning("could not remove the unfinished output %s (%s); the next run removes it", url, exc)
    return removed


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _exchange(a: str, b: str) -> bool:
    """Swap two local paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the kernel,
    the C library or the filesystem cannot, and the caller falls back to renames."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), a, None, b)


def swap_in(tmp_url: str, root_url: str) -> None:
    """Replace the dataset folder by the finished temporary one. On local storage one atomic exchange: a reader
    (or a kill) sees the old dataset or the new one, never none. Elsewhere two renames (atomic each on HDFS);
    a writer killed between them leaves the old dataset at ``<root>.old-<id>``, which :func:`recover` restores."""
    fs, tmp = filesystem(tmp_url)
    _, root = filesystem(root_url)
    if _is_local(fs) and fs.exists(root) and _exchange(tmp, root):
        with _unfinished_lock:
            _unfinished.discard(tmp_url)    # it holds the old dataset now: removed below, or by recover()
        kill_point("kill-mid-swap")
        fs.rm(tmp, recursive=True)
        return
    old = f"{root}.old-{uuid.uuid4().hex[:8]}"
    if fs.exists(root):
        fs.mv(root, old, recursive=True)
    kill_point("kill-mid-swap")
    fs.mv(tmp, root, recursive=True)
    with _unfinished_lock:
        _unfinished.discard(tmp_url)
    if fs.exists(old):
        fs.rm(old, recursive=True)


# ------------------------------------------------------------------------------ reading a dataset

def row_groups_of(url: str) -> list:
    """A dataset's row groups in a fixed order (its Parquet files by name, then each file's row groups in order),
    as pyarrow.dataset fragments of one row group each. Names starting with ``_`` or ``.`` are not data
    (``_common_metadata``, a writer's hidden ``.inprogress`` files)."""
    import pyarrow.dataset as ds

    fs, path = filesystem(url)
    if _is_local(fs):
        from pyarrow.fs import LocalFileSystem

        arrow_fs = LocalFileSystem()
    else:
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        arrow_fs = PyFileSystem(FSSpecHandler(fs))
    if not fs.exists(path):
        raise DatasetNotFound(f"no dataset at {url}")
    dataset = ds.dataset(path, filesystem=arrow_fs, format="parquet")
    return [piece for fragment in sorted(dataset.get_fragments(), key=lambda f: f.path)
            for piece in fragment.split_by_row_group()]


def read_row_group(piece, columns: list) -> dict:
    """One row group's ``columns`` as ``{name: list of values}``: the stored values (encoded images and arrays
    as bytes), read by pyarrow alone. The schema is the caller's (code); nothing stored is unpickled."""
    table = piece.to_table(columns=list(columns))
    return {name: table.column(name).to_pylist() for name in columns}
