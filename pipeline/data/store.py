"""Storage by URL: the one place that turns ``file://``, ``hdfs://``, ``s3://`` URLs into filesystems.

Datasets live at ``<paths.data_url>/<name>``; each kind of rows has one Petastorm dataset per split under it
(``<root>/<kind>/<split>``), and ``<root>/_ingest.json`` holds the summary its writer left (kinds, classes,
counts per split). A writer builds a whole dataset under a temporary folder and swaps it in (:func:`swap_in`);
:func:`recover` undoes what a killed writer left. Imports nothing of ours but the error type.
"""
from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Optional

from pipeline.errors import UserError

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


def temporary(root_url: str) -> str:
    """A fresh temporary folder beside the dataset (``<root>.tmp-<id>``), for :func:`swap_in`."""
    return f"{root_url}.tmp-{uuid.uuid4().hex[:8]}"


def swap_in(tmp_url: str, root_url: str) -> None:
    """Replace the dataset folder by the finished temporary one (a rename on local and HDFS storage)."""
    fs, tmp = filesystem(tmp_url)
    _, root = filesystem(root_url)
    old = f"{root}.old-{uuid.uuid4().hex[:8]}"
    if fs.exists(root):
        fs.mv(root, old, recursive=True)
    fs.mv(tmp, root, recursive=True)
    if fs.exists(old):
        fs.rm(old, recursive=True)
