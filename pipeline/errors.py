"""The one error type for "fix your input": config, policies, annotations, datasets, model URIs.

The CLI and the spark-submit jobs catch :class:`UserError` alone, in one place, and print its message as one
line (exit 2, no traceback unless ``-v``). Anything else (a broken invariant such as lost rows, a bug) shows its
traceback. Subclasses that callers already catch as ``ValueError`` keep that base too.
This module imports nothing of ours.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input or configuration; the message is one line naming what, where, and the fix."""
