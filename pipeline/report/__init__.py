"""The report stage: one self-contained HTML page per pipeline run, to look at the nets before they are used.

Everything on the page comes from MLflow: the stage runs of this pipeline run (the children of its parent run;
a stage ``pipeline run`` skipped as up to date is shown from the run its marker names), or, when the report runs
alone (``pipeline report``), the newest finished run of each stage in the experiment (per task for the stages
the registry runs per task). The stages shown are the registry's (:mod:`pipeline.stages`), all but the report.
Sections, in order: the dataset (with the sample grids the ingest run logged, so a page rebuilt later shows
that run's rows whatever is at the dataset's URL now), augmentation, training curves (drawn here from the
metric histories), test results per task, correlation between seeds, unit visualizations, transfer, the
audits. A stage that did not run says so.

The page needs nothing but itself: every image is a base64 ``data:`` URI, the stylesheet is inline, there is
no script and no external URL. It is written to ``<report.out_dir>/<pipeline run id>.html`` and logged to the
report's own run as ``report/index.html``.

Modules, each importing only those above it (never this package's ``__init__``): :mod:`~pipeline.report.names`
(the names the stages log, imported from their writers), :mod:`~pipeline.report.runs` (which stage runs),
:mod:`~pipeline.report.artifacts` (their files, downloaded once), :mod:`~pipeline.report.html` (escaping,
tables, inline images, the stylesheet), :mod:`~pipeline.report.plots` (what the report draws itself), the
sections (:mod:`~pipeline.report.dataset`, :mod:`~pipeline.report.training`, :mod:`~pipeline.report.analysis`)
and :mod:`~pipeline.report.page` (the page and the stage's ``run``).
"""
from pipeline.report.analysis import correlate_columns, transfer_section, visualize_columns
from pipeline.report.artifacts import Artifacts
from pipeline.report.html import PNG_SIGNATURE, fmt
from pipeline.report.page import ARTIFACT, build, render, run
from pipeline.report.runs import Found, StageRun, find_runs

__all__ = ["ARTIFACT", "PNG_SIGNATURE", "Artifacts", "Found", "StageRun", "build", "correlate_columns",
           "find_runs", "fmt", "render", "run", "transfer_section", "visualize_columns"]
