"""The counterfactual context test: intervene on what causes the label, not on pixels.

The synthetic generator knows the causes of a road frame: the lane class paints the markings, and the context
(time of day and scenery, tied to a lane class with probability ``ingest.context_bias``) paints the sky, the
skyline and the roadside. For every frame of a fresh set of sequences (seed ``audit.twins.seed``, never the
training data's) :func:`render_twins` renders three versions that differ by one cause at a time, everything else
(camera, road, weather, cars, lights, sensor noise) drawn the same
(:func:`pipeline.data.synth.render_frame`'s ``lane_class`` / ``context_of``):

* ``aligned``: the sequence's lanes ``L`` in the context tied to ``L`` (the two cues agree);
* ``context_twin``: lanes ``L`` in the context tied to another class ``C`` (drawn per sequence, ``C != L``);
* ``lanes_twin``: lanes ``C`` in the context tied to ``L``.

On the two twins the lanes' class and the context's class differ, so a prediction tells which cue the net
followed: ``p_lanes`` is the share of twins predicted as their lanes' class, ``p_context`` the share predicted as
their context's class (both twins pooled; each twin kind is reported too). Frames of one sequence share
everything but camera jitter, motion and cars, so they are not independent: the 95% intervals are percentile
bootstrap intervals over **sequences** (:func:`pipeline.analysis.intervals.bootstrap`: sequences drawn with
replacement, each with all its frames).

**Verdict** (:func:`verdict`), stated before any net was measured and never moved: with ``[lo, hi]`` the 95%
intervals and ``chance = 1 / classes``,

* *relies on context* when ``lo(p_context) > hi(p_lanes)``;
* *looks at the lanes* when ``lo(p_lanes) > hi(p_context)``;
* otherwise (the intervals overlap) *uses both* when both lower bounds exceed chance, else *inconclusive*
  (the net follows neither cue more often than a guess would).

A pure library (numpy, OpenCV, torch, matplotlib Agg): the audit stage renders the twins on Spark executors
(:func:`render_sequence` is the per-sequence function) and calls :func:`measure` on the driver.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["VARIANTS", "TWINS", "Twins", "CounterfactualResult", "other_class", "render_sequence",
           "render_twins", "measure", "verdict"]

VARIANTS = ("aligned", "context_twin", "lanes_twin")
TWINS = ("context_twin", "lanes_twin")
FIGURE = "context_counterfactual"
_SALT_OTHER = 41          # the stream that draws a sequence's other class C


def other_class(seed: int, seq_no: int, lane_class: str, classes: Sequence[str]) -> str:
    """The class ``C != lane_class`` a sequence's twins swap in, uniform over the others, from ``(seed, seq_no)``."""
    others = [c for c in classes if c != lane_class]
    return others[int(np.random.default_rng([int(seed), int(seq_no), _SALT_OTHER]).integers(len(others)))]


@dataclass
class Twins:
    """One frame and its twins: images (uint8 (H, W, 3)) per variant, and the class each cue points at."""
    sequence: int
    frame: int
    lanes: dict          # variant -> lane class name painted
    context: dict        # variant -> lane class name whose tied context was drawn
    images: dict         # variant -> image, resized to the audited net's input


def render_sequence(seed: int, seq_no: int, cfg, hw: tuple, frames: int) -> list:
    """:class:`Twins` of the first ``frames`` frames of sequence ``seq_no`` of the synthetic set ``seed`` rendered
    with ``cfg`` (a :class:`pipeline.data.synth.SynthConfig`) and resized to ``hw`` as ingest resizes."""
    from pipeline.data.images import resize
    from pipeline.data.synth import LANE_CLASSES, render_frame

    if frames > cfg.frames_per_sequence:
        raise ValueError(f"frames={frames} is more than the {cfg.frames_per_sequence} frames of a sequence")
    first = seq_no * cfg.frames_per_sequence
    drawn = render_frame(seed, first, cfg).lane_class
    other = other_class(seed, seq_no, drawn, LANE_CLASSES)
    lanes = {"aligned": drawn, "context_twin": drawn, "lanes_twin": other}
    context = {"aligned": drawn, "context_twin": other, "lanes_twin": drawn}
    out = []
    for step in range(frames):
        images = {v: resize(render_frame(seed, first + step, cfg, lane_class=lanes[v], context_of=context[v]).image,
                            tuple(hw)) for v in VARIANTS}
        out.append(Twins(seq_no, step, dict(lanes), dict(context), images))
    return out


