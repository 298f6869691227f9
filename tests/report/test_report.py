"""The report stage on a real (tiny) pipeline run: ingest, train and evaluate in one parent run, then the report.

The page must stand alone (every image an inline PNG that decodes, no script, no external URL), carry the runs'
own numbers, say "not run" for the stages that did not run, be logged to the report's run, and open in a real
headless browser with no broken image and no console error.
"""
import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.report import ARTIFACT, PNG_SIGNATURE, fmt
from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker
from tests.browser import ARTIFACTS, require_chromium
from tests.conftest import TINY, make_conf

NOT_RAN = ("augment", "correlate", "visualize", "transfer", "audit")


@pytest.fixture(scope="module")
def pipeline_run(spark, tmp_path_factory):
    """One parent run with ingest, train (1 epoch) and evaluate of lane_classifier, then the report inside it."""
    work = tmp_path_factory.mktemp("report")
    conf = make_conf(work, *TINY, "train.task=lane_classifier", "train.epochs=1")
    tracker = Tracker(conf)
    with tracker.pipeline_run("pipeline") as parent:
        results = {name: run_stage(get_stage(name), spark, conf, tracker)
                   for name in ("ingest", "train", "evaluate", "report")}
    return conf, parent.info.run_id, results


class Page(HTMLParser):
    """What a report holds: images, links, scripts, stylesheets, and the text of each <section id=...>."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.images, self.links, self.scripts, self.styles, self.sources = [], [], 0, 0, []
        self.sections: dict = {}
        self.section_images: dict = {}
        self._section = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._section = a.get("id")
            self.sections[self._section] = ""
            self.section_images[self._section] = 0
        if tag == "img":
            self.images.append(a.get("src", ""))
            if self._section:
                self.section_images[self._section] += 1
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

    def handle_data(self, data):
        if self._section:
            self.sections[self._section] += data + " "


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
    assert len(page.images) == report["images"] >= 6                 # 3 sample grids, curves, confusion, mistakes
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
    for name in ("dataset", "training", "test-lane_classifier"):
        assert "not run" not in page.sections[name], name
    assert set(results["report"]["not_run"].split(",")) == set(NOT_RAN)


def test_the_header_names_the_pipeline_run_commit_and_every_stage_run(pipeline_run):
    conf, parent_id, results = pipeline_run
    text, _ = read(results["report"]["report_path"])
    client = MlflowClient(conf.mlflow.tracking_uri)
    parent = client.get_run(parent_id)
    head = words(re.sub(r"<[^>]+>", " ", text.split("<body>")[1].split("<nav>")[0]))
    assert parent_id in head and parent.data.tags["mlflow.source.git.commit"] in head
    for name in ("ingest", "train", "evaluate"):
        run = client.get_run(results[name]["run_id"])
        assert f"{name} " in head and run.info.run_id in head and run.info.run_name in head
    assert head.count("FINISHED") == 3
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
    for name in ("ingest", "train", "evaluate"):
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


def test_analysis_sections_show_their_verdicts_tables_and_figures(tmp_path):
    """The sections of the stages too costly to run here, from runs that log what those stages log (names as in
    pipeline/analysis and pipeline/train): verdicts prominent and escaped, tables pivoted, every figure shown."""
    import matplotlib
    import mlflow

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def figure(tracker, name):
        fig, ax = plt.subplots(figsize=(2, 1.5))
        ax.plot([0, 1], [1, 0])
        tracker.log_figure(fig, name)

    conf = make_conf(tmp_path, "train.task=tl_detector")
    tracker = Tracker(conf)
    verdict = "relies on <context> & not the object"
    with tracker.pipeline_run("pipeline") as parent:
        with tracker.stage_run("train"):
            for epoch, (loss, ap) in enumerate(((0.9, 0.1), (0.5, 0.4))):
                mlflow.log_metrics({"train_loss": loss, "val_ap": ap}, step=epoch)
            mlflow.log_metrics({"test_ap": 0.375, "test_ap_far": 0.125, "test_recall_near": 0.875,
                                "test_lights_far": 7})
            for name in ("test_pr_curve", "test_heatmaps"):
                figure(tracker, name)
        with tracker.stage_run("correlate"):
            mlflow.log_params({"correlate.layers_resolved": "conv1,conv2"})
            mlflow.log_metrics({"cka.conv1": 0.9125, "corr_matched_mean.hungarian.conv2": 0.6875})
            for name in ("correlate_conv1_matrices", "correlate_cka"):
                figure(tracker, name)
        with tracker.stage_run("visualize"):
            mlflow.log_params({"visualize.layers_resolved": "conv5,fc8"})
            mlflow.log_metrics({"ratio_median.fc8": 2.5})
            for name in ("visualize_conv5", "visualize_fc8", "visualize_filters"):
                figure(tracker, name)
        with tracker.stage_run("transfer"):
            mlflow.log_params({"transfer.layers_resolved": "conv1,fc7"})
            mlflow.log_metrics({"class.baseB.mean": 0.8125, "class.AnB.conv1.mean": 0.5, "class.AnB.fc7.mean": 0.25,
                                "sizes.pretrained.n100.mean": 0.625})
            for name in ("transfer_class", "transfer_sizes", "transfer_conv1"):
                figure(tracker, name)
        with tracker.stage_run("audit"):
            mlflow.set_tags({"audit.context_verdict": verdict, "audit.independence_verdict": "independent"})
            mlflow.log_metrics({"context.occlusion.context_drop": 0.4375, "independence.whole": 0.5625})
            for name in ("context_occlusion", "context_examples", "independence", "context_counterfactual"):
                figure(tracker, name)
        report = run_stage(get_stage("report"), None, conf, tracker)
    text, page = read(report["report_path"])
    assert report["report_path"].endswith(f"/{parent.info.run_id}.html")
    assert set(report["not_run"].split(",")) == {"dataset", "augment"}         # no ingest, no augment here
    assert "not run" in page.sections["dataset"] and "not run" in page.sections["augment"]
    for name in ("training", "test-tl_detector", "correlate", "visualize", "transfer", "audit"):
        assert "not run" not in page.sections[name], name
    assert {k: page.section_images[k] for k in ("training", "test-tl_detector", "correlate", "visualize",
                                                 "transfer", "audit")} == {
        "training": 1, "test-tl_detector": 2, "correlate": 2, "visualize": 3, "transfer": 3, "audit": 4}
    assert f'<p class="verdict">relies on &lt;context&gt; &amp; not the object</p>' in text and verdict not in text
    assert '<p class="verdict">independent</p>' in text
    detector = words(page.sections["test-tl_detector"])
    assert "ap 0.375 " in detector and "far - - 0.125 - 7 " in detector and "near - 0.875 " in detector
    assert "conv1 - - - 0.9125 " in words(page.sections["correlate"])
    assert "conv2 0.6875 " in words(page.sections["correlate"])
    assert "fc8 2.5 " in words(page.sections["visualize"])
    transfer = words(page.sections["transfer"])
    assert "baseB 0.8125 " in transfer and "AnB 0.5 0.25 " in transfer and "pretrained 0.625 " in transfer
    audit = words(page.sections["audit"])
    assert "occlusion.context_drop 0.4375 " in audit and "whole 0.5625 " in audit
    # the counterfactual test leads the audit's figures (logged last here), occlusion after it
    assert re.findall(r'alt="(context_\w+)"', text) == ["context_counterfactual", "context_occlusion",
                                                          "context_examples"]
    order = re.findall(r'alt="(transfer_\w+)"', text)
    assert order == ["transfer_class", "transfer_sizes", "transfer_conv1"]     # curves, size curve, filters
