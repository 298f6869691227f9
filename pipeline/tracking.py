"""MLflow tracking in one small module.

One parent run per pipeline invocation, one child run per stage. Every run gets the resolved config
(as params and as ``config.yaml``) and the git commit. A stage that raises is marked FAILED with the error,
and the temporary outputs it made and never swapped in are removed (:func:`pipeline.data.store.discard_unfinished`).
Training ranks log into the driver's run with an ``MlflowClient`` given its run id and tracking URI.

Faults:

* A process killed with SIGKILL (or the OOM killer, or a power cut) cannot end its own runs. Every run the
  Tracker starts is tagged with the host, the pid and the pid's start time (``pipeline.host``, ``pipeline.pid``,
  ``pipeline.pid_start``); a Tracker that starts marks the RUNNING runs of its experiment whose process on this
  host is gone as KILLED (with their RUNNING descendants, e.g. transfer's cell runs), one line each.
* An ``http(s)://`` tracking server that does not answer stops the Tracker at once with a :class:`UserError`
  naming the URI and the fix (one probe of ``/health``, no retries).
* A server that dies mid-run: MLflow's HTTP client would retry each request 7 times over about 4 minutes, and
  wait up to 120 s for each answer. The Tracker sets shorter defaults in the environment when it is built (which
  the training ranks inherit), unless they are already set: :data:`HTTP_DEFAULTS`, 3 retries with backoff factor
  1 (0, 2 and 4 s between attempts, plus up to 1 s of jitter: a refused connection fails a call after about 8 s)
  and a 20 s timeout per request. A stage whose logging fails so fails within seconds, with the cause; the runs
  it could not end are marked KILLED by the next Tracker. (:data:`QUIET_DEFAULTS` also turns MLflow's artifact
  progress bars off, so an error stays one line.)
* Figures and the config are logged whole (:func:`log_bytes`): on a local artifact store a killed process
  leaves no half-written artifact.
* When a stage fails, its Spark jobs are cancelled and their tasks waited for (a task of a failed job can still
  write for seconds) before its temporary outputs are removed.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Iterator, Optional

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.config import Config, dump_yaml
from pipeline.errors import UserError
from pipeline.tasks import PER_TASK_STAGES

# The tags every run of the pipeline carries (the report and the UI find runs by them), and where figures go
KIND_TAG, KIND_PIPELINE, KIND_STAGE = "pipeline.kind", "pipeline", "stage"
STAGE_TAG, TASK_TAG = "pipeline.stage", "pipeline.task"
ERROR_TAG = "error"                      # a failed or killed run: what ended it
FIGURES = "figures"                      # artifact folder of log_figure: figures/<name>.png

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

#: MLflow's HTTP client settings, set by the Tracker when absent from the environment (see the module doc).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
#: Also unless set: no tqdm bars on stderr when a model is loaded (an error stays one line, a log stays readable).
QUIET_DEFAULTS = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
PROBE_TIMEOUT_S = 5.0
HOST_TAG, PID_TAG, PID_START_TAG = "pipeline.host", "pipeline.pid", "pipeline.pid_start"


class TrackingUnreachable(UserError, ConnectionError):
    """The MLflow tracking server does not answer."""

    def __init__(self, uri: str, reason: str):
        self.uri, self.reason = uri, reason
        super().__init__(f"the MLflow tracking server {uri} is unreachable ({reason}): start it (e.g. `mlflow server "
                         f"--host <host> --port <port>`) or set mlflow.tracking_uri (or MLFLOW_TRACKING_URI) to a "
                         f"running server, or to sqlite:///<file> for a local store")


def _reason(exc: BaseException) -> str:
    """A short cause of a connection failure ("Connection refused", "no answer within 5 s")."""
    import requests

    if isinstance(exc, requests.Timeout):
        return f"no answer within {PROBE_TIMEOUT_S:g} s"
    found = re.findall(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    return found[-1].strip() if found else (str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)


def check_reachable(uri: str) -> None:
    """Raise :class:`TrackingUnreachable` when ``uri`` is an ``http(s)://`` server that does not answer (any HTTP
    answer counts, even an error status: then the server is there). One request, no retries."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S)
    except requests.RequestException as exc:
        raise TrackingUnreachable(uri, _reason(exc)) from None


