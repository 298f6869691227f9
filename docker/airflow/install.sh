#!/usr/bin/env bash
# Makes the Airflow virtual environment that tests/test_airflow.py loads and runs the DAG in: Airflow, its Spark
# provider (SparkSubmitOperator) and the two light libraries the DAG's imports of pipeline.stages / pipeline.config
# need, pinned in docker/airflow/requirements.txt. `make test` runs it (via `make airflow`).
# Its own venv, apart from the project's .venv (Airflow's pins conflict with the project's).
#
#   bash docker/airflow/install.sh          # makes $AIRFLOW_VENV, default .venv-airflow in the repository
#
#   AIRFLOW_VENV  where to make it (default .venv-airflow; relative to the repository); tests/test_airflow.py
#                 reads the same variable
#   PYTHON        the interpreter to make it with (default: the first of python3.11 python3.12 that runs)
#
# Idempotent: does nothing when the venv was made from the same requirements.txt by the same Python (a stamp file,
# <venv>/.airflow-installed); otherwise (re)makes it from scratch. About 1-2 minutes and ~650 MB from PyPI.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${AIRFLOW_VENV:-.venv-airflow}
case $venv in /*) ;; *) venv=$repo/$venv;; esac   # relative: to the repository, as tests/test_airflow.py reads it
reqs=$here/requirements.txt
stamp=$venv/.airflow-installed

py=
for c in ${PYTHON:-python3.11 python3.12}; do
  if v=$("$c" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); then
    case $v in 3.11|3.12) py=$(command -v "$c"); break;; esac
    echo "install.sh: $c is Python $v; docker/airflow/requirements.txt is for 3.11 or 3.12" >&2
  fi
done
if [ -z "$py" ]; then
  echo "install.sh: error: no Python 3.11 or 3.12 among: ${PYTHON:-python3.11 python3.12} (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

want="$(sha256sum "$reqs" | cut -d' ' -f1) python$v"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "install.sh: $venv is up to date (stamp $stamp matches requirements.txt and $py); nothing to do"
  exit 0
fi

start=$(date +%s)
if [ -e "$venv" ]; then
  if [ ! -f "$venv/pyvenv.cfg" ]; then
    echo "install.sh: error: $venv exists and is not a virtual environment; move it away or set AIRFLOW_VENV" >&2
    exit 1
  fi
  echo "install.sh: $venv is out of date (or incomplete): making it again"
  rm -rf "$venv"
fi
echo "install.sh: $py -m venv $venv"
"$py" -m venv "$venv"
echo "install.sh: $venv/bin/pip install -r $reqs"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --progress-bar off -r "$reqs"

# Importing airflow writes an airflow.cfg into AIRFLOW_HOME: a scratch one, not ~/airflow.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
if ! version=$(AIRFLOW_HOME=$scratch/home AIRFLOW__CORE__LOAD_EXAMPLES=False "$venv/bin/python" -c \
    'import airflow, pydantic, yaml; from airflow.models.dagbag import DagBag
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
print(airflow.__version__)' \
    2>"$scratch/stderr"); then
  cat "$scratch/stderr" >&2
  echo "install.sh: error: $venv/bin/python cannot import airflow, its Spark provider, pydantic and yaml" \
       "(above); no stamp written" >&2
  exit 1
fi
echo "$want" > "$stamp"
echo "install.sh: Airflow $version in $venv ($(du -sh "$venv" | cut -f1), $(( $(date +%s) - start )) s)"
