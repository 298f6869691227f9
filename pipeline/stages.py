"""The stage registry: the one list the CLI, the spark-submit jobs and ``pipeline run`` all read.

Each stage is one library function ``run(spark, conf, tracker) -> dict`` (its key results), named here with
what it reads and writes, and the config sections its output depends on (for skip/resume in ``pipeline run``).
"""
from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from typing import Callable

from pipeline.config import Config
from pipeline.data import store


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    entry: str                     # "module:function", imported only when the stage runs (keeps --help fast)
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    depends_on: tuple[str, ...]    # config sections whose values decide the stage's output

    def function(self) -> Callable:
        module, _, attr = self.entry.partition(":")
        return getattr(importlib.import_module(module), attr)

    def config_hash(self, conf: Config) -> str:
        sections = {name: getattr(conf, name).model_dump(mode="json") for name in self.depends_on}
        sections["data_url"] = conf.paths.data_url
        return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()[:16]


STAGES: tuple[Stage, ...] = (
    Stage("ingest", "Render synthetic scenes or read a dataset, validate, split by group, write Petastorm datasets.",
          "pipeline.data.ingest:run", reads=("ingest.source",),
          writes=("road_frames | class_images | tl_frames, tl_crops", "quarantine", "ledger"),
          depends_on=("ingest",)),
    Stage("augment", "Write augment.copies seeded augmented copies of each train row (policy augment.policy).",
          "pipeline.augment.stage:run", reads=("<augment.source>/<every kind>",),
          writes=("<augment.name>/<every kind>",), depends_on=("ingest", "augment")),
    Stage("train", "Train train.task with TorchDistributor on an ingested dataset; log metrics, checkpoints, model.",
          "pipeline.train.run:run", reads=("<train.data>/<the task's kind>",),
          writes=("checkpoint", "MLflow model"), depends_on=("ingest", "train")),
    Stage("evaluate", "Evaluate a logged model (evaluate.model_uri, default: the newest of train.task) on a split.",
          "pipeline.train.evaluate:run", reads=("MLflow model", "<train.data>/<the task's kind>"),
          writes=("metrics", "figures"), depends_on=("ingest", "train", "evaluate")),
    Stage("correlate", "Do nets trained from different seeds learn the same units? Exact correlation, matching, "
                       "CKA and SVCCA between two or more nets of train.task (Li et al. 2016), in one Spark pass.",
          "pipeline.analysis.correlate:run", reads=("MLflow models (or the train stage)", "<train.data>/<kind>/<split>"),
          writes=("metrics", "correlate/<layer>/*.npy", "figures"), depends_on=("ingest", "train", "correlate")),
    Stage("visualize", "What each unit expects to see: activation maximization of a logged model's units "
                       "(batched, Fourier, colour-decorrelated on its own data), multifaceted and deep-dream, "
                       "beside the real images that excite each unit most (top-k in one Spark pass).",
          "pipeline.analysis.visualize:run", reads=("MLflow model", "<train.data>/<kind>/<split>"),
          writes=("metrics", "figures"), depends_on=("ingest", "train", "visualize")),
    Stage("transfer", "Which layers transfer, and does pre-training rescue small data? Halves A and B of the "
                      "data; baseA, baseB, BnB, AnB, BnB+, AnB+ at every chop layer (Yosinski et al. 2014), and "
                      "scratch vs pre-trained vs a second loss at several training-set sizes: parallel Spark "
                      "tasks, one training each, each its own MLflow run.",
          "pipeline.analysis.transfer:run", reads=("<train.data>/<the task's kind>",),
          writes=("<train.data>-transfer-<split>-<A|B>", "checkpoints", "metrics", "figures"),
          depends_on=("ingest", "train", "transfer")),
    Stage("audit", "Does a net look at the object or only its context (occlusion of the object vs the context, "
                   "attribution mass on the object vs its area, a verdict in words)?",
          "pipeline.analysis.audit:run", reads=("MLflow model", "<audit.data>/<kind>/<audit.split>"),
          writes=("metrics", "verdict", "figures"), depends_on=("ingest", "train", "audit")),
)


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"unknown stage '{name}'; stages: {', '.join(s.name for s in STAGES)}")


def _marker_url(conf: Config, stage: Stage) -> str:
    return f"{conf.paths.data_url.rstrip('/')}/_stages/{stage.name}.json"


def is_done(conf: Config, stage: Stage) -> bool:
    """True when the stage last finished with the same relevant config (``pipeline run`` then skips it)."""
    url = _marker_url(conf, stage)
    return store.exists(url) and store.read_json(url).get("config_hash") == stage.config_hash(conf)


def mark_done(conf: Config, stage: Stage, results: dict) -> None:
    store.write_json(_marker_url(conf, stage), {"config_hash": stage.config_hash(conf), "results": results})


def run_stage(stage: Stage, spark, conf: Config, tracker) -> dict:
    """Run one stage in its own MLflow child run; returns its key results (with ``run_id``)."""
    with tracker.stage_run(stage.name, conf) as run:
        results = dict(stage.function()(spark, conf, tracker) or {})
        results["run_id"] = run.info.run_id
    mark_done(conf, stage, results)
    return results
