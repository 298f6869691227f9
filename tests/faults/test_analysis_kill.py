"""Visualize killed (SIGKILL, the whole process tree) once it has logged its metrics and begun logging its
figures: the figures already there are whole (Tracker.log_figure renames each in complete), the run is marked
KILLED by the next run, and the re-run logs the same numbers."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker
from tests.conftest import TINY, make_conf
from tests.faults.util import (PIPELINE, TINY_ARGS, Proc, log_untrained_lane_net, record, runs_by_status,
                               wait_for)

QUICK = ["visualize.units=2", "visualize.steps=8", "visualize.facet_units=0", "visualize.dream_steps=2",
         "visualize.color_images=16", "visualize.top_k=2"]


@pytest.fixture
def logged_net(tiny_data, tmp_path):
    """The tiny dataset and a logged lane net (untrained: its numbers are as deterministic as a trained one's)."""
    shutil.copytree(Path(tiny_data().paths.data_url[len("file://"):]) / "synthetic", tmp_path / "data" / "synthetic")
    tracker = Tracker(make_conf(tmp_path))
    return tmp_path, log_untrained_lane_net(tracker)


def _whole(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()                                   # decodes every byte: a truncated PNG raises
        return True
    except OSError:
        return False


def test_visualize_killed_midway_logs_nothing_half_written_and_the_rerun_gives_the_same_numbers(spark, logged_net,
                                                                                                 capsys):
    work, model = logged_net
    args = [f"visualize.model_uri={model}", *QUICK]
    figures = lambda: sorted(work.glob("mlartifacts/*/artifacts/figures/visualize_*.png"))   # noqa: E731
    proc = Proc([PIPELINE, "visualize", f"paths.work_dir={work}", *TINY_ARGS, *args], work / "visualize.log")
    try:
        wait_for("its first figure", figures, 400, proc, interval=0.02)
    finally:
        proc.kill_tree()
    assert proc.popen.returncode == -9, proc.tail()
    killed_figures = figures()
    killed_id = killed_figures[0].parts[-4]
    client = MlflowClient(make_conf(work).mlflow.tracking_uri)
    killed = client.get_run(killed_id)
    assert killed.info.status == "RUNNING"                 # nobody could end it
    half = [p.name for p in (work / "mlartifacts" / killed_id / "artifacts").rglob("*.png") if not _whole(p)]
    capsys.readouterr()
    conf = make_conf(work, *TINY, *args)
    rerun = run_stage(get_stage("visualize"), spark, conf, Tracker(conf))
    assert sum("marked KILLED" in line for line in capsys.readouterr().out.splitlines()) == 2
    assert client.get_run(killed_id).info.status == "KILLED"
    again = client.get_run(rerun["run_id"]).data.metrics
    assert killed.data.metrics and killed.data.metrics == again, (killed.data.metrics, again)
    complete = [a.path for a in client.list_artifacts(rerun["run_id"], "figures")]
    assert len(killed_figures) < len(complete), "killed before its last figure"
    assert half == [], f"half-written artifacts: {half}"
    statuses = runs_by_status(conf.mlflow.tracking_uri)
    record("visualize SIGKILLed while logging its figures",
           f"{len(killed_figures)} of {len(complete)} figures logged, each whole; the run marked KILLED by the "
           f"re-run, which logged the same {len(again)} metrics", 0, 0, len(statuses.get("RUNNING", [])))
