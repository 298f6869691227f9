"""Fault injection at precise points, for the fault suite (``tests/faults/``): a real kill, never an exception.

``PIPELINE_FAULT=<point>[,<point>...]`` in the environment makes the process SIGKILL itself when it reaches one
of the named points (a process killed there leaves exactly what a power cut or the OOM killer would). Points:

``kill-mid-swap``   :func:`pipeline.data.store.swap_in`, after the new dataset is renamed in and before the old
                    one is deleted (on storage without an atomic exchange: between the two renames).

``PIPELINE_FAULT_ONCE=<file>`` makes the kill happen once: a point fires only while ``<file>`` does not exist, and
creates it just before the kill, so a retried job (Airflow's retry, ``pipeline run`` again) runs through.

Unset (always, outside tests) it costs one environment lookup. Imports nothing of ours.
"""
from __future__ import annotations

import os
import signal
import sys

ENV = "PIPELINE_FAULT"
ONCE_ENV = "PIPELINE_FAULT_ONCE"


def armed(point: str) -> bool:
    return point in {p.strip() for p in os.environ.get(ENV, "").split(",")}


def kill_point(point: str) -> None:
    """SIGKILL this process here when ``PIPELINE_FAULT`` names ``point``."""
    if armed(point):
        once = os.environ.get(ONCE_ENV)
        if once:
            try:
                open(once, "x").close()     # the first process here makes it; every later one runs through
            except FileExistsError:
                return
        print(f"{ENV}: SIGKILL at {point} (pid {os.getpid()})", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
