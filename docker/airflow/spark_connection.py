"""The Airflow connection the DAG submits through (``road_pipeline_spark``), made from the project's config.

    python docker/airflow/spark_connection.py [--profile P] [--conf FILE] [--json] [KEY=VALUE ...]

prints ``AIRFLOW_CONN_ROAD_PIPELINE_SPARK='{...}'``: a line for the Airflow deployment's environment (an
``export`` in a shell, a line of a compose file's ``environment``). ``--json`` prints the JSON alone, for
``airflow connections add road_pipeline_spark --conn-json "$(python docker/airflow/spark_connection.py --json)"``.
The connection's host is the config's ``spark.master`` (the cluster profile reads it from SPARK_MASTER), its
extras client deploy mode and ``spark-submit`` (on the workers' PATH). Runs in the project's venv or in the Airflow
venv (it needs only ``pipeline.config``: pydantic and PyYAML).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.config import load_config, profiles  # noqa: E402  (needs REPO on sys.path)

CONN_ID = "road_pipeline_spark"


def connection(master: str) -> dict:
    """Airflow's JSON form of a Spark connection to ``master`` (local[*], spark://h:7077, yarn, k8s://...)."""
    return {"conn_type": "spark", "host": master,
            "extra": {"deploy-mode": "client", "spark-binary": "spark-submit"}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="spark_connection.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="local", choices=profiles(), help="config profile (default local)")
    parser.add_argument("--conf", dest="conf_file", metavar="FILE", help="a YAML file layered over the profile")
    parser.add_argument("--conn-id", default=CONN_ID, help=f"the connection's id (default {CONN_ID})")
    parser.add_argument("--json", action="store_true", help="print the connection's JSON only")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, as pipeline's")
    args = parser.parse_args(argv)
    conf = load_config(args.profile, args.conf_file, args.overrides)
    text = json.dumps(connection(conf.spark.master))
    print(text if args.json else f"AIRFLOW_CONN_{args.conn_id.upper()}={shlex.quote(text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
