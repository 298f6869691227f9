"""What every source reader shares: where a source lies, listing its folders once, resolving an
annotation's image path inside the dataset root, and reading annotation text, JSON and YAML.

A source is a local path or any URL fsspec opens (``s3://``, ``hdfs://``, ``memory://``, ...): the
pipeline reads and writes URLs at every stage. Readers name files by *address*, a plain string:

* a local source (a plain path, or a ``file://`` URL decoded as :func:`pipeline.data.images.read_bytes`
  decodes it): the absolute local path, so a local source gives the same records either way;
* any other: the full URL, with the scheme and host the source was given with
  (``hdfs://namenode:8020/data/x.png``, ``s3://bucket/x.png``, ``memory:///data/x.png``), which a worker
  opens with ``read_bytes``. fsspec's own path drops the host of some filesystems (HDFS keeps it in
  the filesystem object), so an address is the source URL's prefix plus fsspec's path.

This is the only module of the package that touches a filesystem, and it does so through fsspec only;
the one local-only check is where a symlink leads (:meth:`Location.real`).
"""
from __future__ import annotations

import codecs
import json
import os
import posixpath
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import IO, Iterator, Optional, Sequence

import yaml
from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pipeline import yamltext
from pipeline.data.records import SourceRecord
from pipeline.errors import UserError

#: Image file extensions recognised by folder walks (compared case-insensitively).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


class SourceError(UserError, ValueError):
    """A source that cannot be read as configured (unknown format, a key that does not apply to it,
    a URL no filesystem opens)."""


class AnnotationError(UserError, ValueError):
    """A whole annotation file cannot be parsed.

    The message reads ``<file>: line <n>: <what>`` (``n`` 1-based); the parts are also available
    as the attributes ``path``, ``line`` and ``what``.
    """

    def __init__(self, path: str, line: int, what: str):
        self.path, self.line, self.what = str(path), int(line), what
        super().__init__(f"{self.path}: line {self.line}: {what}")


# --------------------------------------------------------------------------------------------
# Where a source lies


@dataclass(frozen=True)
class Location:
    """A filesystem, and the text that turns its fsspec paths into addresses ("" on a local disk)."""
    fs: AbstractFileSystem
    prefix: str = ""

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def address(self, path: str) -> str:
        """The address of fsspec's ``path`` on this filesystem."""
        return self.prefix + path

    def path(self, address: str) -> str:
        """fsspec's path of an ``address`` on this filesystem."""
        return address[len(self.prefix):]

    def real(self, path: str) -> str:
        """Where ``path`` leads: symlinks resolved on a local disk. Other filesystems are checked on
        the path alone (fsspec follows no links there), which :meth:`Source.resolve` already does."""
        return os.path.realpath(path) if self.local else path

    def entries(self, folder: str) -> Iterator[tuple[str, str]]:
        """(name, "file" or "directory") per entry of ``folder``, a symlink as what it leads to (a
        broken one, or anything else, left out; a file has none). OSError when ``folder`` cannot be
        listed."""
        for info in self.fs.ls(folder, detail=True):
            name = info["name"].rstrip("/")
            if name == folder.rstrip("/"):      # a file lists as itself; a folder marker likewise
                continue
            kind = info.get("type")
            if kind not in ("file", "directory"):
                kind = self._followed_kind(name)
            if kind in ("file", "directory"):
                yield posixpath.basename(name), kind

    def _followed_kind(self, path: str) -> Optional[str]:
        """The type of what ``path`` leads to (fsspec's local ``ls`` reports a symlink as "other";
        ``info`` follows it), or None if nothing is there."""
        try:
            return self.fs.info(path).get("type")
        except OSError:
            return None

    def scan(self, folder: str) -> tuple[list[str], list[str]]:
        """One listing of ``folder``: sorted (sub-folder names, file names); hidden names skipped."""
        dirs, files = [], []
        for name, kind in self.entries(folder):
            if not name.startswith("."):
                (dirs if kind == "directory" else files).append(name)
        return sorted(dirs), sorted(files)


