"""The audit stage on a trained net: the context audit's numbers agree with evaluation, and it says what it found."""
import pytest
from mlflow.tracking import MlflowClient

from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker
from pipeline.models.lookup import ModelNotFound


# Its own experiment in the shared tiny store: correlate (same store) reuses any finished lane net of seed 0 it
# finds in its experiment, and these would be found.
OWN = "mlflow.experiment=audit-tests"


def stage(spark, conf, name):
    return run_stage(get_stage(name), spark, conf, Tracker(conf))


@pytest.fixture(scope="module")
def audited(spark, tiny_data):
    conf = tiny_data(OWN, "train.task=lane_classifier", "train.epochs=1", "audit.examples=3")
    trained = stage(spark, conf, "train")
    conf = tiny_data(OWN, "train.task=lane_classifier", "train.epochs=1", "audit.examples=3",
                     "audit.counterfactual.sequences=12", "audit.counterfactual.probe_sequences=32",
                     f"audit.model_uri={trained['model_uri']}")
    return conf, trained, stage(spark, conf, "audit")


def test_context_audit_of_a_trained_net_agrees_with_its_test_accuracy(audited):
    conf, trained, results = audited
    client = MlflowClient(conf.mlflow.tracking_uri)
    run = client.get_run(results["run_id"])
    m = run.data.metrics
    # every labelled test row, intact: the same accuracy the train stage measured on the test split
    assert m["context.occlusion.all_rows_accuracy"] == pytest.approx(trained["test_accuracy"])
    assert m["context.rows"] + m["context.rows_without_object"] > 0
    for key in ("context.occlusion.object_filled_accuracy", "context.occlusion.context_filled_accuracy",
                "context.attribution.object_share", "context.attribution.area_share"):
        assert 0.0 <= m[key] <= 1.0, key
    assert 0 < m["context.attribution.area_share"] < 0.5          # lane markings are a small part of a frame
    assert run.data.tags["audit.context_verdict"] == results["context.verdict"] and results["context.verdict"]
    assert m["context.relies_on_context"] == float(results["context.relies_on_context"])
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"figures/context_occlusion.png", "figures/context_examples.png"} <= figures
    assert run.data.params["audit.model_uri_resolved"] == trained["model_uri"]
    # independence: the whole test split is the same accuracy again; rows with a twin in train are set apart
    assert m["independence.whole"] == pytest.approx(trained["test_accuracy"])
    assert m["independence.rows"] == m["context.rows"] + m["context.rows_without_object"]
    assert 0 <= m["independence.near_duplicate_rows"] <= m["independence.rows"]
    assert "figures/independence.png" in figures and run.data.tags["audit.independence_verdict"]
    assert "independence.val_frame_split" not in m                # audit.frame_split is off by default
    # the counterfactual test ran on 12 fresh sequences x 2 frames x 2 twins, and its verdict leads
    assert m["context.counterfactual.sequences"] == 12 and m["context.counterfactual.twins"] == 48
    for name in ("p_lanes", "p_context", "aligned_accuracy"):
        key = f"context.counterfactual.{name}"
        assert 0 <= m[f"{key}_lo"] <= m[key] <= m[f"{key}_hi"] <= 1, key
    words = run.data.tags["audit.counterfactual_verdict"]
    assert words in ("relies on context", "looks at the lanes", "uses both", "inconclusive")
    assert results["context.verdict"].startswith(words + ": on 48 counterfactual twins of 12")
    assert "Occlusion (secondary" in results["context.verdict"]
    # the registry's gate decided on it by its rule (registry.gate.accuracy 0.5), on the audit run
    passes = (m["context.accuracy"] >= 0.5 and not results["context.relies_on_context"]
              and not m["independence.val_test_gap_flagged"])
    assert run.data.tags["gate.passed"] == str(passes).lower() and run.data.tags["gate.line"].startswith("gate: ")
    assert m["context.relies_on_context"] == float(words == "relies on context")
    assert "figures/context_counterfactual.png" in figures
    # linear probes of every layer: 32 sequences, 8 held out, 2 frames each
    assert "figures/context_layer_probes.png" in figures
    for layer in ("conv1", "fc7", "fc8"):
        for target in ("lane_class", "time_of_day", "scenery"):
            key = f"context.probe.{target}.{layer}"
            assert 0 <= m[f"{key}_lo"] <= m[key] <= m[f"{key}_hi"] <= 1, key
    # the backgrounds protocol on the same rows
    for v in ("original", "only_fg", "only_bg", "mixed_same", "mixed_rand"):
        key = f"context.backgrounds.{v}_accuracy"
        if m.get(f"context.backgrounds.{v}_rows") == 0:     # 6 test sequences: a class may have no partner
            assert key not in m, key
            continue
        assert 0 <= m[f"{key}_lo"] <= m[key] <= m[f"{key}_hi"] <= 1, key
    assert 0 < m["context.backgrounds.rows"] <= m["context.rows"] - m["context.rows_without_object"]  # with lanes
    assert ("context.backgrounds.bg_gap_lo" in m) == (m["context.backgrounds.paired_rows"] > 0)
    # val - test with its interval; the verdict says whether it excludes 0 (a group split of one population)
    assert m["independence.val_test_gap_lo"] <= m["independence.val_test_gap"] <= m["independence.val_test_gap_hi"]
    flagged = m["independence.val_test_gap_lo"] > 0 or m["independence.val_test_gap_hi"] < 0
    assert m["independence.val_test_gap_flagged"] == float(flagged)
    assert ("Flagged: val accuracy - test accuracy" in results["independence.verdict"]) == flagged
    # the split's accuracy again, now with its interval over sequences
    assert m["context.accuracy"] == pytest.approx(trained["test_accuracy"])
    assert m["context.accuracy_lo"] <= m["context.accuracy"] <= m["context.accuracy_hi"]


