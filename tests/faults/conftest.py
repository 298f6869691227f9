"""Fixtures of the fault suite: a work folder holding a copy of the shared tiny dataset (never the shared one
itself: these tests kill its writers)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def tiny_copy(tiny_data, tmp_path):
    """A work folder whose ``data/synthetic`` is a copy of the tiny ingest (48 frames, as TINY_ARGS make)."""
    source = Path(tiny_data().paths.data_url[len("file://"):]) / "synthetic"
    shutil.copytree(source, tmp_path / "data" / "synthetic")
    return tmp_path