def _proc_stat(pid: int) -> Optional[list]:
    """Fields 3.. of /proc/<pid>/stat (state first, start time at index 19), or None where unreadable."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


def process_start(pid: int) -> str:
    """When ``pid`` started (clock ticks since boot, with the boot's id): with the pid, names one process even
    after the pid is reused. Empty where /proc is unavailable."""
    stat = _proc_stat(pid)
    if not stat:
        return ""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{boot}:{stat[19]}"


def process_alive(pid: int, start: str = "") -> bool:
    """Whether the process ``pid`` (started at ``start``, when known) still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    stat = _proc_stat(pid)
    if stat is None:
        return not Path("/proc/self/stat").exists()  # no /proc here: os.kill is all we know
    if stat[0] in ("Z", "X"):  # a zombie has ended; only its exit status waits for its parent
        return False
    return not start or process_start(pid) == start


def _process_tags() -> dict:
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: process_start(pid)}


def prepare_client(uri: str) -> None:
    """Before the first request to the store at ``uri``: MLflow's HTTP settings (:data:`HTTP_DEFAULTS`, unless
    set), a server that does not answer said at once (:class:`TrackingUnreachable`), a SQLite file's folder made."""
    for key, value in {**HTTP_DEFAULTS, **QUIET_DEFAULTS}.items():
        os.environ.setdefault(key, value)
    check_reachable(uri)
    _prepare_store(uri)