def render_twins(seed: int, sequences: Iterable[int], cfg, hw: tuple, frames: int) -> list:
    """:func:`render_sequence` of every sequence number in ``sequences``, in order (one process)."""
    return [t for s in sequences for t in render_sequence(seed, s, cfg, hw, frames)]


def verdict(p_lanes: tuple, p_context: tuple, chance: float) -> str:
    """The rule of the module docstring on ``(share, lo, hi)`` triples: one of "relies on context", "looks at
    the lanes", "uses both", "inconclusive"."""
    _, lanes_lo, lanes_hi = p_lanes
    _, ctx_lo, ctx_hi = p_context
    if ctx_lo > lanes_hi:
        return "relies on context"
    if lanes_lo > ctx_hi:
        return "looks at the lanes"
    if lanes_lo > chance and ctx_lo > chance:
        return "uses both"
    return "inconclusive"


@dataclass
class CounterfactualResult:
    metrics: dict
    verdict: str                       # the rule's words
    text: str                          # the verdict with its intervals, one sentence
    relies_on_context: bool
    sequences: int
    twins: int                         # twin images scored (both kinds)
    examples: list = field(default_factory=list)   # (Twins, predictions per variant) for the figure
    figures: dict = field(default_factory=dict)


def _fmt(triple) -> str:
    s, lo, hi = triple
    return f"{s:.2f} [{lo:.2f}, {hi:.2f}]"


