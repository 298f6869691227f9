"""The page: its sections in order, the stage-run table, the HTML document, and the report stage itself."""
from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

from pipeline.config import Config
import pipeline.report.names as names
from pipeline.report.analysis import audit_section, correlate_section, transfer_section, visualize_section
from pipeline.report.artifacts import Artifacts
from pipeline.report.dataset import augment_section, dataset_section
from pipeline.report.html import CSS, duration, esc, not_run, when, wide_table
from pipeline.report.runs import PER_TASK, STAGE_NAMES, Found, StageRun, find_runs, task_order
from pipeline.report.training import task_section, training_section

ARTIFACT = "report/index.html"
STAGE_COLUMNS = ("stage", "task", "run", "run id", "status", "started", "duration", "commit", "note")


@dataclass
class Section:
    """One ``<section>`` of the page (``ran``: False when its stage did not run)."""
    anchor: str
    title: str
    body: str
    ran: bool = True


@dataclass
class Page:
    """The sections, in order."""
    sections: list = field(default_factory=list)

    def add(self, anchor: str, title: str, body: str, ran: bool = True) -> None:
        self.sections.append(Section(anchor, title, body, ran))


def build(found: Found, client, art: Artifacts) -> Page:
    """Every section, in order; a stage that did not run gets its section saying so."""
    page = Page()
    page.add("dataset", "Dataset", dataset_section(found, art), found.get("ingest") is not None)
    page.add("augment", "Augmentation", augment_section(found, art), found.get("augment") is not None)
    page.add("training", "Training curves", training_section(found, client), bool(found.all("train")))
    tasks = sorted({r.task for r in found.runs if r.stage in PER_TASK and r.task}, key=task_order)
    for task in tasks:
        page.add(f"test-{task}", f"Test results: {task}", task_section(found, art, task))
    if not tasks:
        page.add("test", "Test results", not_run("evaluate", found.mode), False)
    page.add("correlate", "Correlation between nets of different seeds", correlate_section(found, art),
             found.get("correlate") is not None)
    page.add("visualize", "What the units respond to", visualize_section(found, art),
             found.get("visualize") is not None)
    page.add("transfer", "Transfer between halves of the data", transfer_section(found, art),
             found.get("transfer") is not None)
    page.add("audit", "Audits: context and independence", audit_section(found, art), found.get("audit") is not None)
    return page


# ------------------------------------------------------------------------------------ stage runs table

def skip_note(run) -> str:
    """What a stage run skipped for an empty split (the ``pipeline.skipped`` tag), or ""."""
    text = run.data.tags.get(names.SKIPPED_TAG)
    return f"skipped for an empty split: {text}" if text else ""


def run_row(r: StageRun) -> str:
    """A stage run's row: stage, task, name, id, status, start, duration, commit and notes."""
    info = r.run.info
    commit = r.tags.get(MLFLOW_GIT_COMMIT, "")
    return (f"<tr><td>{esc(r.stage)}</td><td>{esc(r.task or '')}</td><td>{esc(info.run_name)}</td>"
            f"<td><code>{esc(info.run_id)}</code></td><td class=\"status-{esc(info.status)}\">"
            f"{esc(info.status)}</td><td>{esc(when(info.start_time))}</td>"
            f"<td class=\"num\">{esc(duration(info))}</td><td><code>{esc(commit[:12])}</code></td>"
            f"<td>{esc('; '.join(x for x in (r.note, skip_note(r.run)) if x))}</td></tr>")


def not_run_row(stage: str, parent_tags: dict) -> str:
    """A stage with no run: why, when ``pipeline run`` tagged its parent run with a skip of its jobs."""
    skipped = names.PARENT_SKIPPED_TAG.format(job="")
    why = "; ".join(f"{k[len(skipped):]} skipped: {v}" for k, v in sorted(parent_tags.items())
                    if k.startswith(skipped) and k[len(skipped):].split(".")[0] == stage)
    return (f"<tr><td>{esc(stage)}</td><td></td><td colspan=\"7\" class=\"notrun\">"
            f"{esc(why or 'not run')}</td></tr>")


