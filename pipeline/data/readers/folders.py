"""ImageFolder: a folder of class folders of images, the class taken from the folder's name."""
from __future__ import annotations

import posixpath
from typing import Optional

from pipeline.data.readers.common import Source, is_image, require_dir, scan, walk
from pipeline.data.records import SourceRecord

#: ImageFolder top-level folder names that fix a record's split (compared case-insensitively).
SPLIT_FOLDERS = ("train", "val", "test")
#: ImageFolder: a file named ``<group>__<rest>`` belongs to group ``<group>``.
GROUP_SEPARATOR = "__"


def read_imagefolder(root: str) -> list[SourceRecord]:
    """Read ``root/<class>/<image>`` or ``root/{train,val,test}/<class>/<image>``.

    ``label`` is the class folder name; images in sub-folders of a class folder belong to that
    class. A top-level folder named train/val/test (any case) that has sub-folders is a split
    folder and sets ``split`` (lower case); other top-level folders are classes with ``split``
    None. ``group`` is the image's root-relative path (each image its own group), unless the file
    name is ``<group>__<rest>`` (non-empty ``<group>``): then the group is ``<group>``, shared by
    all files with that prefix across class and split folders (e.g. frames of one drive).
    Files with another extension and hidden files/folders (name starting with ".") are ignored;
    an image outside any class folder gets reason ``no_class_folder``.
    """
    src = Source(require_dir(root))
    dirs, files = scan(src.root)
    _loose(src, src.root, files, split=None)
    for name in dirs:
        folder = posixpath.join(src.root, name)
        sub_dirs, sub_files = scan(folder)
        if name.lower() in SPLIT_FOLDERS and sub_dirs:
            split = name.lower()
            _loose(src, folder, sub_files, split)
            for cls in sub_dirs:
                _class(src, posixpath.join(folder, cls), cls, split)
        else:
            _class(src, folder, name, None, (sub_dirs, sub_files))
    return src.records


def _group(name: str, rel: str) -> str:
    """The group of the image ``name`` at root-relative ``rel``: its name's prefix, else ``rel``."""
    prefix, sep, rest = posixpath.splitext(name)[0].partition(GROUP_SEPARATOR)
    return prefix if sep and prefix and rest else rel


def _loose(src: Source, folder: str, files: list[str], split: Optional[str]) -> None:
    """Images lying in ``folder`` outside any class folder: emitted, flagged ``no_class_folder``."""
    for name in files:
        if is_image(name):
            path = posixpath.join(folder, name)
            rel = src.rel(path)
            src.add(SourceRecord(source_id=rel, path=path, group=_group(name, rel),
                                 split=split, reason="no_class_folder"), path)


def _class(src: Source, class_dir: str, label: str, split: Optional[str], listing=None) -> None:
    """Every image under ``class_dir``, labelled ``label``."""
    for folder, files in walk(class_dir, listing):
        for name in files:
            if is_image(name):
                path = posixpath.join(folder, name)
                rel = src.rel(path)
                src.add(SourceRecord(source_id=rel, path=path, group=_group(name, rel),
                                     label=label, split=split), path)