def measure(model, twins: Sequence[Twins], classes: Sequence[str], *, batch_size: int = 64, device="cpu",
            resamples: int = 2000, seed: int = 0, examples: int = 4) -> CounterfactualResult:
    """Predict every variant of every :class:`Twins` with ``model`` (class index ``i`` = ``classes[i]``) and
    measure ``p_lanes`` / ``p_context`` (both twins pooled, and per twin kind) and the aligned accuracy, each
    with its bootstrap interval over sequences; the verdict of :func:`verdict`."""
    from pipeline.analysis.intervals import bootstrap, triple_metrics
    from pipeline.models.normalize import to_tensor

    if not twins:
        raise ValueError("no counterfactual twins to measure: render at least one sequence")
    classes = list(classes)
    model.eval()
    index = {name: i for i, name in enumerate(classes)}
    missing = sorted({n for t in twins for n in (*t.lanes.values(), *t.context.values())} - set(index))
    if missing:
        raise ValueError(f"the net's classes {classes} lack {missing}: the counterfactual test needs a lane "
                         f"classifier trained on the synthetic lane classes")
    preds = {}
    for v in VARIANTS:
        out = []
        for i in range(0, len(twins), batch_size):
            images = np.stack([t.images[v] for t in twins[i:i + batch_size]])
            with torch.no_grad():
                out.append(model(to_tensor(images).to(device)).float().argmax(1).cpu().numpy())
        preds[v] = np.concatenate(out)
    seqs = sorted({t.sequence for t in twins})
    row = {s: k for k, s in enumerate(seqs)}
    n = len(seqs)
    counts = {key: np.zeros(n) for key in ("frames", "aligned_correct", "context_twin_lanes", "context_twin_context",
                                            "lanes_twin_lanes", "lanes_twin_context")}
    for j, t in enumerate(twins):
        k = row[t.sequence]
        counts["frames"][k] += 1
        counts["aligned_correct"][k] += preds["aligned"][j] == index[t.lanes["aligned"]]
        for v in TWINS:
            counts[f"{v}_lanes"][k] += preds[v][j] == index[t.lanes[v]]
            counts[f"{v}_context"][k] += preds[v][j] == index[t.context[v]]

    def boot(hits, totals, salt):
        return bootstrap(hits, totals, resamples, seed + salt)

    f = counts["frames"]
    p_lanes = boot(counts["context_twin_lanes"] + counts["lanes_twin_lanes"], 2 * f, 0)
    p_context = boot(counts["context_twin_context"] + counts["lanes_twin_context"], 2 * f, 0)  # same draws
    aligned = boot(counts["aligned_correct"], f, 0)
    metrics = {"counterfactual.sequences": float(n), "counterfactual.twins": float(2 * f.sum())}
    for name, triple in (("p_lanes", p_lanes), ("p_context", p_context), ("aligned_accuracy", aligned)):
        metrics.update(triple_metrics(f"counterfactual.{name}", triple))
    for v in TWINS:
        for cue in ("lanes", "context"):
            metrics.update(triple_metrics(f"counterfactual.{v}.p_{cue}", boot(counts[f"{v}_{cue}"], f, 0)))
    chance = 1.0 / len(classes)
    said = verdict(p_lanes, p_context, chance)
    text = (f"{said}: on {int(2 * f.sum())} counterfactual twins of {n} independent sequences (lanes of one class "
            f"in the context tied to another), predicted as the lanes' class {_fmt(p_lanes)}, as the context's "
            f"class {_fmt(p_context)} (95% intervals over sequences; chance {chance:.2f}); accuracy where lanes and "
            f"context agree {_fmt(aligned)}")
    result = CounterfactualResult(metrics=metrics, verdict=said, text=text,
                                  relies_on_context=said == "relies on context", sequences=n,
                                  twins=int(2 * f.sum()))
    pick = np.random.default_rng([seed, 2]).permutation(len(twins))[:examples]
    result.examples = [(twins[j], {v: classes[preds[v][j]] for v in VARIANTS}) for j in sorted(pick)]
    result.figures = {FIGURE: _figure(result, p_lanes, p_context, aligned, chance)}
    return result


def _figure(result: CounterfactualResult, p_lanes, p_context, aligned, chance):
    n = len(result.examples)
    fig = plt.figure(figsize=(10, 3.2 + 2.1 * n))
    grid = fig.add_gridspec(1 + n, 3, height_ratios=[1.5] + [1] * n)
    ax = fig.add_subplot(grid[0, :])
    labels = ["aligned: accuracy", "twins: lanes' class", "twins: context's class"]
    triples = [aligned, p_lanes, p_context]
    values = np.array([t[0] for t in triples])
    errors = np.array([[t[0] - t[1] for t in triples], [t[2] - t[0] for t in triples]])
    ax.barh(labels, values, xerr=errors, color=["#777777", "#d62728", "#1f77b4"], capsize=4)
    for y, t in enumerate(triples):
        ax.text(min(t[2] + 0.02, 0.9), y, _fmt(t), va="center", fontsize=8)
    ax.axvline(chance, color="k", ls=":", lw=1)
    ax.text(chance, -0.7, " chance", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of predictions (95% interval over sequences)")
    ax.invert_yaxis()
    ax.set_title("\n".join(textwrap.wrap(result.text, 130)), fontsize=7.5)
    for r, (t, pred) in enumerate(result.examples, start=1):
        for c, v in enumerate(VARIANTS):
            a = fig.add_subplot(grid[r, c])
            a.imshow(t.images[v])
            a.axis("off")
            a.set_title(f"{v}: lanes {t.lanes[v]}, context of {t.context[v]}\npredicted {pred[v]}", fontsize=7)
    fig.tight_layout()
    return fig
