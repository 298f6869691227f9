"""The report stage on a real (tiny) pipeline run: ingest, train, evaluate and every analysis stage (correlate,
visualize, transfer, audit) in one parent run, then the report.

The page must stand alone (every image an inline PNG that decodes, no script, no external URL), carry the runs'
own numbers (every number in a table of a stage's section is the MLflow value its row and column name), say
"not run" for the stage that did not run, be logged to the report's run, and open in a real headless browser
with no broken image and no console error.
"""
import base64
import html
import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.analysis import audit, correlate, transfer, visualize
from pipeline.data import store
from pipeline.report import (ARTIFACT, PNG_SIGNATURE, Artifacts, build, correlate_columns, find_runs, fmt, render,
                             visualize_columns)
from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker
from tests.browser import ARTIFACTS, require_chromium
from tests.conftest import TINY, make_conf

STAGES = ("ingest", "train", "evaluate", "correlate", "visualize", "transfer", "audit")
NOT_RAN = ("augment",)
# Every analysis stage at about the smallest settings that still run (tests/analysis sizes them so too): correlate
# compares the train stage's net with itself (no second training: tests/analysis/test_correlate.py trains two
# seeds), transfer trains 9 nets of 2 steps, the audit renders 4 counterfactual sequences and fits no layer probes.
ANALYSIS = ["correlate.layers=[conv1,conv5]", "correlate.mi_pairs=2", "correlate.clusters=2", "correlate.partitions=2",
            "visualize.units=2", "visualize.steps=8", "visualize.top_k=2", "visualize.facets=2",
            "visualize.facet_units=1", "visualize.dream_steps=2", "visualize.color_images=16",
            "visualize.partitions=2",
            "transfer.splits=[class]", "transfer.layers=[fc7]", "transfer.seeds=1", "transfer.steps=2",
            "transfer.epochs=1", "transfer.sizes=[8]", "transfer.image_hw=[32,32]", "transfer.batch_size=8",
            "transfer.partitions=2",
            "audit.examples=2", "audit.counterfactual.sequences=4", "audit.counterfactual.probe_sequences=0",
            "audit.counterfactual.resamples=200"]


@pytest.fixture(scope="module")
def pipeline_run(spark, tmp_path_factory):
    """One parent run with every stage but augment (lane_classifier, 1 epoch), then the report inside it."""
    work = tmp_path_factory.mktemp("report")
    conf = make_conf(work, *TINY, "train.task=lane_classifier", "train.epochs=1", *ANALYSIS)
    tracker = Tracker(conf)
    results = {}
    with tracker.pipeline_run("pipeline") as parent:
        for name in (*STAGES, "report"):
            at = conf
            if name == "correlate":
                uri = results["train"]["model_uri"]
                at = conf.model_copy(update={"correlate": conf.correlate.model_copy(update={"models": [uri, uri]})})
            results[name] = run_stage(get_stage(name), spark, at, tracker)
    return conf, parent.info.run_id, results


