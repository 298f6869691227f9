"""Shared fixtures: one SparkSession for the whole test session, built by the pipeline's own builder."""
from __future__ import annotations

import os
import sys

import pytest

from pipeline.config import load_config

os.environ.setdefault("MPLBACKEND", "Agg")


def make_conf(work_dir, *overrides, profile="local"):
    """A config whose data and MLflow store live under ``work_dir``."""
    return load_config(profile, overrides=[f"paths.work_dir={work_dir}", "spark.master=local[2]", *overrides])


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
def spark(session_dir):
    from pipeline.session import build_session

    session = build_session(make_conf(session_dir, "spark.conf.spark.driver.memory=2g",
                                      "spark.conf.spark.sql.shuffle.partitions=4"))
    yield session
    session.stop()


@pytest.fixture
def conf(tmp_path):
    return make_conf(tmp_path)


@pytest.fixture
def python_exe():
    return sys.executable
