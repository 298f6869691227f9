"""A stage an analysis runs for itself (the audit's frame split, correlate's seeds) goes through the stage graph:
its own child run tagged with its role, its own marker, and no second run while its config, the code and its
inputs are what they were."""
from mlflow.tracking import MlflowClient

from pipeline.stages import read_marker, run_side_job
from pipeline.tracking import Tracker

OWN = "mlflow.experiment=side-jobs"


def role_runs(conf) -> list:
    client = MlflowClient(conf.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(conf.mlflow.experiment).experiment_id
    return client.search_runs([experiment], "tags.`pipeline.role` = 'side-test'")


def test_a_side_job_runs_once_per_config_and_keeps_the_main_jobs_marker(spark, tiny_data, capsys):
    conf = tiny_data(OWN, "ingest.name=synthetic-side", "ingest.num_frames=16")
    main_marker = read_marker(conf, "ingest")                 # the fixture's own ingest, through run_stage
    first = run_side_job("ingest", spark, conf, Tracker(conf), "side", "side-test", "side ingest")
    assert len(role_runs(conf)) == 1 and role_runs(conf)[0].info.run_id == first["run_id"]
    assert role_runs(conf)[0].info.run_name == "side ingest"
    assert read_marker(conf, "ingest@side")["results"]["run_id"] == first["run_id"]
    assert read_marker(conf, "ingest") == main_marker          # the pipeline's own ingest job is untouched

    again = run_side_job("ingest", spark, conf, Tracker(conf), "side", "side-test", "side ingest")
    assert again == first and len(role_runs(conf)) == 1         # reused: no second run
    assert "ingest@side: up to date" in capsys.readouterr().out

    changed = tiny_data(OWN, "ingest.name=synthetic-side", "ingest.num_frames=20")
    third = run_side_job("ingest", spark, changed, Tracker(changed), "side", "side-test", "side ingest")
    assert third["run_id"] != first["run_id"] and len(role_runs(conf)) == 2
    assert "ingest@side: running (its config changed)" in capsys.readouterr().out
