"""MLflow tracking in one small module.

One parent run per pipeline invocation, one child run per stage. Every run gets the resolved config
(as params and as ``config.yaml``) and the git commit. A stage that raises is marked FAILED with the error.
Training ranks log into the driver's run with an ``MlflowClient`` given its run id and tracking URI.
"""
from __future__ import annotations

import contextlib
import hashlib
import subprocess
import traceback
import warnings
from pathlib import Path
from typing import Iterator, Optional

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.config import Config, dump_yaml

_REPO = Path(__file__).resolve().parent.parent
MAX_PARAM_LEN = 500


def git_commit() -> str:
    """The commit of the code that runs (``+dirty`` when the tree has changes), or ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _prepare_store(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)


EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


class Tracker:
    """Runs, params, figures and datasets for one pipeline invocation."""

    def __init__(self, conf: Config):
        self.conf = conf
        self.uri = conf.mlflow.tracking_uri
        _prepare_store(self.uri)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        exp = self.client.get_experiment_by_name(conf.mlflow.experiment)
        if exp is None:
            location = conf.mlflow.artifact_location
            if location and "://" not in location:
                Path(location).mkdir(parents=True, exist_ok=True)
                location = Path(location).resolve().as_uri()
            self.experiment_id = self.client.create_experiment(conf.mlflow.experiment, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        # model training (MLflow 3.17's UI still opens the GenAI view unless the URL says
        # ?workflowType=machine_learning: cli.browse_hint prints that URL)
        if exp is None or EXPERIMENT_KIND[0] not in exp.tags:
            self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)
        self.parent_id: Optional[str] = None

    # ------------------------------------------------------------------------------------ runs
    @contextlib.contextmanager
    def pipeline_run(self, name: str) -> Iterator[mlflow.ActiveRun]:
        """The parent run of one invocation; stages opened inside become its children."""
        with self._run(name, nested=False, tags={"pipeline.kind": "pipeline"}) as run:
            self.parent_id = run.info.run_id
            try:
                yield run
            finally:
                self.parent_id = None

    @contextlib.contextmanager
    def stage_run(self, stage: str, conf: Optional[Config] = None,
                  run_name: Optional[str] = None) -> Iterator[mlflow.ActiveRun]:
        """A child run for one stage (a parent run is opened around it if there is none); it records ``conf``,
        the config the stage runs with (default: the invocation's). ``run_name``: what the UI lists it as
        (default: the stage and, for the per-task stages, the task)."""
        from pipeline.stages import STAGES

        conf_ = conf or self.conf
        per_task = any(s.name == stage and s.per_task for s in STAGES)
        name = run_name or (f"{stage} {conf_.train.task}" if per_task else stage)
        if self.parent_id is None:
            with self.pipeline_run(name), self.stage_run(stage, conf, run_name=name) as run:
                yield run
            return
        tags = {"pipeline.kind": "stage", "pipeline.stage": stage}
        if per_task:
            tags["pipeline.task"] = conf_.train.task
        with self._run(name, nested=True, tags=tags, conf=conf) as run:
            yield run

    @contextlib.contextmanager
    def _run(self, name: str, nested: bool, tags: dict, conf: Optional[Config] = None) -> Iterator[mlflow.ActiveRun]:
        run = mlflow.start_run(experiment_id=self.experiment_id, run_name=name, nested=nested,
                               tags={**tags, "mlflow.source.git.commit": git_commit()})
        try:
            self.log_config(conf or self.conf)
            yield run
        except BaseException as exc:
            mlflow.set_tag("error", f"{type(exc).__name__}: {exc}"[:5000])
            mlflow.log_text("".join(traceback.format_exception(exc)), "error.txt")
            mlflow.end_run("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        else:
            mlflow.end_run("FINISHED")

    # --------------------------------------------------------------------------------- logging
    @staticmethod
    def log_config(conf: Config) -> None:
        params = {k: ("" if v is None else str(v))[:MAX_PARAM_LEN] for k, v in conf.flat().items()}
        mlflow.log_params(params)
        mlflow.log_text(dump_yaml(conf), "config.yaml")

    @staticmethod
    def log_figure(fig, name: str) -> None:
        """Log a matplotlib figure as ``figures/<name>.png`` and close it."""
        import matplotlib.pyplot as plt

        mlflow.log_figure(fig, f"figures/{name}.png")
        plt.close(fig)

    @staticmethod
    def log_dataset(name: str, url: str, rows: int, fingerprint: str, context: str = "output") -> None:
        """Record a dataset (URL, row count, content fingerprint) as a run input and as params."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        with warnings.catch_warnings():  # file:// matches two equivalent source kinds; either is right
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(url)
        dataset = MetaDataset(source=source, name=name, digest=fingerprint[:36])
        mlflow.log_input(dataset, context=context)
        mlflow.log_params({f"dataset.{name}.url": url[:MAX_PARAM_LEN], f"dataset.{name}.fingerprint": fingerprint})
        mlflow.log_metric(f"dataset.{name}.rows", rows)


def fingerprint_files(url: str) -> str:
    """A content fingerprint of every file under ``url`` (names and bytes, in sorted order)."""
    from pipeline.data.store import filesystem

    fs, root = filesystem(url)
    digest = hashlib.sha256()
    for path in sorted(fs.find(root)):
        rel = path[len(root.rstrip("/")) + 1:]
        if rel.startswith(("_", ".")) or "/." in rel or "/_" in rel:
            continue  # markers and checksums (._SUCCESS.crc) are not content
        digest.update(rel.encode())
        with fs.open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
