"""What the tests' light JVMs save: the suite's subprocess-heavy tests with the JVMs they start (drivers through
SPARK_SUBMIT_OPTS, local-cluster executors through spark.executor.extraJavaOptions) on the client compiler and a
serial GC (tests/conftest.py's LIGHT_JVM) against the JVM's defaults, alternating, in one run.

    .venv/bin/python benchmarks/bench_suite_jvm.py [--rounds 2] [TEST ...]

Each round runs the tests twice, once per setting (``SPARK_SUBMIT_OPTS`` exported empty: the defaults), and
prints each wall time; then the medians and their ratio. Default tests: the fault suite's kills, the spark-submit
job of test_cli and the local-cluster training, each starting JVMs of its own. The speed probe is printed before
and after (absolute times on this VM move up to 2x with it).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repo root on sys.path too)
from bench_train import probe  # noqa: E402

TESTS = ["tests/faults/test_executor_kill.py", "tests/faults/test_train_kill.py", "tests/faults/test_driver_kill.py",
         "tests/test_cli.py::test_spark_submit_runs_a_stage_job",
         "tests/train/test_train.py::test_local_cluster_barrier_tasks_train_on_two_executors_and_learn"]
LIGHT = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def run(tests: list, opts: str) -> float:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", *tests], cwd=common.REPO, capture_output=True,
                         text=True, env={**os.environ, "SPARK_SUBMIT_OPTS": opts})
    seconds = time.monotonic() - started
    if out.returncode != 0:
        sys.exit(f"pytest failed with SPARK_SUBMIT_OPTS={opts!r}:\n{out.stdout[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("tests", nargs="*", default=TESTS)
    args = parser.parse_args()
    print(f"probe before: {probe() * 1000:.0f} ms")
    times = {"defaults": [], "light": []}
    for r in range(args.rounds):
        for name, opts in (("defaults", ""), ("light", LIGHT)):
            times[name].append(run(args.tests, opts))
            print(f"round {r + 1}, {name:8s}: {times[name][-1]:6.1f} s", flush=True)
    print(f"probe after: {probe() * 1000:.0f} ms")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median: defaults {med['defaults']:.1f} s, light {med['light']:.1f} s, "
          f"light / defaults = {med['light'] / med['defaults']:.2f}")


if __name__ == "__main__":
    main()
