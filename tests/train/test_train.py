"""Training through real TorchDistributor runs, logged to a real MLflow store."""
import multiprocessing
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.data import store
from pipeline.models import stored
from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker
from pipeline.train.run import load_checkpoint, train_fn
from pipeline.train.spec import make_spec
from tests.conftest import LIGHT_EXECUTORS

REPO = Path(__file__).resolve().parents[2]


def train(spark, conf, stage="train"):
    return run_stage(get_stage(stage), spark, conf, Tracker(conf))


def beats_the_majority(conf, results, split="val"):
    """The logged model's accuracy on ``split``, re-scored here, is the one the run logged for that split and above
    the share of the split's most common class (what a net that learned nothing reaches by always saying it)."""
    from pipeline.models.lookup import load_model
    from pipeline.train.loader import eval_batches

    model = load_model(results["model_uri"], conf).eval()
    hits, labels = 0, []
    with torch.no_grad():
        for x, y, _ in eval_batches(make_spec(conf).loader(split)):
            hits += int((model(x).argmax(1) == y).sum())
            labels += y.tolist()
    accuracy, majority = hits / len(labels), max(labels.count(k) for k in set(labels)) / len(labels)
    assert accuracy == pytest.approx(results[f"{split}_accuracy"], abs=1e-6)
    assert accuracy > majority, (conf.train.task, split, accuracy, majority, len(labels))


LANE_EPOCHS = 14     # on the 24 tiny train rows the lane net stays at one class's share of val up to 12 epochs
                     # (0.22 against a majority of 0.33), from 13 on it reaches 0.44


@pytest.fixture(scope="module")
def lane_run(spark, tiny_data):
    conf = tiny_data("train.task=lane_classifier", "mlflow.system_metrics_s=1", f"train.epochs={LANE_EPOCHS}")
    return conf, train(spark, conf)


def test_lane_classifier_trains_and_logs_metrics_checkpoint_and_model(lane_run):
    conf, results = lane_run
    client = MlflowClient(conf.mlflow.tracking_uri)
    run = client.get_run(results["run_id"])
    steps = list(range(LANE_EPOCHS))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == steps
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == steps
    assert "test_accuracy" in run.data.metrics and 0 <= results["test_accuracy"] <= 1
    beats_the_majority(conf, results)
    assert run.data.params["train.steps_per_epoch_resolved"] == "3"     # 24 train rows / batch 8
    assert run.data.params["train.classes"].startswith("none,solid_white")
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"figures/test_confusion.png", "figures/test_worst_mistakes.png"} <= figures
    model = stored.load(results["model_uri"])
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert model(x).shape == (2, 6)
    # a LoggedModel named for its task, linked to its run, its training dataset and its held-out metrics
    logged = mlflow.get_logged_model(results["model_uri"][len("models:/"):])
    assert logged.name == "lane_classifier" and logged.source_run_id == run.info.run_id
    assert {m.key for m in logged.metrics if m.dataset_name == f"{conf.train.data}/road_frames/test"} >= {
        "test_accuracy", "test_f1_macro"}
    assert {i.dataset.name for i in run.inputs.dataset_inputs} >= {f"{conf.train.data}/road_frames/train"}
    assert run.data.tags["pipeline.model_uri"] == results["model_uri"]
    with torch.no_grad():                             # MLflow's own API predicts the same logits
        assert np.allclose(mlflow.pyfunc.load_model(results["model_uri"]).predict(x.numpy()), model(x).numpy(),
                           atol=1e-6)
    name, version = results["model_version"][len("models:/"):].split("/")
    assert name == "road-lanes"
    assert client.get_model_version(name, version).source == results["model_uri"]
    assert any(k.startswith("system/cpu") for k in run.data.metrics), sorted(run.data.metrics)
    state = load_checkpoint(make_spec(conf).checkpoint_url)            # weights_only=True
    assert state["epoch"] == LANE_EPOCHS - 1
    reloaded = make_spec(conf)
    with torch.no_grad():
        assert torch.allclose(model.fc8.weight, state["model"]["fc8.weight"])
    assert reloaded.steps_per_epoch == 3