class Tracker:
    """Runs, params, figures and datasets for one pipeline invocation."""

    def __init__(self, conf: Config):
        self.conf = conf
        self.uri = conf.mlflow.tracking_uri
        prepare_client(self.uri)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        exp = found = self.client.get_experiment_by_name(conf.mlflow.experiment)
        if exp is None:
            exp = self._create_experiment(conf)
        self.experiment_id = exp.experiment_id
        # model training (MLflow 3.17's UI still opens the GenAI view unless the URL says
        # ?workflowType=machine_learning: cli.browse_hint prints that URL)
        if EXPERIMENT_KIND[0] not in exp.tags:
            self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)
        self.parent_id: Optional[str] = None
        self.unreachable: Optional[str] = None   # set when recording a failure found the server gone
        if found is not None:
            self.mark_killed_runs()

    def _create_experiment(self, conf: Config):
        """The experiment, made now (unless another process just made it: two runs starting at once against one
        server both find none, and one create fails). A local ``artifact_location`` is used with a local store
        only: with a tracking server the server decides where artifacts go (a folder on this machine would hold
        them where nobody else on the team can read them)."""
        location = conf.mlflow.artifact_location
        if location and "://" not in location:
            if self.uri.startswith(("http://", "https://")):
                location = None
            else:
                Path(location).mkdir(parents=True, exist_ok=True)
                location = Path(location).resolve().as_uri()
        try:
            self.client.create_experiment(conf.mlflow.experiment, artifact_location=location)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        return self.client.get_experiment_by_name(conf.mlflow.experiment)

    def mark_killed_runs(self) -> list:
        """Mark KILLED the RUNNING runs of this experiment that a process on this host started and that process
        is gone (killed without a chance to end them), and their RUNNING descendants; one line per run.
        Returns the run ids marked."""
        host = socket.gethostname()
        running = self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'",
                                          max_results=5000)
        dead = {}
        for run in running:
            tags = run.data.tags
            if tags.get(HOST_TAG) == host and tags.get(PID_TAG, "").isdigit() \
                    and not process_alive(int(tags[PID_TAG]), tags.get(PID_START_TAG, "")):
                dead[run.info.run_id] = f"pid {tags[PID_TAG]} on {host}"
        while True:  # runs made for a dead run by its process without the process tags (transfer's cells)
            more = {r.info.run_id: f"the process of its parent run {r.data.tags['mlflow.parentRunId']}"
                    for r in running if r.info.run_id not in dead and PID_TAG not in r.data.tags
                    and r.data.tags.get("mlflow.parentRunId") in dead}
            if not more:
                break
            dead.update(more)
        for run in running:
            run_id = run.info.run_id
            if run_id not in dead:
                continue
            self.client.set_tag(run_id, ERROR_TAG, f"killed: {dead[run_id]} ended without ending the run "
                                                 f"(SIGKILL, the OOM killer or a power cut); marked KILLED later")
            self.client.set_terminated(run_id, "KILLED")
            print(f"mlflow: run {run_id} ({run.info.run_name}) was left RUNNING by {dead[run_id]}, which is gone: "
                  f"marked KILLED", flush=True)
        return [r.info.run_id for r in running if r.info.run_id in dead]

    # ------------------------------------------------------------------------------------ runs
    @contextlib.contextmanager
    def pipeline_run(self, name: str) -> Iterator[mlflow.ActiveRun]:
        """The parent run of one invocation; stages opened inside become its children."""
        with self._run(name, nested=False, tags={KIND_TAG: KIND_PIPELINE}) as run:
            self.parent_id = run.info.run_id
            try:
                yield run
            finally:
                self.parent_id = None

    @contextlib.contextmanager
    def stage_run(self, stage: str, conf: Optional[Config] = None, run_name: Optional[str] = None,
                  per_task: Optional[bool] = None, tags: Optional[dict] = None) -> Iterator[mlflow.ActiveRun]:
        """A child run for one stage (a parent run is opened around it if there is none); it records ``conf``,
        the config the stage runs with (default: the invocation's). ``run_name``: what the UI lists it as
        (default: the stage and, for the per-task stages, the task). ``per_task``: tag the run with its task
        (default: the stage is one of :data:`pipeline.tasks.PER_TASK_STAGES`); ``tags``: more tags for it."""
        conf_ = conf or self.conf
        per_task = stage in PER_TASK_STAGES if per_task is None else per_task
        name = run_name or (f"{stage} {conf_.train.task}" if per_task else stage)
        if self.parent_id is None:
            with self.pipeline_run(name), self.stage_run(stage, conf, name, per_task, tags) as run:
                yield run
            return
        tags = {**(tags or {}), KIND_TAG: KIND_STAGE, STAGE_TAG: stage}
        if per_task:
            tags[TASK_TAG] = conf_.train.task
        with self._run(name, nested=True, tags=tags, conf=conf, system=stage == "train") as run:
            yield run

    @contextlib.contextmanager
    def _run(self, name: str, nested: bool, tags: dict, conf: Optional[Config] = None,
             system: bool = False) -> Iterator[mlflow.ActiveRun]:
        """A run; ``system``: with MLflow's system metrics (CPU, memory, GPU where pynvml sees one) every
        ``mlflow.system_metrics_s`` seconds (0: none)."""
        every = (conf or self.conf).mlflow.system_metrics_s if system else 0
        if every:
            mlflow.set_system_metrics_sampling_interval(every)
            mlflow.set_system_metrics_samples_before_logging(1)
        run = mlflow.start_run(experiment_id=self.experiment_id, run_name=name, nested=nested,
                               tags={**tags, "mlflow.source.git.commit": git_commit(), **_process_tags()},
                               log_system_metrics=bool(every))
        try:
            self.log_config(conf or self.conf)
            yield run
        except BaseException as exc:
            from pipeline.data.store import discard_unfinished

            _spark_tasks_ended()  # a task of the failed job may still write into the stage's temporary output
            for url in discard_unfinished():
                print(f"removed the unfinished output {url}", file=sys.stderr, flush=True)
            self._end_failed(run.info.run_id, exc)
            raise
        else:
            mlflow.end_run("FINISHED")

    def _end_failed(self, run_id: str, exc: BaseException) -> None:
        """Record ``exc`` on the run and end it FAILED (KILLED for Ctrl-C). When the server is gone, say so in
        one line and end the local run without further retries; ``exc`` propagates either way."""
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        if not self.unreachable:
            try:
                check_reachable(self.uri)   # a server known gone gets no retries (the stage may have failed for it)
            except TrackingUnreachable as gone:
                self.unreachable = gone.reason
        with _retries(0 if self.unreachable else None):
            try:
                if not self.unreachable:
                    mlflow.set_tag(ERROR_TAG, f"{type(exc).__name__}: {exc}"[:5000])
                    mlflow.log_text("".join(traceback.format_exception(exc)), "error.txt")
            except Exception as log_exc:  # noqa: BLE001  (the original error matters more)
                self.unreachable = _reason(log_exc)
        with _retries(0 if self.unreachable else None):
            try:
                mlflow.end_run(status)
            except Exception as log_exc:  # noqa: BLE001
                self.unreachable = self.unreachable or _reason(log_exc)
        if self.unreachable:
            note = (f"mlflow: could not mark run {run_id} {status} at {self.uri} ({self.unreachable}); the next "
                    f"pipeline command on this host marks it KILLED")
            print(note, file=sys.stderr, flush=True)
            exc.add_note(note)

    # --------------------------------------------------------------------------------- logging
    @staticmethod
    def log_config(conf: Config) -> None:
        params = {k: ("" if v is None else str(v))[:MAX_PARAM_LEN] for k, v in conf.flat().items()}
        mlflow.log_params(params)
        log_bytes(dump_yaml(conf).encode(), "config.yaml")

    @staticmethod
    def log_figure(fig, name: str) -> None:
        """Log a matplotlib figure as ``figures/<name>.png`` (whole: :func:`log_bytes`) and close it."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        log_bytes(buf.getvalue(), f"{FIGURES}/{name}.png")

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


    @staticmethod
    def dataset_of(name: str, url: str):
        """An MLflow dataset for ``url``, to link a model's training input and metrics to; its digest is the
        files' names and sizes (listed, not read). None when nothing is there."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        from pipeline.data.store import filesystem

        fs, root = filesystem(url)
        try:
            files = sorted((p, fs.size(p)) for p in fs.find(root) if "/_" not in p[len(root):] and "/." not in p)
        except FileNotFoundError:
            return None
        if not files:
            return None
        digest = hashlib.sha256(json.dumps([(p[len(root):], n) for p, n in files]).encode()).hexdigest()
        with warnings.catch_warnings():  # file:// matches two equivalent source kinds; either is right
            warnings.simplefilter("ignore", UserWarning)
            return MetaDataset(source=resolve_dataset_source(url), name=name, digest=digest[:36])


