"""The safe loader finds a model in the store it is told, whatever the process's current MLflow URI is."""
import mlflow
import pytest
import torch

from pipeline import registry
from pipeline.models import stored
from pipeline.tracking import Tracker
from tests.conftest import make_conf
from tests.faults.util import log_untrained_lane_net


def test_every_model_uri_form_loads_from_the_named_store_not_the_current_one(tmp_path):
    conf = make_conf(tmp_path / "team")
    uri = log_untrained_lane_net(Tracker(conf))
    model_id = uri.split("/", 1)[1]
    run_id = mlflow.MlflowClient(conf.mlflow.tracking_uri).get_logged_model(model_id).source_run_id
    version = registry.register(conf, "lane_classifier", model_id, run_id)
    registry.client(conf).set_registered_model_alias("road-lanes", "audited", version.version)
    weights = stored.load(uri, conf.mlflow.tracking_uri).state_dict()
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/elsewhere.db")   # a process pointed at another store
    try:
        for form in (uri, f"models:/road-lanes/{version.version}", "models:/road-lanes@audited",
                     f"runs:/{run_id}/lane_classifier"):
            net = stored.load(form, conf.mlflow.tracking_uri)
            assert all(torch.equal(v, weights[k]) for k, v in net.state_dict().items()), form
        with pytest.raises(stored.ModelNotFound, match="cannot find the model models:/road-lanes/9"):
            stored.load("models:/road-lanes/9", conf.mlflow.tracking_uri)
    finally:
        mlflow.set_tracking_uri(before)
