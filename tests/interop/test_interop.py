"""The two pin sets share one dataset format (README: "Two pin sets"), checked across their two venvs.

- A dataset the project writes on the current set (no Petastorm there: ``schemas/format.py`` writes its bytes) is
  read by Petastorm's own ``make_reader`` on the petastorm set. ``make_reader``, not ``make_batch_reader``: these
  datasets are Petastorm datasets proper (a pickled Unischema in ``_common_metadata``, PNG and ``.npy`` codec
  columns), which ``make_reader`` decodes through the stored schema's codecs, as a team training with Petastorm
  would read them; ``make_batch_reader`` is Petastorm's reader for plain Parquet and hands back the encoded
  bytes undecoded, so it would check neither the schema pickle nor the codecs.
- Datasets written by Petastorm's own ``materialize_dataset`` on the petastorm set, one per schema of
  ``schemas/datasets.py``, are read by the project's reader (pyarrow) on the current set.

Both sides run as subprocesses of their own venv's Python (tests/interop/side.py), so this test runs from
either venv: ``make interop`` (CI) makes both. Without both it skips, naming the command; under CI it fails.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.browser import on_ci

REPO = Path(__file__).resolve().parents[2]
SIDE = REPO / "tests" / "interop" / "side.py"
VENVS = {"petastorm": Path(os.environ.get("ROAD_PETASTORM_VENV", REPO / ".venv")),
         "current": Path(os.environ.get("ROAD_CURRENT_VENV", REPO / ".venv-current"))}


def python_of(stack: str) -> Path:
    python = VENVS[stack] / "bin" / "python"
    if not (VENVS[stack] / ".installed").exists() or not python.exists():
        message = f"no {stack} venv at {VENVS[stack]}: `make interop` makes both sets' venvs and runs this"
        if on_ci():
            pytest.fail(f"{message}; under CI the interop test must run, not skip", pytrace=False)
        pytest.skip(message)
    return python


def side(stack: str, *args, timeout=600) -> dict:
    out = subprocess.run([str(python_of(stack)), str(SIDE), *args], capture_output=True, text=True,
                         timeout=timeout, cwd=REPO)
    assert out.returncode == 0, f"{stack}: {' '.join(args[:1])}\n{out.stderr[-4000:]}"
    return json.loads(out.stdout)


def filled_splits(data: Path) -> list[str]:
    """Every split folder under ``data`` that holds rows (a Parquet file): an empty split has none to read."""
    return sorted(p.parent.as_uri() for p in data.glob("*/*/*/_common_metadata") if any(p.parent.glob("*.parquet")))


def test_a_dataset_written_on_the_current_set_is_read_by_petastorms_make_reader(tmp_path):
    petastorm, current = python_of("petastorm"), python_of("current")
    work = tmp_path / "work"
    out = subprocess.run(
        [str(current.parent / "pipeline"), "run", "--only", "ingest,augment", f"paths.work_dir={work}",
         "ingest.num_frames=24", "ingest.render_hw=[90,160]", "ingest.road_hw=[32,32]", "ingest.frame_hw=[36,64]",
         "augment.copies=1", "ingest.image_format=png"],  # PNG images: the codec with a colour order to keep
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-4000:]
    urls = filled_splits(work / "data")
    kinds = {url.split("/")[-2] for url in urls}
    assert {"road_frames", "tl_frames", "tl_crops"} <= kinds, urls
    assert any("-basic/" in url for url in urls), urls  # the augmented dataset (its own schema: lineage fields)
    ours = side("current", "read", *urls)
    theirs = side("petastorm", "read", *urls)
    assert (ours["reader"], theirs["reader"]) == ("pyarrow (the project's reader)", "petastorm.make_reader")
    for url in urls:
        assert ours["datasets"][url], url
        assert theirs["datasets"][url] == ours["datasets"][url], url  # every row, every field, equal
    assert petastorm != current


def test_datasets_written_by_petastorms_materialize_dataset_are_read_on_the_current_set(tmp_path):
    rows = 7
    written = side("petastorm", "write-petastorm", (tmp_path / "ds").as_uri(), str(rows))
    assert written["writer"] == "petastorm.etl.dataset_metadata.materialize_dataset"
    urls = sorted(written["datasets"])
    assert len(urls) == 9  # four kinds, plain and augmented, and one with raw images
    read = side("current", "read", *urls)
    assert read["reader"] == "pyarrow (the project's reader)"
    for url in urls:
        assert len(written["datasets"][url]) == rows
        assert read["datasets"][url] == written["datasets"][url], url