class Page(HTMLParser):
    """What a report holds: images, links, scripts, stylesheets, and the text of each <section id=...>."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.images, self.links, self.scripts, self.styles, self.sources = [], [], 0, 0, []
        self.sections: dict = {}
        self.section_images: dict = {}
        self.alts: dict = {}                # section -> the alt text of its images, in order
        self.figures: dict = {}             # section -> {alt text: src} of its images
        self.tables: dict = {}              # section -> [Table], in order
        self._section = self._table = self._row = self._cell = self._heading = None
        self._last_heading = ""
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._section = a.get("id")
            self.sections[self._section] = ""
            self.section_images[self._section] = 0
            self.alts[self._section], self.tables[self._section] = [], []
            self.figures[self._section] = {}
        if tag == "img":
            self.images.append(a.get("src", ""))
            if self._section:
                self.section_images[self._section] += 1
                self.alts[self._section].append(a.get("alt", ""))
                self.figures[self._section][a.get("alt", "")] = a.get("src", "")
        if self._section and tag in ("h2", "h3", "h4"):
            self._heading = ""
        if self._section and tag == "table":
            self._table = Table(self._last_heading, [], [])
        if self._table is not None and tag == "tr":
            self._row = []
        if self._row is not None and tag in ("th", "td"):
            self._cell = ""
        if tag == "a":
            self.links.append(a.get("href", ""))
        if tag == "script":
            self.scripts += 1
        if tag == "style":
            self.styles += 1
        for key in ("src", "href", "srcset", "poster", "data"):
            if key in a and tag not in ("a", "img"):
                self.sources.append(a[key])

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        if tag in ("h2", "h3", "h4") and self._heading is not None:
            self._last_heading, self._heading = self._heading.strip(), None
        if tag in ("th", "td") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            if not self._table.headers:
                self._table.headers[:] = self._row
            else:
                self._table.rows.append(self._row)
            self._row = None
        if tag == "table" and self._table is not None:
            self.tables[self._section].append(self._table)
            self._table = None

    def handle_data(self, data):
        if self._section:
            self.sections[self._section] += data + " "
        if self._heading is not None:
            self._heading += data
        if self._cell is not None:
            self._cell += data


@dataclass
class Table:
    heading: str                     # the last h2/h3/h4 before it in its section
    headers: list
    rows: list

    def column(self, header: str) -> list:
        return [row[self.headers.index(header)] for row in self.rows]


def read(path) -> tuple[str, Page]:
    text = Path(path).read_text(encoding="utf-8")
    return text, Page(text)


def words(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_the_report_is_one_self_contained_page_of_decodable_pngs(pipeline_run):
    conf, parent_id, results = pipeline_run
    report = results["report"]
    path = Path(conf.report.out_dir) / f"{parent_id}.html"
    assert report["report_path"] == str(path) and path.is_file()
    text, page = read(path)
    assert page.scripts == 0 and page.styles == 1                    # plain, readable without JavaScript
    assert len(page.images) == report["images"] >= 20                # samples, curves, confusion, the analyses'
    for src in page.images:
        assert src.startswith("data:image/png;base64,"), src[:60]
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(png)) as im:
            im.verify()
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and im.width > 50 and im.height > 50
    assert all(href.startswith("#") for href in page.links)           # the table of contents, nothing else
    assert all(src.startswith("data:") for src in page.sources)       # the favicon is inline too
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", text)
    assert "url(" not in text                                         # the stylesheet fetches nothing either


def test_sections_carry_the_runs_numbers_and_say_not_run(pipeline_run):
    conf, parent_id, results = pipeline_run
    _, page = read(results["report"]["report_path"])
    ingest, train, evaluate = results["ingest"], results["train"], results["evaluate"]
    assert list(page.sections) == ["dataset", "augment", "training", "test-lane_classifier", "correlate",
                                   "visualize", "transfer", "audit"]
    assert results["report"]["sections"] == len(page.sections)
    dataset = words(page.sections["dataset"])
    assert f"rows written {ingest['rows_written']} " in dataset and f"rows in {ingest['rows_in']} " in dataset
    assert f"rows quarantined {ingest['rows_quarantined']} " in dataset
    assert f"near-duplicates across splits {ingest['near_duplicates_across_splits']} " in dataset
    client = MlflowClient(conf.mlflow.tracking_uri)
    counts = client.get_run(ingest["run_id"]).data.metrics
    assert f"road_frames {fmt(counts['road_frames.train'])} {fmt(counts['road_frames.val'])} " \
           f"{fmt(counts['road_frames.test'])} " in dataset                              # rows per kind and split
    assert ingest["run_id"] in dataset and page.section_images["dataset"] >= 3            # road, tl frames, crops
    training = words(page.sections["training"])
    last_loss = client.get_metric_history(train["run_id"], "train_loss")[-1].value
    assert train["run_id"] in training and f"train_loss {fmt(last_loss)} " in training
    assert f"val_accuracy {fmt(train['val_accuracy'])} " in training
    assert page.section_images["training"] == 1                                            # the drawn curves
    test = words(page.sections["test-lane_classifier"])
    assert evaluate["run_id"] in test and train["run_id"] in test
    assert f"accuracy {fmt(train['test_accuracy'])} {fmt(evaluate['test_accuracy'])} " in test
    assert page.section_images["test-lane_classifier"] >= 1                                # the confusion matrix
    for name in NOT_RAN:
        assert "not run" in page.sections[name], name
        assert page.section_images[name] == 0, name
    for name in ("dataset", "training", "test-lane_classifier", "correlate", "visualize", "transfer", "audit"):
        assert "not run" not in page.sections[name], name
    assert set(results["report"]["not_run"].split(",")) == set(NOT_RAN)


def test_the_header_names_the_pipeline_run_commit_and_every_stage_run(pipeline_run):
    conf, parent_id, results = pipeline_run
    text, _ = read(results["report"]["report_path"])
    client = MlflowClient(conf.mlflow.tracking_uri)
    parent = client.get_run(parent_id)
    head = words(re.sub(r"<[^>]+>", " ", text.split("<body>")[1].split("<nav>")[0]))
    assert parent_id in head and parent.data.tags["mlflow.source.git.commit"] in head
    for name in STAGES:
        run = client.get_run(results[name]["run_id"])
        assert f"{name} " in head and run.info.run_id in head and run.info.run_name in head
    assert head.count("FINISHED") == len(STAGES)          # not the nets correlate and transfer train inside theirs
    for name in NOT_RAN:
        assert f"{name} not run" in head


def test_the_page_is_logged_to_the_report_run(pipeline_run, tmp_path):
    conf, parent_id, results = pipeline_run
    client = MlflowClient(conf.mlflow.tracking_uri)
    run = client.get_run(results["report"]["run_id"])
    assert run.data.tags["pipeline.stage"] == "report" and run.data.tags["mlflow.parentRunId"] == parent_id
    assert results["report"]["artifact"] == ARTIFACT
    assert [a.path for a in client.list_artifacts(run.info.run_id, "report")] == [ARTIFACT]
    logged = Path(client.download_artifacts(run.info.run_id, ARTIFACT, str(tmp_path)))
    assert logged.read_bytes() == Path(results["report"]["report_path"]).read_bytes()


def test_alone_the_report_shows_the_newest_finished_run_of_each_stage(spark, pipeline_run):
    conf, parent_id, results = pipeline_run
    alone = run_stage(get_stage("report"), spark, conf, Tracker(conf))   # `pipeline report`: its own parent run
    client = MlflowClient(conf.mlflow.tracking_uri)
    own_parent = client.get_run(alone["run_id"]).data.tags["mlflow.parentRunId"]
    assert own_parent != parent_id and alone["report_path"].endswith(f"/{own_parent}.html")
    text, page = read(alone["report_path"])
    assert "newest finished run of each stage" in text and f"pipeline run <code>{parent_id}" not in text
    for name in STAGES:
        assert results[name]["run_id"] in text
    assert results["report"]["run_id"] not in text                        # a report is not a stage it reports on
    assert set(alone["not_run"].split(",")) == set(NOT_RAN)
    assert len(page.images) == alone["images"] == results["report"]["images"]


def test_the_report_opens_in_a_headless_browser_with_nothing_broken(browser, pipeline_run, tmp_path):
    conf, parent_id, results = pipeline_run
    path = Path(results["report"]["report_path"])
    _, parsed = read(path)
    page = browser.new_page()
    page.goto(path.as_uri())
    images = page.images()
    assert len(images) == len(parsed.images) == results["report"]["images"]
    assert [i for i in images if i["broken"]] == []
    assert all(i["width"] > 50 and i["height"] > 50 for i in images)
    assert page.errors() == []                                            # console, exceptions, failed loads
    assert [u for u in page.requests() if u != path.as_uri() and not u.startswith("data:")] == []
    text = page.text()
    assert "Inspection report" in text and parent_id in text and "not run" in text
    assert page.evaluate("document.querySelectorAll('section h2').length") == results["report"]["sections"]
    png = page.screenshot(tmp_path / "report.png", ARTIFACTS / "report.png")
    with Image.open(io.BytesIO(png)) as shot:
        assert shot.width >= 1000 and shot.height > 2000                  # the whole page, not the first screen
        assert len(shot.convert("RGB").getcolors(1 << 24)) > 100         # drawn, not blank


def test_no_browser_skips_with_how_to_install_it_and_fails_on_ci(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    for var in ("CHROMIUM", "CHROME_BIN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true .*apt-get install chromium"):
        require_chromium()


def _check(table: Table, expected: dict) -> None:
    """``table`` has exactly the rows of ``expected`` ({first cell: [the metric each other column names]}), every
    cell the page's rendering of that metric's MLflow value; a metric the run does not have fails here."""
    assert table.rows, table
    assert {row[0]: row[1:] for row in table.rows} == {k: [fmt(v) for v in values] for k, values in expected.items()}


def _one(page: Page, section: str, *headers: str) -> Table:
    found = [t for t in page.tables[section] if t.headers[:len(headers)] == list(headers)]
    assert len(found) == 1, (section, headers, [t.headers for t in page.tables[section]])
    return found[0]


def test_every_number_in_the_stages_tables_is_the_mlflow_value_it_names(pipeline_run):
    """Each table cell, mapped back by its row and column to the metric the stage logged under that name (the names
    from the stage modules): a stage that renames a metric, or a report that reads another, shows another table."""
    conf, _, results = pipeline_run
    text, page = read(results["report"]["report_path"])
    client = MlflowClient(conf.mlflow.tracking_uri)
    run = {name: client.get_run(results[name]["run_id"]).data for name in STAGES}

    m = run["train"].metrics
    trained = _one(page, "training", "metric (last value)", "value")
    assert {"train_loss", "val_accuracy", "val_f1_macro"} <= set(trained.column("metric (last value)"))
    _check(trained, {k: [m[k]] for k in trained.column("metric (last value)")})
    ev = run["evaluate"].metrics
    test = _one(page, "test-lane_classifier", "metric", "train run (test split)", "evaluate run (test split)")
    assert {"accuracy", "f1_macro"} <= set(test.column("metric"))
    _check(test, {k: [m[f"test_{k}"], ev[f"test_{k}"]] for k in test.column("metric")})
    classes = [c for c in run["train"].params["train.classes"].split(",") if f"test_precision_{c}" in ev]
    assert classes                                                       # (a class with no test row has none)
    per_class = _one(page, "test-lane_classifier", "class", "precision", "recall", "f1")
    _check(per_class, {c: [ev[f"test_{s}_{c}"] for s in ("precision", "recall", "f1")] for c in classes})

    m, p = run["correlate"].metrics, run["correlate"].params
    layers = p[correlate.LAYERS_PARAM].split(",")
    assert layers == ["conv1", "conv5"]
    columns = {"matched units' mean correlation": correlate.MATCHED.format(method="hungarian", layer="{layer}"),
               "vs a random net": correlate.BASELINE.format(base="random", method="hungarian", layer="{layer}"),
               "vs permuted images": correlate.BASELINE.format(base="permuted", method="hungarian", layer="{layer}"),
               "CKA": correlate.CKA, "CKA debiased": correlate.CKA_DEBIASED, "SVCCA": correlate.SVCCA,
               "units without a good match": correlate.UNMATCHED,
               "mutual information (bits)": correlate.MUTUAL_INFORMATION}
    table = _one(page, "correlate", "layer")
    assert table.headers == ["layer", *columns]
    _check(table, {layer: [m[c.format(layer=layer)] for c in columns.values()] for layer in layers})
    for layer in layers:                                      # a net against itself: every unit its own partner
        for c in (correlate.MATCHED.format(method="hungarian", layer="{layer}"), correlate.CKA, correlate.SVCCA):
            assert m[c.format(layer=layer)] == pytest.approx(1, abs=1e-6), c
        assert m[correlate.UNMATCHED.format(layer=layer)] == 0
        assert m[correlate.BASELINE.format(base="random", method="hungarian", layer=layer)] < 0.9
    said = words(page.sections["correlate"])
    assert f"Nets compared: {p[correlate.MODELS_PARAM]} ; probe: {fmt(m[correlate.PROBE_SAMPLES])} images " in said

    m, p = run["visualize"].metrics, run["visualize"].params
    layers = p[visualize.LAYERS_PARAM].split(",")
    assert layers == ["conv5", "fc8"]                                      # the default: last conv layer and head
    columns = {"median activation / best real image's": visualize.RATIO_MEDIAN,
               "objective gain": visualize.OBJECTIVE_GAIN}
    table = _one(page, "visualize", "layer")
    assert table.headers == ["layer", *columns]
    _check(table, {layer: [m[c.format(layer=layer)] for c in columns.values()] for layer in layers})
    assert f"Model {p[visualize.MODEL_PARAM]} ." in words(page.sections["visualize"])

    m, p = run["transfer"].metrics, run["transfer"].params
    layers = p["transfer.layers_resolved"].split(",")
    assert layers == ["fc7"]
    shown = set()

    def named(*names):
        shown.update(names)
        return [m[n] for n in names]

    base = _one(page, "transfer", "base net", "accuracy")
    assert base.heading == "Split class"
    _check(base, {v: named(f"class.{v}.mean") for v in ("baseA_on_A", "baseB")})
    grid = _one(page, "transfer", "variant", *layers)
    assert grid.heading == "Split class"
    _check(grid, {transfer.metric_key(v): named(*(f"class.{transfer.metric_key(v)}.{n}.mean" for n in layers))
                  for v in transfer.GRID_VARIANTS})
    sizes = _one(page, "transfer", "variant", "8 images")
    assert sizes.heading == "Training-set size"
    _check(sizes, {v: named(f"sizes.{v}.n8.mean") for v in transfer.SIZE_VARIANTS})
    assert shown == {k for k in m if k.endswith(".mean")}                 # every mean the stage logged is shown
    assert f"{fmt(m['trainings'])} trainings in {fmt(m['grid_seconds'])} s" in words(page.sections["transfer"])

    m, tags = run["audit"].metrics, run["audit"].tags
    for prefix in ("context", "independence"):
        table = _one(page, "audit", f"{prefix} metric", "value")
        _check(table, {k[len(prefix) + 1:]: [v] for k, v in m.items() if k.startswith(f"{prefix}.")})
    assert {"occlusion.all_rows_accuracy", "counterfactual.p_lanes", "accuracy"} <= set(
        _one(page, "audit", "context metric").column("context metric"))
    assert {"whole", "val_test_gap"} <= set(_one(page, "audit", "independence metric").column("independence metric"))
    for tag in (audit.CONTEXT_VERDICT, audit.INDEPENDENCE_VERDICT):
        assert f'<p class="verdict">{html.escape(tags[tag])}</p>' in text, tag     # escaped: the verdicts quote
    assert html.escape(tags["gate.line"]) in text and tags["gate.line"].startswith("gate: road-lanes version ")
    p = run["audit"].params
    assert f"Model {p[audit.MODEL_PARAM]} on {p[audit.DATA_PARAM]} ." in words(page.sections["audit"])


def test_the_names_the_report_reads_are_the_ones_the_stages_logged(pipeline_run, tmp_path):
    """Every metric, param, tag and file the report's analysis sections look up exists in the stage's run, and every
    figure the stage logged is on the page, in the report's order."""
    conf, _, results = pipeline_run
    _, page = read(results["report"]["report_path"])
    client = MlflowClient(conf.mlflow.tracking_uri)
    run = {name: client.get_run(results[name]["run_id"]) for name in ("correlate", "visualize", "transfer", "audit")}
    for stage, module, columns in (("correlate", correlate, correlate_columns()),
                                   ("visualize", visualize, visualize_columns())):
        data = run[stage].data
        layers = data.params[module.LAYERS_PARAM].split(",")
        missing = [c.format(layer=layer) for c in columns.values() for layer in layers
                   if c.format(layer=layer) not in data.metrics]
        assert missing == [], stage
    assert {correlate.MODELS_PARAM, correlate.PROBE_PARAM} <= set(run["correlate"].data.params)
    assert correlate.PROBE_SAMPLES in run["correlate"].data.metrics
    assert visualize.MODEL_PARAM in run["visualize"].data.params
    assert {audit.MODEL_PARAM, audit.DATA_PARAM} <= set(run["audit"].data.params)
    assert {audit.CONTEXT_VERDICT, audit.INDEPENDENCE_VERDICT, "gate.line", "gate.passed"} <= set(run["audit"].data.tags)
    notes = Path(client.download_artifacts(run["audit"].info.run_id, audit.CONTEXT_NOTES, str(tmp_path)))
    notes = [line[2:] for line in notes.read_text().splitlines() if line.startswith("- ")]
    assert notes and all(words(n) in words(page.sections["audit"]) for n in notes)   # the notes under the verdict

    def logged(stage):
        return {Path(a.path).stem for a in client.list_artifacts(run[stage].info.run_id, "figures")}

    layers = run["correlate"].data.params[correlate.LAYERS_PARAM].split(",")
    order = {"correlate": [f"correlate_{layer}_matrices" for layer in layers]
             + ["correlate_matched_curves", "correlate_cka", "correlate_clusters"],
             "visualize": ["visualize_conv5", "visualize_fc8", "visualize_filters", "visualize_dream"],
             "transfer": ["transfer_class", "transfer_sizes", "transfer_conv1"],
             "audit": ["context_counterfactual", "context_occlusion", "context_examples", "independence"]}
    for stage, names in order.items():
        assert page.alts[stage] == names, stage                           # the counterfactual test leads the audit's
        assert logged(stage) == set(names), stage                         # every figure the stage logged is shown


