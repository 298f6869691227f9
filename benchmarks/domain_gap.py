"""Pre-train on the generator, fine-tune on a few images from another camera: does it beat training from scratch?

No real data here, so the other domain is made the way a user's crops would arrive: the generator's light crops
of other scenes (``ingest.seed=1``), passed through a different camera (white balance, gamma, defocus, sensor
noise), written to an ImageFolder (``<split>/<class>/<group>__<id>.png``) and ingested as a user would. Then:

1. pre-train the light classifier on the default synthetic crops (``pipeline train``, its defaults);
2. how the pre-trained net does on the other camera's test crops as it is (no fine-tuning), and on the same
   scenes through the generator's own camera: the size of the gap;
3. ``pipeline transfer transfer.mode=sizes``: from scratch against fine-tuned from the pre-trained model, at
   ``--sizes`` train images of the other camera, ``--seeds`` seeds each, scored on its test split.

Prints a table (mean and min..max over seeds) and writes the stage's figure to ``--figure``.

    .venv/bin/python benchmarks/domain_gap.py --work /tmp/domain_gap
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PIPELINE = str(Path(sys.executable).parent / "pipeline")


def sh(args: list, log: Path) -> None:
    tic = time.perf_counter()
    with open(log, "ab") as out:
        rc = subprocess.call([PIPELINE, *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    print(f"  {' '.join(args[:1])} ... exit {rc} ({time.perf_counter() - tic:.0f} s)", flush=True)
    if rc:
        sys.exit(f"failed: {' '.join(args)} (see {log})")


def camera(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another camera: a colder white balance, a darker gamma, a slight defocus and sensor noise."""
    x = image.astype(np.float64) / 255.0
    x = x * np.array([0.85, 1.0, 1.2])
    x = np.clip(x, 0, 1) ** 1.5
    k = np.array([1.0, 2.0, 1.0]) / 4.0                       # separable 3x3 binomial blur
    pad = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    x = k[0] * pad[:-2] + k[1] * pad[1:-1] + k[2] * pad[2:]
    x = k[0] * x[:, :-2] + k[1] * x[:, 1:-1] + k[2] * x[:, 2:]
    x = x * 255.0 + rng.normal(0, 6.0, x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def export(data_root: str, out: Path) -> dict:
    """The crops of a dataset through :func:`camera`, as an ImageFolder; returns {split: rows}."""
    import cv2
    import pyarrow.parquet as pq

    from schemas.datasets import SCHEMAS, decode_row

    schema = SCHEMAS["tl_crops"]
    counts = {}
    for split in ("train", "val", "test"):
        rng = np.random.default_rng(("train", "val", "test").index(split))
        rows = pq.read_table(f"{data_root}/tl_crops/{split}").to_pylist()
        for stored in rows:
            row = decode_row(schema, stored)
            folder = out / split / row["label_name"]
            folder.mkdir(parents=True, exist_ok=True)
            group = str(row["group"]).replace("/", "_").replace("__", "_")
            cv2.imwrite(str(folder / f"{group}__{row['id'].replace('/', '_')}.png"),
                        cv2.cvtColor(camera(row["image"], rng), cv2.COLOR_RGB2BGR))
        counts[split] = len(rows)
    return counts


def zero_shot(uri: str, tracking_uri: str, data_root: str, kind: str, pictures=None) -> float:
    """Accuracy of the model as it is on a split's test rows, classes matched by name (``pictures``: a function
    applied to each image first)."""
    import pyarrow.parquet as pq
    import torch

    from pipeline.models import stored
    from pipeline.train.loader import to_tensor
    from schemas.datasets import SCHEMAS, decode_row

    model = stored.load(uri, tracking_uri).eval()
    names = list(model.card["classes"])
    rows = [decode_row(SCHEMAS[kind], r) for r in pq.read_table(f"{data_root}/{kind}/test").to_pylist()]
    images = np.stack([pictures(r["image"]) if pictures else r["image"] for r in rows])
    with torch.no_grad():
        predicted = model(to_tensor(images)).argmax(1).numpy()
    return float(np.mean([names[p] == r["label_name"] for p, r in zip(predicted, rows)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/domain_gap", help="a scratch folder (emptied first)")
    ap.add_argument("--frames", type=int, default=1200, help="synthetic frames to pre-train on")
    ap.add_argument("--other-frames", type=int, default=800, help="frames of the other camera's scenes")
    ap.add_argument("--sizes", default="25,50,100,400")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--figure", default=str(REPO / "benchmarks" / "domain_gap.png"))
    ap.add_argument("--report", action="store_true", help="only print the results of an earlier run in --work")
    ap.add_argument("--transfer-only", action="store_true",
                    help="keep the datasets and the pre-trained model of an earlier run in --work; run the curve again")
    a = ap.parse_args()
    from mlflow.tracking import MlflowClient

    work = Path(a.work)
    log = work / "log.txt"
    common = [f"paths.work_dir={work}", "spark.master=local[2]"]
    tic = time.perf_counter()
    tracking = f"sqlite:///{work}/mlflow.db"
    if a.transfer_only:
        a.report = True
    if not a.report:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        print(f"domain gap: work {work}, log {log}", flush=True)
        sh(["ingest", *common, "ingest.name=synth", f"ingest.num_frames={a.frames}"], log)
        sh(["train", *common, "train.task=tl_classifier", "train.data=synth"], log)
    client = MlflowClient(tracking)
    experiments = [e.experiment_id for e in client.search_experiments()]
    run = client.search_runs(experiments, "tags.`pipeline.stage` = 'train'", order_by=["attributes.start_time DESC"])[0]
    uri = run.data.tags["pipeline.model_uri"]
    if not a.report:
        sh(["ingest", *common, "ingest.name=other", "ingest.seed=1", f"ingest.num_frames={a.other_frames}"], log)
        counts = export(f"{work}/data/other", work / "camera")
        print(f"  exported {counts} crops through the other camera to {work / 'camera'}", flush=True)
        sh(["ingest", *common, "ingest.source=imagefolder", f"ingest.source_path={work / 'camera'}",
            "ingest.class_hw=[32,32]", "ingest.name=camera"], log)
    same = zero_shot(uri, tracking, f"{work}/data/other", "tl_crops")
    other = zero_shot(uri, tracking, f"{work}/data/camera", "class_images")
    print(f"pre-trained {uri} ({run.data.metrics.get('test_accuracy', float('nan')):.3f} on its own test split), "
          f"as it is: {same:.3f} on the other scenes' crops, {other:.3f} on the same crops through the other camera",
          flush=True)
    if not a.report or a.transfer_only:
        sh(["transfer", *common, "transfer.mode=sizes", "transfer.task=tl_classifier", "train.data=camera",
            f"transfer.init_model={uri}", f"transfer.sizes=[{a.sizes}]", f"transfer.seeds={a.seeds}"], log)
    stage = client.search_runs(experiments, "tags.`pipeline.stage` = 'transfer' and params.`transfer.mode` = 'sizes'",
                               order_by=["attributes.start_time DESC"])[0]
    m, p = stage.data.metrics, stage.data.params
    if "sizes.as_is" in m:
        print(f"the stage's own figure for the model as it is on this test split: {m['sizes.as_is']:.3f}")
    print(f"\nfine-tuned from {uri} (copied {p.get('transfer.init_layers')}; head {p.get('transfer.init_head')}) "
          f"against from scratch, test accuracy on the other camera ({a.seeds} seeds: mean, min..max):")
    print(f"{'images':>7} | {'from scratch':>20} | {'pre-trained, fine-tuned':>24} | gain")
    for size in (int(s) for s in a.sizes.split(",")):
        cells = []
        for v in ("scratch", "pretrained"):
            k = f"sizes.{v}.n{size}"
            cells.append(f"{m[k + '.mean']:.3f} ({m[k + '.min']:.3f}..{m[k + '.max']:.3f})")
        print(f"{p.get(f'transfer.rows.n{size}', size):>7} | {cells[0]:>20} | {cells[1]:>24} | "
              f"{m[f'sizes.gain.n{size}']:+.3f}")
    path = client.download_artifacts(stage.info.run_id, "figures/transfer_sizes.png", str(work))
    shutil.copy(path, a.figure)
    print(f"\nfigure: {os.path.relpath(a.figure, REPO)}; {m['trainings']:.0f} trainings in {m['grid_seconds']:.0f} s; "
          f"{'' if a.report else f'all in {time.perf_counter() - tic:.0f} s'}")


if __name__ == "__main__":
    main()
