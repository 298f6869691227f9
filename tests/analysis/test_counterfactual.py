"""The counterfactual context test finds planted truths.

The twins: rendering a frame with one cause changed keeps everything else drawn the same. The interval: a
bootstrap over sequences is as wide as the number of sequences says, not the number of frames. The verdict: the
rule on intervals, case by case. Then four lane classifiers trained here (LaneNet at width 0.25 on 64x64 frames
rendered at 320x180, one training per Spark task, two at a time on the shared session) on data whose answer is
known by construction:

* ``context_bias=1.0``: context and lanes both give the class, the context is easier: *relies on context*;
* ``context_bias=0.95``: the talk's net: *relies on context*;
* ``context_bias=0``: the context says nothing: *looks at the lanes*;
* lanes erased (no marking painted; ``context_bias=0.95``): nothing but the context to learn: *relies on
  context*.

Every net gets the same budget (480 frames of 120 sequences, 20 epochs, seed 0); the twins are 60 sequences of
another synthetic seed. The verdict's rule was written (pipeline/analysis/counterfactual.py) before any of these
nets was measured.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from pipeline.analysis import counterfactual as cf
from pipeline.analysis.intervals import bootstrap
from pipeline.data.synth import LANE_CLASSES, SynthConfig, context_class, render_frame, tied_context

pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/analysis/conftest.py)

SMALL = SynthConfig(width=320, height=180, frames_per_sequence=4)
HW = (64, 64)
# The layer probes on the number of sequences the audit renders for them by default (audit.counterfactual.
# probe_sequences in conf/base.yaml): every 4th held out, 32 sequences to score on.
PROBE_SEQUENCES = 128


# ------------------------------------------------------------------------------------------------- twins

def test_a_frame_rendered_with_its_own_causes_is_the_frame_itself():
    tied = SynthConfig(width=320, height=180, frames_per_sequence=4, context_bias=1.0)
    for index in (0, 5, 9):
        frame = render_frame(0, index, tied)
        same = render_frame(0, index, tied, lane_class=frame.lane_class, context_of=frame.lane_class)
        assert np.array_equal(frame.image, same.image) and np.array_equal(frame.lane_mask, same.lane_mask)


def test_a_context_twin_changes_the_sky_and_scenery_and_keeps_lanes_lights_and_camera():
    for index in range(0, 24, 4):
        frame = render_frame(0, index, SMALL)
        other = next(c for c in LANE_CLASSES if c != frame.lane_class)
        twin = render_frame(0, index, SMALL, context_of=other)
        assert (twin.context["time_of_day"], twin.context["scenery"]) == tied_context(other)
        assert context_class(twin.context["time_of_day"], twin.context["scenery"]) == other
        assert twin.lane_class == frame.lane_class
        assert np.array_equal(twin.lane_mask, frame.lane_mask)            # the same markings, pixel for pixel
        assert [b.x_min for b in twin.boxes] == [b.x_min for b in frame.boxes]
        for key in ("weather", "horizon", "curvature", "paint_wear"):
            assert twin.context[key] == frame.context[key], key


def test_a_lanes_twin_paints_another_class_in_the_same_context():
    seen_yellow_to_white = False
    for index in range(0, 48, 4):
        frame = render_frame(0, index, SMALL)
        other = "solid_white" if frame.lane_class != "solid_white" else "dashed_yellow"
        twin = render_frame(0, index, SMALL, lane_class=other)
        assert twin.lane_class == other
        for key in ("time_of_day", "scenery", "weather", "horizon", "curvature"):
            assert twin.context[key] == frame.context[key], key
        assert not np.array_equal(twin.lane_mask, frame.lane_mask)
        seen_yellow_to_white |= "yellow" in frame.lane_class
    assert seen_yellow_to_white


def test_erased_lanes_paint_nothing_and_keep_the_rest():
    frame = render_frame(0, 3, SMALL)
    erased = render_frame(0, 3, SMALL, lanes=False)
    assert frame.lane_mask.any() or frame.lane_class == "none"
    assert not erased.lane_mask.any() and erased.lane_class == frame.lane_class
    assert erased.context == frame.context


def test_render_sequence_pairs_each_cue_with_another_class():
    twins = cf.render_twins(7, range(6), SMALL, HW, 2)
    assert [(t.sequence, t.frame) for t in twins] == [(s, f) for s in range(6) for f in range(2)]
    for t in twins:
        assert t.lanes["aligned"] == t.context["aligned"]
        assert t.lanes["context_twin"] == t.lanes["aligned"] != t.context["context_twin"]
        assert t.context["lanes_twin"] == t.context["aligned"] != t.lanes["lanes_twin"]
        assert t.lanes["lanes_twin"] == t.context["context_twin"]          # one other class C per sequence
        assert all(im.shape == (*HW, 3) and im.dtype == np.uint8 for im in t.images.values())
    with pytest.raises(ValueError, match="more than the 4 frames"):
        cf.render_sequence(7, 0, SMALL, HW, 5)
    with pytest.raises(ValueError, match="lane_class='sky'"):
        render_frame(0, 0, SMALL, lane_class="sky")


# ---------------------------------------------------------------------------------------------- interval

def test_the_bootstrap_counts_sequences_not_frames():
    """40 sequences of 8 frames, every frame of a sequence alike: the information is 40 draws, not 320. The
    interval must be about as wide as 40 Bernoulli draws give (1.96 * 2 * sqrt(p (1 - p) / 40) = 0.31 at p = 0.5),
    not the 0.11 a frame-level interval would give."""
    rng = np.random.default_rng(0)
    hit = rng.random(40) < 0.5
    share, lo, hi = bootstrap(hit * 8.0, np.full(40, 8.0), resamples=4000)
    p = hit.mean()
    assert share == pytest.approx(p)
    expected = 2 * 1.96 * np.sqrt(p * (1 - p) / 40)
    assert 0.8 * expected < hi - lo < 1.2 * expected
    assert lo < share < hi
    # independent frames (the same 320 hits spread evenly): a narrower interval
    spread = rng.permutation(np.repeat(hit, 8)).reshape(40, 8).sum(1)
    _, lo2, hi2 = bootstrap(spread, np.full(40, 8.0), resamples=4000)
    assert hi2 - lo2 < 0.6 * (hi - lo)


def test_the_bootstrap_interval_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered = 0
    trials = 200
    for _ in range(trials):
        per_seq = rng.beta(3, 2, 50)                         # each sequence has its own rate; the truth is 0.6
        frames = rng.integers(1, 6, 50).astype(float)
        hits = rng.binomial(frames.astype(int), per_seq).astype(float)
        _, lo, hi = bootstrap(hits, frames, resamples=1000, seed=int(rng.integers(1 << 30)))
        covered += lo <= 0.6 <= hi
    assert 0.88 <= covered / trials <= 0.99


def test_verdict_rules():
    chance = 1 / 6
    assert cf.verdict((0.1, 0.05, 0.15), (0.6, 0.5, 0.7), chance) == "relies on context"
    assert cf.verdict((0.8, 0.7, 0.9), (0.05, 0.0, 0.1), chance) == "looks at the lanes"
    assert cf.verdict((0.45, 0.35, 0.55), (0.4, 0.3, 0.5), chance) == "uses both"
    assert cf.verdict((0.2, 0.1, 0.3), (0.25, 0.15, 0.35), chance) == "inconclusive"
    # intervals that touch are not separated
    assert cf.verdict((0.3, 0.2, 0.4), (0.5, 0.4, 0.6), chance) == "uses both"


class _Constant(torch.nn.Module):
    """Predicts one class for every image."""

    def __init__(self, k: int, classes: int = 6):
        super().__init__()
        self.k, self.classes = k, classes

    def forward(self, x):
        return F.one_hot(torch.full((len(x),), self.k), self.classes).float()


def test_measure_counts_what_the_twins_point_at():
    twins = cf.render_twins(7, range(12), SMALL, HW, 1)
    result = cf.measure(_Constant(1), twins, LANE_CLASSES, resamples=200)
    m = result.metrics
    k = LANE_CLASSES[1]
    expected_lanes = np.mean([t.lanes[v] == k for t in twins for v in cf.TWINS])
    expected_context = np.mean([t.context[v] == k for t in twins for v in cf.TWINS])
    assert m["counterfactual.p_lanes"] == pytest.approx(expected_lanes)
    assert m["counterfactual.p_context"] == pytest.approx(expected_context)
    assert m["counterfactual.twins"] == 24 and m["counterfactual.sequences"] == 12
    assert m["counterfactual.p_lanes_lo"] <= m["counterfactual.p_lanes"] <= m["counterfactual.p_lanes_hi"]
    with pytest.raises(ValueError, match="lack"):
        cf.measure(_Constant(0, 2), twins, ["none", "solid_white"])


# ------------------------------------------------------------------------------------------ trained nets

TRAIN_SEQUENCES, FRAMES_PER_SEQUENCE, EPOCHS = 120, 4, 20
NETS = {"bias 1.0": (1.0, True), "bias 0.95": (0.95, True), "bias 0": (0.0, True), "lanes erased": (0.95, False)}
EXPECTED = {"bias 1.0": "relies on context", "bias 0.95": "relies on context", "bias 0": "looks at the lanes",
            "lanes erased": "relies on context"}


def train_lane_net(bias: float, lanes: bool, seed: int = 0) -> dict:
    """A LaneNet trained on frames of the synthetic set 0 at ``bias`` (markings painted or not); its weights."""
    from pipeline.data.images import resize
    from pipeline.models import build_model
    from pipeline.models.normalize import to_tensor

    torch.set_num_threads(1)
    cfg = SynthConfig(width=320, height=180, frames_per_sequence=FRAMES_PER_SEQUENCE, context_bias=bias)
    frames = [render_frame(0, i, cfg, lanes=lanes) for i in range(TRAIN_SEQUENCES * FRAMES_PER_SEQUENCE)]
    x = to_tensor(np.stack([resize(f.image, HW) for f in frames]))
    y = torch.as_tensor([LANE_CLASSES.index(f.lane_class) for f in frames])
    torch.manual_seed(seed)
    net = build_model("lane_classifier", len(LANE_CLASSES), HW, width=0.25)
    batch = 16
    steps = EPOCHS * (len(x) // batch)
    opt = torch.optim.AdamW(net.parameters(), 2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    rng = np.random.default_rng(seed)
    net.train()
    for _ in range(EPOCHS):
        order = rng.permutation(len(x))
        for i in range(0, len(x) - batch + 1, batch):
            b = torch.as_tensor(order[i:i + batch])
            loss = F.cross_entropy(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def trained(counterfactual_nets):
    """The four nets (trained once per session: tests/analysis/conftest.py)."""
    return counterfactual_nets


def train_all(spark) -> dict:
    """The four nets, trained as Spark tasks (two at a time on two cores)."""
    from pipeline.models import build_model

    names = list(NETS)
    weights = dict(spark.sparkContext.parallelize(names, len(names))
                   .map(lambda n: (n, train_lane_net(*NETS[n]))).collect())
    nets = {}
    for name in names:
        nets[name] = build_model("lane_classifier", len(LANE_CLASSES), HW, width=0.25)
        nets[name].load_state_dict(weights[name])
        nets[name].eval()
    return nets


def render_in_spark(spark, render, sequences: int) -> list:
    """``render(seqs)`` of ``range(sequences)`` as Spark tasks (two at a time on two cores), in order: the list
    one process gives (every sequence is rendered from its own seed alone)."""
    return spark.sparkContext.parallelize(range(sequences), 4).mapPartitions(lambda s: render(list(s))).collect()


@pytest.fixture(scope="module")
def measured(spark, trained):
    """Each net's counterfactual result."""
    twins = render_in_spark(spark, lambda seqs: cf.render_twins(1000003, seqs, SMALL, HW, 2), 60)
    out = {name: cf.measure(net, twins, LANE_CLASSES, seed=0) for name, net in trained.items()}
    for name, r in out.items():
        print(f"{name}: {r.text}")
    return out