def test_the_sample_grids_are_the_ones_the_ingest_run_logged(pipeline_run, tmp_path):
    """The dataset section's sample grid of each kind is the ingest run's logged ``figures/samples_<kind>.png``, byte
    for byte (not one drawn from whatever is at the dataset's URL when the page is built)."""
    conf, _, results = pipeline_run
    _, page = read(results["report"]["report_path"])
    client = MlflowClient(conf.mlflow.tracking_uri)
    run_id = results["ingest"]["run_id"]
    logged = sorted(Path(a.path).stem for a in client.list_artifacts(run_id, "figures")
                    if Path(a.path).name.startswith("samples_"))
    assert logged == ["samples_road_frames", "samples_tl_crops", "samples_tl_frames"]   # the synthetic source's kinds
    shown = {alt: src for alt, src in page.figures["dataset"].items() if alt.startswith("samples")}
    assert sorted(shown) == logged
    for name in logged:
        png = Path(client.download_artifacts(run_id, f"figures/{name}.png", str(tmp_path))).read_bytes()
        assert base64.b64decode(shown[name].split(",", 1)[1], validate=True) == png, name


def unwritten(text: str) -> str:
    """A page without the time it was written (the one thing a rebuild of it changes)."""
    out, n = re.subn(r" &middot; written [^<]*</p>", "</p>", text)
    assert n == 1
    return out