def test_evaluate_stage_finds_the_newest_model_and_agrees_with_training(spark, lane_run):
    conf, results = lane_run
    evaluated = train(spark, conf, stage="evaluate")
    assert evaluated["model_uri"] == results["model_uri"]
    assert evaluated["test_accuracy"] == pytest.approx(results["test_accuracy"])


def test_traffic_light_classifier_and_detector_train(spark, tiny_data):
    crops_conf = tiny_data("train.task=tl_classifier", "train.epochs=3")     # 1 or 2: below the majority share
    crops = train(spark, crops_conf)
    assert 0 <= crops["test_accuracy"] <= 1
    beats_the_majority(crops_conf, crops)
    det_conf = tiny_data("train.task=tl_detector", "train.epochs=1", "train.batch_size=4")
    det = train(spark, det_conf)
    client = MlflowClient(det_conf.mlflow.tracking_uri)
    run = client.get_run(det["run_id"])
    metrics = run.data.metrics
    for key in ("test_precision", "test_recall", "test_ap", "test_recall_near", "val_recall"):
        assert key in metrics
    # the logged test metrics are the logged model's: re-evaluated here on the test split, every one equal
    from pipeline.models.lookup import load_model
    from pipeline.train.evaluate import evaluate

    spec = make_spec(det_conf)
    again = evaluate(load_model(run.data.tags["pipeline.model_uri"], det_conf), spec.task, spec.loader("test"),
                     list(spec.classes), "test_", threshold=det_conf.evaluate.threshold,
                     match_radius=det_conf.evaluate.match_radius)
    import matplotlib.pyplot as plt

    plt.close("all")
    logged = {k: v for k, v in metrics.items() if k.startswith("test_")}
    assert set(logged) == set(again.metrics) and len(logged) >= 20
    for key, value in again.metrics.items():
        assert logged[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    figures = {a.path for a in client.list_artifacts(det["run_id"], "figures")}
    assert "figures/test_pr_curve.png" in figures and "figures/test_heatmaps.png" in figures
    model = stored.load(det["model_uri"])
    assert model(torch.zeros(1, 3, 50, 70)).shape == (1, 1, 13, 18)    # any input size at inference
    # the figure's sample responses: one per distance bucket, each from another sequence
    from dataclasses import replace

    from pipeline.train.loader import rows
    from pipeline.train.scoring import detect

    test = spec.loader("test")
    group_of = {r["boxes"].tobytes(): r["group"] for r in rows(replace(test, extra=("group",)))}
    samples = detect(model, test, samples=True).samples
    assert samples and len({b for b, *_ in samples}) == len(samples)
    assert len({group_of[boxes.tobytes()] for _, _, _, boxes, _ in samples}) == len(samples)


# ------------------------------------------------------------------ determinism and resume (no Spark)

def _weights(url):
    return load_checkpoint(url)["model"]


def test_same_seed_same_weights_and_a_killed_run_resumes_to_the_same_result(tiny_data, tmp_path, capfd):
    spec = replace(make_spec(tiny_data("train.epochs=3")), run_id=None)
    first = replace(spec, checkpoint_url=(tmp_path / "a").as_uri())
    second = replace(spec, checkpoint_url=(tmp_path / "b").as_uri())
    train_fn(first)
    train_fn(second)
    a, b = _weights(first.checkpoint_url), _weights(second.checkpoint_url)
    assert all(torch.equal(a[k], b[k]) for k in a)

    killed = replace(spec, checkpoint_url=(tmp_path / "killed").as_uri())
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=train_fn, args=(killed,))
    proc.start()
    ckpt = tmp_path / "killed" / "last.pt"
    while proc.is_alive() and not ckpt.exists():
        proc.join(timeout=0.05)              # wait for the first epoch's checkpoint, then kill at once
    proc.kill()
    proc.join()
    state = load_checkpoint(killed.checkpoint_url)
    assert state is not None and state["epoch"] < 2, "the run should have been killed before its last epoch"
    done = state["epoch"] + 1
    capfd.readouterr()
    train_fn(replace(killed, train=killed.train.model_copy(update={"resume": True})))
    out = capfd.readouterr().out
    # The finished epochs are skipped: the resumed run trains only the remaining ones.
    assert f"{3 - done} epoch(s) to run" in out
    trained = [int(line.split()[1].split("/")[0]) for line in out.splitlines() if line.startswith("epoch ")]
    assert trained == list(range(done + 1, 4)), out
    resumed = _weights(killed.checkpoint_url)
    assert load_checkpoint(killed.checkpoint_url)["epoch"] == 2
    assert all(torch.equal(a[k], resumed[k]) for k in a)