#: Local paths and ``file://`` URLs: addresses are absolute local paths.
LOCAL = Location(LocalFileSystem())


def is_url(where: str) -> bool:
    """Whether ``where`` names a URL, by the rule :func:`pipeline.data.images.read_bytes` uses: a
    scheme of two letters or more (one letter is a Windows drive)."""
    return len(urllib.parse.urlsplit(where).scheme) > 1


def locate(where: str) -> tuple[Location, str]:
    """The filesystem of ``where`` (a local path or a URL) and ``where``'s address on it."""
    if not is_url(where):
        return LOCAL, os.path.abspath(where)
    parts = urllib.parse.urlsplit(where)
    if parts.scheme == "file":
        return LOCAL, os.path.abspath(urllib.request.url2pathname(parts.path))
    try:
        fs, path = url_to_fs(where)
    except (ImportError, ValueError) as exc:
        raise SourceError(f"no filesystem opens {where}: {exc}") from None
    if isinstance(fs, LocalFileSystem):
        return LOCAL, os.path.abspath(path)
    place = Location(fs, url_prefix(where, path))
    return place, place.address(posixpath.normpath(path))


def url_prefix(url: str, path: str) -> str:
    """The text of ``url`` before fsspec's ``path`` of it, shared by every path on that filesystem:
    ``s3://`` for ``s3://bucket/key`` (path ``bucket/key``), ``hdfs://namenode:8020`` for
    ``hdfs://namenode:8020/data`` (path ``/data``)."""
    for text in (url, url.rstrip("/")):
        if path and text.endswith(path):
            return text[:len(text) - len(path)]
    raise SourceError(f"cannot write the files under {url} as URLs: fsspec reads it as the path "
                      f"{path!r}, which is not the URL's end")


def address(where: str) -> str:
    """``where`` (a local path or a URL) as an address."""
    return locate(where)[1]


def parent(where: str) -> str:
    """The address of the folder holding ``where``."""
    place, addr = locate(where)
    return place.address(posixpath.dirname(place.path(addr)))


def inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or below it (both normalised, the same kind: paths or addresses)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def relative(path: str, root: str) -> str:
    """``path`` below ``root`` as a relative posix path (``"."`` for the root itself)."""
    return "." if path == root else path[len(root.rstrip("/")) + 1:]


# --------------------------------------------------------------------------------------------
# Folders


def is_file(where: str) -> bool:
    """Whether ``where`` is a file (a symlink to one counts)."""
    place, addr = locate(where)
    return place.fs.isfile(place.path(addr))


def require_dir(root: str) -> str:
    """The address of the dataset folder ``root``; FileNotFoundError or NotADirectoryError naming
    ``root`` as given when it is not one."""
    place, addr = locate(root)
    try:
        kind = place.fs.info(place.path(addr)).get("type")
    except (FileNotFoundError, PermissionError):
        raise FileNotFoundError(f"dataset root does not exist: {root}") from None
    if kind != "directory":
        raise NotADirectoryError(f"dataset root is not a folder: {root}")
    return addr


def scan(folder: str) -> tuple[list[str], list[str]]:
    """One listing of the folder at address ``folder``: sorted (sub-folder names, file names);
    hidden names skipped."""
    place, addr = locate(folder)
    return place.scan(place.path(addr))


def walk(top: str, listing: Optional[tuple[list[str], list[str]]] = None
         ) -> Iterator[tuple[str, list[str]]]:
    """Yield (folder address, file names) for ``top`` and every folder below it, in name order,
    listing each folder once (``listing`` is ``top``'s if already scanned). Symlinked folders are
    followed, each real folder visited once; a folder gone before it is listed is skipped."""
    place, top = locate(top)
    seen = set()
    stack = [(top, listing)]
    while stack:
        folder, listing = stack.pop()
        real = place.real(place.path(folder))
        if real in seen:
            continue
        seen.add(real)
        if listing is None:
            try:
                listing = place.scan(place.path(folder))
            except FileNotFoundError:
                continue
        dirs, files = listing
        yield folder, files
        stack.extend((posixpath.join(folder, d), None) for d in reversed(dirs))


