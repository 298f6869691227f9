"""Empty splits: the one check every stage that reads a split makes, and the one line it says.

Ingest splits by group (a sequence, clip, track or folder) and writes a split's folder only when rows land in it,
so a small ingest can leave val or test with none: 64 synthetic frames are 8 sequences of 8, and 8 hashes may put
none in test. A stage that reads such a split raises :class:`~pipeline.errors.EmptySplit`, whose message is one
line: which split of which dataset and kind is empty, why (how many groups the split rule placed in each split,
from the summary ingest left beside the dataset: ``split_groups``, ``split_rule``), and what to do.

Where it is checked:

* :func:`check_stage`, called by :func:`pipeline.stages.run_stage` before a stage's function: the splits the
  registry says the stage reads (``Stage.splits``), so every stage, the audit included, meets an empty split
  the same way before it loads a model or trains anything;
* :func:`require_split` / :func:`check_split`, inside a stage, for a split it picks itself (transfer's halves);
* :func:`skip_part`, for a stage that goes on without one split: the train stage trains without per-epoch
  validation when val is empty, and leaves out its test pass when test is empty, each said in one line.

``pipeline run`` skips a job whose split is empty (and every later job that needs it, except the report) and goes
on; it exits 3 when anything was skipped (pipeline/cli.py). Imports nothing of ours but the store, the task table
and the error type.
"""
from __future__ import annotations

from typing import Optional

from pipeline.errors import EmptySplit

SPLITS = ("train", "val", "test")

PART_SKIPS: list = []      # lines of the parts of stages skipped in this process (skip_part), for pipeline run


def rows_in(meta: dict, kind: str, split: str) -> int:
    """Rows of ``kind`` in ``split`` as the dataset's summary counts them (0 when the split has none)."""
    return int(((meta.get("datasets") or {}).get(kind) or {}).get("splits", {}).get(split, 0) or 0)


def empty_splits(meta: dict) -> list:
    """``[(kind, split)]`` of the train / val / test splits with no rows, kind by kind (the summary's ``kinds``)."""
    kinds = [k for k in meta.get("kinds", ()) if k in (meta.get("datasets") or {})] or list(meta.get("datasets") or {})
    return [(kind, split) for kind in kinds for split in SPLITS if not rows_in(meta, kind, split)]


def _shares(shares: dict) -> str:
    return "{" + ", ".join(f"{s}: {shares.get(s, 0):g}" for s in SPLITS) + "}"


def why(meta: dict, kind: str, split: str) -> str:
    """Why ``split`` came out empty, from the split rule ingest recorded (older summaries: the rows per split)."""
    rule, groups = meta.get("split_rule"), meta.get("split_groups")
    if not rule or groups is None:
        counts = ", ".join(f"{s} {rows_in(meta, kind, s)}" for s in SPLITS)
        return f"the dataset's {kind} rows per split: {counts}"
    total = sum(groups.values())
    placed = ", ".join(f"{groups.get(s, 0)} in {s}" for s in SPLITS)
    fixed = rule.get("fixed_splits") or []
    if rule.get("split_by") == "frame":
        unit = "frames (ingest.split_by=frame)"
    elif rule.get("source") == "synthetic":
        unit = f"sequences of {rule.get('frames_per_sequence')} frames (ingest.frames_per_sequence)"
    else:
        unit = "groups (sequences / clips / tracks / folders)"
    inputs = rule.get("inputs")
    head = f"ingest.num_frames={inputs}" if rule.get("source") == "synthetic" else f"{inputs} inputs"
    text = f"{head} made {total} {unit}, and the split rule placed {placed}"
    if fixed:
        text += f" (the source's folders fix {', '.join(fixed)}" + (
            f"; ingest.val_from_train={rule.get('val_from_train') or 0:g})" if split == "val" else ")")
    else:
        shares = rule.get("shares", {})
        text += f" (by a hash of each group, ingest.split={_shares(shares)}" + (
            f", which gives {split} no share)" if not shares.get(split) else ")")
    if groups.get(split):
        text += f", and those in {split} yielded no {kind} rows"
    return text