@pytest.mark.parametrize("name", list(NETS))
def test_the_counterfactual_test_finds_the_planted_reliance(measured, name):
    result = measured[name]
    assert result.verdict == EXPECTED[name], result.text
    assert result.relies_on_context == (EXPECTED[name] == "relies on context")


def test_the_nets_learned_their_task_where_the_cues_agree(measured):
    """A verdict on a net that learned nothing would be empty: every net is well above chance on aligned frames."""
    for name, result in measured.items():
        assert result.metrics["counterfactual.aligned_accuracy_lo"] > 1 / 6, (name, result.text)


def test_layer_probes_find_the_context_in_the_context_net_and_the_lanes_in_the_lane_net(spark, trained):
    """By construction the lanes-erased net's output is a function of the context alone and the bias-0 net's of
    the lanes (on unbiased scenes the two are independent): the head (fc8) of the first must encode the time of
    day better than the second's, and the second's the lane class better than the first's."""
    from pipeline.analysis import layer_probes as lp

    rendered = render_in_spark(spark, lambda seqs: lp.render(seqs, 2000003, SMALL, HW, 2), PROBE_SEQUENCES)
    probes = {name: lp.score(lp.partial(trained[name], ["fc7", "fc8"], rendered), ["fc7", "fc8"], resamples=1000)
              for name in ("bias 0", "lanes erased")}
    for name, p in probes.items():
        print(name, {f"{k[0]}/{k[1]}": tuple(round(v, 2) for v in t) for k, t in p.accuracy.items()})
    lanes, context = probes["bias 0"].accuracy, probes["lanes erased"].accuracy
    assert context[("fc8", "time_of_day")][1] > lanes[("fc8", "time_of_day")][2]
    assert lanes[("fc8", "lane_class")][1] > context[("fc8", "lane_class")][2]