def is_image(name: str) -> bool:
    """Whether the file ``name`` has one of :data:`IMAGE_EXTENSIONS`."""
    return posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def annotation_root(annotation: str, image_root: Optional[str]) -> str:
    """The folder an annotation file's image paths are relative to, its dataset root:
    ``image_root`` (config ``ingest.image_root``) if set, else the annotation file's folder."""
    return image_root or parent(annotation)


# --------------------------------------------------------------------------------------------
# Resolving an annotation's image path


@dataclass(frozen=True)
class Resolved:
    """An annotation's image path, checked against the dataset root."""
    key: str                 # identity of the frame, for duplicate detection
    rel: str                 # root-relative posix path (raw text when outside root): the source_id
    path: Optional[str]      # address when the file exists inside the root, else None
    reason: Optional[str]    # path_escapes_root / missing_file / ambiguous_file, else None

    @property
    def parent(self) -> str:
        """The folder part of ``rel`` (``"."`` for a file directly in the root)."""
        return posixpath.dirname(self.rel) or "."


class Source:
    """State of one read: the dataset root (and further image roots to try), cached directory
    listings, and the records emitted so far (the first listing of a frame wins; source ids are
    kept unique). Roots are local paths or URLs."""

    def __init__(self, root: str, also: Sequence[str] = ()):
        self._places = [locate(root)]
        for other in map(locate, also):
            if other[1] not in [addr for _, addr in self._places]:
                self._places.append(other)
        self.root = self._places[0][1]
        self.roots = [addr for _, addr in self._places]
        self._listings: dict[str, frozenset] = {}
        self._records: list[SourceRecord] = []
        self._by_key: dict[str, SourceRecord] = {}
        self._ids: set[str] = set()

    def rel(self, addr: str) -> str:
        """The address ``addr`` relative to the root with ``/`` separators; the base name if
        outside it."""
        if not inside(addr, self.root):
            return posixpath.basename(addr)
        return relative(addr, self.root)

    def _files_in(self, place: Location, folder: str) -> frozenset:
        """Names of the regular files in ``folder`` (empty if unreadable), listed once."""
        key = place.address(folder)
        names = self._listings.get(key)
        if names is None:
            try:
                names = frozenset(name for name, kind in place.entries(folder) if kind == "file")
            except (OSError, ValueError):
                names = frozenset()
            self._listings[key] = names
        return names

    def resolve(self, raw: str) -> Resolved:
        """Resolve an annotation's path (absolute, or relative to the root) without opening it.
        With further roots, the first root that has the file wins; if none has it, the result
        for the root itself, a missing file's reason naming every root searched."""
        first = None
        for place, root in self._places:
            res = self._resolve_in(place, place.path(root), raw)
            if res.path is not None:
                return res
            first = first or res
        return first

    def _resolve_in(self, place: Location, root: str, raw: str) -> Resolved:
        """``raw`` resolved in the one root ``root`` (fsspec's path) of ``place``."""
        candidate = posixpath.normpath(raw if posixpath.isabs(raw) else posixpath.join(root, raw))
        # the text must stay inside the root, and so must where it leads (a symlink may lead out)
        if not inside(candidate, root) or not inside(place.real(candidate), place.real(root)):
            return Resolved(place.address(candidate), raw, None, f"path_escapes_root:{raw}")
        rel = relative(candidate, root)
        folder, name = posixpath.split(candidate)
        if name in self._files_in(place, folder):
            return Resolved(place.address(candidate), rel, place.address(candidate), None)
        return Resolved(place.address(candidate), rel, None,
                        f"missing_file:{raw} (looked in {', '.join(self.roots)}; set "
                        f"ingest.image_root to the folder image paths are relative to)")

    def add(self, record: SourceRecord, key: Optional[str] = None) -> bool:
        """Emit ``record``; if ``key`` was emitted before, drop it instead, count
        ``duplicate_frame`` on the first record and return False."""
        if key is not None:
            first = self._by_key.get(key)
            if first is not None:
                first.fixes.append("duplicate_frame")
                return False
            self._by_key[key] = record
        source_id, n = record.source_id, 1
        while source_id in self._ids:
            n += 1
            source_id = f"{record.source_id}#{n}"
        record.source_id = source_id
        self._ids.add(source_id)
        self._records.append(record)
        return True

    def malformed(self, annotation: str, where, reason: str, what: str) -> None:
        """Emit a quarantined record for a broken line/entry of the file ``annotation`` (relative)."""
        self.add(SourceRecord(source_id=f"{annotation}:{where}", path=None, group=annotation,
                              reason=f"{reason}:{where}: {what}"))

    @property
    def records(self) -> list[SourceRecord]:
        return self._records


