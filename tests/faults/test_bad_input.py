"""Bad config and bad data at both entry points, `pipeline <stage>` (cli.main) and `spark-submit jobs/<stage>.py`
(cli.job_main): unknown keys, wrong types, missing paths, an empty dataset, a dataset with one class, a model
URI that names nothing, a layer the net lacks. Each is one line on stderr naming the problem and the fix, exit
2, no traceback unless -v. Every case runs through both entry functions in this process (the shared session);
the real spark-submit runs one stage-time case (a JVM start)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.cli import job_main, main
from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker
from tests.conftest import TINY, make_conf
from tests.faults.util import REPO, log_untrained_lane_net, record

MISSING_RUN = "runs:/0123456789abcdef0123456789abcdef/model"


@pytest.fixture(scope="module")
def inputs(spark, tiny_data, tmp_path_factory):
    """A work folder with the tiny dataset, an ingested one-class ImageFolder, an empty folder, a logged model."""
    work = tmp_path_factory.mktemp("bad")
    shutil.copytree(Path(tiny_data().paths.data_url[len("file://"):]) / "synthetic", work / "data" / "synthetic")
    one = work / "one" / "solid"
    one.mkdir(parents=True)
    for i in range(12):
        cv2.imwrite(str(one / f"{i}.png"), np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    (work / "empty").mkdir()
    conf = make_conf(work, "ingest.source=imagefolder", f"ingest.source_path={work / 'one'}", "ingest.name=oneclass",
                     "ingest.class_hw=[32,32]")
    run_stage(get_stage("ingest"), spark, conf, Tracker(conf))
    tracker = Tracker(make_conf(work))
    return work, log_untrained_lane_net(tracker)


def cases(work: Path, model: str) -> dict:
    """name: (stage, overrides, what the line must say: the problem, the fix)."""
    return {
        "unknown key": ("ingest", ["ingest.bogus=1"], ["unknown key 'ingest.bogus'", "valid keys under 'ingest'"]),
        "wrong type": ("train", ["train.epochs=many"], ["bad value for 'train.epochs'", "valid integer"]),
        "missing path": ("ingest", ["ingest.source=imagefolder", f"ingest.source_path={work}/nope"],
                         [f"{work}/nope", "does not exist", "ingest.source_path="]),
        "empty dataset": ("ingest", ["ingest.source=imagefolder", f"ingest.source_path={work}/empty",
                                     "ingest.name=empty"], ["no images found", f"{work}/empty"]),
        "one class": ("train", ["train.data=oneclass", "train.batch_size=2"],
                      ["has one class (solid)", "a classifier needs two or more", "check the source's class"]),
        "model URI names nothing": ("evaluate", [*TINY, f"evaluate.model_uri={MISSING_RUN}"],
                                    [MISSING_RUN, "cannot find", "Models page", "leave evaluate.model_uri unset"]),
        "layer the net lacks": ("visualize", [*TINY, f"visualize.model_uri={model}", "visualize.layers=[conv9]"],
                                ["visualize.layers", "no layer conv9", "its layers: conv1"]),
    }


NAMES = list(cases(Path("."), "m"))


@pytest.mark.parametrize("entry", ["pipeline", "spark-submit"])
@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_one_line_naming_the_problem_and_the_fix_exit_2(inputs, name, entry, capsys):
    work, model = inputs
    stage, overrides, says = cases(work, model)[name]
    argv = [f"paths.work_dir={work}", "spark.master=local[2]", *overrides]
    capsys.readouterr()
    code = main([stage, *argv]) if entry == "pipeline" else job_main(stage, argv)
    err = capsys.readouterr().err.strip().splitlines()
    prog = "pipeline" if entry == "pipeline" else f"spark-submit jobs/{stage}.py"
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"{prog}: error: ") and all(s in err[0] for s in says), (err[0], says)
    if entry == "spark-submit" and name == NAMES[-1]:
        record("bad config / bad data at every entry point", f"{len(NAMES)} cases x 2 entry points: one line naming "
                                                             f"the problem and the fix, exit 2, no traceback")


def test_with_v_the_traceback_is_added(inputs, capsys):
    work, _ = inputs
    assert main(["-v", "evaluate", f"paths.work_dir={work}", *TINY, f"evaluate.model_uri={MISSING_RUN}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("pipeline: error:")


def test_spark_submit_itself_exits_2_with_one_error_line(inputs):
    """A stage-time case through the real spark-submit launcher: its exit status and all it prints (the real
    `pipeline` launcher: tests/test_cli.py::test_a_missing_dataset_is_one_line_naming_the_fix)."""
    work, _ = inputs
    submit = Path(sys.executable).parent / "spark-submit"
    args = [str(REPO / "jobs" / "ingest.py"), f"paths.work_dir={work}", "ingest.source=imagefolder",
            f"ingest.source_path={work}/nope"]
    out = subprocess.run([str(submit), "--master", "local[1]", "--driver-memory", "1g", *args], capture_output=True,
                         text=True, cwd=REPO, env={**os.environ, "PYSPARK_PYTHON": sys.executable}, timeout=300)
    # spark-submit runs the Python driver with its stderr joined to stdout, beside its own INFO log on stderr
    both = out.stdout + out.stderr
    errors = [line for line in both.splitlines() if ": error: " in line]
    assert out.returncode == 2 and len(errors) == 1, both[-3000:]
    assert errors[0].startswith("spark-submit jobs/ingest.py: error: ingest.source=imagefolder cannot read "
                                f"ingest.source_path={work}/nope")
    assert "Traceback" not in both
