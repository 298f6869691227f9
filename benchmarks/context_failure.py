"""The talk's failure, reproduced and audited: lane classifiers whose reliance on context is known by construction.

    .venv/bin/python benchmarks/context_failure.py [--frames 1200] [--epochs 5] [--work-dir DIR] [KEY=VALUE ...]

Ingests the synthetic scenes at ``ingest.context_bias`` 0 (independent: a sequence's time of day and scenery say
nothing of its lane class), 0.95 (the talk's biased data) and 1.0 (the context alone gives the class), and the
0.95 set's copy augmented offline with the ``context`` policy (lanes pasted onto other frames' backgrounds).
Trains one lane classifier on each, and one more on the 0.95 set with the same policy applied online
(``train.augment_policy=context``), all with the same budget. Each net is then audited (the audit stage) on its
own data's test split (in distribution) and on the unbiased one (independent scenes): accuracy with its 95%
interval over sequences, and on the unbiased run the counterfactual twins' ``p_lanes`` / ``p_context`` with
their intervals and the verdict, beside the occlusion verdict. Every step is a real stage run in one MLflow
experiment (``<work-dir>/mlflow.db``). Prints one markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repo root on sys.path too)

from pipeline.session import build_session  # noqa: E402
from pipeline.stages import get_stage, run_stage  # noqa: E402
from pipeline.tracking import Tracker  # noqa: E402

NETS = (  # (row, training data, extra train overrides)
    ("context_bias 0", "fair", ()),
    ("context_bias 0.95", "biased", ()),
    ("context_bias 1.0", "tied", ()),
    ("0.95 + context augmentation, offline", "biased-context", ()),
    ("0.95 + context augmentation, online", "biased", ("train.augment_policy=context",)),
    # offline, every train row is there 3 times (the original and augment.copies=2 copies), so an epoch is 3x the
    # optimizer steps of an online epoch: the same policy online with the offline run's steps
    ("0.95 + context augmentation, online, 3x epochs", "biased", ("train.augment_policy=context", "EPOCHS*3")),
)


def _interval(r: dict, key: str) -> str:
    v, lo, hi = (r.get(f"{key}{s}", float("nan")) for s in ("", "_lo", "_hi"))
    return f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--work-dir", default="/tmp/context_failure")
    parser.add_argument("--fresh", action="store_true", help="ingest and augment again even where a previous "
                        "run left the datasets in --work-dir")
    parser.add_argument("--nets", type=lambda v: [int(i) for i in v.split(",")], default=[],
                        help="only these rows (0-5: the lane nets of the table, 6: the traffic-light classifier), "
                        "e.g. --nets 5")
    parser.add_argument("--reuse", action="store_true", help="audit the nets an earlier run trained (their URIs "
                        "in <work-dir>/models.json) instead of training them again")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    shared = [f"ingest.num_frames={args.frames}", "ingest.frames_per_sequence=4", f"train.epochs={args.epochs}",
              "train.task=lane_classifier", "mlflow.experiment=context-failure", *args.overrides]

    def conf(*extra):
        return common.make_conf(args.work_dir, *shared, *extra, master=None)

    spark = build_session(conf())
    tic = time.perf_counter()

    def stage(name, c):
        print(f"== {name} ({c.train.data if name != 'ingest' else c.ingest.name})", flush=True)
        return run_stage(get_stage(name), spark, c, Tracker(c))

    data = Path(args.work_dir) / "data"

    def made(name, c):   # the dataset a previous run of this script wrote whole (a stage swaps it in last), or now
        say = f"== {name} ({c.train.data if name != 'ingest' else c.ingest.name})"
        if common.ensure_dataset(spark, c, name, fresh=args.fresh, say=say) is None:
            print(f"== {getattr(c, name).name}: already in {data} (--fresh writes it again)", flush=True)

    for bias, name in ((0.0, "fair"), (0.95, "biased"), (1.0, "tied")):
        made("ingest", conf(f"ingest.context_bias={bias}", f"ingest.name={name}"))
    made("augment", conf("augment.source=biased", "augment.policy=context", "augment.name=biased-context"))
    rows = []
    known = Path(args.work_dir) / "models.json"      # row -> model URI of the nets trained so far
    models = json.loads(known.read_text()) if known.exists() else {}
    for n, (label, data, extra) in enumerate(NETS):
        if args.nets and n not in args.nets:
            continue
        extra = [f"train.epochs={args.epochs * 3}" if e == "EPOCHS*3" else e for e in extra]
        uri = models.get(label) if args.reuse else None
        if uri:
            print(f"== {label}: the net trained before, {uri} (--reuse)", flush=True)
        else:
            uri = stage("train", conf(f"train.data={data}", *extra))["model_uri"]
            models[label] = uri
            known.write_text(json.dumps(models, indent=1))
        own = data.split("-")[0]
        inside = stage("audit", conf(f"train.data={own}", f"audit.model_uri={uri}", "audit.counterfactual.sequences=0"))
        fair = stage("audit", conf(f"train.data={own}", "audit.data=fair", f"audit.model_uri={uri}"))
        rows.append((label, inside, fair))
    print(f"\n{args.frames} frames per dataset (4 per sequence), {args.epochs} epochs, "
          f"{time.perf_counter() - tic:.0f} s\n")
    print("| net | test accuracy, in distribution | test accuracy, independent scenes | p_lanes | p_context | "
          "BG-Gap, in distribution | BG-Gap, independent | verdict (counterfactual) | occlusion says |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for label, inside, fair in rows:
        text = fair["context.verdict"]
        occlusion = text.split("Occlusion (secondary: fills are out of distribution) ", 1)[-1].split(":", 1)[0]
        print(f"| {label} | {_interval(inside, 'context.accuracy')} | {_interval(fair, 'context.accuracy')} | "
              f"{_interval(fair, 'context.counterfactual.p_lanes')} | "
              f"{_interval(fair, 'context.counterfactual.p_context')} | {_interval(inside, 'context.backgrounds.bg_gap')} | "
              f"{_interval(fair, 'context.backgrounds.bg_gap')} | "
              f"{fair['context.counterfactual_verdict']} | "
              f"{occlusion} |")
    if not args.nets or 6 in args.nets:   # the traffic-light classifier: no context tie, the backgrounds protocol
        label = "tl_classifier"
        uri = models.get(label) if args.reuse else None
        if not uri:
            uri = stage("train", conf("train.data=fair", "train.task=tl_classifier"))["model_uri"]
            models[label] = uri
            known.write_text(json.dumps(models, indent=1))
        tl = stage("audit", conf("train.data=fair", "train.task=tl_classifier", f"audit.model_uri={uri}"))
        print("\nTraffic-light classifier (trained on the unbiased crops; its test crops), backgrounds protocol:\n")
        print("| accuracy | object only | object inpainted away | mixed-same | mixed-rand | BG-Gap | "
              "mixed-rand: predicted as the background's class, per light class |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        follows = "; ".join(f"{k.rsplit('.', 1)[1]} {_interval(tl, k)}" for k in sorted(tl)
                            if k.startswith("context.backgrounds.follows_background.") and not k.endswith(("_lo", "_hi")))
        print(f"| {_interval(tl, 'context.accuracy')} | {_interval(tl, 'context.backgrounds.only_fg_accuracy')} | "
              f"{_interval(tl, 'context.backgrounds.only_bg_accuracy')} | "
              f"{_interval(tl, 'context.backgrounds.mixed_same_accuracy')} | "
              f"{_interval(tl, 'context.backgrounds.mixed_rand_accuracy')} | "
              f"{_interval(tl, 'context.backgrounds.bg_gap')} | {follows} |")
    if not rows:
        return 0
    print("\nLinear probes on unbiased scenes: held-out accuracy per layer (95% interval over sequences); "
          "chance = the commonest class")
    for target in ("lane_class", "time_of_day", "scenery"):
        layers = sorted({k.split(".")[3] for _, _, f in rows for k in f
                         if k.startswith(f"context.probe.{target}.") and not k.endswith(("_lo", "_hi"))},
                        key=lambda name: (name[:2], int("".join(ch for ch in name if ch.isdigit()) or 0)))
        print(f"\n{target} (chance {rows[0][2].get(f'context.probe.chance.{target}', float('nan')):.2f})\n")
        print("| net | " + " | ".join(layers) + " |")
        print("| --- |" + " ---: |" * len(layers))
        for label, _, fair in rows:
            print(f"| {label} | " + " | ".join(_interval(fair, f"context.probe.{target}.{layer}")
                                           for layer in layers) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
