"""How the detector is trained, decided by measurement: stored resolution, crop size and placement, loss, rate.

    .venv/bin/python benchmarks/detector_recipe.py --work-dir /tmp/detector_recipe [--frames 2000] [--val-batches 5]
        [--variants NAME,...]

Ingests the demo's synthetic data once per stored frame size (``ingest.frame_hw``), then per variant trains the
detector in this process (the train stage's own model, loader, crops and optimiser step; no Spark, no MLflow)
for a fixed number of steps and scores it on the first ``--val-batches`` batches of the val split, whole frames,
with the scorer every stage uses (peaks matched within ``evaluate.match_radius`` light heights). Prints one
line per variant: recall at precision 0.9 and AP per distance bucket, and the training's wall time.

The variants (:data:`VARIANTS`) change one thing at a time from the chosen recipe (288x512 frames, 64x64 crops
70% on lights, the focal heat loss, lr 0.003, 1200 steps of 32). ``bce21`` is the loss before it: BCE with the
cells near a light weighed up to x21.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repo root on sys.path too)

from pipeline.train.loader import batches  # noqa: E402
from pipeline.train.run import Step, build, heat_loss, seed_everything  # noqa: E402
from pipeline.train.scoring import detect  # noqa: E402
from pipeline.train.spec import make_spec  # noqa: E402

CHOSEN = {"frame_hw": (288, 512), "crop": (64, 64), "on_lights": 0.7, "loss": "focal", "lr": 0.003, "steps": 1200}
VARIANTS = {
    "chosen": {},
    "bce21": {"loss": "bce21"},
    "lr0.001": {"lr": 0.001},
    "crop128_on0.5": {"crop": (128, 128), "on_lights": 0.5, "steps": 400},   # about the same compute
    "steps800": {"steps": 800},
    "frames144x256": {"frame_hw": (144, 256)},
    "frames360x640": {"frame_hw": (360, 640)},
}


def bce21(logits, target):
    """The loss before: BCE on the heat map with the cells near a light weighed 1 + 20 x target."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, weight=1.0 + 20.0 * target)


def dataset_conf(work: Path, frames: int, frame_hw: tuple, *overrides):
    hw = f"[{frame_hw[0]},{frame_hw[1]}]"
    return common.make_conf(work, f"ingest.num_frames={frames}", f"ingest.frame_hw={hw}",
                            f"ingest.name=synthetic-{frame_hw[0]}x{frame_hw[1]}", "train.task=tl_detector",
                            *overrides, progress=False)


def run_variant(work: Path, frames: int, settings: dict, val_batches: int) -> dict:
    s = {**CHOSEN, **settings}
    conf = dataset_conf(work, frames, s["frame_hw"], f"train.crop_hw=[{s['crop'][0]},{s['crop'][1]}]",
                        f"train.crop_on_lights={s['on_lights']}", f"train.lr={s['lr']}",
                        f"train.steps_per_epoch={s['steps']}", "train.epochs=1", "train.batch_size=32")
    spec = make_spec(conf)
    seed_everything(0)
    model, optimizer, scheduler, joint = build(spec)   # the train stage's net, AdamW and cosine schedule
    step = Step(optimizer, scheduler, torch.device("cpu"), False, False)
    loss_fn = heat_loss if s["loss"] == "focal" else bce21
    tic = time.perf_counter()
    for batch in batches(spec.loader("train"), s["steps"], epoch=0):
        step(joint, loss_fn, batch)
    seconds = time.perf_counter() - tic
    scored = detect(model, spec.loader("val"), limit=val_batches, threshold=conf.evaluate.threshold,
                    match_radius=conf.evaluate.match_radius)
    metrics, _ = scored.tally().metrics("", conf.evaluate.threshold)
    return {"train_s": seconds, "frames": scored.rows, **metrics}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default="/tmp/detector_recipe")
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--val-batches", type=int, default=5)
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    work = Path(args.work_dir)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    from pipeline.session import build_session

    torch.set_num_threads(2)
    for hw in sorted({VARIANTS[n].get("frame_hw", CHOSEN["frame_hw"]) for n in names}):
        conf = dataset_conf(work, args.frames, hw)
        common.ensure_dataset(lambda: build_session(conf), conf, say=f"ingest {args.frames} frames at {hw}")
    print("| variant | steps | train s | near | medium | far | AP near | AP medium | AP far |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        m = run_variant(work, args.frames, VARIANTS[name], args.val_batches)
        steps = {**CHOSEN, **VARIANTS[name]}["steps"]
        print(f"| {name} | {steps} | {m['train_s']:.0f} | {m['recall_at_p90_near']:.3f} | "
              f"{m['recall_at_p90_medium']:.3f} | {m['recall_at_p90_far']:.3f} | {m['ap_near']:.3f} | "
              f"{m['ap_medium']:.3f} | {m['ap_far']:.3f} |", flush=True)
        print(json.dumps({"variant": name, **{k: v for k, v in m.items() if isinstance(v, float)}}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