# --------------------------------------------------------------------------------------------
# Annotation files


def open_file(where: str) -> IO[bytes]:
    """The file ``where`` (a local path, URL or address) opened for reading bytes."""
    place, addr = locate(where)
    return place.fs.open(place.path(addr), "rb")


def read_text(path: str) -> str:
    """A whole UTF-8 file (BOM allowed); AnnotationError with the line of a bad byte."""
    with open_file(path) as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise AnnotationError(path, line, f"not UTF-8 text ({exc.reason})") from None


def lines(path: str) -> Iterator[tuple[int, Optional[str], Optional[str]]]:
    """Yield (1-based line number, text without the line end, None) per line, or
    (n, None, error) for a line that is not UTF-8, so one bad line does not stop the file."""
    with open_file(path) as f:
        for n, raw in enumerate(f, 1):
            if n == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield n, raw.decode("utf-8").rstrip("\r\n"), None
            except UnicodeDecodeError as exc:
                yield n, None, f"not UTF-8 text ({exc.reason})"


def load_json(path: str):
    """The parsed JSON file ``path``; AnnotationError with the line JSON reports."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})") \
            from None


def top_list(data, key: str, path: str, required: bool = True) -> list:
    """``data[key]`` of a JSON annotation file, which must be a list."""
    if not isinstance(data, dict):
        raise AnnotationError(path, 1, "expected a JSON object at the top level")
    if key not in data:
        if required:
            raise AnnotationError(path, 1, f"missing top-level key '{key}'")
        return []
    if not isinstance(data[key], list):
        raise AnnotationError(path, 1, f"top-level key '{key}' must be a list")
    return data[key]


def yaml_items(path: str) -> Iterator[tuple[int, object, Optional[str]]]:
    """Yield (first line, value, None) for each item of a YAML file holding one list, or
    (line, None, error) for an item that cannot be constructed. Whole-file problems raise
    AnnotationError with the line YAML reports. YAML 1.2 booleans (:mod:`pipeline.yamltext`): a
    Bosch label ``off`` stays the string "off" (YAML 1.1 reads it as False)."""
    loader = yamltext.Loader(read_text(path))
    try:
        node = _single_node(loader, path)
        for child in node.value:
            line = child.start_mark.line + 1
            try:
                value = loader.construct_document(child)
            except yaml.YAMLError as exc:
                yield line, None, f"invalid YAML: {getattr(exc, 'problem', None) or exc}"
                continue
            yield line, value, None
    finally:
        loader.dispose()


def _single_node(loader, path: str) -> yaml.SequenceNode:
    """The one document of ``loader``, which must be a list; AnnotationError otherwise."""
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        what = getattr(exc, "problem", None) or str(exc)
        raise AnnotationError(path, mark.line + 1 if mark else 1, f"invalid YAML: {what}") \
            from None
    if node is None:
        raise AnnotationError(path, 1, "empty file, expected a list of frames")
    if not isinstance(node, yaml.SequenceNode):
        raise AnnotationError(path, node.start_mark.line + 1, "expected a list of frames")
    return node
