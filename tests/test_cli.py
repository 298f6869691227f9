"""The command line: --help everywhere, one clear line and a non-zero exit on a bad override."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import get_args_parser, main
from pipeline.stages import STAGES

REPO = Path(__file__).resolve().parent.parent
PIPELINE = os.path.join(os.path.dirname(sys.executable), "pipeline")


def _run(*args, **kw):
    return subprocess.run([*args], capture_output=True, text=True, timeout=120, cwd=REPO, **kw)


def test_console_script_help():
    out = _run(PIPELINE, "--help")
    assert out.returncode == 0 and "usage: pipeline" in out.stdout and "run" in out.stdout
    out = _run(PIPELINE, "run", "--help")
    assert out.returncode == 0 and "usage: pipeline run" in out.stdout and "KEY=VALUE" in out.stdout


@pytest.mark.parametrize("stage", [s.name for s in STAGES])
def test_every_stage_has_help_and_a_job(stage):
    parser = get_args_parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([stage, "--help"])
    assert exit_.value.code == 0
    job = REPO / "jobs" / f"{stage}.py"
    assert job.exists()
    out = _run(sys.executable, str(job), "--help")
    assert out.returncode == 0 and f"jobs/{stage}.py" in out.stdout


def test_no_subcommand_for_missing_stages():
    names = set(get_args_parser()._subparsers._group_actions[0].choices)
    assert names == {"run", *(s.name for s in STAGES)}
    assert {p.stem for p in (REPO / "jobs").glob("*.py")} == {s.name for s in STAGES}


def test_bad_override_is_one_line_and_exit_2():
    out = _run(PIPELINE, "run", "train.epoch=3")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("pipeline: error: unknown key 'train.epoch'") and "epochs" in lines[0]


def test_bad_value_in_process(capsys):
    assert main(["run", "train.task=segmenter"]) == 2
    assert "valid choices: lane_classifier, tl_classifier, tl_detector" in capsys.readouterr().err


def test_docker_files_install_from_the_one_requirement_file():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "COPY requirements.txt requirements-current.txt ./" in dockerfile
    assert 'petastorm) reqs=requirements.txt' in dockerfile and 'current) reqs=requirements-current.txt' in dockerfile
    assert 'pip install --no-cache-dir -r "$reqs"' in dockerfile and "ARG STACK=petastorm" in dockerfile
    assert "openjdk-17" in dockerfile and "ARG PYTHON=3.11" in dockerfile and "FROM python:${PYTHON}-" in dockerfile
    compose = (REPO / "docker" / "compose.yaml").read_text()
    for service in ("spark-master:", "spark-worker-1:", "spark-worker-2:", "mlflow:"):
        assert service in compose
    assert "dockerfile: docker/Dockerfile" in compose and "--backend-store-uri" in compose
    setup = (REPO / "setup.py").read_text()   # a pin set's one file: requirements.txt, or the current set's
    assert 'requirements(REQUIREMENTS)' in setup
    assert '{"petastorm": "requirements.txt", "current": "requirements-current.txt"}' in setup
    makefile = (REPO / "Makefile").read_text()
    assert "-r $(REQS)" in makefile and "REQS     := requirements.txt" in makefile
    assert "REQS     := requirements-current.txt" in makefile


def test_docker_context_leaves_out_every_venv_the_makefile_makes():
    """`COPY . .` sends the checkout to the Docker daemon: no pin set's venvs (7 GB each) in it."""
    import fnmatch
    import re

    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    makefile = (REPO / "Makefile").read_text()
    venvs = set(re.findall(r"^(?:export )?(?:VENV|AIRFLOW_VENV)\s*\?=\s*(\S+)", makefile, re.M))
    assert venvs == {".venv", ".venv-current", ".venv-airflow", ".venv-airflow-current"}
    for venv in venvs:
        assert any(fnmatch.fnmatch(venv, pattern) for pattern in ignored), venv


def test_spark_submit_runs_a_stage_job(tmp_path):
    """`spark-submit jobs/ingest.py KEY=VALUE ...` runs the same stage function as the CLI."""
    submit = os.path.join(os.path.dirname(sys.executable), "spark-submit")
    out = _run(submit, "--master", "local[2]", "--driver-memory", "1g", str(REPO / "jobs" / "ingest.py"),
               f"paths.work_dir={tmp_path}", "ingest.num_frames=6", "ingest.render_hw=[90,160]",
               "ingest.road_hw=[32,32]", "ingest.frame_hw=[36,64]",
               env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.count(" ") == 1)
    assert lines["rows_in"] == "6" and lines["rows_written"] == "6"
    assert (tmp_path / "data" / "synthetic" / "road_frames").is_dir()
    assert "mlflow ui --backend-store-uri sqlite:///" in out.stdout


def test_a_missing_dataset_is_one_line_naming_the_fix(spark, tmp_path, capsys):
    # in this process (the console script's own path is test_console_script_help's and test_bad_override's), with
    # the shared session's own settings (getOrCreate would change them for later tests): no second JVM to start
    shared = ["spark.master=local[2]", "spark.conf.spark.sql.shuffle.partitions=4", "spark.conf.spark.driver.memory=2g"]
    assert main(["train", f"paths.work_dir={tmp_path}", *shared, "train.data=nothing-here"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("pipeline: error: no ingested dataset at ")
    assert "run `pipeline ingest` first" in err and "Traceback" not in err


def test_the_gpu_profile_without_a_gpu_is_one_line_saying_how_to_train_on_the_cpu(spark, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the message is for machines without one")
    # in this process, with the shared session's own settings (getOrCreate would change them for later tests)
    shared = ["spark.master=local[2]", "spark.conf.spark.sql.shuffle.partitions=4", "spark.conf.spark.driver.memory=2g"]
    assert main(["train", "--profile", "gpu", f"paths.work_dir={tmp_path}", *shared]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("pipeline: error: train.use_gpu=true (e.g. --profile gpu) but torch sees no CUDA GPU")
    assert "--profile local" in lines[-1] and "Traceback" not in err
