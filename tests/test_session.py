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


def test_session_is_shared_and_quiet(spark):
    from pyspark.sql import SparkSession

    assert SparkSession.getActiveSession() is spark
    assert spark.sparkContext.master == "local[2]"
    assert spark.conf.get("spark.sql.shuffle.partitions") == "4"


def test_python_workers_get_the_configured_environment(spark):
    """spark.executorEnv.* from conf/base.yaml reaches the Python workers (glibc reads MALLOC_* at start)."""
    got = spark.sparkContext.parallelize([0], 1).map(
        lambda _: (os.environ.get("MALLOC_MMAP_THRESHOLD_"), os.environ.get("MALLOC_TRIM_THRESHOLD_"))).collect()
    assert got == [("33554432", "268435456")]
