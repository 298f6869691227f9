"""Tests for pipeline.yamltext: YAML 1.2 core-schema booleans and floats on PyYAML's safe loader."""
from __future__ import annotations

import io
import math

import pytest
import yaml

from pipeline import yamltext


@pytest.mark.parametrize("text", ["true", "True", "TRUE"])
def test_true(text):
    assert yamltext.load(f"a: {text}") == {"a": True}


@pytest.mark.parametrize("text", ["false", "False", "FALSE"])
def test_false(text):
    assert yamltext.load(f"a: {text}") == {"a": False}


@pytest.mark.parametrize("text", ["on", "off", "On", "OFF", "yes", "no", "Yes", "NO", "y", "n",
                                  "Y", "N", "tRUE"])
def test_yaml11_booleans_stay_strings(text):
    assert yamltext.load(f"a: {text}") == {"a": text}
    assert yamltext.load(f"{text}: 1") == {text: 1}          # keys too (`on:` is not True)


def test_ints_null_and_strings_as_usual():
    assert yamltext.load("[1, -2, +3, 0x1f, 1_000, null, ~, Null, '', abc, '1']") == \
        [1, -2, 3, 31, 1000, None, None, None, "", "abc", "1"]
    assert yamltext.load("a:") == {"a": None}
    assert all(type(v) is int for v in yamltext.load("[1, -2, 0, 1_000]"))


@pytest.mark.parametrize("text, value", [
    ("1e-3", 1e-3), ("1E3", 1000.0), ("-2e+2", -200.0), ("1.5e3", 1500.0), ("1.0e5", 1e5),
    (".5e1", 5.0), ("1.5", 1.5), ("-.5", -0.5), ("1.", 1.0), ("+1.25", 1.25),
    ("1_000.5", 1000.5), (".inf", math.inf), ("-.Inf", -math.inf),
])
def test_floats(text, value):
    result = yamltext.load(f"a: {text}")["a"]
    assert type(result) is float and result == value


def test_nan():
    assert math.isnan(yamltext.load("a: .nan")["a"])


@pytest.mark.parametrize("text", ["e3", "1e", "1e-", "1.2.3", "1e3x", "."])
def test_not_floats(text):
    assert yamltext.load(f"a: {text}") == {"a": text}


def test_quoted_and_explicit_tags():
    assert yamltext.load("[off, 'true', \"1e-3\", !!bool true, !!str on]") == \
        ["off", "true", "1e-3", True, "on"]


def test_stream_and_bytes():
    assert yamltext.load(io.StringIO("label: off\nok: true\n")) == {"label": "off", "ok": True}
    assert yamltext.load(b"label: off\n") == {"label": "off"}


def test_bosch_style_entry():
    data = yamltext.load("- boxes:\n  - {label: off, occluded: false, x_max: 8.5, x_min: 6,"
                         " y_max: 1e1, y_min: 6}\n  path: ./rgb/train/a.png\n")
    [box] = data[0]["boxes"]
    assert box == {"label": "off", "occluded": False, "x_max": 8.5, "x_min": 6, "y_max": 10.0,
                   "y_min": 6}
    assert box["occluded"] is False


def test_safe_and_pyyaml_untouched():
    with pytest.raises(yaml.YAMLError):
        yamltext.load("!!python/object/apply:os.system ['true']")
    assert yaml.safe_load("a: off") == {"a": False}           # the global loaders keep YAML 1.1
    assert issubclass(yamltext.SafeLoader, yaml.SafeLoader)
    assert issubclass(yamltext.Loader, yaml.SafeLoader) or \
        issubclass(yamltext.Loader, getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def test_pure_python_loader_agrees():
    text = "[on, off, yes, n, true, FALSE, 1e-3, 1.0e5, -.5, 2, 0x1f, null, ~, 2001-12-14, abc]"
    assert yaml.load(text, Loader=yamltext.SafeLoader) == yamltext.load(text)
