"""The audit stage on a trained net: the context audit's numbers agree with evaluation, and it says what it found."""
import pytest
from mlflow.tracking import MlflowClient

from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker
from pipeline.train.evaluate import ModelNotFound


def stage(spark, conf, name):
    return run_stage(get_stage(name), spark, conf, Tracker(conf))


@pytest.fixture(scope="module")
def audited(spark, tiny_data):
    conf = tiny_data("train.task=lane_classifier", "train.epochs=1", "audit.examples=3")
    trained = stage(spark, conf, "train")
    conf = tiny_data("train.task=lane_classifier", "train.epochs=1", "audit.examples=3",
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


def test_audit_names_a_model_that_does_not_exist(spark, tiny_data):
    conf = tiny_data("audit.model_uri=runs:/0123456789abcdef/model")
    with pytest.raises(ModelNotFound, match="0123456789abcdef"):
        stage(spark, conf, "audit")
