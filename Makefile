# The README's two commands:  make demo  (install + run the pipeline on the embedded default)
#                             make test  (install + run the whole test suite)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: demo test install check-java clean

demo: check-java $(STAMP)
	$(BIN)/pipeline run $(ARGS)

test: check-java $(STAMP)
	$(BIN)/python -m pytest tests $(ARGS)

install: $(STAMP)

# Java 17+ is needed by Spark; stop at once with the fix rather than failing deep inside a job.
check-java:
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\)[."].*/\1/p' | head -n 1); \
	if [ -z "$$v" ]; then \
	  echo "error: java not found. Spark needs Java 17+: sudo apt-get install openjdk-17-jre-headless (or set JAVA_HOME and PATH)" >&2; exit 1; \
	elif [ "$$v" -lt 17 ]; then \
	  echo "error: java $$v found, Spark here needs Java 17+: sudo apt-get install openjdk-17-jre-headless (or point JAVA_HOME/PATH at a JDK 17)" >&2; exit 1; \
	fi

$(STAMP): requirements.txt requirements-dev.txt setup.py
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --no-deps -e .
	touch $@

clean:
	rm -rf work .pytest_cache
