"""YAML with text labels: PyYAML's safe loader with YAML 1.2 (core schema) booleans and floats.

PyYAML implements YAML 1.1, where the plain scalars ``on``/``off``/``yes``/``no``/``y``/``n`` (any
case) are booleans, so a Bosch label ``off`` written without quotes reads as ``False``. Here only
``true``/``True``/``TRUE`` and ``false``/``False``/``FALSE`` are booleans; everything else that
YAML 1.1 called a boolean stays a string. Floats also follow YAML 1.2, which needs no dot before
an exponent and allows a signed exponent-less one (``1e-3``, ``1E3``, ``-.5``, ``1.0e5``), on top
of what PyYAML already reads as a float (``1_000.5``, ``.inf``, ``.nan``). Integers, null,
timestamps and merge keys (``<<``) resolve exactly as in PyYAML. Quoted scalars and explicit tags
(``!!bool``, ``!!str``) are untouched. Loading stays safe (no Python objects).

This module imports nothing from the project, so anything may use it::

    from pipeline import yamltext
    data = yamltext.load(text_or_stream)
"""
from __future__ import annotations

import re

import yaml

__all__ = ["SafeLoader", "Loader", "load", "BOOL_PATTERN", "FLOAT_PATTERN"]

_BOOL_TAG = "tag:yaml.org,2002:bool"
_FLOAT_TAG = "tag:yaml.org,2002:float"

#: YAML 1.2 core schema booleans.
BOOL_PATTERN = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
#: PyYAML's YAML 1.1 float forms plus YAML 1.2's; a plain integer never matches.
FLOAT_PATTERN = re.compile(r"""^(?:
     [-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*|[0-9]+(?=[eE]))(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


def _resolvers(base: dict) -> dict:
    """``base``'s implicit resolvers (first character -> [(tag, regexp)]) with YAML 1.2 booleans
    and floats in place of YAML 1.1's, in the same order (floats still before ints)."""
    table: dict = {}
    for first, entries in base.items():
        for tag, regexp in entries:
            if tag == _BOOL_TAG:
                continue
            regexp = FLOAT_PATTERN if tag == _FLOAT_TAG else regexp
            table.setdefault(first, []).append((tag, regexp))
    for first in "tTfF":
        table.setdefault(first, []).insert(0, (_BOOL_TAG, BOOL_PATTERN))
    return table


class SafeLoader(yaml.SafeLoader):
    """PyYAML's pure-Python safe loader with YAML 1.2 booleans and floats."""


SafeLoader.yaml_implicit_resolvers = _resolvers(yaml.SafeLoader.yaml_implicit_resolvers)

if hasattr(yaml, "CSafeLoader"):
    class CSafeLoader(yaml.CSafeLoader):
        """The same on libyaml's parser (much faster on large annotation files)."""

    CSafeLoader.yaml_implicit_resolvers = SafeLoader.yaml_implicit_resolvers
    #: The fastest available loader with these rules.
    Loader = CSafeLoader
else:                                                          # pragma: no cover - no libyaml
    Loader = SafeLoader


def load(text_or_stream):
    """The first document of a YAML str, bytes or open file, read with :data:`Loader`."""
    return yaml.load(text_or_stream, Loader=Loader)