def stage_table(found: Found) -> str:
    """Every stage run shown, then a row for each stage of the registry with none."""
    ran = {r.stage for r in found.runs}
    tags = found.pipeline.data.tags if found.pipeline is not None else {}
    rows = [run_row(r) for r in found.runs] + [not_run_row(s, tags) for s in STAGE_NAMES if s not in ran]
    return wide_table("".join(f"<th>{h}</th>" for h in STAGE_COLUMNS), rows)


# ------------------------------------------------------------------------------------------- document

def render(page: Page, found: Found, title_id: str, experiment: str, tracking_uri: str, commit: str,
           started: Optional[int]) -> str:
    """The whole HTML document: head, what it shows, the stage-run table, the contents, the sections."""
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
        f"<p class=\"meta\">Pipeline run <code>{esc(title_id)}</code> &middot; started {esc(when(started))} "
        f"&middot; commit <code>{esc(commit or 'unknown')}</code> &middot; experiment <b>{esc(experiment)}</b> "
        f"at <code>{esc(tracking_uri)}</code> &middot; written {esc(now)}</p>"
        f"<p>What the pipeline made, to look at before a net is used: {shows(found, title_id)}.</p>"
        f"<h2 id=\"runs\">Stage runs</h2>{stage_table(found)}"
        f"<nav><h2>Contents</h2><ol>{toc}</ol></nav>{body}"
        "</main></body></html>\n")


def shows(found: Found, title_id: str) -> str:
    """Which runs the page shows, in words (HTML)."""
    if found.mode == "pipeline":
        return (f"the stage runs of pipeline run <code>{esc(title_id)}</code> "
                f"(<b>{esc(found.pipeline.info.run_name)}</b>)")
    return ("the newest finished run of each stage in the experiment (the report ran on its own, "
            "outside a pipeline run)")


# ---------------------------------------------------------------------------------------------- stage

@dataclass
class Heading:
    """What the page is titled with: the pipeline run's id (or the report's own), its commit and start."""
    title_id: str
    commit: str = ""
    started: Optional[int] = None


def heading(client, found: Found, parent_id: Optional[str], self_id: Optional[str]) -> Heading:
    """The pipeline run shown, else the report's own parent run (or its own run), else the time now."""
    if found.mode == "pipeline":
        head = found.pipeline
        return Heading(head.info.run_id, head.data.tags.get(MLFLOW_GIT_COMMIT, ""), head.info.start_time)
    own = parent_id or self_id
    if not own:
        return Heading(dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    head = client.get_run(own)
    return Heading(own, head.data.tags.get(MLFLOW_GIT_COMMIT, ""), head.info.start_time)


def write(conf: Config, title_id: str, text: str, tmp: Path, log: bool) -> str:
    """The page at ``<report.out_dir>/<title_id>.html``, and (``log``) as the active run's ``ARTIFACT``."""
    import mlflow

    from pipeline.data import store

    path = f"{conf.report.out_dir.rstrip('/')}/{title_id}.html"
    store.write_bytes(path, text.encode("utf-8"))
    if log:
        local = tmp / Path(ARTIFACT).name
        local.write_text(text, encoding="utf-8")
        mlflow.log_artifact(str(local), ARTIFACT.rpartition("/")[0])
    return path


def run(spark, conf: Config, tracker) -> dict:
    """The report stage (registered in pipeline.stages)."""
    import mlflow

    del spark  # everything comes from MLflow
    client = tracker.client
    active = mlflow.active_run()
    self_id = active.info.run_id if active else None
    found = find_runs(client, tracker.experiment_id, tracker.parent_id, {self_id} if self_id else set(), conf)
    head = heading(client, found, tracker.parent_id, self_id)
    with tempfile.TemporaryDirectory(prefix="report-") as tmp:
        page = build(found, client, Artifacts(client, Path(tmp)))
        text = render(page, found, head.title_id, conf.mlflow.experiment, conf.mlflow.tracking_uri, head.commit,
                      head.started)
        path = write(conf, head.title_id, text, Path(tmp), active is not None)
    absent = [s.anchor for s in page.sections if not s.ran]
    print(f"report: {path} ({len(page.sections)} sections, {text.count('<img ')} images; not run: "
          f"{', '.join(absent) or 'none'})", flush=True)
    return {"report_path": path, "sections": len(page.sections), "images": text.count("<img "),
            "stage_runs": len(found.runs), "not_run": ",".join(absent) or "none",
            "artifact": ARTIFACT if active else "none"}
