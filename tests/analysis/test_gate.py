"""The registry's gate (pipeline.registry): a version of a task's registered model gets the alias only when its
audit passes, and the decision is on the version as tags.

The rule is checked case by case without Spark (each criterion failing alone); then on a real store: a tiny
`pipeline run` trains, registers and audits a lane net on unbiased data (it gets @audited, and
``models:/road-lanes@audited`` evaluates), and a net that by construction sees nothing but the context (trained on
frames whose markings are erased, the context tied to the class: test_counterfactual.py's) is refused by
`pipeline audit` for relying on context, the alias staying where it was.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import registry
from pipeline.cli import main
from tests.conftest import TINY, make_conf

pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/analysis/conftest.py)

RELIES = "Relies on context: p_context 0.91 [0.85, 0.96] exceeds p_lanes 0.05 [0.02, 0.09]."
LANES = "Looks at the lanes: p_lanes 0.80 [0.70, 0.88] exceeds p_context 0.10 [0.05, 0.16]."


def test_the_rule_fails_on_each_criterion_alone_and_passes_when_all_hold(tmp_path):
    conf = make_conf(tmp_path, "registry.gate.accuracy=0.6", "registry.gate.detector_recall=0.4")
    ok = registry.decide(conf, False, LANES, False, 0.7, False)
    assert ok.passed and ok.reasons == [] and "accuracy 0.700 >= 0.6" in ok.line()
    cases = {"context": (RELIES, True, 0.9, False, "relies on context"),
             "accuracy": (LANES, False, 0.59, False, "below the floor 0.6"),
             "unmeasured": (LANES, False, None, False, "could not be measured"),
             "independence": (LANES, False, 0.9, True, "independence audit flagged")}
    for name, (verdict, relies, score, flagged, why) in cases.items():
        gate = registry.decide(conf, False, verdict, relies, score, flagged, "Flagged: val - test 0.2")
        assert not gate.passed and len(gate.reasons) == 1 and why in gate.reasons[0], (name, gate.reasons)
    detector = registry.decide(conf, True, "Uses both.", False, 0.35, False)
    assert not detector.passed and "recall at precision 0.9 0.350 is below the floor 0.4" in detector.reasons[0]


@pytest.fixture(scope="module")
def gated(spark, tiny_data, tmp_path_factory):
    """A work folder of its own (its registry starts empty) holding a copy of the tiny dataset."""
    work = tmp_path_factory.mktemp("gate")
    shutil.copytree(Path(tiny_data().paths.data_url[len("file://"):]) / "synthetic", work / "data" / "synthetic")
    return work


AUDIT = ["audit.counterfactual.sequences=24", "audit.counterfactual.frames=1", "audit.counterfactual.probe_sequences=0",
         "audit.counterfactual.resamples=500"]


def _version(client, name, alias):
    return str(client.get_model_version_by_alias(name, alias).version)


def test_a_pipeline_run_registers_audits_and_aliases_a_net_that_passes(gated, capsys):
    work = gated
    args = [f"paths.work_dir={work}", *TINY, *AUDIT, "train.epochs=1", "run.tasks=[lane_classifier]",
            "registry.gate.accuracy=0.0"]
    assert main(["run", "--only", "train,audit", *args]) == 0
    out = capsys.readouterr().out
    conf = make_conf(work)
    client = MlflowClient(conf.mlflow.tracking_uri)
    line = next(x for x in out.splitlines() if x.startswith("gate: "))
    print(line)
    assert line.startswith("gate: road-lanes version 1 is now road-lanes@audited (passed: context verdict: "), line
    assert _version(client, "road-lanes", "audited") == "1"
    tags = client.get_model_version("road-lanes", "1").tags
    assert tags["gate.passed"] == "true" and tags["gate.reasons"] == ""
    assert "relies on context" not in tags["audit.context_verdict"].lower() and tags["audit.independence_verdict"]
    audit = client.get_run(tags["gate.audit_run"])
    assert audit.data.tags["pipeline.stage"] == "audit" and audit.data.tags["gate.passed"] == "true"
    # evaluate.model_uri=models:/road-lanes@audited names that net
    assert main(["evaluate", f"paths.work_dir={work}", *TINY, "evaluate.model_uri=models:/road-lanes@audited"]) == 0



def test_a_net_that_relies_on_context_is_refused_and_the_alias_stays(gated, counterfactual_nets, capsys):
    """The counterfactual test's lanes-erased net: trained on frames with no markings painted, it can only have
    learned the context (tests/analysis/test_counterfactual.py)."""
    from pipeline.data.synth import LANE_CLASSES
    from pipeline.models import stored
    from pipeline.tracking import Tracker

    work = gated
    conf = make_conf(work, *TINY)
    client = MlflowClient(conf.mlflow.tracking_uri)
    before = _version(client, "road-lanes", "audited")
    tracker = Tracker(conf)
    with tracker.stage_run("train") as run:
        logged = stored.log_model(counterfactual_nets["lanes erased"], stored.card("lane_classifier", LANE_CLASSES, (64, 64), 0.25,
                                                                  "road_frames"), "lane_classifier", requirements=[])
        version = registry.register(conf, "lane_classifier", logged.model_id, run.info.run_id).version
    assert main(["audit", f"paths.work_dir={work}", *TINY, *AUDIT, "registry.gate.accuracy=0.0",
                 f"audit.model_uri=models:/road-lanes/{version}"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("gate: "))
    print(line)
    assert line.startswith(f"gate: road-lanes version {version} not given @audited: failed: it relies on context")
    assert line.endswith(f"road-lanes@audited stays on version {before}")
    assert _version(client, "road-lanes", "audited") == before
    tags = client.get_model_version("road-lanes", version).tags
    assert tags["gate.passed"] == "false" and tags["gate.reasons"].startswith("it relies on context")


def test_the_detector_gate_scores_the_audited_split_as_its_test_pass_did(gated, capsys):
    """The detector's gate score is its recall at precision 0.9 on the audited split, from the independence audit's
    own pass over it: the same number the train stage's test pass logged (same split, same scorer)."""
    work = gated
    args = [f"paths.work_dir={work}", *TINY, "train.epochs=1", "run.tasks=[tl_detector]", "train.task=tl_detector",
            "registry.gate.detector_recall=0.0"]
    assert main(["run", "--only", "train,audit", *args]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("gate: "))
    client = MlflowClient(make_conf(work).mlflow.tracking_uri)
    version = max(client.search_model_versions("name='road-light-detector'"), key=lambda v: int(v.version))
    audit = client.get_run(version.tags["gate.audit_run"]).data.metrics
    trained = client.get_run(version.run_id).data.metrics["test_recall_at_p90"]
    assert audit["independence.whole_recall_at_p90"] == pytest.approx(trained, abs=1e-9)
    assert f"recall at precision 0.9 {trained:.3f}" in line or " failed: " in line, line
