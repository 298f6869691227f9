"""Activation maximization: 64 channels optimised as one batch against the same 64 optimised one at a time.

    .venv/bin/python benchmarks/bench_visualize.py [--channels 64] [--steps 32] [--repeats 3]

Both run ``pipeline.analysis.visualize.synthesize`` with the stage's default settings (``conf/base.yaml``:
decorrelated pixels, jitter / scale / rotation, decay, TV, blur every step) on the same net: a LaneNet of width 0.5
at 128x128 (randomly initialised: the cost does not depend on the weights), layer conv5, channels 0..N-1, torch on
both cores (``torch.set_num_threads(2)``), the same number of steps. Variants interleaved per repeat; medians.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layer", default="conv5")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import numpy as np
    import torch

    from pipeline.analysis import render, visualize
    from pipeline.config import load_config
    from pipeline.models import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hw = (args.size, args.size)
    net = build_model("lane_classifier", 6, hw, args.width).eval()
    v = load_config().visualize.model_copy(update={"steps": args.steps})
    objectives = [render.channel(args.layer, c) for c in range(args.channels)]
    ones = np.ones(args.channels)
    print(f"bench_visualize  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  torch {torch.__version__}, "
          f"{args.threads} threads; {args.channels} channels of {args.layer}, LaneNet width {args.width}, "
          f"{args.size}x{args.size}, {args.steps} steps")
    print(f"command: {' '.join(['python'] + sys.argv)}")
    times = {"batched": [], "one at a time": []}
    gains = {"batched": [], "one at a time": []}
    for r in range(args.repeats):
        tic = time.perf_counter()
        _, history = visualize.synthesize(net, objectives, ones, v, hw)
        times["batched"].append(time.perf_counter() - tic)
        gains["batched"].append(float(np.mean(history[-1] - history[0])))
        tic = time.perf_counter()
        gain = []
        for o in objectives:
            _, h = visualize.synthesize(net, [o], ones[:1], v, hw)
            gain.append(float(h[-1, 0] - h[0, 0]))
        times["one at a time"].append(time.perf_counter() - tic)
        gains["one at a time"].append(float(np.mean(gain)))
        print(f"repeat {r + 1}: batched {times['batched'][-1]:.1f} s, one at a time {times['one at a time'][-1]:.1f} s",
              flush=True)
    med = {k: statistics.median(x) for k, x in times.items()}
    print()
    print("| variant | time (median) | channels/s | objective gain (mean over channels) |")
    print("| --- | ---: | ---: | ---: |")
    for k in times:
        print(f"| {k} | {med[k]:.1f} s | {args.channels / med[k]:.2f} | {statistics.median(gains[k]):.3f} |")
    print(f"\nbatched speed-up: {med['one at a time'] / med['batched']:.2f}x (goal: at least 4x)")


if __name__ == "__main__":
    main()
