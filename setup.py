"""Install the pipeline: `pip install -e .` (add `[dev]` for the test tools)."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def requirements(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="road-pipeline",
    version="0.1.0",
    description="Spark training pipeline for road-lane and traffic-light convolutional nets",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["pipeline", "pipeline.*", "schemas", "schemas.*"]),
    install_requires=requirements("requirements.txt"),
    extras_require={"dev": requirements("requirements-dev.txt")},
    entry_points={"console_scripts": ["pipeline=pipeline.cli:main"]},
)
