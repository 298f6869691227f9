"""A real standalone Spark cluster on loopback: a Master and two Workers (``spark-class`` of the pyspark install),
a real ``mlflow server`` (a team's: on PostgreSQL, tests/tracking_server.py; on SQLite where there is none, but
not under CI), and ``spark-submit --master spark://...`` running ingest, train (TorchDistributor barrier
tasks, 2 ranks) and correlate end to end, as on a cluster:

* the driver runs here, in client mode, from this checkout (it reads ``conf/``), with ``--profile cluster`` whose
  master, storage and tracking server come from the environment;
* the executors run a Python that has the pipeline's dependencies but *not* the pipeline (a venv whose only
  site-packages are the dependencies'): they import it from the zip ``docker/dist.sh`` builds, shipped with
  ``--files`` and named by ``spark.executorEnv.PYTHONPATH`` (which TorchDistributor's rank processes inherit);
* datasets and checkpoints live under one ``file://`` URL every executor reads; runs, metrics and the logged
  models go to the server over HTTP (its artifacts proxied: no executor writes the store's folder itself).

One module-scoped fixture starts everything and stops every process it started (process groups, then anything
left that carries this test's folder), also when a test fails. Tiny data: 48 frames at 64x64, one epoch.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser import on_ci
from tests.tracking_server import TrackingServer, postgres_url, require_postgres

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = sys.executable
BIN = Path(sys.executable).parent
MARKER = "ROAD_STANDALONE_TEST_DIR"       # every process started here (and its children) carries it
# Short-lived JVMs doing little JVM work (Python does the heavy lifting): the client compiler only and a serial
# GC cut this test's CPU time by a third (12 JVMs start), which counts on a busy 2-core machine.
LIGHT_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"

# The data of tests/conftest.py's TINY, one epoch: 48 frames, road frames at 64x64.
TINY = ["ingest.num_frames=48", "ingest.frames_per_sequence=2", "ingest.render_hw=[180,320]",
        "ingest.frame_hw=[72,128]", "ingest.road_hw=[64,64]", "ingest.partitions=4",
        "ingest.split={train: 0.5, val: 0.25, test: 0.25}",
        "train.task=lane_classifier", "train.batch_size=8", "train.epochs=1", "train.width=0.25", "train.lr=0.002",
        "spark.conf.spark.sql.shuffle.partitions=4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read().decode()
    return json.loads(body) if body.strip().startswith(("{", "[")) else body


def _poll(what: str, check, deadline_s: float, procs=(), interval: float = 0.5):
    """Call ``check()`` until it returns something truthy; fail naming ``what`` at the deadline, or at once
    when one of ``procs`` (name, Popen, log) has exited."""
    end, last = time.monotonic() + deadline_s, None
    while time.monotonic() < end:
        for name, proc, log in procs:
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode} while waiting for {what}:\n{_tail(log)}")
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(interval)
    pytest.fail(f"{what}: not after {deadline_s:.0f} s (last: {last!r})\n" +
                "\n".join(f"--- {n}:\n{_tail(log)}" for n, _, log in procs))


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _ours(root: str) -> dict[int, str]:
    """Processes whose command line, working folder or environment names ``root`` (this test's folder): pid ->
    command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:   # gone, or not readable: not one of ours
            continue
        if root in cmdline or cwd.startswith(root) or f"{MARKER}={root}" in environ:
            found[int(entry.name)] = cmdline[:300]
    return found


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        self.master_port, self.master_ui = _free_port(), _free_port()
        self.mlflow_port = _free_port()
        self.master_url = f"spark://127.0.0.1:{self.master_port}"
        self.tracking_uri = f"http://127.0.0.1:{self.mlflow_port}"
        self.data_url = f"file://{root}/data"
        self.dist = root / "dist"
        self.executor_python = root / "executor-env" / "bin" / "python"
        self.server = None        # a TrackingServer on PostgreSQL (tests/tracking_server.py), where there is one
        self.env = self._base_env()

    def _base_env(self) -> dict:
        import pyspark

        from pipeline.javahome import ensure_java

        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYSPARK_", "SPARK_")) and k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
        ensure_java(env)
        conf_dir = self.root / "spark-conf"
        conf_dir.mkdir()
        (conf_dir / "log4j2.properties").write_text((REPO / "conf" / "log4j2.properties").read_text())
        env.update({MARKER: str(self.root), "SPARK_HOME": str(Path(pyspark.__file__).parent),
                    "SPARK_CONF_DIR": str(conf_dir), "SPARK_LOG_DIR": str(self.root / "logs"),
                    "SPARK_PID_DIR": str(self.root / "logs"), "SPARK_LOCAL_IP": "127.0.0.1",
                    "SPARK_DAEMON_MEMORY": "512m", "SPARK_DAEMON_JAVA_OPTS": LIGHT_JVM, "MPLBACKEND": "Agg",
                    "PYTHONUNBUFFERED": "1"})
        return env

    def start(self, name: str, args: list, **env) -> subprocess.Popen:
        """``args`` in its own process group (killed whole at teardown), output to ``logs/<name>.log``."""
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(a) for a in args], cwd=self.root, env={**self.env, **env}, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append((name, proc, log))
        return proc

    # ------------------------------------------------------------------------------------ start
    def up(self) -> None:
        spark_class = Path(self.env["SPARK_HOME"]) / "bin" / "spark-class"
        props = self.root / "spark-conf" / "daemons.conf"     # names this folder on the daemons' command line
        props.write_text("spark.worker.cleanup.enabled false\n")
        admin = postgres_url()
        if admin:                 # a team's server: its runs in PostgreSQL, its artifacts proxied to a URL
            self.server = TrackingServer(self.root, admin, env=self.env, workers=1)
            self.procs.append(("mlflow", self.server.proc, self.server.log))
            self.tracking_uri = self.server.uri
        else:                     # no PostgreSQL here (CI has one: it fails there instead): the server on SQLite
            if on_ci():
                require_postgres()
            self.start("mlflow", [BIN / "mlflow", "server",
                                  "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
                                  "--artifacts-destination", self.root / "artifacts", "--host", "127.0.0.1",
                                  "--port", self.mlflow_port, "--workers", 1],
                       MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")   # no job runner (it starts its own session)
        self.start("master", [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                              "--port", self.master_port, "--webui-port", self.master_ui, "--properties-file", props])
        for i in (1, 2):
            work = self.root / f"worker{i}"
            work.mkdir()
            self.start(f"worker{i}", [spark_class, "org.apache.spark.deploy.worker.Worker", self.master_url,
                                      "--cores", 1, "--memory", "2g", "--host", "127.0.0.1",
                                      "--webui-port", _free_port(), "--work-dir", work, "--properties-file", props],
                       SPARK_WORKER_DIR=str(work), SPARK_LOCAL_DIRS=str(self.root / f"local{i}"))
        # While the JVMs and the server start (the server takes longest): the distribution, and the executors'
        # Python without the pipeline.
        build = subprocess.run(["bash", REPO / "docker" / "dist.sh"], cwd=REPO, capture_output=True, text=True,
                               env={**self.env, "DIST_DIR": str(self.dist), "PYTHON": VENV_PYTHON}, timeout=300)
        assert build.returncode == 0, build.stderr[-3000:]
        self.wheel_zip = next(self.dist.glob("road_pipeline-*.zip"))
        self._executor_env()
        _poll("2 ALIVE workers in the master's /json/", self._two_alive, 120, self.procs)
        _poll(f"mlflow server {self.tracking_uri}/health", lambda: _get_json(f"{self.tracking_uri}/health") == "OK",
              180, self.procs)

    def _two_alive(self):
        state = self.master_json()
        return sum(w["state"] == "ALIVE" for w in state["workers"]) == 2

    def master_json(self) -> dict:
        return _get_json(f"http://127.0.0.1:{self.master_ui}/json/")

    def _executor_env(self) -> None:
        """A venv whose site-packages are this venv's (the dependencies) without the .pth files, so not the
        editable install of the pipeline: what a cluster node with requirements.txt installed looks like."""
        import sysconfig

        subprocess.run([VENV_PYTHON, "-m", "venv", "--without-pip", self.root / "executor-env"], check=True,
                       timeout=120)
        site = subprocess.run([self.executor_python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
        Path(site, "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
        probe = subprocess.run([self.executor_python, "-c", "import torch, pyarrow, mlflow, pyspark, pipeline"],
                               capture_output=True, text=True, env=self.env, cwd=self.root)
        assert "No module named 'pipeline'" in probe.stderr, probe.stderr[-2000:]     # the deps, not the pipeline

    # ----------------------------------------------------------------------------------- submit
    def submit(self, job: str, *overrides: str, timeout: float = 420) -> subprocess.CompletedProcess:
        """``spark-submit --master spark://... jobs/<job>.py --profile cluster <overrides>``, killed whole (its
        process group) at the deadline."""
        cmd = [BIN / "spark-submit", "--master", self.master_url, "--deploy-mode", "client",
               "--driver-memory", "1g", "--executor-memory", "1g",
               "--conf", "spark.executor.cores=1", "--conf", "spark.task.cpus=1", "--conf", "spark.cores.max=2",
               # start only when both executors are there: the 2 barrier tasks need both slots at once
               "--conf", "spark.scheduler.minRegisteredResourcesRatio=1.0",
               "--conf", "spark.scheduler.maxRegisteredResourcesWaitingTime=120s",
               "--conf", f"spark.pyspark.python={self.executor_python}",
               "--conf", f"spark.pyspark.driver.python={VENV_PYTHON}",
               "--files", self.wheel_zip, "--conf", f"spark.executorEnv.PYTHONPATH={self.wheel_zip.name}",
               "--conf", f"spark.local.dir={self.root / 'driver-local'}",
               "--driver-java-options", LIGHT_JVM, "--conf", f"spark.executor.extraJavaOptions={LIGHT_JVM}",
               REPO / "jobs" / f"{job}.py", "--profile", "cluster", *TINY, *overrides]
        env = {**self.env, "SPARK_MASTER": self.master_url, "DATA_URL": self.data_url,
               "CHECKPOINT_URL": f"file://{self.root}/checkpoints", "MLFLOW_TRACKING_URI": self.tracking_uri,
               "PIPELINE_WORK_DIR": str(self.root / "work")}
        proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"spark-submit jobs/{job}.py: not done after {timeout:.0f} s\n{err[-3000:]}")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        (self.root / "logs" / f"{job}.stdout").write_text(out)
        (self.root / "logs" / f"{job}.stderr").write_text(err)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def executor_logs(self) -> str:
        """The executors' stderr (what a failing task said), for assertion messages."""
        return "\n".join(f"--- {p}:\n{_tail(p, 2000)}" for p in sorted(self.root.glob("worker*/app-*/*/stderr")))

    # -------------------------------------------------------------------------------------- stop
    def down(self) -> dict:
        for name, proc, _ in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for name, proc, _ in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)       # what ignored SIGTERM (or is still going)
            except ProcessLookupError:
                pass
            proc.wait()
        left = _ours(str(self.root))
        for pid in left:                                  # started here but left its process group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.server is not None:
            self.server.drop()
        return left


def _results(out: subprocess.CompletedProcess) -> dict:
    return dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.count(" ") == 1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("standalone"))
    try:
        cluster.up()
        yield cluster
    finally:
        left = cluster.down()
        assert not left, f"processes left running after teardown (killed now): {left}"
        assert not _ours(str(cluster.root))


@pytest.fixture(scope="module")
def client(cluster):
    from mlflow.tracking import MlflowClient

    return MlflowClient(cluster.tracking_uri)


def _ok(cluster, out, job):
    assert out.returncode == 0, (f"jobs/{job}.py exited {out.returncode}\n--- stderr:\n{out.stderr[-4000:]}\n"
                                 f"--- stdout:\n{out.stdout[-2000:]}\n{cluster.executor_logs()}")
    return _results(out)


@pytest.fixture(scope="module")
def ingest(cluster):
    return _ok(cluster, cluster.submit("ingest"), "ingest")


@pytest.fixture(scope="module")
def train(cluster, ingest):
    return _ok(cluster, cluster.submit("train"), "train")


@pytest.fixture(scope="module")
def correlate(cluster, train):
    # Seed 0's net is the train job's (same task, data, seed, width and epochs: reused); seed 1's is trained here,
    # on the driver (the barrier path is the train job's); the probe passes run on the executors.
    out = cluster.submit("correlate", "correlate.width=0.25", "correlate.epochs=1", "correlate.mi_pairs=0",
                         "train.local_mode=true", "train.num_processes=1")
    return out, _ok(cluster, out, "correlate")


# ------------------------------------------------------------------------------------------- tests

def test_the_master_has_two_alive_one_core_workers(cluster):
    workers = [w for w in cluster.master_json()["workers"] if w["state"] == "ALIVE"]
    assert len(workers) == 2 and all(w["cores"] == 1 and w["host"] == "127.0.0.1" for w in workers), workers


def test_ingest_accounts_for_every_row_under_the_shared_url(cluster, ingest):
    assert ingest["rows_in"] == "48"
    assert int(ingest["rows_written"]) + int(ingest["rows_quarantined"]) == 48
    assert int(ingest["rows_written"]) == 48
    frames = cluster.root / "data" / "synthetic" / "road_frames"              # file://<tmp>/data/synthetic/...
    assert sorted(p.name for p in frames.iterdir() if p.is_dir()) == ["test", "train", "val"]
    assert list(frames.rglob("*.parquet"))                                   # the executors' tasks wrote there


def test_train_runs_two_ranks_on_two_executors_and_logs_to_the_server(cluster, client, train):
    run = client.get_run(train["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["train.world_size"] == "2"
    executors = run.data.tags["train.executors"].split(",")
    assert len(executors) == 2 and "driver" not in executors, run.data.tags   # barrier tasks, not the driver
    assert run.data.params["train.local_mode"] == "False" and run.data.params["train.num_processes"] == "2"
    assert run.data.params["train.dataset_url"].startswith(f"{cluster.data_url}/synthetic/")
    assert "train_loss" in run.data.metrics and "val_accuracy" in run.data.metrics, run.data.metrics
    models = [client.get_logged_model(m.model_id) for m in run.outputs.model_outputs]   # the driver logged it
    assert [m.name for m in models] == ["lane_classifier"] and "READY" in str(models[0].status), models
    assert train["model_uri"] == f"models:/{models[0].model_id}" == run.data.tags["pipeline.model_uri"]
    version = client.get_model_version(*train["model_version"][len("models:/"):].split("/"))   # registered there
    assert version.source == train["model_uri"]
    assert "MLmodel" in {a.path for a in client.list_logged_model_artifacts(models[0].model_id)}
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri    # through the server
    assert list((cluster.root / "artifacts").rglob("MLmodel"))                            # ... into its store
    if cluster.server is not None:                                          # the run is in the server's PostgreSQL
        assert train["run_id"] in cluster.server.run_ids()


def test_correlate_reuses_the_trained_net_and_logs_its_metrics(cluster, client, train, correlate):
    out, results = correlate
    assert f"net 0: reusing train run {train['run_id']}" in out.stdout, out.stdout[-2000:]
    run = client.get_run(results["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["pipeline.stage"] == "correlate"
    metrics = run.data.metrics
    assert metrics["probe_samples"] == float(results["probe_images"]) > 0
    for layer in run.data.params["correlate.layers_resolved"].split(","):
        for key in (f"corr_matched_mean.hungarian.{layer}", f"random.corr_matched_mean.hungarian.{layer}",
                    f"cka.{layer}"):
            assert key in metrics, (key, sorted(metrics))
    seed1 = client.search_runs([run.info.experiment_id],
                               "tags.`pipeline.role` = 'correlate-seed' and attributes.status = 'FINISHED'")
    assert len(seed1) == 1 and seed1[0].data.params["train.seed"] == "1"


def test_every_job_ran_its_executors_on_both_workers_from_the_dist_zip(cluster, correlate):
    apps = cluster.master_json()["completedapps"]
    assert len(apps) == 3 and all(a["cores"] == 2 for a in apps), apps      # ingest, train, correlate
    for worker in ("worker1", "worker2"):
        ran = {p.parent.parent.name for p in (cluster.root / worker).glob(f"app-*/*/{cluster.wheel_zip.name}")}
        assert ran == {a["id"] for a in apps}, (worker, ran)                # an executor of every app, zip fetched
