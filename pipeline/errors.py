"""The one error type for "fix your input": config, policies, annotations, datasets, model URIs.

The CLI and the spark-submit jobs catch :class:`UserError` alone, in one place, and print its message as one
line (exit 2, no traceback unless ``-v``); :class:`EmptySplit` (a split with no rows) skips the job with its line
instead (exit 3). Anything else (a broken invariant such as lost rows, a bug) shows its traceback. Subclasses
that callers already catch as ``ValueError`` keep that base too.
This module imports nothing of ours.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input or configuration; the message is one line naming what, where, and the fix."""


class EmptySplit(UserError, LookupError):
    """A split a stage reads has no rows (or no folder: ingest writes none for an empty split). The message is
    one line: which split of which dataset and kind, why (what ingest's split rule placed where), and the fix.
    ``pipeline run`` skips the job with that line and goes on (exit 3); see :mod:`pipeline.data.splits`."""

    def __init__(self, message: str, dataset: str = "", kind: str = "", split: str = ""):
        super().__init__(message)
        self.dataset, self.kind, self.split = dataset, kind, split
