"""The report stage: one self-contained HTML page per pipeline run, to look at the nets before they are used.

Everything on the page comes from MLflow: the stage runs of this pipeline run (the children of its parent run;
a stage ``pipeline run`` skipped as up to date is shown from the run its marker names), or, when the report runs
alone (``pipeline report``), the newest finished run of each stage in the experiment (per task for train and
evaluate). Sections, in order: the dataset, augmentation, training curves (drawn here from the metric
histories), test results per task, correlation between seeds, unit visualizations, transfer, the audits. A
stage that did not run says so.

The page needs nothing but itself: every image is a base64 ``data:`` URI, the stylesheet is inline, there is
no script and no external URL. It is written to ``<report.out_dir>/<pipeline run id>.html`` and logged to the
report's own run as ``report/index.html``.
"""
from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import html
import io
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from pipeline.config import Config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ARTIFACT = "report/index.html"
# The stages a report shows, in pipeline order (report itself excluded).
STAGE_NAMES = ("ingest", "augment", "train", "evaluate", "correlate", "visualize", "transfer", "audit")
PER_TASK = ("train", "evaluate", "audit")
DISTANCE_ROWS = ("all", "near", "medium", "far")

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1d2228;margin:0;
background:#f6f7f9}
main{max-width:1120px;margin:0 auto;padding:24px 28px 64px;background:#fff;min-height:100vh}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:21px;margin:38px 0 8px;padding-top:10px;
border-top:2px solid #dfe3e8}h3{font-size:17px;margin:22px 0 6px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13.5px}
th,td{border:1px solid #d5dae0;padding:3px 9px;text-align:left;vertical-align:top}
th{background:#eef1f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:10px 0 20px}figure img{max-width:100%;height:auto;border:1px solid #e3e6ea}
figcaption{font-size:12.5px;color:#5a636e}
code{font-size:12.5px;background:#f1f3f5;padding:0 3px;border-radius:3px}
.meta{color:#4b545e;font-size:13.5px}.notrun{color:#8a5a00;background:#fff6e0;border-left:4px solid #e0a800;
padding:6px 12px}.warn{color:#8b1c1c;background:#fdecec;border-left:4px solid #d33;padding:6px 12px}
.verdict{font-size:17px;font-weight:600;background:#eef5ff;border-left:6px solid #2f6fdb;padding:10px 14px;
margin:10px 0}.note{color:#4b545e;font-size:13.5px}nav ol{columns:2;font-size:14px}
.status-FINISHED{color:#176d2c}.status-FAILED,.status-KILLED{color:#b3261e;font-weight:600}
.status-RUNNING{color:#6b5a00}.wide{overflow-x:auto;max-width:100%}
"""


# ------------------------------------------------------------------------------------------------ runs

@dataclass
class StageRun:
    stage: str
    task: Optional[str]
    run: object                      # mlflow.entities.Run
    note: str = ""                   # how it was found, when not as a child of this pipeline run

    @property
    def id(self) -> str:
        return self.run.info.run_id


@dataclass
class Found:
    runs: list                       # StageRun, in pipeline order
    mode: str                        # "pipeline": children of a pipeline run; "newest": newest per stage
    pipeline: object = None          # the parent Run (mode "pipeline")

    def get(self, stage: str, task: Optional[str] = None) -> Optional[StageRun]:
        for r in self.runs:
            if r.stage == stage and (task is None or r.task == task):
                return r
        return None

    def all(self, stage: str) -> list:
        return [r for r in self.runs if r.stage == stage]


def _task_order(task: Optional[str]) -> int:
    from pipeline.tasks import TASKS

    return list(TASKS).index(task) if task in TASKS else len(TASKS)


def _order(runs: Iterable[StageRun]) -> list:
    return sorted(runs, key=lambda r: (STAGE_NAMES.index(r.stage), _task_order(r.task), r.run.info.start_time or 0))


def _key(run) -> tuple:
    tags = run.data.tags
    stage = tags.get("pipeline.stage")
    return stage, (tags.get("pipeline.task") if stage in PER_TASK else None)


def _is_stage_run(run, exclude: set) -> bool:
    tags = run.data.tags
    return (tags.get("pipeline.kind") == "stage" and tags.get("pipeline.stage") in STAGE_NAMES
            and not tags.get("pipeline.role")      # nets trained for correlate or the audit, not stages of their own
            and run.info.run_id not in exclude)


def find_runs(client, experiment_id: str, parent_id: Optional[str], exclude: set = frozenset(),
              conf: Optional[Config] = None) -> Found:
    """The stage runs a report shows: the children of ``parent_id`` (newest per stage and task), plus the runs
    whose output ``pipeline run`` reused (their markers); when the parent has no stage child but the report
    (``pipeline report`` alone), the newest FINISHED run of each stage and task in the experiment whose parent
    is a pipeline run."""
    if parent_id:
        children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                      order_by=["attributes.start_time DESC"], max_results=1000)
        chosen: dict = {}
        for run in children:
            if _is_stage_run(run, exclude):
                chosen.setdefault(_key(run), StageRun(*_key(run), run))
        if chosen:
            if conf is not None:
                _add_reused(client, experiment_id, conf, chosen)
            return Found(_order(chosen.values()), "pipeline", client.get_run(parent_id))
    return Found(_order(_newest(client, experiment_id, exclude).values()), "newest")


def _newest(client, experiment_id: str, exclude: set) -> dict:
    runs = client.search_runs([experiment_id], "tags.`pipeline.kind` = 'stage' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1000)
    kinds: dict = {}
    chosen: dict = {}
    for run in runs:
        if not _is_stage_run(run, exclude) or _key(run) in chosen:
            continue
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent not in kinds:   # a stage nested in another stage's run (the audit's ingest) is not the stage's
            try:
                kinds[parent] = client.get_run(parent).data.tags.get("pipeline.kind") if parent else None
            except Exception:  # noqa: BLE001  (a deleted parent)
                kinds[parent] = None
        if kinds[parent] == "pipeline":
            chosen[_key(run)] = StageRun(*_key(run), run, "newest finished run of the stage in the experiment")
    return chosen


def _add_reused(client, experiment_id: str, conf: Config, chosen: dict) -> None:
    """Stages ``pipeline run`` skipped as up to date: the run their marker names (the output they reuse)."""
    from pipeline.stages import STAGES, read_marker

    for stage in STAGES:
        if stage.name not in STAGE_NAMES:
            continue
        for task in (conf.run.tasks if stage.per_task else [None]):
            if (stage.name, task) in chosen:
                continue
            try:
                marker = read_marker(conf, f"{stage.name}.{task}" if task else stage.name)
                run_id = ((marker or {}).get("results") or {}).get("run_id")
                run = client.get_run(run_id) if run_id else None
            except Exception:  # noqa: BLE001  (no marker store, a deleted run: the stage did not run)
                run = None
            if run is not None and run.info.experiment_id == experiment_id and run.info.status == "FINISHED":
                chosen[(stage.name, task)] = StageRun(stage.name, task, run,
                                                      "up to date: reused from an earlier pipeline run")


# ------------------------------------------------------------------------------------------- artifacts

def _quiet_downloads():
    from pipeline.tracking import env_set

    return env_set("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class Artifacts:
    """A run's artifacts, downloaded once into a temporary folder."""

    def __init__(self, client, tmp: Path):
        self.client, self.tmp = client, tmp
        self._folders: dict = {}

    def folder(self, run_id: str, folder: str) -> dict:
        """``{file name: local path}`` of the files directly under ``folder`` of the run."""
        key = (run_id, folder)
        if key not in self._folders:
            files = {}
            try:
                entries = [e for e in self.client.list_artifacts(run_id, folder) if not e.is_dir]
                if entries:
                    dst = self.tmp / run_id / folder.replace("/", "_")
                    dst.mkdir(parents=True, exist_ok=True)
                    with _quiet_downloads():
                        local = Path(self.client.download_artifacts(run_id, folder, str(dst)))
                    files = {Path(e.path).name: local / Path(e.path).name for e in entries}
            except Exception:  # noqa: BLE001  (no such folder, an unreachable artifact store: nothing to show)
                files = {}
            self._folders[key] = files
        return self._folders[key]

    def read(self, run_id: str, path: str) -> Optional[bytes]:
        """One artifact's bytes (None when the run has no such file)."""
        folder, _, name = path.rpartition("/")
        try:
            if name not in {Path(e.path).name for e in self.client.list_artifacts(run_id, folder or None)}:
                return None
            dst = self.tmp / run_id / "files"
            dst.mkdir(parents=True, exist_ok=True)
            with _quiet_downloads():
                return Path(self.client.download_artifacts(run_id, path, str(dst))).read_bytes()
        except Exception:  # noqa: BLE001  (an unreachable artifact store: nothing to show)
            return None

    def figures(self, run_id: str) -> dict:
        """``{figure name: PNG bytes}`` of ``figures/<name>.png``, sorted by name."""
        out = {}
        for name, path in sorted(self.folder(run_id, "figures").items()):
            if name.endswith(".png") and path.exists():
                out[name[:-4]] = path.read_bytes()
        return out


# ---------------------------------------------------------------------------------------------- html

def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value) -> str:
    """A number as a person reads it: integers whole, others to 4 significant digits."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        if value != value:
            return "n/a"
        if float(value).is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def table(headers: list, rows: list, numeric_from: int = 1) -> str:
    """An HTML table; cells are escaped, columns from ``numeric_from`` on are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f"<td class=\"num\">{esc(fmt(c))}</td>" if i >= numeric_from and isinstance(c, (int, float))
                        else f"<td>{esc(fmt(c))}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<div class=\"wide\"><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def image(png: bytes, alt: str, caption: Optional[str] = None) -> str:
    """A PNG as an inline ``data:`` URI in a figure (anything that is not a PNG is named, not embedded)."""
    if not png.startswith(PNG_SIGNATURE):
        return f"<p class=\"warn\">{esc(alt)}: not a PNG image, not shown</p>"
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{esc(caption if caption is not None else alt)}</figcaption>"
    return f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{esc(alt)}\">{cap}</figure>"


def pick(names: Iterable[str], patterns: Iterable[str], rest: bool = True) -> list:
    """``names`` in the order of the first glob pattern each matches; the rest (when ``rest``) after them."""
    names = list(names)
    out = []
    for pattern in patterns:
        out += [n for n in names if fnmatch.fnmatchcase(n, pattern) and n not in out]
    return out + ([n for n in names if n not in out] if rest else [])


def figures_html(figs: dict, patterns: Iterable[str] = (), rest: bool = True, run_label: str = "") -> str:
    chosen = pick(figs, patterns, rest)
    if not chosen:
        return "<p class=\"note\">no figures logged</p>"
    return "".join(image(figs[n], n, f"{n}" + (f" ({run_label})" if run_label else "")) for n in chosen)


def _when(ms: Optional[int]) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(info) -> str:
    if not info.start_time:
        return "-"
    if not info.end_time:
        return "running"
    seconds = max(0.0, (info.end_time - info.start_time) / 1000)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def _run_line(r: StageRun) -> str:
    info = r.run.info
    status = f"<span class=\"status-{esc(info.status)}\">{esc(info.status)}</span>"
    note = f"; {esc(r.note)}" if r.note else ""
    line = (f"<p class=\"meta\">run <b>{esc(info.run_name)}</b> <code>{esc(info.run_id)}</code>, {status}, "
            f"{esc(duration(info))}{note}</p>")
    skipped = r.run.data.tags.get("pipeline.skipped")
    if info.status != "FINISHED" and skipped:
        line += f"<p class=\"warn\">skipped for an empty split: {esc(skipped)}</p>"
    elif info.status != "FINISHED":
        error = r.run.data.tags.get("error")
        line += f"<p class=\"warn\">this run is {esc(info.status)}" + (f": {esc(error)}" if error else "") + "</p>"
    elif skipped:
        line += f"<p class=\"warn\">left out for an empty split: {esc(skipped)}</p>"
    return line


def _not_run(what: str, mode: str) -> str:
    where = "in this pipeline run" if mode == "pipeline" else "in the experiment"
    return f"<p class=\"notrun\">not run: no finished <code>{esc(what)}</code> stage run {where}</p>"


@dataclass
class Section:
    anchor: str
    title: str
    body: str
    ran: bool = True


@dataclass
class Page:
    sections: list = field(default_factory=list)

    def add(self, anchor: str, title: str, body: str, ran: bool = True) -> None:
        self.sections.append(Section(anchor, title, body, ran))


# ------------------------------------------------------------------------------------------- sections

def _metrics(r: StageRun) -> dict:
    return dict(r.run.data.metrics)


def _params(r: StageRun) -> dict:
    return dict(r.run.data.params)


def dataset_section(found: Found, art: Artifacts, samples: int) -> str:
    r = found.get("ingest")
    if r is None:
        return _not_run("ingest", found.mode)
    m, p, tags = _metrics(r), _params(r), r.run.data.tags
    summary = {}
    raw = art.read(r.id, "ingest_summary.json")
    if raw:
        try:
            summary = json.loads(raw)
        except ValueError:
            summary = {}
    out = [_run_line(r)]
    counts = [("rows in", m.get("rows_in", summary.get("rows_in", "n/a"))),
              ("rows written", m.get("rows_written", summary.get("rows_written", "n/a"))),
              ("rows quarantined", m.get("rows_quarantined", summary.get("rows_quarantined", "n/a"))),
              ("near-duplicates across splits", m.get("near_duplicates_across_splits",
                                                      summary.get("near_duplicates_across_splits", "n/a"))),
              ("groups across splits", m.get("groups_across_splits", summary.get("groups_across_splits", "n/a")))]
    source = p.get("ingest.source", "?")
    out.append(f"<p>Source <code>{esc(source)}</code>, dataset <code>{esc(p.get('ingest.name', '?'))}</code>, "
               f"split by <code>{esc(summary.get('split_by', p.get('ingest.split_by', '?')))}</code>.</p>")
    out.append(table(["", "count"], counts))
    near = m.get("near_duplicates_across_splits", summary.get("near_duplicates_across_splits"))
    if near:
        out.append(f"<p class=\"warn\">{esc(fmt(near))} near-duplicate pairs lie in different splits (perceptual "
                   f"hash within <code>ingest.near_duplicate_bits</code>): test numbers may be inflated.</p>")
    for tag in ("ingest.split_note", "ingest.group_near_duplicates", "ingest.val_carve"):
        if tags.get(tag):
            out.append(f"<p class=\"note\">{esc(tags[tag])}</p>")
    datasets = summary.get("datasets") or _datasets_from_metrics(m)
    splits = [s for s in ("train", "val", "test") if any(s in d.get("splits", {}) for d in datasets.values())]
    out.append("<h3>Rows per kind and split</h3>")
    out.append(table(["kind"] + splits + ["total"],
                     [[kind] + [d.get("splits", {}).get(s, 0) for s in splits] + [d.get("rows", sum(
                         d.get("splits", {}).values()))] for kind, d in datasets.items()]))
    classes = [(kind, name, n) for kind, d in datasets.items() for name, n in sorted(d.get("classes", {}).items())]
    if classes:
        out.append("<h3>Rows per class</h3>")
        out.append(table(["kind", "class", "rows"], classes, numeric_from=2))
    reasons = summary.get("quarantine_reasons")
    if reasons is None:
        reasons = {k[len("quarantine."):]: v for k, v in m.items() if k.startswith("quarantine.")}
    out.append("<h3>Quarantine reasons</h3>")
    out.append(table(["reason", "rows"], sorted(reasons.items(), key=lambda kv: -kv[1])) if reasons
               else "<p>No row was quarantined.</p>")
    fixes = summary.get("fixes") or {k[len("fixes."):]: v for k, v in m.items() if k.startswith("fixes.")}
    if fixes:
        out.append("<h3>Fixes applied</h3>" + table(["fix", "rows"], sorted(fixes.items())))
    figs = art.figures(r.id)
    out.append("<h3>Samples</h3>")
    read_back = _sample_grids(p, list(datasets), samples)
    for kind in datasets:
        if kind in read_back:
            out.append(image(read_back[kind][0], f"samples of {kind}", read_back[kind][1]))
        elif f"samples_{kind}" in figs:
            out.append(image(figs[f"samples_{kind}"], f"samples_{kind}",
                             f"samples_{kind} (the grid the ingest run logged)"))
    if "near_duplicates" in figs:
        out.append("<h3>Near-duplicates across splits</h3>" + image(figs["near_duplicates"], "near_duplicates"))
    rest = [n for n in figs if not n.startswith("samples_") and n != "near_duplicates"]
    if rest:
        out.append(figures_html({n: figs[n] for n in rest}))
    return "".join(out)


def _datasets_from_metrics(m: dict) -> dict:
    from pipeline.tasks import KINDS

    out: dict = {}
    for key, value in m.items():
        kind, _, rest = key.partition(".")
        if kind not in KINDS:
            continue
        entry = out.setdefault(kind, {"splits": {}, "classes": {}})
        if rest in ("train", "val", "test"):
            entry["splits"][rest] = int(value)
        elif rest.startswith("class."):
            entry["classes"][rest[len("class."):]] = int(value)
    for entry in out.values():
        entry["rows"] = sum(entry["splits"].values())
    return out


def _sample_grids(params: dict, kinds: list, n: int) -> dict:
    """``{kind: (PNG, caption)}``: ``n`` rows of each kind read back from the dataset the ingest run wrote
    (spread over its splits) and drawn as the ingest stage draws its samples; a kind whose dataset is gone or
    unreadable is left out (the grid the run logged stands in)."""
    import matplotlib.pyplot as plt

    from pipeline.data import figures, store

    out = {}
    name = params.get("ingest.name")
    for kind in kinds:
        url = params.get(f"dataset.{name}/{kind}.url")
        if not url:
            continue
        try:
            rows = _read_rows(store, url, n)
            if not rows:
                continue
            fig = figures.sample_grid(kind, rows, f"{kind}: {len(rows)} rows read back from the dataset")
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=80)
            plt.close(fig)
            out[kind] = (buf.getvalue(), f"{kind}: {len(rows)} rows read back from {url} "
                                         f"(report.samples={n})")
        except Exception:  # noqa: BLE001  (gone, moved, another schema: the logged grid stands in)
            continue
    return out


def _read_rows(store, url: str, n: int) -> list:
    import pyarrow.parquet as pq

    fs, root = store.filesystem(url)
    splits = [s for s in ("train", "val", "test") if fs.exists(f"{root}/{s}")]
    if not splits:
        return []
    per = -(-n // len(splits))
    rows: list = []
    for split in splits:
        got: list = []
        for path in sorted(p for p in fs.ls(f"{root}/{split}", detail=False) if str(p).endswith(".parquet")):
            with fs.open(path, "rb") as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=per - len(got)):
                    got += batch.to_pylist()
                    break
            if len(got) >= per:
                break
        rows += got[:per]
    return rows[:n]


def augment_section(found: Found, art: Artifacts) -> str:
    r = found.get("augment")
    if r is None:
        return _not_run("augment", found.mode)
    m, p = _metrics(r), _params(r)
    out = [_run_line(r), f"<p>Policy <code>{esc(p.get('augment.policy', '?'))}</code>, "
                         f"{esc(p.get('augment.copies', '?'))} copies of each train row, written to "
                         f"<code>{esc(p.get('augment.output_url', p.get('augment.name', '?')))}</code>.</p>"]
    counts = sorted((k, v) for k, v in m.items() if re.fullmatch(r"[a-z_]+\.(train|val|test)", k))
    if counts:
        out.append(table(["kind.split", "rows"], counts))
    ops = sorted((k[len("ops."):], v) for k, v in m.items() if k.startswith("ops."))
    if ops:
        out.append("<h3>Ops applied</h3>" + table(["kind.op", "times"], ops))
    out.append(figures_html(art.figures(r.id), ("policy_*", "ops_*")))
    return "".join(out)


def _key_metric(task: str) -> str:
    from pipeline.tasks import get_task

    return "ap" if get_task(task).detector else "accuracy"


def curves_png(client, run_id: str, task: str) -> Optional[bytes]:
    """Loss and the validation key metric per epoch, from the run's metric history."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    def history(key: str) -> list:
        try:
            points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        except Exception:  # noqa: BLE001
            return []
        return [(s + 1, v) for s, v in points if v == v]

    key = _key_metric(task)
    losses = {k: history(k) for k in ("train_loss", "val_loss")}
    scores = {k: history(k) for k in (f"val_{key}", "val_f1_macro" if key == "accuracy" else "val_recall")}
    if not any(losses.values()) and not any(scores.values()):
        return None
    fig = Figure(figsize=(9, 3.2))
    ax_loss, ax_score = fig.subplots(1, 2)
    epochs = sorted({x for series in (losses, scores) for points in series.values() for x, _ in points})
    for ax, series, ylabel in ((ax_loss, losses, "loss"), (ax_score, scores, "validation")):
        for name, points in series.items():
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, "o-", label=name, markersize=4)
        ax.set_xlabel("epoch")
        ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if any(series.values()):
            ax.legend(fontsize=8)
    ax_score.set_ylim(-0.02, 1.02)
    fig.suptitle(f"{task}: training curves", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def training_section(found: Found, client) -> str:
    runs = found.all("train")
    if not runs:
        return _not_run("train", found.mode)
    out = []
    for r in runs:
        m, p = _metrics(r), _params(r)
        key = _key_metric(r.task)
        out.append(f"<h3>{esc(r.task)}</h3>" + _run_line(r))
        out.append(f"<p class=\"note\">epochs {esc(p.get('train.epochs', '?'))}, batch "
                   f"{esc(p.get('train.batch_size', '?'))}, {esc(p.get('train.optimizer', '?'))} lr "
                   f"{esc(p.get('train.lr', '?'))}, width {esc(p.get('train.width', '?'))}, on "
                   f"<code>{esc(p.get('train.dataset_url', p.get('train.data', '?')))}</code></p>")
        png = curves_png(client, r.id, r.task)
        out.append(image(png, f"training curves of {r.task}",
                         f"{r.task}: loss and validation {key} per epoch (metric history of run {r.id})")
                   if png else "<p class=\"note\">no per-epoch metrics logged</p>")
        rows = [(k, m[k]) for k in ("epochs_run", "train_loss", "val_loss", f"val_{key}", "val_f1_macro",
                                    "train_seconds", "samples_per_s") if k in m]
        if rows:
            out.append(table(["metric (last value)", "value"], rows))
    return "".join(out)


def _prefix(r: StageRun) -> str:
    if r.stage == "evaluate":
        return f"{_params(r).get('evaluate.split', 'test')}_"
    return "test_" if any(k.startswith("test_") for k in r.run.data.metrics) else "val_"


def _classes(r: StageRun, prefix: str, m: dict) -> list:
    found = [k[len(prefix + "precision_"):] for k in m if k.startswith(prefix + "precision_")]
    order = [c for c in (_params(r).get("train.classes") or "").split(",") if c]
    return [c for c in order if c in found] + sorted(c for c in found if c not in order)


def task_section(found: Found, art: Artifacts, task: str) -> str:
    from pipeline.tasks import get_task

    sources = [r for r in (found.get("train", task), found.get("evaluate", task)) if r is not None]
    detector = get_task(task).detector
    out = []
    for r in sources:
        out.append(_run_line(r))
    labels = [f"{r.stage} run ({_prefix(r).rstrip('_')} split)" for r in sources]
    keys = (("ap", "recall", "precision", "recall_at_p90", "lights", "loss") if detector
            else ("accuracy", "f1_macro", "loss"))
    rows = []
    for k in keys:
        values = [_metrics(r).get(_prefix(r) + k) for r in sources]
        if any(v is not None for v in values):
            rows.append([k] + ["-" if v is None else v for v in values])
    out.append(table(["metric"] + labels, rows) if rows else "<p class=\"note\">no test metrics logged</p>")
    shown = found.get("evaluate", task) or found.get("train", task)
    prefix, m = _prefix(shown), _metrics(shown)
    split = prefix.rstrip("_")
    if detector:
        out.append(f"<h3>By distance ({esc(shown.stage)} run, {esc(split)} split)</h3>")
        cols = ("precision", "recall", "ap", "recall_at_p90", "lights")
        out.append(table(["distance"] + list(cols),
                         [[b] + [m.get(f"{prefix}{c}" + ("" if b == "all" else f"_{b}"), "-") for c in cols]
                          for b in DISTANCE_ROWS]))
        patterns = (f"{prefix}pr_curve", f"{prefix}heatmaps")
    else:
        classes = _classes(shown, prefix, m)
        if classes:
            out.append(f"<h3>Per class ({esc(shown.stage)} run, {esc(split)} split)</h3>")
            out.append(table(["class", "precision", "recall", "f1"],
                             [[c] + [m.get(f"{prefix}{s}_{c}", "-") for s in ("precision", "recall", "f1")]
                              for c in classes]))
        patterns = (f"{prefix}confusion", f"{prefix}worst_mistakes")
    out.append(figures_html(art.figures(shown.id), patterns, run_label=f"{shown.stage} run {shown.id}"))
    return "".join(out)


def _layer_table(m: dict, layers: list, columns: dict) -> str:
    """One row per layer: ``columns`` maps a header to the metric name with ``{layer}`` in it."""
    rows = []
    for layer in layers:
        row = [layer] + [m.get(c.format(layer=layer), "-") for c in columns.values()]
        if any(v != "-" for v in row[1:]):
            rows.append(row)
    return table(["layer"] + list(columns), rows) if rows else ""


def _layer_pattern(template: str, layer: str) -> str:
    """A regular expression of the metric names ``template`` gives, its ``{layer}`` the one group."""
    return re.escape(template).replace(re.escape("{layer}"), f"({layer})")


def _layers(p: dict, key: str, m: dict, pattern: str) -> list:
    layers = [x for x in (p.get(key) or "").split(",") if x]
    if layers:
        return layers
    found = []
    for k in m:
        hit = re.fullmatch(pattern, k)
        if hit and hit.group(1) not in found:
            found.append(hit.group(1))
    return found


def correlate_columns() -> dict:
    """The correlate table: header -> the per-layer metric the stage logs (``{layer}`` left in)."""
    from pipeline.analysis import correlate as c

    at = {"layer": "{layer}"}
    return {"matched units' mean correlation": c.MATCHED.format(method="hungarian", **at),
            "vs a random net": c.BASELINE.format(base=c.RANDOM, method="hungarian", **at),
            "vs permuted images": c.BASELINE.format(base="permuted", method="hungarian", **at),
            "CKA": c.CKA, "CKA debiased": c.CKA_DEBIASED, "SVCCA": c.SVCCA,
            "units without a good match": c.UNMATCHED, "mutual information (bits)": c.MUTUAL_INFORMATION}


def correlate_section(found: Found, art: Artifacts) -> str:
    r = found.get("correlate")
    if r is None:
        return _not_run("correlate", found.mode)
    from pipeline.analysis import correlate as c

    m, p = _metrics(r), _params(r)
    layers = _layers(p, c.LAYERS_PARAM, m, _layer_pattern(c.CKA, "[^.]+"))
    out = [_run_line(r), f"<p>Nets compared: <code>{esc(p.get(c.MODELS_PARAM, '?'))}</code>; probe: "
                         f"{esc(fmt(m.get(c.PROBE_SAMPLES, '?')))} images of "
                         f"<code>{esc(p.get(c.PROBE_PARAM, '?'))}</code>.</p>"]
    out.append(_layer_table(m, layers, correlate_columns()))
    out.append("<p class=\"note\">Matched correlation: the mean correlation of each unit of net 0 with its one-to-one "
               "(Hungarian) partner in net 1, beside the same for a randomly initialised net and for permuted "
               "images.</p>")
    out.append(figures_html(art.figures(r.id), ("correlate_*_matrices", "correlate_matched_curves",
                                                "correlate_cka", "correlate_clusters")))
    return "".join(out)


def visualize_columns() -> dict:
    """The visualize table: header -> the per-layer metric the stage logs (``{layer}`` left in)."""
    from pipeline.analysis import visualize as v

    return {"median activation / best real image's": v.RATIO_MEDIAN, "objective gain": v.OBJECTIVE_GAIN}


def visualize_section(found: Found, art: Artifacts) -> str:
    r = found.get("visualize")
    if r is None:
        return _not_run("visualize", found.mode)
    from pipeline.analysis import visualize as v   # (imports torch: only when there is a run to show)

    m, p = _metrics(r), _params(r)
    layers = _layers(p, v.LAYERS_PARAM, m, _layer_pattern(v.RATIO_MEDIAN, ".+"))
    out = [_run_line(r), f"<p>Model <code>{esc(p.get(v.MODEL_PARAM, '?'))}</code>. Each row: a "
                         f"unit's synthetic image (activation reached as a multiple of its best real image's), "
                         f"its facets, and the real patches that excite it most.</p>"]
    out.append(_layer_table(m, layers, visualize_columns()))
    out.append(figures_html(art.figures(r.id), [f"visualize_{layer}" for layer in layers]
                            + ["visualize_filters", "visualize_dream"]))
    return "".join(out)


def transfer_section(found: Found, art: Artifacts) -> str:
    r = found.get("transfer")
    if r is None:
        return _not_run("transfer", found.mode)
    m, p = _metrics(r), _params(r)
    if p.get("transfer.mode") == "sizes":
        where = (f"test accuracy on <code>{esc(p.get('transfer.data', '?'))}</code>'s test split, from scratch "
                 f"and fine-tuned from <code>{esc(p.get('transfer.init_model_resolved', '?'))}</code> (copied "
                 f"{esc(p.get('transfer.init_layers', '?'))}; head {esc(p.get('transfer.init_head', '?'))})"
                 + (f"; the model as it is, before fine-tuning: {esc(fmt(m['sizes.as_is']))}"
                    if "sizes.as_is" in m else ""))
    else:
        where = "test accuracy on half B"
    out = [_run_line(r), f"<p>{esc(fmt(m.get('trainings', '?')))} trainings in "
                         f"{esc(fmt(m.get('grid_seconds', '?')))} s; {where}, mean over seeds.</p>"]
    grid: dict = {}
    base: dict = {}
    sizes: dict = {}
    for k, v in m.items():
        if not k.endswith(".mean"):
            continue
        parts = k[:-len(".mean")].split(".")
        if parts[0] == "sizes" and len(parts) == 3:
            sizes.setdefault(parts[1], {})[parts[2]] = v
        elif len(parts) == 3:
            grid.setdefault(parts[0], {}).setdefault(parts[1], {})[parts[2]] = v
        elif len(parts) == 2:
            base.setdefault(parts[0], {})[parts[1]] = v
    layers = [x for x in (p.get("transfer.layers_resolved") or "").split(",") if x] or sorted(
        {layer for split in grid.values() for per in split.values() for layer in per})
    for split in sorted(set(grid) | set(base)):
        out.append(f"<h3>Split {esc(split)}</h3>")
        if base.get(split):
            out.append(table(["base net", "accuracy"], sorted(base[split].items())))
        if grid.get(split):
            out.append(table(["variant"] + layers, [[v] + [per.get(layer, "-") for layer in layers]
                                                   for v, per in sorted(grid[split].items())]))
    if sizes:
        ns = sorted({n for per in sizes.values() for n in per}, key=lambda n: int(n[1:]) if n[1:].isdigit() else 0)
        out.append("<h3>Training-set size</h3>")
        out.append(table(["variant"] + [n[1:] + " images" for n in ns],
                         [[v] + [per.get(n, "-") for n in ns] for v, per in sorted(sizes.items())]))
    out.append(figures_html(art.figures(r.id), [f"transfer_{split}" for split in sorted(set(grid) | set(base))]
                            + ["transfer_sizes", "transfer_conv1"]))
    return "".join(out)


def audit_section(found: Found, art: Artifacts) -> str:
    """Each net's audit (one per task in a pipeline run), the registry gate's decision first."""
    runs = sorted(found.all("audit"), key=lambda r: _task_order(r.task))
    if not runs:
        return _not_run("audit", found.mode)
    return "".join((f"<h3>{esc(r.task or 'audit')}</h3>" if len(runs) > 1 else "") + _audit_one(r, art)
                   for r in runs)


def _audit_one(r: StageRun, art: Artifacts) -> str:
    from pipeline.analysis import audit as a

    m, p, tags = _metrics(r), _params(r), r.run.data.tags
    out = [_run_line(r), f"<p>Model <code>{esc(p.get(a.MODEL_PARAM, '?'))}</code> on "
                         f"<code>{esc(p.get(a.DATA_PARAM, '?'))}</code>.</p>"]
    gate = tags.get("gate.line")
    if gate:
        passed = tags.get("gate.passed") == "true"
        out.append(f"<h4>Registry gate</h4><p class=\"{'verdict' if passed else 'warn'}\">{esc(gate)}</p>")
    figs = art.figures(r.id)
    out.append("<h4>Does the net look at the object or at its context?</h4>")
    verdict = tags.get(a.CONTEXT_VERDICT)
    out.append(f"<p class=\"verdict\">{esc(verdict)}</p>" if verdict else "<p class=\"warn\">no context verdict</p>")
    text = art.read(r.id, a.CONTEXT_NOTES)
    notes = [line[2:] for line in (text or b"").decode("utf-8", "replace").splitlines() if line.startswith("- ")]
    if notes:
        out.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    context = sorted((k[len("context."):], v) for k, v in m.items() if k.startswith("context."))
    if context:
        out.append(table(["context metric", "value"], context))
    out.append(figures_html(figs, ("context_counterfactual", "context_layer_probes", "context_occlusion",
                                   "context_examples"), rest=False))
    out.append("<h4>Is the test set independent of train?</h4>")
    said = tags.get(a.INDEPENDENCE_VERDICT)
    out.append(f"<p class=\"verdict\">{esc(said)}</p>" if said else "<p class=\"warn\">no independence verdict</p>")
    independence = sorted((k[len("independence."):], v) for k, v in m.items() if k.startswith("independence."))
    if independence:
        out.append(table(["independence metric", "value"], independence))
    out.append(figures_html(figs, ("independence",), rest=False))
    rest = [n for n in figs if n not in ("context_counterfactual", "context_layer_probes", "context_occlusion",
                                         "context_examples", "independence")]
    if rest:
        out.append(figures_html({n: figs[n] for n in rest}))
    return "".join(out)


# ----------------------------------------------------------------------------------------------- page

def build(found: Found, client, art: Artifacts, conf: Config) -> Page:
    """Every section, in order; a stage that did not run gets its section saying so."""
    page = Page()
    page.add("dataset", "Dataset", dataset_section(found, art, conf.report.samples), found.get("ingest") is not None)
    page.add("augment", "Augmentation", augment_section(found, art), found.get("augment") is not None)
    page.add("training", "Training curves", training_section(found, client), bool(found.all("train")))
    tasks = sorted({r.task for r in found.runs if r.stage in PER_TASK and r.task}, key=_task_order)
    for task in tasks:
        page.add(f"test-{task}", f"Test results: {task}", task_section(found, art, task))
    if not tasks:
        page.add("test", "Test results", _not_run("evaluate", found.mode), False)
    page.add("correlate", "Correlation between nets of different seeds", correlate_section(found, art),
             found.get("correlate") is not None)
    page.add("visualize", "What the units respond to", visualize_section(found, art),
             found.get("visualize") is not None)
    page.add("transfer", "Transfer between halves of the data", transfer_section(found, art),
             found.get("transfer") is not None)
    page.add("audit", "Audits: context and independence", audit_section(found, art), found.get("audit") is not None)
    return page


def stage_table(found: Found) -> str:
    rows = []
    for r in found.runs:
        info = r.run.info
        commit = r.run.data.tags.get("mlflow.source.git.commit", "")
        rows.append(f"<tr><td>{esc(r.stage)}</td><td>{esc(r.task or '')}</td><td>{esc(info.run_name)}</td>"
                    f"<td><code>{esc(info.run_id)}</code></td><td class=\"status-{esc(info.status)}\">"
                    f"{esc(info.status)}</td><td>{esc(_when(info.start_time))}</td>"
                    f"<td class=\"num\">{esc(duration(info))}</td><td><code>{esc(commit[:12])}</code></td>"
                    f"<td>{esc('; '.join(x for x in (r.note, skip_note(r.run)) if x))}</td></tr>")
    ran = {r.stage for r in found.runs}
    tags = found.pipeline.data.tags if found.pipeline is not None else {}
    for stage in STAGE_NAMES:
        if stage not in ran:
            why = "; ".join(f"{k[len('pipeline.skipped.'):]} skipped: {v}" for k, v in sorted(tags.items())
                            if k.split(".")[2:3] == [stage])
            rows.append(f"<tr><td>{esc(stage)}</td><td></td><td colspan=\"7\" class=\"notrun\">"
                        f"{esc(why or 'not run')}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("stage", "task", "run", "run id", "status", "started", "duration",
                                             "commit", "note"))
    return f"<div class=\"wide\"><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


def skip_note(run) -> str:
    """What a stage run skipped for an empty split (the ``pipeline.skipped`` tag), or ""."""
    text = run.data.tags.get("pipeline.skipped")
    return f"skipped for an empty split: {text}" if text else ""


def render(page: Page, found: Found, title_id: str, experiment: str, tracking_uri: str, commit: str,
           started: Optional[int]) -> str:
    if found.mode == "pipeline":
        what = (f"the stage runs of pipeline run <code>{esc(title_id)}</code> "
                f"(<b>{esc(found.pipeline.info.run_name)}</b>)")
    else:
        what = ("the newest finished run of each stage in the experiment (the report ran on its own, "
                "outside a pipeline run)")
    toc = "".join(f"<li><a href=\"#{esc(s.anchor)}\">{esc(s.title)}</a>{'' if s.ran else ' (not run)'}</li>"
                  for s in page.sections)
    body = "".join(f"<section id=\"{esc(s.anchor)}\"><h2>{esc(s.title)}</h2>{s.body}</section>" for s in page.sections)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<link rel=\"icon\" href=\"data:,\">"
        f"<title>Inspection report: pipeline run {esc(title_id)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>Inspection report</h1>"
        f"<p class=\"meta\">Pipeline run <code>{esc(title_id)}</code> &middot; started {esc(_when(started))} "
        f"&middot; commit <code>{esc(commit or 'unknown')}</code> &middot; experiment <b>{esc(experiment)}</b> "
        f"at <code>{esc(tracking_uri)}</code> &middot; written {esc(now)}</p>"
        f"<p>What the pipeline made, to look at before a net is used: {what}.</p>"
        f"<h2 id=\"runs\">Stage runs</h2>{stage_table(found)}"
        f"<nav><h2>Contents</h2><ol>{toc}</ol></nav>{body}"
        "</main></body></html>\n")


def run(spark, conf: Config, tracker) -> dict:
    """The report stage (registered in pipeline.stages)."""
    import mlflow

    from pipeline.data import store

    del spark  # everything comes from MLflow (and sample rows read back with pyarrow)
    client = tracker.client
    active = mlflow.active_run()
    self_id = active.info.run_id if active else None
    found = find_runs(client, tracker.experiment_id, tracker.parent_id, {self_id} if self_id else set(), conf)
    title_id = (found.pipeline.info.run_id if found.mode == "pipeline"
                else tracker.parent_id or self_id or dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    head = found.pipeline if found.mode == "pipeline" else (
        client.get_run(tracker.parent_id or self_id) if (tracker.parent_id or self_id) else None)
    commit = head.data.tags.get("mlflow.source.git.commit", "") if head else ""
    started = head.info.start_time if head else None
    with tempfile.TemporaryDirectory(prefix="report-") as tmp:
        art = Artifacts(client, Path(tmp))
        page = build(found, client, art, conf)
        text = render(page, found, title_id, conf.mlflow.experiment, conf.mlflow.tracking_uri, commit, started)
        path = f"{conf.report.out_dir.rstrip('/')}/{title_id}.html"
        store.write_bytes(path, text.encode("utf-8"))
        if active:
            local = Path(tmp) / "index.html"
            local.write_text(text, encoding="utf-8")
            mlflow.log_artifact(str(local), ARTIFACT.rpartition("/")[0])
    not_run = [s.anchor for s in page.sections if not s.ran]
    print(f"report: {path} ({len(page.sections)} sections, {text.count('<img ')} images; not run: "
          f"{', '.join(not_run) or 'none'})", flush=True)
    return {"report_path": path, "sections": len(page.sections), "images": text.count("<img "),
            "stage_runs": len(found.runs), "not_run": ",".join(not_run) or "none",
            "artifact": ARTIFACT if active else "none"}
