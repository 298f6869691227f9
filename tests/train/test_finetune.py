"""Training from a logged model (train.init_model) and on the first N rows (train.max_rows), through the real
train stage: TorchDistributor, the Petastorm loader and an MLflow store.

The source is a lane net with seeded random weights logged as the train stage logs one: its weights differ from
anything the target's own seed would draw, so a copied layer is recognisable tensor for tensor.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.config import ConfigError
from pipeline.data.synth import LANE_CLASSES
from pipeline.models import build_model, stored
from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker
from pipeline.train import finetune
from pipeline.train.run import build
from pipeline.train.spec import first_rows, make_spec


def log_source(conf, classes=LANE_CLASSES, width=0.25, in_hw=(64, 64), seed=123) -> str:
    torch.manual_seed(seed)
    net = build_model("lane_classifier", len(classes), in_hw, width)
    import mlflow

    with Tracker(conf).stage_run("train"):
        mlflow.set_tag("pipeline.role", "fine-tune source")   # never "the newest model" of another test's stage
        return stored.log_model(net, stored.card("lane_classifier", classes, in_hw, width, "road_frames"),
                                "lane_classifier", requirements=[]).model_uri


@pytest.fixture(scope="module")
def source(tiny_data):
    conf = tiny_data()
    uri = log_source(conf)
    return uri, stored.load(uri).state_dict()


def test_every_matching_layer_and_the_head_of_the_same_classes_start_as_the_source(tiny_data, source):
    uri, weights = source
    conf = tiny_data(f"train.init_model={uri}")
    spec, params = finetune.resolve(make_spec(conf), conf)
    net = build(spec)[0]                                      # what every rank starts from (step 0)
    assert spec.init_layers == net.layer_names and spec.init_head
    for key, value in net.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert params["train.init_head"] == "copied" and params["train.init_model_resolved"] == uri
    fresh = build(make_spec(tiny_data()))[0]                    # without init_model: the seed's own draw
    assert not torch.equal(fresh.conv1.weight, weights["conv1.weight"])


def test_other_classes_get_a_fresh_head_and_the_rest_is_copied(tiny_data):
    conf = tiny_data()
    uri = log_source(conf, classes=LANE_CLASSES[:-1] + ("zebra_crossing",))   # six classes, one another
    tuned = tiny_data(f"train.init_model={uri}")
    spec, params = finetune.resolve(make_spec(tuned), tuned)
    assert spec.init_layers == ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7") and not spec.init_head
    net = build(spec)[0]
    theirs = stored.load(uri).state_dict()
    assert torch.equal(net.fc7.weight, theirs["fc7.weight"])
    assert not torch.equal(net.fc8.weight, theirs["fc8.weight"]) and params["train.init_head"] == "fresh"


def test_the_same_classes_in_another_order_get_the_head_with_its_rows_following_their_names(tiny_data):
    conf = tiny_data()
    uri = log_source(conf, classes=tuple(reversed(LANE_CLASSES)))        # what an ImageFolder's sorted folders do
    tuned = tiny_data(f"train.init_model={uri}")
    spec, params = finetune.resolve(make_spec(tuned), tuned)
    assert spec.init_head and params["train.init_head"] == "reordered"
    net = build(spec)[0]
    theirs = stored.load(uri).state_dict()
    for i, name in enumerate(spec.classes):                             # row i: the source's row of that class
        j = tuple(reversed(LANE_CLASSES)).index(name)
        assert torch.equal(net.fc8.weight[i], theirs["fc8.weight"][j]) and net.fc8.bias[i] == theirs["fc8.bias"][j]
    assert torch.equal(net.fc7.weight, theirs["fc7.weight"])
    x = torch.rand(3, 3, 64, 64)                                          # the same function, classes by name
    source = stored.load(uri).eval()
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), source(x)[:, [tuple(reversed(LANE_CLASSES)).index(n)
                                                          for n in spec.classes]], atol=1e-6)


def test_another_architecture_or_input_size_is_one_line_naming_both(tiny_data):
    conf = tiny_data()
    cases = {log_source(conf, width=0.5): ["has width 0.5", "train.width=0.25", "set train.width=0.5"],
             log_source(conf, in_hw=(96, 96)): ["takes 96x96 images", "road_frames are 64x64", "ingest at 96x96"]}
    for uri, words in cases.items():
        tuned = tiny_data(f"train.init_model={uri}")
        with pytest.raises(ConfigError) as info:
            finetune.resolve(make_spec(tuned), tuned)
        said = str(info.value)
        assert "\n" not in said and all(w in said for w in words), said
    lights = tiny_data("train.task=tl_classifier", f"train.init_model={next(iter(cases))}")
    with pytest.raises(ConfigError, match="is a LaneNet .* trains a TLClassifier"):
        finetune.resolve(make_spec(lights), lights)


def test_fine_tuning_through_the_train_stage_keeps_frozen_layers_and_records_the_source(spark, tiny_data, source):
    uri, weights = source
    conf = tiny_data(f"train.init_model={uri}", "train.init_freeze=conv2", "train.init_lr_scale=0.1",
                     "train.epochs=1", "train.max_rows=16")
    results = run_stage(get_stage("train"), spark, conf, Tracker(conf))
    trained = stored.load(results["model_uri"]).state_dict()
    for layer in ("conv1", "conv2"):                                   # frozen: the source's, unchanged
        assert torch.equal(trained[f"{layer}.weight"], weights[f"{layer}.weight"]), layer
    assert not torch.equal(trained["conv3.weight"], weights["conv3.weight"])   # fine-tuned: moved
    run = MlflowClient(conf.mlflow.tracking_uri).get_run(results["run_id"])
    p = run.data.params
    assert p["train.init_model_resolved"] == uri and p["train.init_frozen"] == "conv1,conv2"
    source_run = MlflowClient(conf.mlflow.tracking_uri).get_logged_model(uri[len("models:/"):]).source_run_id
    assert p["train.init_source_run"] == source_run == run.data.tags["pipeline.init_source_run"]
    assert p["train.rows_resolved"] == "16" and p["train.steps_per_epoch_resolved"] == "2"    # 16 rows / batch 8


def test_smaller_training_sets_lie_inside_larger_ones_and_keep_groups_together(tiny_data):
    import pyarrow.parquet as pq

    spec = make_spec(tiny_data())
    url = spec.split_url("train")
    sets = {n: first_rows(url, n) for n in (4, 10, 16, 24)}
    assert [len(s) for s in sets.values()] == [4, 10, 16, 24]
    assert sets[4] < sets[10] < sets[16] < sets[24]
    table = pq.read_table(url[len("file://"):], columns=["id", "group"]).to_pylist()
    group_of = {r["id"]: r["group"] for r in table}
    sizes = {}
    for r in table:
        sizes[r["group"]] = sizes.get(r["group"], 0) + 1
    for chosen in sets.values():                      # at most one group is cut short: the last one reached
        groups = {group_of[i] for i in chosen}
        partial = [g for g in groups if sum(group_of[i] == g for i in chosen) < sizes[g]]
        assert len(partial) <= 1
    capped = make_spec(tiny_data("train.max_rows=10"))
    assert capped.keep_ids == sets[10] and capped.steps_per_epoch == 1
    from pipeline.train.loader import rows

    assert {r["id"] for r in rows(capped.loader("train"))} == sets[10]
    assert dataclasses.replace(capped, keep_ids=None).loader("train").keep is None
