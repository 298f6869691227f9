"""The data sections: what ingest wrote (counts, classes, quarantine, the samples it logged) and augmentation.

Everything comes from the stage runs: a dataset that is gone, moved or rewritten since does not change them.
"""
from __future__ import annotations

import fnmatch
import json
import re

from pipeline.data.splits import SPLITS
import pipeline.report.names as names
from pipeline.report.artifacts import Artifacts
from pipeline.report.html import esc, figures_html, fmt, image, not_run, run_line, table
from pipeline.report.runs import Found, StageRun

COUNTS = (("rows in", names.ROWS_IN), ("rows written", names.ROWS_WRITTEN),
          ("rows quarantined", names.ROWS_QUARANTINED),
          ("near-duplicates across splits", names.NEAR_DUPLICATES_ACROSS_SPLITS),
          ("groups across splits", names.GROUPS_ACROSS_SPLITS))


def dataset_section(found: Found, art: Artifacts) -> str:
    """The ingest run: counts, rows per kind, split and class, quarantine, fixes, and its logged figures."""
    r = found.get("ingest")
    if r is None:
        return not_run("ingest", found.mode)
    summary = ingest_summary(art, r)
    datasets = summary.get(names.SUMMARY_DATASETS) or datasets_from_metrics(r.metrics)
    out = [run_line(r), ingest_counts(r, summary), per_kind(datasets), quarantine(r.metrics, summary)]
    out.append(ingest_figures(r, art.figures(r.id), list(datasets)))
    return "".join(out)


def ingest_summary(art: Artifacts, r: StageRun) -> dict:
    """The summary the ingest run logged ({} when it has none, or none that parses)."""
    raw = art.read(r.id, names.INGEST_SUMMARY)
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def ingest_counts(r: StageRun, summary: dict) -> str:
    """Where the rows came from, how many went where, and the run's notes on its split."""
    m, p, tags = r.metrics, r.params, r.tags
    counts = [(label, m.get(key, summary.get(key, "n/a"))) for label, key in COUNTS]
    split_by = summary.get(names.SUMMARY_SPLIT_BY, p.get(names.INGEST_SPLIT_BY, "?"))
    out = [f"<p>Source <code>{esc(p.get(names.INGEST_SOURCE, '?'))}</code>, dataset "
           f"<code>{esc(p.get(names.INGEST_NAME, '?'))}</code>, split by <code>{esc(split_by)}</code>.</p>",
           table(["", "count"], counts)]
    near = m.get(names.NEAR_DUPLICATES_ACROSS_SPLITS, summary.get(names.NEAR_DUPLICATES_ACROSS_SPLITS))
    if near:
        out.append(f"<p class=\"warn\">{esc(fmt(near))} near-duplicate pairs lie in different splits (perceptual "
                   f"hash within <code>ingest.near_duplicate_bits</code>): test numbers may be inflated.</p>")
    out += [f"<p class=\"note\">{esc(tags[tag])}</p>" for tag in names.INGEST_NOTE_TAGS if tags.get(tag)]
    return "".join(out)


def per_kind(datasets: dict) -> str:
    """Rows per kind and split, and per class."""
    def splits_of(d: dict) -> dict:
        return d.get(names.DATASET_SPLITS, {})

    splits = [s for s in SPLITS if any(s in splits_of(d) for d in datasets.values())]
    out = ["<h3>Rows per kind and split</h3>",
           table(["kind"] + splits + ["total"],
                 [[kind] + [splits_of(d).get(s, 0) for s in splits]
                  + [d.get(names.DATASET_ROWS, sum(splits_of(d).values()))] for kind, d in datasets.items()])]
    classes = [(kind, name, n) for kind, d in datasets.items()
               for name, n in sorted(d.get(names.DATASET_CLASSES, {}).items())]
    if classes:
        out += ["<h3>Rows per class</h3>", table(["kind", "class", "rows"], classes, numeric_from=2)]
    return "".join(out)


