"""Untrusted files: a dataset, a checkpoint or an annotation file is data, never code. Each payload below would
create a marker file if it ran. Decompression bombs (refused from their header) are shown by
tests/data/test_images.py::test_too_large_refused_from_header_before_decoding and the bomb.png of
tests/data/test_ingest.py's folder ingest; `..` and absolute annotation paths by
tests/data/test_readers.py::test_resolve_never_leaves_root."""
from __future__ import annotations

import ast
import io
import os
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.data import readers, store
from pipeline.train.loader import LoaderSpec, rows
from pipeline.train.run import load_checkpoint
from schemas.datasets import TLFrameSchema, field_decoders
from tests.faults.util import REPO, record


class Payload:
    """Unpickled, it runs ``exec`` (a builtin: Petastorm's "restricted" unpickler allows builtins)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _poison(split: Path, marker: Path) -> None:
    """Replace the pickled Unischema in a split's ``_common_metadata`` by a payload."""
    from petastorm.etl.dataset_metadata import UNISCHEMA_KEY

    schema = pq.read_metadata(str(split / "_common_metadata")).schema.to_arrow_schema()
    pq.write_metadata(schema.with_metadata({**schema.metadata, UNISCHEMA_KEY: pickle.dumps(Payload(marker))}),
                      str(split / "_common_metadata"))


def test_nothing_read_from_a_dataset_is_unpickled(tiny_data, tmp_path):
    split = tmp_path / "tl_crops" / "train"
    shutil.copytree(Path(tiny_data().paths.data_url[len("file://"):]) / "synthetic" / "tl_crops" / "train", split)
    marker = tmp_path / "ran"
    _poison(split, marker)
    got = list(rows(LoaderSpec(split.as_uri(), "tl_crops", 8)))      # what training, evaluation and the analyses read
    assert not marker.exists(), "the training loader unpickled the dataset's metadata"
    assert len(got) == pq.read_table(str(split)).num_rows and got[0]["image"].shape == (32, 32, 3)
    # Petastorm on its own does run it: why the pipeline's readers take the Unischema from code.
    from petastorm import make_batch_reader

    with pytest.raises(Exception):
        make_batch_reader(split.as_uri(), reader_pool_type="dummy")
    assert marker.exists()
    record("untrusted: a dataset whose _common_metadata pickle runs code", "the loader read every row with the "
           "Unischema from code; the payload did not run (plain Petastorm runs it)")


def test_a_checkpoint_is_loaded_with_weights_only(tmp_path):
    marker = tmp_path / "ran"
    buf = io.BytesIO()
    torch.save({"model": {}, "epoch": 0, "extra": Payload(marker)}, buf)
    (tmp_path / "last.pt").write_bytes(buf.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(tmp_path.as_uri())
    assert not marker.exists()


def test_stored_arrays_are_read_without_pickle(tmp_path):
    marker = tmp_path / "ran"
    value = io.BytesIO()
    np.save(value, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    decode = field_decoders(TLFrameSchema, ["boxes"])["boxes"]
    with pytest.raises(ValueError, match="allow_pickle=False"):
        decode(bytearray(value.getvalue()))
    assert not marker.exists()


FORBIDDEN = {("pickle", "load"), ("pickle", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
             ("dill", "load"), ("dill", "loads"), ("joblib", "load"), ("marshal", "loads"), ("yaml", "unsafe_load"),
             ("shelve", "open")}


def test_no_code_path_deserializes_with_pickle_outside_the_safe_loaders():
    """Every torch.load passes weights_only=True; no pickle-family loader, np.load(allow_pickle=True) or
    yaml.load without our safe Loader; Petastorm readers only in the loader, inside store.schemas_from_code."""
    problems = []
    for path in sorted((REPO / "pipeline").rglob("*.py")) + sorted((REPO / "schemas").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            name, kwargs = node.func.attr, {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if (owner, name) in FORBIDDEN:
                problems.append(f"{where}: {owner}.{name}")
            if (owner, name) == ("torch", "load") and not (isinstance(kwargs.get("weights_only"), ast.Constant)
                                                           and kwargs["weights_only"].value is True):
                problems.append(f"{where}: torch.load without weights_only=True")
            if (owner, name) == ("np", "load") and isinstance(kwargs.get("allow_pickle"), ast.Constant) \
                    and kwargs["allow_pickle"].value:
                problems.append(f"{where}: np.load(allow_pickle=True)")
            if (owner, name) == ("yaml", "load") and "Loader" not in kwargs:
                problems.append(f"{where}: yaml.load without a Loader")
    assert problems == []
    readers_of_petastorm = sorted(str(p.relative_to(REPO)) for p in (REPO / "pipeline").rglob("*.py")
                                  if "make_batch_reader(" in p.read_text() or "make_reader(" in p.read_text())
    assert readers_of_petastorm == ["pipeline/train/loader.py"]
    assert "store.schemas_from_code(" in (REPO / "pipeline" / "train" / "loader.py").read_text()
    assert "Loader = CSafeLoader" in (REPO / "pipeline" / "yamltext.py").read_text()
    record("untrusted: checkpoints, models and stored values", "checkpoints load with weights_only=True (a pickled "
           "payload is refused), models through mlflow.pytorch.load_model, stored arrays with allow_pickle=False; "
           "no other deserializer in pipeline/ or schemas/")


def test_annotation_paths_cannot_escape_the_root_through_a_symlink(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "rgb").mkdir(parents=True)
    outside.mkdir()
    for folder in (outside, root / "rgb"):
        cv2.imwrite(str(folder / "frame.png"), np.zeros((40, 40, 3), np.uint8))
    os.symlink(outside / "frame.png", root / "rgb" / "link.png")      # a file link leading out
    os.symlink(outside, root / "out")                                # a folder link leading out
    os.symlink(root / "rgb" / "frame.png", root / "rgb" / "inner.png")   # a link that stays inside: fine
    (root / "train.yaml").write_text("".join(f"- path: {p}\n  boxes: []\n" for p in
                                             ("./rgb/frame.png", "./rgb/inner.png", "./rgb/link.png",
                                              "./out/frame.png", "../outside/frame.png")))
    got = {r.source_id: r.reason for r in readers.read_source("bosch", str(root / "train.yaml"))}
    assert got == {"rgb/frame.png": None, "rgb/inner.png": None,
                   "./rgb/link.png": "path_escapes_root:./rgb/link.png",
                   "./out/frame.png": "path_escapes_root:./out/frame.png",
                   "../outside/frame.png": "path_escapes_root:../outside/frame.png"}, got
    record("untrusted: annotation paths leading out of the root", "`..`, absolute paths and symlinks leading out "
           "are quarantined as path_escapes_root")