def test_frame_split_comparison_trains_on_a_leaky_split_and_sets_it_beside(spark, tiny_data, audited):
    # The audited net is the fixture's (the same task, data, seed and epochs this test would train); the audit
    # itself ingests the frame split and trains a second net on it.
    _, trained, _ = audited
    conf = tiny_data(OWN, "train.task=lane_classifier", "train.epochs=1", "audit.examples=2",
                     "audit.frame_split=true", "ingest.near_duplicate_bits=12", "audit.counterfactual.sequences=0",
                     f"audit.model_uri={trained['model_uri']}")
    results = stage(spark, conf, "audit")
    client = MlflowClient(conf.mlflow.tracking_uri)
    framed = client.search_runs([client.get_experiment_by_name(conf.mlflow.experiment).experiment_id],
                                "tags.`pipeline.role` = 'audit-frame-split'", order_by=["attributes.start_time DESC"])
    assert framed and framed[0].data.params["ingest.split_by"] == "frame"
    assert framed[0].data.params["train.data"] == "synthetic-framesplit"
    # the frame-split net's val accuracy is the one its own training measured on its own (leaky) val split
    assert results["independence.val_frame_split"] == pytest.approx(framed[0].data.metrics["val_accuracy"])
    assert results["independence.val_inflation"] == pytest.approx(
        results["independence.val_frame_split"] - results["independence.val_group_split"])
    # frames of one sequence now sit on both sides: at 12 bits some val frames have a twin in train
    assert results["independence.frame_split_val_near_duplicates"] > 0
    assert "frame-level split" in results["independence.verdict"]


def test_audit_names_a_model_that_does_not_exist(spark, tiny_data):
    conf = tiny_data(OWN, "audit.model_uri=runs:/0123456789abcdef/model")
    with pytest.raises(ModelNotFound, match="0123456789abcdef"):
        stage(spark, conf, "audit")