def prefixed(m: dict, prefix: str) -> dict:
    """The metrics named ``<prefix><name>``, as ``{name: value}``."""
    return {k[len(prefix):]: v for k, v in m.items() if k.startswith(prefix)}


def quarantine(m: dict, summary: dict) -> str:
    """Why rows were quarantined, and the fixes applied to rows that were kept."""
    reasons = summary.get(names.SUMMARY_REASONS)
    if reasons is None:
        reasons = prefixed(m, names.QUARANTINE_PREFIX)
    out = ["<h3>Quarantine reasons</h3>",
           table(["reason", "rows"], sorted(reasons.items(), key=lambda kv: -kv[1])) if reasons
           else "<p>No row was quarantined.</p>"]
    fixes = summary.get(names.SUMMARY_FIXES) or prefixed(m, names.FIXES_PREFIX)
    if fixes:
        out.append("<h3>Fixes applied</h3>" + table(["fix", "rows"], sorted(fixes.items())))
    return "".join(out)


def datasets_from_metrics(m: dict) -> dict:
    """``{kind: {"splits", "classes", "rows"}}`` from the run's per-kind metrics (when it logged no summary)."""
    from pipeline.tasks import KINDS

    out: dict = {}
    for kind in KINDS:
        splits = {s: int(m[key]) for s in SPLITS if (key := names.KIND_SPLIT_METRIC.format(kind=kind, split=s)) in m}
        classes = {k: int(v) for k, v in prefixed(m, names.KIND_CLASS_PREFIX.format(kind=kind)).items()}
        if splits or classes:
            out[kind] = {names.DATASET_SPLITS: splits, names.DATASET_CLASSES: classes,
                         names.DATASET_ROWS: sum(splits.values())}
    return out


def ingest_figures(r: StageRun, figs: dict, kinds: list) -> str:
    """The sample grid the ingest run logged for each kind, its near-duplicate pairs, then any other figure."""
    out = ["<h3>Samples</h3>"]
    for kind in kinds:
        name = names.SAMPLES_FIGURE.format(kind=kind)
        out.append(image(figs[name], name, f"{name} (the grid ingest run {r.id} logged)") if name in figs
                   else f"<p class=\"note\">{esc(kind)}: no sample grid logged</p>")
    if names.NEAR_DUPLICATES_FIGURE in figs:
        out.append("<h3>Near-duplicates across splits</h3>"
                   + image(figs[names.NEAR_DUPLICATES_FIGURE], names.NEAR_DUPLICATES_FIGURE))
    samples = names.SAMPLES_FIGURE.format(kind="*")
    rest = [n for n in figs if not fnmatch.fnmatchcase(n, samples) and n != names.NEAR_DUPLICATES_FIGURE]
    if rest:
        out.append(figures_html({n: figs[n] for n in rest}))
    return "".join(out)


def augment_section(found: Found, art: Artifacts) -> str:
    """The augment run: its policy, rows per kind and split, the ops applied, and its figures."""
    r = found.get("augment")
    if r is None:
        return not_run("augment", found.mode)
    m, p = r.metrics, r.params
    out = [run_line(r), f"<p>Policy <code>{esc(p.get(names.AUGMENT_POLICY, '?'))}</code>, "
                        f"{esc(p.get(names.AUGMENT_COPIES, '?'))} copies of each train row, written to "
                        f"<code>{esc(p.get(names.AUGMENT_OUTPUT_URL, p.get(names.AUGMENT_NAME, '?')))}</code>.</p>"]
    per_split = re.compile(rf"[a-z_]+\.({'|'.join(SPLITS)})")          # names.KIND_SPLIT_METRIC
    counts = sorted((k, v) for k, v in m.items() if per_split.fullmatch(k))
    if counts:
        out.append(table(["kind.split", "rows"], counts))
    ops = sorted(prefixed(m, names.OPS_PREFIX).items())
    if ops:
        out.append("<h3>Ops applied</h3>" + table(["kind.op", "times"], ops))
    out.append(figures_html(art.figures(r.id), names.AUGMENT_FIGURES))
    return "".join(out)
