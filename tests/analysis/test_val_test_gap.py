"""The val-vs-test gap flags a leaky val split, on a net whose answer is known by construction: a nearest-neighbour
memoriser of the train frames is right on frames of the sequences it memorised and guesses on new sequences."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.analysis.intervals import gap, grouped_counts
from pipeline.data.images import resize
from pipeline.data.synth import LANE_CLASSES, SynthConfig, render_frame
from pipeline.models.normalize import to_tensor

pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/analysis/conftest.py)

CFG = SynthConfig(width=320, height=180, frames_per_sequence=8)
HW = (64, 64)


def _rows(sequences, steps) -> list:
    out = []
    for s in sequences:
        for step in steps:
            f = render_frame(0, s * CFG.frames_per_sequence + step, CFG)
            out.append({"image": resize(f.image, HW), "label": LANE_CLASSES.index(f.lane_class),
                        "group": f.sequence_id})
    return out


class Memoriser(nn.Module):
    """Predicts the label of the nearest stored image (8x8 average-pooled)."""

    def __init__(self, rows: list):
        super().__init__()
        self.register_buffer("keys", self._key(to_tensor(np.stack([r["image"] for r in rows]))))
        self.labels = torch.as_tensor([r["label"] for r in rows])

    @staticmethod
    def _key(x):
        return F.avg_pool2d(x, 8).flatten(1)

    def forward(self, x):
        nearest = torch.cdist(self._key(x), self.keys).argmin(1)
        return F.one_hot(self.labels[nearest], len(LANE_CLASSES)).float()


@pytest.fixture(scope="module")
def splits():
    train_sequences = range(12)
    return {"train": _rows(train_sequences, range(6)),
            "leaky_val": _rows(train_sequences, (6, 7)),              # the other frames of the train sequences
            "val": _rows(range(100, 112), (0, 3)),                    # sequences of their own
            "test": _rows(range(200, 212), (0, 3))}


def test_a_val_split_that_shares_sequences_with_train_is_flagged(splits):
    net = Memoriser(splits["train"]).eval()
    leaky, test = grouped_counts(net, splits["leaky_val"]), grouped_counts(net, splits["test"])
    assert leaky[0].sum() / leaky[1].sum() > 0.9                      # it memorised those sequences
    g, lo, hi = gap(leaky, test, resamples=2000)
    assert lo > 0 and lo <= g <= hi


def test_a_val_split_of_its_own_sequences_is_not_flagged(splits):
    net = Memoriser(splits["train"]).eval()
    g, lo, hi = gap(grouped_counts(net, splits["val"]), grouped_counts(net, splits["test"]), resamples=2000)
    assert lo <= 0 <= hi


def test_the_gap_interval_covers_zero_about_95_percent_of_the_time_for_alike_splits():
    rng = np.random.default_rng(3)
    covered, trials = 0, 200
    for _ in range(trials):
        samples = []
        for _split in range(2):
            rate = rng.beta(2, 2, 30)
            totals = rng.integers(1, 5, 30)
            samples.append((rng.binomial(totals, rate).astype(float), totals.astype(float)))
        _, lo, hi = gap(*samples, resamples=1000, seed=int(rng.integers(1 << 30)))
        covered += lo <= 0 <= hi
    assert 0.88 <= covered / trials <= 0.99
