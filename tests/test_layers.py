"""The library's shape: imports run only downwards through the layers below, and no module takes another's private
name. Every import counts, also those inside functions (the stages import lazily to keep ``--help`` fast).

Layers, bottom first (a module may import its own layer and those below it):

0. the vocabulary, errors, config and task table, the schemas: :mod:`pipeline.vocab`, ``errors``, ``faults``,
   ``yamltext``, ``tasks``, ``config``, ``javahome``, :mod:`schemas`;
1. services every stage uses: storage (``data.store``), records and object regions (``data.records``,
   ``data.regions``), the nets and how they are stored and found (``models``), the session, the lock, MLflow
   tracking and the model registry's gate;
2. data: readers, images, the synthetic generator, parts and the dataset writer, splits, ingest; augmentation;
3. training: loader, spec, scoring, evaluate, the train stage;
4. the stage registry (:mod:`pipeline.stages`: it names every stage by a string and runs one, markers included);
5. the analyses (:mod:`pipeline.analysis`), which run side jobs through the registry;
6. the report; 7. the CLI.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LAYERS = (
    ("pipeline.vocab", "pipeline.errors", "pipeline.faults", "pipeline.yamltext", "pipeline.tasks", "pipeline.config",
     "pipeline.javahome", "schemas"),
    ("pipeline.data.store", "pipeline.data.records", "pipeline.data.regions", "pipeline.models", "pipeline.session",
     "pipeline.lock", "pipeline.tracking", "pipeline.registry"),
    ("pipeline.data", "pipeline.augment"),
    ("pipeline.train",),
    ("pipeline.stages",),
    ("pipeline.analysis",),
    ("pipeline.report",),
    ("pipeline.cli",),
)


def layer_of(module: str) -> int:
    """The layer of a module: the longest prefix listed wins (``pipeline.data.store`` before ``pipeline.data``)."""
    if module in ("pipeline", "schemas"):     # the packages' own __init__ (empty)
        return 0
    best, found = -1, None
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), level
    if found is None:
        raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it where it belongs")
    return found


def modules() -> dict:
    """``{module name: path}`` of every module of pipeline/ and schemas/."""
    out = {}
    for package in ("pipeline", "schemas"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports(path: Path, name: str) -> list:
    """``(line, imported module, imported names)`` of every import of ours in a module, at any depth."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, ()) for a in node.names if a.name.split(".")[0] in ("pipeline", "schemas")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] in ("pipeline", "schemas"):
                found.append((node.lineno, base, tuple(a.name for a in node.names)))
    return found


def target_of(base: str, names: tuple, known: dict) -> list:
    """The modules an import reaches: ``from pipeline.data import store`` reaches ``pipeline.data.store``."""
    subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in known]
    return subs if subs and len(subs) == len(names) else [base] + subs


def test_imports_run_only_downwards():
    known = modules()
    upward = []
    for name, path in known.items():
        level = layer_of(name)
        for line, base, names in imports(path, name):
            for target in target_of(base, names, known):
                if layer_of(target) > level:
                    upward.append(f"{path.relative_to(ROOT)}:{line}: {name} (layer {level}) imports {target} "
                                  f"(layer {layer_of(target)})")
    assert not upward, "imports that run upwards:\n" + "\n".join(upward)


def test_no_module_takes_a_private_name_of_another():
    known = modules()
    private = []
    for name, path in known.items():
        for line, base, names in imports(path, name):
            private += [f"{path.relative_to(ROOT)}:{line}: {name} imports {base}.{n}" for n in names
                        if n.startswith("_") and not n.startswith("__") and base != name]
    assert not private, "private names taken across modules:\n" + "\n".join(private)


def test_no_benchmark_or_job_takes_a_private_name_of_the_library():
    """The benchmarks and jobs call what the library makes public (planners, jobs, the scorer), not its helpers."""
    private = []
    for folder in ("benchmarks", "jobs"):
        for path in sorted((ROOT / folder).glob("*.py")):
            private += [f"{path.relative_to(ROOT)}:{line}: imports {base}.{n}"
                        for line, base, names in imports(path, f"{folder}.{path.stem}") for n in names
                        if n.startswith("_") and not n.startswith("__")]
    assert not private, "private names of pipeline/ taken by benchmarks or jobs:\n" + "\n".join(private)


@pytest.mark.parametrize("source, expected", [
    ("from pipeline.analysis import audit\n", "pipeline.analysis.audit"),
    ("from pipeline.report import run\n", "pipeline.report"),
])
def test_the_checker_sees_an_upward_import(tmp_path, source, expected):
    """The two checks above are only as good as their parser: an upward import planted in a training module and
    one in a function body are found."""
    path = tmp_path / "planted.py"
    path.write_text("def later():\n    " + source.replace("\n", "\n    ").rstrip() + "\n")
    found = [t for line, base, names in imports(path, "pipeline.train.planted")
             for t in target_of(base, names, modules())]
    assert expected in found and any(layer_of(t) > layer_of("pipeline.train.planted") for t in found)
