"""Shared fixtures: one SparkSession for the whole test session, built by the pipeline's own builder."""
from __future__ import annotations

import os

import pytest

from pipeline.config import load_config
from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker

os.environ.setdefault("MPLBACKEND", "Agg")
# The JVMs the tests start in processes of their own (pipeline commands, spark-submit, standalone and local-cluster
# drivers) live seconds and do little JVM work: the client compiler only and a serial GC cut their start-up CPU
# (benchmarks/RESULTS.md, "The suite's time"). Spark's launcher adds SPARK_SUBMIT_OPTS to every driver JVM it
# starts; the shared session below, which runs the suite's in-process Spark work for its whole length, keeps
# the JVM's defaults. LIGHT_EXECUTORS does the same for local-cluster's executor JVMs, as an override.
# SPARK_SUBMIT_OPTS set (even empty: benchmarks/bench_suite_jvm.py's baseline) is used as it is, for both.
LIGHT_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
os.environ.setdefault("SPARK_SUBMIT_OPTS", LIGHT_JVM)
LIGHT_EXECUTORS = ("spark.conf.spark.executor.extraJavaOptions="
                   + (os.environ["SPARK_SUBMIT_OPTS"] or "-Dtests.jvm=default"))


# `make test` runs the suite on two pytest-xdist workers (TEST_WORKERS), each a whole test file at a time
# (--dist loadfile: a module's fixtures are made once), so that one worker's tests run while the other's wait on
# a subprocess (benchmarks/RESULTS.md, "The suite on two workers"). The files below share an expensive session
# fixture (the counterfactual nets) and go to one worker as one unit; and the files that take longest start
# first, on their own, instead of last (xdist's default order is by number of tests: a long file of few tests
# would start near the end and run alone). The order is only a hint: a file missing from it runs after them.
SAME_WORKER = {"tests/analysis/test_gate.py": "tests/analysis/test_counterfactual.py"}
LONGEST_FIRST = ("tests/test_airflow.py", "tests/cluster/test_standalone.py", "tests/analysis/test_counterfactual.py",
                 "tests/analysis/test_gate.py", "tests/train/test_train.py", "tests/test_empty_splits.py",
                 "tests/analysis/test_audit.py", "tests/test_team_tracking.py")


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config, items):
    first = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: first.get(_module(item.nodeid), len(first)))   # stable: the rest keep their order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile, with SAME_WORKER's files as one unit and the collection's order kept (LONGEST_FIRST)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return SAME_WORKER.get(_module(nodeid), _module(nodeid))

    config.option.loadscopereorder = False
    return Scheduling(config, log)


def pytest_sessionstart(session):
    """One line, before any test runs, for each thing outside the venv a group of tests needs and this machine
    lacks, naming the command that gives it (without it those tests skip; under CI=true they fail)."""
    from tests.browser import INSTALL, find_chromium, on_ci
    from tests.tracking_server import ENV, SETUP, postgres_url

    then = "fail (CI=true)" if on_ci() else "skip"
    lines = []
    if find_chromium() is None:
        lines.append(f"no Chromium: the browser tests of the report and the MLflow UI will {then}; {INSTALL}")
    if postgres_url() is None:
        lines.append(f"no PostgreSQL ({ENV} unset): the team tracking server's tests will {then}; `{SETUP}`")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in lines:
        if reporter is not None:
            reporter.write_line(line, yellow=True, bold=True)


def make_conf(work_dir, *overrides, profile="local"):
    """A config whose data and MLflow store live under ``work_dir``."""
    return load_config(profile, overrides=[f"paths.work_dir={work_dir}", "spark.master=local[2]", *overrides])


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
def spark(session_dir):
    from pipeline.session import build_session

    light = os.environ.pop("SPARK_SUBMIT_OPTS", None)
    try:
        session = build_session(make_conf(session_dir, "spark.conf.spark.driver.memory=2g",
                                          "spark.conf.spark.sql.shuffle.partitions=4"))
    finally:
        if light is not None:
            os.environ["SPARK_SUBMIT_OPTS"] = light
    yield session
    session.stop()


@pytest.fixture
def conf(tmp_path):
    return make_conf(tmp_path)


TINY = ["ingest.num_frames=48", "ingest.frames_per_sequence=2", "ingest.render_hw=[180,320]",
        "ingest.frame_hw=[72,128]", "ingest.road_hw=[64,64]", "ingest.partitions=4",
        "ingest.split={train: 0.5, val: 0.25, test: 0.25}",
        "train.batch_size=8", "train.epochs=2", "train.width=0.25", "train.lr=0.002"]


@pytest.fixture(scope="session")
def tiny_data(spark, tmp_path_factory):
    """A tiny synthetic ingest shared by the augment and training tests; returns a factory of configs using it."""
    work = tmp_path_factory.mktemp("train")
    conf = make_conf(work, *TINY)
    run_stage(get_stage("ingest"), spark, conf, Tracker(conf))
    return lambda *overrides: make_conf(work, *TINY, *overrides)