def _local_artifact_dir() -> Optional[Path]:
    """The active run's artifact folder when it is on this machine's filesystem, else None."""
    from urllib.parse import unquote, urlparse

    uri = mlflow.get_artifact_uri()
    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path))
    return Path(uri) if "://" not in uri and ":" not in uri.split("/", 1)[0] else None


def log_bytes(data: bytes, artifact_file: str) -> None:
    """Log ``data`` as the active run's artifact ``artifact_file``, whole: on a local artifact store the file is
    written beside the run's ``artifacts/`` folder and renamed in, so a process killed meanwhile leaves no
    half-written artifact (MLflow's own ``log_artifact`` copies in place); elsewhere an upload, which the tracking
    server and object stores keep whole or not at all."""
    import posixpath
    import tempfile
    import uuid

    root = _local_artifact_dir()
    name = posixpath.basename(artifact_file)
    if root is None:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / name).write_bytes(data)
            mlflow.log_artifact(str(Path(tmp) / name), posixpath.dirname(artifact_file) or None)
        return
    target = root / artifact_file
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".staging-{uuid.uuid4().hex[:8]}-{name}"   # never listed among the artifacts
    staging.write_bytes(data)
    os.replace(staging, target)


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


def _spark_tasks_ended(timeout_s: float = 60.0) -> None:
    """Cancel this process's Spark jobs and wait (at most ``timeout_s``) until their tasks have ended. When a
    job fails, Spark kills its other running tasks, but a task's Python worker runs on until it is destroyed,
    seconds later, and may write meanwhile. No-op without an active SparkContext."""
    if "pyspark" not in sys.modules:
        return
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context
    if sc is None:
        return
    try:
        sc.cancelAllJobs()
        tracker = sc.statusTracker()
        stages = set()
        for job in sorted(tracker.getJobIdsForGroup())[-50:]:   # the failed stage's jobs are the newest
            info = tracker.getJobInfo(job)
            if info is not None and info.status != "SUCCEEDED":
                stages.update(info.stageIds)

        def active() -> int:
            return sum(info.numActiveTasks for info in map(tracker.getStageInfo, stages) if info is not None)

        end = time.monotonic() + timeout_s
        while active() and time.monotonic() < end:
            time.sleep(0.1)
    except Exception:  # noqa: BLE001  (the JVM is gone, or stopping: nothing runs any more)
        pass


@contextlib.contextmanager
def env_set(key: str, value: Optional[str]) -> Iterator[None]:
    """The environment variable ``key`` set to ``value`` inside the block, as it was after (None: unchanged)."""
    if value is None:
        yield
        return
    before = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _retries(n: Optional[int]):
    """MLflow's HTTP retries set to ``n`` inside the block (None: unchanged)."""
    return env_set("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None if n is None else str(n))
