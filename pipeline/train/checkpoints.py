"""Checkpoints: a run's state as ``<url>/last.pt``, written whole and read with ``weights_only=True`` (tensors
and plain values: nothing a checkpoint holds can run). Used by the ranks (resume, transfer's copied layers) and by
the driver (a fine-tune's source weights, :mod:`pipeline.train.finetune`)."""
from __future__ import annotations

import io
from typing import Optional

import torch

from pipeline.data import store


def save_checkpoint(url: str, state: dict) -> None:
    """Write ``<url>/last.pt`` atomically: a kill mid-write leaves the previous one."""
    buf = io.BytesIO()
    torch.save(state, buf)
    store.write_bytes(f"{url}/last.pt", buf.getvalue())


def load_checkpoint(url: str) -> Optional[dict]:
    """The last checkpoint under ``url`` (tensors and plain values only: ``weights_only=True``), or None."""
    data = store.read_bytes(f"{url}/last.pt")
    return None if data is None else torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
