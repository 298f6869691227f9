"""The background protocol (Xiao et al. 2020) on nets wired by hand (tests/analysis/test_context.py's stripe
nets: the class is in the stripes of both the object region and the context; one net reads only the object, the
other only the context)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.analysis import backgrounds as B
from pipeline.vocab import CROP_CLASSES
from tests.analysis.test_context import _nets, _rows

pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/analysis/conftest.py)


@pytest.mark.parametrize("kind", ["road_frames", "tl_crops"])
def test_an_object_net_ignores_the_background_and_a_context_net_follows_it(kind):
    rows = _rows(kind, n=64, without=4)
    classes = list(CROP_CLASSES) if kind == "tl_crops" else ["solid", "dashed"]
    obj, ctx = (B.measure(net, rows, kind, classes, batch_size=32, resamples=1000) for net in _nets(kind))
    m_obj, m_ctx = obj.metrics, ctx.metrics
    assert m_obj["backgrounds.rows"] == 64 == m_ctx["backgrounds.rows"]           # the 4 rows without object left out
    # the object net: right wherever its object is, the background does not matter
    assert m_obj["backgrounds.mixed_rand_accuracy"] == 1.0 and m_obj["backgrounds.only_fg_accuracy"] == 1.0
    assert m_obj["backgrounds.bg_gap_lo"] <= 0 <= m_obj["backgrounds.bg_gap_hi"]
    # the context net: wrong on another class's background, right on its own class's, and it follows the background
    assert m_ctx["backgrounds.mixed_rand_accuracy"] == 0.0 and m_ctx["backgrounds.mixed_same_accuracy"] == 1.0
    assert m_ctx["backgrounds.bg_gap_lo"] > 0.9
    assert all(t[0] == 1.0 for t in ctx.follows_background.values()) and ctx.follows_background
    assert all(t[0] == 0.0 for t in obj.follows_background.values())
    assert "BG-Gap" in ctx.text


def test_inpainting_removes_the_object_and_keeps_the_rest():
    rng = np.random.default_rng(0)
    image = np.full((32, 32, 3), 100, np.uint8)
    image[10:20, 10:20] = 250                               # a bright object
    mask = np.zeros((32, 32), bool)
    mask[9:21, 9:21] = True
    out = B.inpaint(image[None], mask[None])[0]
    assert np.array_equal(out[~mask], image[~mask])
    assert np.abs(out[mask].astype(int) - 100).max() < 10   # filled from the flat surround, not grey, not the object
    made = B.variants(np.stack([image, image]), np.stack([mask, mask]), np.array([0, 1]), rng)
    assert np.array_equal(made["mixed_rand"][0][mask], image[mask]) and made["bg_label"].tolist() == [1, 0]
    assert not made["same_ok"].any() and made["rand_ok"].all()
