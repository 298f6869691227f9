import os
import sys


def test_workers_run_this_interpreter_with_our_packages(spark):
    assert os.environ["PYSPARK_PYTHON"] == sys.executable

    def probe(_):
        import pyarrow  # noqa: F401  (missing in the system python that Spark starts by default)
        import pipeline.config  # noqa: F401
        yield sys.executable

    seen = set(spark.sparkContext.parallelize(range(4), 2).mapPartitions(probe).collect())
    assert seen == {sys.executable}


def test_session_is_shared_and_quiet(spark, tmp_path):
    """One session per test process: a job's build_session returns the running one, with the job's runtime SQL
    settings applied to it (a job run in-process with other settings changes them: asserted after building)."""
    from pyspark.sql import SparkSession

    from pipeline.session import build_session
    from tests.conftest import make_conf

    assert SparkSession.getActiveSession() is spark
    assert spark.sparkContext.master == "local[2]"
    for partitions in ("8", "4"):
        again = build_session(make_conf(tmp_path, "spark.conf.spark.driver.memory=2g",
                                        f"spark.conf.spark.sql.shuffle.partitions={partitions}"))
        assert again is spark and spark.conf.get("spark.sql.shuffle.partitions") == partitions


def test_python_workers_get_the_configured_environment(spark):
    """spark.executorEnv.* from conf/base.yaml reaches the Python workers (glibc reads MALLOC_* at start)."""
    got = spark.sparkContext.parallelize([0], 1).map(
        lambda _: (os.environ.get("MALLOC_MMAP_THRESHOLD_"), os.environ.get("MALLOC_TRIM_THRESHOLD_"))).collect()
    assert got == [("33554432", "268435456")]
