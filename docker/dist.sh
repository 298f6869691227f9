#!/usr/bin/env bash
# Builds what a Spark cluster's driver and executors need from this repository, into dist/:
#
#   dist/road_pipeline-<version>-py3-none-any.whl  the pipeline and schemas packages (pure Python, no deps): pip
#                                                   install it on a driver, into a packed environment, an image
#   dist/road_pipeline-<version>.zip                the same bytes under a .zip name, for --files / --py-files:
#                                                   Spark 3.5 puts only .zip/.egg/.jar py-files on the executors'
#                                                   Python path (a .whl is fetched but never imported)
#   dist/conf.zip                                   conf/ (base.yaml, the profiles, augment.yaml, log4j2), its
#                                                   files at the root: --archives dist/conf.zip#conf unpacks them
#                                                   into ./conf (the wheel holds packages only, not conf/)
#
# Usage:  docker/dist.sh   (or: make dist)      PYTHON=/path/to/python  DIST_DIR=/elsewhere  docker/dist.sh
# Idempotent and reproducible: builds from a clean copy of the sources (no stale build/ can leak into the wheel),
# every file stamped with SOURCE_DATE_EPOCH (default: the last commit's time), so the same sources give the same
# bytes; replaces only these three files. Takes a few seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 315532800)}
stage=$(mktemp -d "${TMPDIR:-/tmp}/road-dist.XXXXXX")
trap 'rm -rf "$stage"' EXIT

# A clean copy of what setup.py packages (and what it reads), without caches.
mkdir -p "$stage/src"
cp setup.py requirements.txt requirements-current.txt requirements-dev.txt "$stage/src/"   # setup.py reads the STACK's one
for dir in pipeline schemas conf; do
  (cd "$ROOT" && find "$dir" -name __pycache__ -prune -o -type f ! -name '*.pyc' -print) | while read -r f; do
    mkdir -p "$stage/src/$(dirname "$f")" && cp "$f" "$stage/src/$f"
  done
done

# setuptools >= 70.1 builds wheels itself: use the one installed (offline); an older one builds in an isolated
# environment pip fills from the package index.
isolation=--no-build-isolation
"$PY" -c 'import setuptools.command.bdist_wheel' 2>/dev/null || isolation=
"$PY" -m pip wheel --quiet --no-deps $isolation --wheel-dir "$stage/wheel" "$stage/src" >&2
wheel=$(cd "$stage/wheel" && ls road_pipeline-*-py3-none-any.whl)
version=${wheel#road_pipeline-}
version=${version%-py3-none-any.whl}

DIST=${DIST_DIR:-dist}
mkdir -p "$DIST"
DIST=$(cd "$DIST" && pwd)
rm -f "$DIST"/road_pipeline-*-py3-none-any.whl "$DIST"/road_pipeline-*.zip "$DIST/conf.zip"
cp "$stage/wheel/$wheel" "$DIST/$wheel"
cp "$stage/wheel/$wheel" "$DIST/road_pipeline-$version.zip"
(cd "$stage/src/conf" && "$PY" -c '
import os, sys, time, zipfile
from pathlib import Path
stamp = time.gmtime(max(int(os.environ["SOURCE_DATE_EPOCH"]), 315532800))[:6]
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:
    for p in sorted(Path(".").iterdir()):
        if p.is_file():
            info = zipfile.ZipInfo(p.name, stamp)
            info.external_attr, info.compress_type = 0o644 << 16, zipfile.ZIP_DEFLATED
            z.writestr(info, p.read_bytes())
' "$DIST/conf.zip")

cat <<EOF
built:
  $DIST/$wheel
  $DIST/road_pipeline-$version.zip   (the wheel under a .zip name, for --files / --py-files)
  $DIST/conf.zip   (conf/, for --archives $DIST/conf.zip#conf)

Standalone cluster, driver on this machine (client mode; it reads conf/ from this checkout), executors with
the pipeline's dependencies installed (the same requirements.txt) but not the pipeline itself:

  spark-submit --master spark://HOST:7077 \\
    --files $DIST/road_pipeline-$version.zip \\
    --conf spark.executorEnv.PYTHONPATH=road_pipeline-$version.zip \\
    --conf spark.pyspark.python=/path/to/executor/python \\
    jobs/train.py --profile cluster train.local_mode=false train.num_processes=2

The executors run in the folder Spark fetched the zip into, so the relative PYTHONPATH finds it, in the
Python workers and in the processes TorchDistributor's torchrun starts from them (they inherit the environment,
not the workers' sys.path: --py-files alone reaches the Spark tasks but not the training ranks).
Executors still need torch, petastorm, pyarrow, mlflow ... : install requirements.txt there, or ship a packed
environment that also holds this wheel (venv-pack / conda-pack, --archives env.tar.gz#env and
spark.pyspark.python=./env/bin/python), or run the image of docker/Dockerfile (Kubernetes).
EOF
