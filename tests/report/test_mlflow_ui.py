"""MLflow 3's own UI on a store the pipeline's Tracker made: the experiment opens, its runs are one click away,
the pipeline run lists its stage runs, and a stage run's figure renders; in a real headless browser.

The store is filled through the Tracker (so the experiment is made, and tagged, as the pipeline makes it) with
a parent run and two stage runs logged directly (what is under test is the UI, not the stages). A real
``mlflow ui`` serves it on a free port; it is always stopped (its whole process group) at the end.
"""
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import matplotlib
import pytest
from PIL import Image

from pipeline import registry
from pipeline.tracking import EXPERIMENT_KIND, Tracker
from tests.browser import ARTIFACTS
from tests.conftest import make_conf

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FIGURE = "samples_road_frames"
START_TIMEOUT = 180       # seconds for `mlflow ui` to answer (it imports MLflow and migrates the store first)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A pipeline run with stage runs ``ingest`` (a metric and a figure) and ``train lane_classifier`` (an epoch
    history), made by the Tracker into a fresh sqlite store."""
    work = tmp_path_factory.mktemp("mlflow_ui")
    conf = make_conf(work, "train.task=lane_classifier")
    tracker = Tracker(conf)
    import mlflow

    with tracker.pipeline_run("pipeline") as parent:
        with tracker.stage_run("ingest") as ingest:
            mlflow.log_metric("rows_written", 48)
            fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
            ax.imshow([[0, 1, 2], [2, 1, 0]], cmap="viridis")
            ax.set_title("samples")
            tracker.log_figure(fig, FIGURE)
        with tracker.stage_run("train") as train:
            for epoch, loss in enumerate((1.9, 1.2)):
                mlflow.log_metrics({"train_loss": loss, "val_accuracy": 0.3 + 0.2 * epoch}, step=epoch)
            model = log_untrained_lane_net_here()
            version = registry.register(conf, "lane_classifier", model.model_id, train.info.run_id)
    # the gate's decision as the audit records it (what is under test is how the UI shows it)
    gate = registry.Gate(passed=True, checks={"context": "context verdict: Looks at the lanes",
                                              "accuracy": "accuracy 0.900 >= 0.5"})
    registry.apply(conf, "lane_classifier", model.model_uri, gate, {"audit.context_verdict": "Looks at the lanes"},
                   "0" * 32)
    png = Path(tracker.client.download_artifacts(ingest.info.run_id, f"figures/{FIGURE}.png", str(work))).read_bytes()
    return {"conf": conf, "experiment_id": tracker.experiment_id, "parent": parent.info.run_id,
            "ingest": ingest.info.run_id, "train": train.info.run_id, "png": png, "version": version.version,
            "db": conf.mlflow.tracking_uri[len("sqlite:///"):]}


def log_untrained_lane_net_here():
    """An untrained lane net logged into the active run as the train stage logs one."""
    from pipeline.data.synth import LANE_CLASSES
    from pipeline.models import build_model, stored

    info = stored.card("lane_classifier", LANE_CLASSES, (64, 64), 0.25, "road_frames")
    return stored.log_model(build_model("lane_classifier", 6, (64, 64), 0.25), info, "lane_classifier", [])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_command() -> list:
    exe = Path(sys.executable).with_name("mlflow")      # the virtual environment's own `mlflow`
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    """``mlflow ui`` on the store, answering on a free port; stopped (process group) however the tests end."""
    port = free_port()
    log = tmp_path_factory.mktemp("mlflow_ui_log") / "mlflow-ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(mlflow_command() + ["ui", "--backend-store-uri", f"sqlite:///{store['db']}",
                                                    "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow ui exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if get(f"{base}/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow ui did not answer on {base}/health within {START_TIMEOUT} s:\n"
                            f"{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        stop_group(proc)


def group_members(pgid: int) -> list:
    """The live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    state, _, pgrp = fh.read().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue
            if int(pgrp) == pgid and state != "Z":
                members.append(int(entry))
    return members


def stop_group(proc: subprocess.Popen, grace: float = 15) -> None:
    """Stop a process started in its own session and everything in its process group (uvicorn, MLflow's job
    runner and its huey consumers): SIGTERM, then SIGKILL whatever is left after ``grace`` seconds."""
    def alive() -> bool:
        if proc.poll() is None:
            return True
        if os.path.isdir("/proc"):      # Linux: members that are not zombies (an orphan's may wait for PID 1)
            return bool(group_members(proc.pid))
        try:
            os.killpg(proc.pid, 0)
            return True
        except ProcessLookupError:
            return False

    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not alive():
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)

def test_the_experiment_is_made_for_model_training_and_the_ui_serves_it_so(store, server):
    status, body = get(f"{server}/ajax-api/2.0/mlflow/experiments/get?experiment_id={store['experiment_id']}")
    assert status == 200
    experiment = json.loads(body)["experiment"]
    assert experiment["name"] == store["conf"].mlflow.experiment
    assert {"key": EXPERIMENT_KIND[0], "value": EXPERIMENT_KIND[1]} in experiment["tags"]
    assert EXPERIMENT_KIND == ("mlflow.experimentKind", "custom_model_development")


