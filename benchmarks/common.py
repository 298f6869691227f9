"""What the benchmark scripts share besides measuring (``_measure.py``): the config they run under
(:func:`make_conf`) and "ingest if missing" (:func:`ensure_dataset`).

Scripts import it as ``import common`` (their own folder is on sys.path when run as
``.venv/bin/python benchmarks/<script>.py``); importing it puts the repository root on sys.path too.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def make_conf(work_dir, *overrides, master: Optional[str] = "local[2]", progress: bool = True, profile="local"):
    """The config of a benchmark: profile ``profile``, data and MLflow store under ``work_dir``, Spark on
    ``master`` (None: the profile's), then ``overrides``. ``progress=False`` turns Spark's console progress bars
    off (readable output; no effect on timing)."""
    from pipeline.config import load_config

    head = [f"paths.work_dir={work_dir}"] + ([f"spark.master={master}"] if master else [])
    quiet = [] if progress else ["spark.conf.spark.ui.showConsoleProgress=false"]
    return load_config(profile, overrides=[*head, *overrides, *quiet])


def has_dataset(conf, name: str) -> bool:
    """Whether dataset ``name`` is there whole (a stage swaps a dataset in with its summary, last)."""
    from pipeline.data import store

    return store.exists(f"{store.dataset_root(conf.paths.data_url, name)}/{store.META}")


def ensure_dataset(spark, conf, stage: str = "ingest", name: Optional[str] = None, *, want: Optional[dict] = None,
                   manifest: Optional[Path] = None, fresh: bool = False, say: str = "") -> Optional[dict]:
    """Run ``stage`` (``ingest``, or a stage that writes a dataset from one, e.g. ``augment``) once: unless its
    dataset ``name`` (default: ``<stage>.name``) is there already and, with ``want``, ``manifest`` says it was
    made with those settings. ``fresh``: run it anyway. ``spark``: a session, or a function that builds one
    (called only when the stage runs). ``say``: a line printed before running it. Returns the stage's results,
    or None when the dataset was reused."""
    from pipeline.stages import get_stage, run_stage
    from pipeline.tracking import Tracker

    name = name or getattr(conf, stage).name
    recorded = json.loads(manifest.read_text()) if manifest is not None and manifest.exists() else None
    if not fresh and has_dataset(conf, name) and (want is None or recorded == want):
        return None
    if manifest is not None:
        manifest.unlink(missing_ok=True)
    if say:
        print(say, flush=True)
    results = run_stage(get_stage(stage), spark() if callable(spark) else spark, conf, Tracker(conf))
    if manifest is not None:
        manifest.write_text(json.dumps(want))
    return results
