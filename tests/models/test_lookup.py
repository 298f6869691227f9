"""Which model a stage means: the newest of train.task, never a net an analysis trained for itself, and errors that
name the config key of the stage that asked (not evaluate's when the audit or visualize asked)."""
import mlflow
import pytest

from pipeline.analysis.inputs import check_layers, stage_model
from pipeline.config import ConfigError
from pipeline.models.lookup import ROLE_TAG, ModelNotFound, latest_model_uri, load_model
from pipeline.tracking import Tracker
from tests.conftest import make_conf
from tests.faults.util import log_untrained_lane_net


@pytest.mark.parametrize("key", ["audit.model_uri", "visualize.model_uri"])
def test_no_model_names_the_key_of_the_stage_that_asked(tmp_path, key):
    conf = make_conf(tmp_path)
    tracker = Tracker(conf)
    with pytest.raises(ModelNotFound, match=f"or set {key}=models:/") as found:
        latest_model_uri(tracker, "lane_classifier", "synthetic", key)
    assert "evaluate.model_uri" not in str(found.value)
    with pytest.raises(ModelNotFound, match=f"leave {key} unset") as found:
        load_model("runs:/0123456789abcdef/model", conf, key)
    assert "evaluate.model_uri" not in str(found.value)


def test_the_newest_model_skips_nets_an_analysis_trained_and_is_checked_against_the_task(tmp_path):
    conf = make_conf(tmp_path, "train.data=synthetic")
    tracker = Tracker(conf)
    mine = log_untrained_lane_net(tracker)                       # a train run of lane_classifier on synthetic
    client = mlflow.MlflowClient(conf.mlflow.tracking_uri)
    runs = lambda: client.search_runs([tracker.experiment_id], "tags.`pipeline.stage` = 'train'")  # noqa: E731
    first = {r.info.run_id for r in runs()}
    for run_id in first:
        client.set_tag(run_id, "pipeline.model_uri", mine)
    side = log_untrained_lane_net(tracker)                       # newer, but an analysis's own net
    for run in runs():
        if run.info.run_id not in first:
            client.set_tag(run.info.run_id, "pipeline.model_uri", side)
            client.set_tag(run.info.run_id, ROLE_TAG, "correlate-seed")
    assert latest_model_uri(tracker, "lane_classifier", "synthetic") == mine

    with tracker.stage_run("visualize"):
        uri, net = stage_model(tracker, conf, None, "visualize.model_uri")
        logged = mlflow.active_run().info.run_id
    assert uri == mine and not net.training
    assert client.get_run(logged).data.params["visualize.model_uri_resolved"] == mine
    assert check_layers(net, ["conv1", "fc8"], "visualize.layers") == ("conv1", "fc8")
    with pytest.raises(ConfigError, match="visualize.layers: LaneNet has no layer conv9; its layers: conv1"):
        check_layers(net, ["conv1", "conv9"], "visualize.layers")

    detector = make_conf(tmp_path, "train.data=synthetic", "train.task=tl_detector")
    with tracker.stage_run("visualize"):
        with pytest.raises(ConfigError, match=f"audit.model_uri: {mine} is a LaneNet, not the TLDetector of "
                                              f"train.task"):
            stage_model(tracker, detector, mine, "audit.model_uri")