ROW = "document.querySelector('[role=row][row-id=\"{id}\"]')"
ROW_TEXT = "Array.from(document.querySelectorAll('[role=row][row-id=\"{id}\"]')).map(r => r.innerText).join(' ')"


def test_the_experiment_page_lists_the_pipeline_run_with_its_stage_runs(browser, store, server, tmp_path):
    # MLflow 3.17 opens every experiment in its GenAI view (a per-browser choice, not the experiment's tag) and
    # lists "Training runs" there only for runs with a logged model: the runs are the "Model training" switch away
    page = browser.new_page()
    page.goto(f"{server}/#/experiments/{store['experiment_id']}")
    name = store["conf"].mlflow.experiment
    switch = ("Array.from(document.querySelectorAll('[role=button]'))"
              ".find(e => e.innerText && e.innerText.trim() === 'Model training')")
    assert page.wait_for(f"document.body.innerText.includes({json.dumps(name)}) && !!{switch}", timeout=90), \
        page.text()[:2000]
    page.evaluate(f"{switch}.click()")                                       # the one click
    parent_row = ROW.format(id=store["parent"])
    assert page.wait_for(f"{ROW_TEXT.format(id=store['parent'])}.includes('pipeline')", timeout=90), \
        page.text()[:2000]
    children = {store["ingest"]: "ingest", store["train"]: "train lane_classifier"}
    shown = f"[{', '.join(ROW.format(id=i) for i in children)}].every(r => !!r)"
    if not page.evaluate(shown):   # nested runs sit folded under their parent: unfold it
        page.evaluate(f"{parent_row}.querySelector('[col-id*=\"Run Name\"] button').click()")
    assert page.wait_for(shown, timeout=60), page.text()[:2000]
    for run_id, run_name in children.items():
        assert page.evaluate(f"{ROW_TEXT.format(id=run_id)}.includes({json.dumps(run_name)})"), run_name
    # the stage runs come right under the pipeline run (the grid's rows, in order, by row id)
    order = page.evaluate("Array.from(new Set(Array.from(document.querySelectorAll('[role=row][row-id][row-index]'))"
                          ".sort((a, b) => +a.getAttribute('row-index') - +b.getAttribute('row-index'))"
                          ".map(r => r.getAttribute('row-id'))))")
    at = order.index(store["parent"])
    assert set(order[at + 1:at + 3]) == set(children), order
    png = page.screenshot(tmp_path / "mlflow_ui_runs.png", ARTIFACTS / "mlflow_ui_runs.png", full_page=False)
    assert Image.open(io.BytesIO(png)).width >= 1000


def test_a_stage_runs_figure_renders_in_the_ui(browser, store, server, tmp_path):
    with Image.open(io.BytesIO(store["png"])) as im:
        size = im.size
    path = f"figures/{FIGURE}.png"
    # what the UI fetches for it: the same bytes
    status, body = get(f"{server}/get-artifact?" + urllib.parse.urlencode({"path": path, "run_uuid": store["ingest"]}))
    assert status == 200 and body == store["png"]
    page = browser.new_page()
    page.goto(f"{server}/#/experiments/{store['experiment_id']}/runs/{store['ingest']}/artifacts/{path}")
    rendered = (f"Array.from(document.images).some(i => i.complete && i.naturalWidth === {size[0]} && "
                f"i.naturalHeight === {size[1]})")
    assert page.wait_for(rendered, timeout=90), (page.images(), page.text()[:1500])
    assert any("get-artifact" in u and urllib.parse.quote(path, safe="") in u for u in page.requests())
    png = page.screenshot(tmp_path / "mlflow_ui_figure.png", ARTIFACTS / "mlflow_ui_figure.png", full_page=False)
    assert Image.open(io.BytesIO(png)).width >= 1000


def test_the_registered_model_shows_its_audited_alias_and_the_gates_tags(browser, store, server, tmp_path):
    name, version = store["conf"].registry.names["lane_classifier"], store["version"]
    page = browser.new_page()
    page.goto(f"{server}/#/models/{name}")
    assert page.wait_for(f"document.body.innerText.includes('Version {version}') && "
                         f"document.body.innerText.includes('@') && document.body.innerText.includes('audited')",
                         timeout=90), page.text()[:2000]
    png = page.screenshot(tmp_path / "mlflow_ui_model.png", ARTIFACTS / "mlflow_ui_model.png", full_page=False)
    assert Image.open(io.BytesIO(png)).width >= 1000
    page = browser.new_page()
    page.goto(f"{server}/#/models/{name}/versions/{version}")
    shown = " && ".join(f"document.body.innerText.includes({json.dumps(t)})"
                        for t in ("gate.passed", "gate.decision", "audit.context_verdict", "Looks at the lanes",
                                  "audited"))
    assert page.wait_for(shown, timeout=90), page.text()[:3000]
    page.screenshot(tmp_path / "mlflow_ui_version.png", ARTIFACTS / "mlflow_ui_version.png", full_page=False)