def fix(meta: dict, split: str, key: Optional[str] = None, kind: Optional[str] = None) -> str:
    """What to do, in words: more data or smaller groups, another share, or (``key``) another split."""
    rule = meta.get("split_rule") or {}
    if rule and not rule.get("fixed_splits") and not rule.get("shares", {}).get(split, 1):
        text = f"give {split} a share (ingest.split) and ingest again"
    elif rule.get("source") == "synthetic":
        text = (f"ingest more frames (ingest.num_frames), shorter sequences (ingest.frames_per_sequence) or another "
                f"share (ingest.split)")
    elif rule.get("fixed_splits") and split == "val":
        text = "ingest more data, or carve val out of the train folder (ingest.val_from_train > 0)"
    else:
        text = "ingest more data, or another share (ingest.split)"
    if key and kind:
        others = [s for s in SPLITS if s != split and rows_in(meta, kind, s)]
        if others:
            text += f", or set {key} to {' or '.join(others)}"
    return text


def describe(root: str, meta: dict, kind: str, split: str, key: Optional[str] = None) -> str:
    """The one line: which split of which dataset and kind is empty, why, and what to do."""
    name = root.rstrip("/").rsplit("/", 1)[-1]
    chosen = f" ({key}={split})" if key else ""
    return (f"the {split} split{chosen} of dataset {name}, kind {kind}, is empty: {why(meta, kind, split)}; "
            f"{fix(meta, split, key, kind)}")


def check_split(root: str, kind: str, split: str, key: Optional[str] = None, meta: Optional[dict] = None) -> int:
    """The rows of ``split`` of ``<root>/<kind>``; raises :class:`EmptySplit` (the line of :func:`describe`) when
    it has none. ``key``: the config key that chose the split (``evaluate.split``), named in the fix."""
    from pipeline.data import store

    meta = store.read_meta(root) if meta is None else meta
    rows = rows_in(meta, kind, split)
    if rows:
        return rows
    base = split if split in SPLITS else "train"      # a nested train subset (transfer's train_n<size>)
    raise EmptySplit(describe(root, meta, kind, base, key) if base == split else
                     f"the {split} subset of dataset {root.rsplit('/', 1)[-1]}, kind {kind}, is empty",
                     root, kind, split)


def require_split(spec, split: str, key: Optional[str] = None) -> int:
    """:func:`check_split` for the dataset and kind a :class:`~pipeline.train.spec.TrainSpec` reads, e.g. in the
    audit stage: ``require_split(spec, a.split, "audit.split")``. Returns the split's rows."""
    return check_split(spec.data_root, spec.kind, split, key)


def skip_part(what: str, exc: EmptySplit) -> str:
    """A stage goes on without one split: say so in one line (``<what> skipped: <the line>``), record it as the
    active MLflow run's ``pipeline.skipped`` tag and for ``pipeline run``'s exit code. Returns the line."""
    line = f"{what} skipped: {exc}"
    print(line, flush=True)
    PART_SKIPS.append(line)
    try:
        import mlflow

        if mlflow.active_run() is not None:
            before = mlflow.active_run().data.tags.get("pipeline.skipped")
            mlflow.set_tag("pipeline.skipped", (f"{before}; " if before else "") + line[:4000])
    except Exception:  # noqa: BLE001  (the line is said; the tag is a convenience)
        pass
    return line


def stage_reads(stage, conf) -> list:
    """``[(root, kind, split, key)]``: the splits the registry says ``stage`` reads (``Stage.splits``: a split's
    name, or the config key that names it), of ``<stage>.data`` (else ``train.data``), the kind of
    ``<stage>.task`` (else ``train.task`` with ``train.kind``). A dataset that cannot be resolved gives none
    (the stage itself then says what is wrong)."""
    from pipeline.data import store
    from pipeline.tasks import get_task, pick_kind

    if not stage.splits:
        return []
    section = getattr(conf, stage.name, None)
    data = getattr(section, "data", None) or conf.train.data
    own_task = getattr(section, "task", None) if stage.name != "train" else None
    root = store.dataset_root(conf.paths.data_url, data)
    try:
        meta = store.read_meta(root)
        kind = pick_kind(get_task(own_task or conf.train.task), meta["datasets"],
                         None if own_task else conf.train.kind)
    except (ValueError, LookupError, OSError):
        return []
    out = []
    for entry in stage.splits:
        if "." in entry:
            head, _, attr = entry.partition(".")
            out.append((root, kind, getattr(getattr(conf, head), attr), entry))
        else:
            out.append((root, kind, entry, None))
    return out


def check_stage(stage, conf) -> None:
    """Raise :class:`EmptySplit` for the first empty split ``stage`` reads (:func:`stage_reads`)."""
    from pipeline.data import store

    metas: dict = {}
    for root, kind, split, key in stage_reads(stage, conf):
        if root not in metas:
            metas[root] = store.read_meta(root)
        check_split(root, kind, split, key, metas[root])