def test_a_page_rebuilt_with_the_dataset_gone_is_the_same_page(pipeline_run, tmp_path):
    """Everything on the page comes from the runs: rebuilt from MLflow while the ingested dataset is gone from its
    URL, it is the page the report wrote (but for the time it was written)."""
    conf, parent_id, results = pipeline_run
    text, _ = read(results["report"]["report_path"])
    client = MlflowClient(conf.mlflow.tracking_uri)
    parent = client.get_run(parent_id)
    url = results["ingest"]["dataset_url"]
    fs, root = store.filesystem(url)
    aside = str(tmp_path / "dataset")
    fs.mv(root, aside, recursive=True)
    try:
        assert not store.exists(url)
        found = find_runs(client, parent.info.experiment_id, parent_id, {results["report"]["run_id"]}, conf)
        page = build(found, client, Artifacts(client, tmp_path / "artifacts"))
        again = render(page, found, parent_id, conf.mlflow.experiment, conf.mlflow.tracking_uri,
                       parent.data.tags["mlflow.source.git.commit"], parent.info.start_time)
    finally:
        fs.mv(aside, root, recursive=True)           # the dataset back, for any test after this one
    assert store.exists(url)
    assert unwritten(again) == unwritten(text)


def test_the_detector_section_pivots_its_metrics_by_distance(tmp_path):
    """The detector's test section, from a train run that logs what the detector's train stage logs (names as in
    pipeline/train/evaluate.py; the real run above trains the lane classifier only)."""
    import matplotlib
    import mlflow

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = make_conf(tmp_path, "train.task=tl_detector")
    tracker = Tracker(conf)
    with tracker.pipeline_run("pipeline") as parent:
        with tracker.stage_run("train"):
            for epoch, (loss, ap) in enumerate(((0.9, 0.1), (0.5, 0.4))):
                mlflow.log_metrics({"train_loss": loss, "val_ap": ap}, step=epoch)
            mlflow.log_metrics({"test_ap": 0.375, "test_ap_far": 0.125, "test_recall_near": 0.875,
                                "test_lights_far": 7})
            for name in ("test_pr_curve", "test_heatmaps"):
                fig, ax = plt.subplots(figsize=(2, 1.5))
                ax.plot([0, 1], [1, 0])
                tracker.log_figure(fig, name)
        report = run_stage(get_stage("report"), None, conf, tracker)
    _, page = read(report["report_path"])
    assert report["report_path"].endswith(f"/{parent.info.run_id}.html")
    assert set(report["not_run"].split(",")) == {"dataset", "augment", "correlate", "visualize", "transfer", "audit"}
    assert page.section_images["training"] == 1 and page.alts["test-tl_detector"] == ["test_pr_curve",
                                                                                      "test_heatmaps"]
    detector = words(page.sections["test-tl_detector"])
    assert "ap 0.375 " in detector and "far - - 0.125 - 7 " in detector and "near - 0.875 " in detector