def _TINY_ARGS(conf):
    return [f"paths.work_dir={conf.paths.work_dir}", "train.task=lane_classifier",
            "ingest.num_frames=48", "ingest.frames_per_sequence=2", "ingest.render_hw=[180,320]",
            "ingest.frame_hw=[72,128]", "ingest.road_hw=[64,64]", "ingest.split={train: 0.5, val: 0.25, test: 0.25}"]


# ------------------------------------------------------------------ a real cluster: barrier tasks

def test_local_cluster_barrier_tasks_train_on_two_executors_and_learn(tiny_data, tmp_path):
    """local-cluster[2,1,1024]: two executor JVMs; TorchDistributor(local_mode=False) runs DDP over barrier
    tasks. What only that path produces: world size 2, the ranks on two different executors."""
    conf = tiny_data()
    cmd = [os.path.join(os.path.dirname(sys.executable), "pipeline"), "train", *_TINY_ARGS(conf),
           "train.task=tl_classifier", "spark.master=local-cluster[2,1,1024]", LIGHT_EXECUTORS,
           "train.local_mode=false", "train.num_processes=2", "train.epochs=4", "train.batch_size=8", "train.lr=0.003",
           f"paths.checkpoint_url=file://{tmp_path}/ckpt", "spark.conf.spark.driver.memory=1g"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.count(" ") == 1)
    client = MlflowClient(conf.mlflow.tracking_uri)
    run = client.get_run(lines["run_id"])
    assert run.data.tags["train.world_size"] == "2"
    executors = run.data.tags["train.executors"].split(",")
    assert len(executors) == 2 and "driver" not in executors, run.data.tags     # two executors, not the driver
    assert {run.data.tags["train.rank0"].split("@")[0], run.data.tags["train.rank1"].split("@")[0]} == set(executors)
    spec = make_spec(conf.model_copy(update={"train": conf.train.model_copy(update={"task": "tl_classifier"})}))
    train_rows = store.read_meta(spec.data_root)["datasets"]["tl_crops"]["splits"]["train"]
    assert run.data.params["train.steps_per_epoch_resolved"] == str(train_rows // (8 * 2))
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)]
    assert len(losses) == 4 and losses[-1] < losses[0], losses            # the model learned
    model = stored.load(lines["model_uri"], conf.mlflow.tracking_uri)
    from pipeline.train.loader import eval_batches

    hits, labels = 0, []
    with torch.no_grad():
        for x, y, _ in eval_batches(spec.loader("train")):
            hits += int((model(x).argmax(1) == y).sum())
            labels += y.tolist()
    majority = max(labels.count(k) for k in set(labels)) / len(labels)
    assert hits / len(labels) > majority, (hits / len(labels), majority)


def test_logged_pins_are_the_installed_set_not_a_source_tree_egg_info(tmp_path, monkeypatch):
    """An editable install leaves road_pipeline.egg-info in the source tree, with the pins of whichever pin set
    was installed last; the model is logged with the pins of the set installed where this Python runs."""
    from importlib.metadata import distributions

    from pipeline.train.run import _requirements

    foreign = tmp_path / "road_pipeline.egg-info"
    foreign.mkdir()
    (foreign / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: road-pipeline\nVersion: 0.1.0\n")
    (foreign / "requires.txt").write_text("pyspark==0.0.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert next(iter(distributions(name="road-pipeline"))).requires == ["pyspark==0.0.1"]  # the first one found
    pins = _requirements()
    assert "pyspark==0.0.1" not in pins
    import pyspark

    assert f"pyspark=={pyspark.__version__}" in pins and f"torch=={torch.__version__.split('+')[0]}" in pins
