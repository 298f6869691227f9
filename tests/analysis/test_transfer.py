"""The transfer stage: halves, the grid's mechanics (copied, frozen, fine-tuned, second loss) and its runs."""
import dataclasses

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.analysis import transfer
from pipeline.analysis.transfer import Cell, half_labels, plan_cells, plan_halves
from pipeline.config import ConfigError
from pipeline.data.store import dataset_root, read_meta
from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker
from pipeline.train import loader
from pipeline.train.run import build, load_checkpoint
from tests.conftest import make_conf
from tests.datasets import read_dataset

LABELS = ["none", "solid_white", "dashed_white", "double_solid_yellow", "solid_dashed_yellow", "dashed_yellow"]


def test_halves_by_class_and_by_time_of_day():
    assert half_labels("class", LABELS) == {"A": LABELS[0::2], "B": LABELS[1::2]}
    assert half_labels("day_night", LABELS) == {"A": LABELS, "B": LABELS}
    rows = [(f"f{i}", LABELS[i % 6], ("day", "dusk", "night")[i % 3]) for i in range(60)]
    plan = plan_halves(rows, "road_frames", LABELS, ["class", "day_night"], [5, 12, 999], "class", 0, (32, 32))
    a = {r for r, fs in plan.folders.items() if ("class", "A", "train") in fs}
    assert a == {r[0] for r in rows if r[1] in LABELS[0::2]}
    night = {r for r, fs in plan.folders.items() if ("day_night", "B", "train") in fs}
    assert night == {r[0] for r in rows if r[2] == "night"}
    dusk = {r[0] for r in rows if r[2] == "dusk"}
    assert not any(f[0] == "day_night" for r in dusk for f in plan.folders.get(r, ()))
    # B's subsets are nested, in one fixed order, capped by B's rows
    subsets = {size: {r for r, fs in plan.folders.items() if ("class", "B", f"train_n{size}") in fs}
               for size in (5, 12, 999)}
    assert len(subsets[5]) == 5 and len(subsets[12]) == 12 and len(subsets[999]) == 30
    assert subsets[5] < subsets[12] < subsets[999]
    assert plan.sizes[("class", "B")] == {"train": 30, "train_n5": 5, "train_n12": 12, "train_n999": 30}
    capped = plan_halves(rows, "road_frames", LABELS, ["class"], [5], "class", 10, None)
    assert capped.sizes[("class", "A")]["train"] == 10


def test_the_grid_copies_from_the_right_base_in_two_waves():
    from pipeline.config import load_config

    c = load_config(overrides=["transfer.layers=[conv1,conv5]", "transfer.seeds=2", "transfer.sizes=[10,20]",
                               "transfer.splits=[class,day_night]"]).transfer
    first, second = plan_cells(c)
    assert {cell.variant for cell in first} == {"baseA", "baseB", "scratch", "aux"}
    assert len(second) == 2 * 2 * 2 * 4 + 2 * 2  # splits x seeds x layers x 4 variants + pretrained per size, seed
    keys = {cell.key for cell in first}
    assert all(cell.source.key in keys for cell in second)  # every copy's base trains in the first wave
    assert Cell("class", "AnB+", 1, layer="conv5").source == Cell("class", "baseA", 1)
    assert Cell("day_night", "BnB", 0, layer="conv1").source == Cell("day_night", "baseB", 0)
    assert len({cell.key for cell in first + second}) == len(first + second)


def test_copied_layers_are_the_sources_frozen_ones_stay_so(tmp_path):
    """build(): layers up to n come from the checkpoint; frozen ones are not in the optimizer and do not move."""
    from pipeline.config import load_config
    from pipeline.models import build_model
    from pipeline.train.run import save_checkpoint
    from pipeline.train.spec import TrainSpec

    source = build_model("lane_classifier", 3, (64, 64), 0.25)
    url = f"file://{tmp_path}/src"
    save_checkpoint(url, {"model": source.state_dict()})
    t = load_config(overrides=["train.width=0.25", "train.seed=7"]).train
    spec = TrainSpec(train=t, kind="road_frames", data_root="", classes=("a", "b", "c", "d"), in_hw=(64, 64),
                     steps_per_epoch=1, checkpoint_url="", init_url=url, init_layers=("conv1", "conv2"), freeze=True)
    model, optimizer, _, joint = build(spec)
    assert joint is model
    for name in ("conv1", "conv2"):
        assert torch.equal(getattr(model, name).weight, getattr(source, name).weight)
    assert not torch.equal(model.conv3.weight, source.conv3.weight)  # above n: fresh
    assert model.fc8.out_features == 4                               # the head fits B's classes
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    after = model.state_dict()
    assert torch.equal(after["conv1.weight"], before["conv1.weight"])
    assert torch.equal(after["conv2.bias"], before["conv2.bias"])
    assert not torch.equal(after["conv3.weight"], before["conv3.weight"])
    tuned, tuned_optimizer, *_ = build(dataclasses.replace(spec, freeze=False, init_lr_scale=0.1))
    assert all(p.requires_grad for p in tuned.parameters())
    rest, copied = tuned_optimizer.param_groups                      # fine-tuned copies learn slower
    assert copied["lr"] == pytest.approx(0.1 * t.lr) and rest["lr"] == pytest.approx(t.lr)
    assert {id(p) for p in copied["params"]} == {id(p) for n in ("conv1", "conv2")
                                                 for p in getattr(tuned, n).parameters()}
    with pytest.raises(ValueError, match="cannot copy"):
        build(dataclasses.replace(spec, init_layers=("fc8",)))


def test_a_second_loss_trains_a_head_on_the_lane_masks():
    from pipeline.models import WithAux, aux_loss, build_model

    net = build_model("lane_classifier", 3, (64, 64), 0.25)
    joint = WithAux(net, "lane_mask")
    logits, masks = joint(torch.zeros(2, 3, 64, 64))
    assert logits.shape == (2, 3) and masks.shape[:2] == (2, 1)
    rows = [{"image": np.zeros((64, 64, 3), np.uint8), "label": 1, "lane_mask": np.eye(64, dtype=np.uint8)}] * 2
    x, y, target = loader.collate("road_frames", rows, "lane_mask")
    assert target.shape == (2, 1, 64, 64) and target.sum() == 2 * 64
    assert aux_loss("lane_mask", masks, target).item() > 0
    crops = [{"image": np.zeros((32, 32, 3), np.uint8), "label": 0, "distance": d} for d in ("near", "far", "")]
    assert loader.collate("tl_crops", crops, "distance")[2].tolist() == [0, 2, 3]
    distance = WithAux(build_model("tl_classifier", 5, (32, 32), 0.25), "distance", outputs=4)
    assert distance(torch.zeros(3, 3, 32, 32))[1].shape == (3, 4)
    with pytest.raises(ValueError, match="no hidden linear"):
        WithAux(build_model("tl_detector"), "distance")


@pytest.fixture(scope="module")
def grid(spark, tmp_path_factory):
    work = tmp_path_factory.mktemp("transfer")
    overrides = ["ingest.num_frames=160", "ingest.frames_per_sequence=2", "ingest.render_hw=[90,160]",
                 "ingest.road_hw=[48,48]", "ingest.partitions=2", "ingest.split={train: 0.6, val: 0.2, test: 0.2}",
                 "train.width=0.25", "transfer.layers=[conv1,fc7]", "transfer.seeds=1", "transfer.steps=4", "transfer.epochs=2",
                 "transfer.sizes=[16,1000]", "transfer.splits=[class,day_night]", "transfer.image_hw=[40,40]",
                 "transfer.batch_size=8"]
    conf = make_conf(work, *overrides)
    run_stage(get_stage("ingest"), spark, conf, Tracker(conf))
    return conf, run_stage(get_stage("transfer"), spark, conf, Tracker(conf))


def test_halves_are_datasets_with_renumbered_labels(grid, spark):
    conf, _ = grid
    source = spark.read.parquet(f"{dataset_root(conf.paths.data_url, 'synthetic')}/road_frames/test")
    for split, half in (("class", "A"), ("class", "B"), ("day_night", "B")):
        root = dataset_root(conf.paths.data_url, f"synthetic-transfer-{split}-{half}")
        info = read_meta(root)["datasets"]["road_frames"]
        test = spark.read.parquet(f"{root}/road_frames/test").select("id", "label", "label_name", "context").collect()
        wanted = source.filter(source.label_name.isin(info["labels"]))
        if split == "day_night":
            wanted = wanted.filter(source.context == "night")
        assert sorted(r.id for r in test) == sorted(r.id for r in wanted.select("id").collect())
        assert all(info["labels"][r.label] == r.label_name for r in test)
        assert info["splits"]["test"] == len(test)
    b = read_meta(dataset_root(conf.paths.data_url, "synthetic-transfer-class-B"))["datasets"]["road_frames"]
    assert b["labels"] == LABELS[1::2]
    assert b["splits"]["train_n16"] == 16 and b["splits"]["train_n1000"] == b["splits"]["train"]
    url = f"{dataset_root(conf.paths.data_url, 'synthetic-transfer-class-B')}/road_frames/train_n16"
    row = next(iter(read_dataset(url, ["image", "lane_mask"]).values()))
    assert row["image"].shape == (40, 40, 3) and row["lane_mask"].shape == (40, 40)  # transfer.image_hw


def test_every_cell_is_a_finished_child_run_with_its_test_accuracy(grid):
    conf, results = grid
    client = MlflowClient(conf.mlflow.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(conf.mlflow.experiment).experiment_id],
                              "tags.`pipeline.kind` = 'transfer-cell'")
    first, second = plan_cells(load_transfer(conf))
    assert sorted(r.info.run_name for r in runs) == sorted(f"transfer {c.key}" for c in first + second)
    assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == results["run_id"] for r in runs)
    assert all(0.0 <= r.data.metrics["test_accuracy"] <= 1.0 and "val_accuracy" in r.data.metrics for r in runs)
    stage = client.get_run(results["run_id"])
    assert stage.data.metrics["trainings"] == len(runs)
    figures = {a.path for a in client.list_artifacts(results["run_id"], "figures")}
    assert {"figures/transfer_class.png", "figures/transfer_day_night.png", "figures/transfer_sizes.png",
            "figures/transfer_conv1.png"} <= figures
    assert "class.AnB_plus.fc7.mean" in stage.data.metrics and "sizes.aux.n16.mean" in stage.data.metrics
    # the context audit of the plain net and the one with a second loss, at the largest size
    for variant in ("scratch", "aux"):
        assert f"sizes.{variant}.n1000.audit.relies_on_context" in stage.data.metrics
        assert stage.data.tags[f"transfer.audit.{variant}"]


def load_transfer(conf):
    return conf.transfer.model_copy(update={"layers": ["conv1", "fc7"]})


def test_cells_copy_freeze_and_fine_tune_as_named(grid):
    conf, _ = grid
    root = f"{conf.paths.checkpoint_url}/transfer/synthetic"

    def weights(key):
        return load_checkpoint(f"{root}/{key}")["model"]

    base_a, base_b = weights("class/baseA/seed0"), weights("class/baseB/seed0")
    anb, anb_plus, bnb = weights("class/AnB/fc7/seed0"), weights("class/AnB+/fc7/seed0"), weights("class/BnB/conv1/seed0")
    for layer in ("conv1", "conv5", "fc7"):            # AnB at fc7: every layer up to fc7 is baseA's, frozen
        assert torch.equal(anb[f"{layer}.weight"], base_a[f"{layer}.weight"])
    assert not torch.equal(anb_plus["conv1.weight"], base_a["conv1.weight"])   # AnB+: fine-tuned from there
    assert torch.equal(bnb["conv1.weight"], base_b["conv1.weight"])           # BnB at conv1: baseB's conv1 ...
    assert not torch.equal(bnb["conv2.weight"], base_b["conv2.weight"])       # ... and the rest trained afresh
    assert weights("class/AnB/fc7/seed0")["fc8.weight"].shape[0] == 3          # B's three classes
    aux = load_checkpoint(f"{root}/class/aux/n16/seed0")
    assert "aux" in aux and aux["args"]["aux"] == "lane_mask"
    assert load_checkpoint(f"{root}/class/pretrained/n16/seed0")["args"]["init_layers"][-1] == "fc7"


def test_bad_transfer_settings_are_named(spark, tiny_data):
    with pytest.raises(ConfigError, match="cannot be chopped"):
        transfer.run(spark, tiny_data("transfer.layers=[conv9]", "transfer.batch_size=8"), None)
    with pytest.raises(ConfigError, match="size_split"):
        transfer.run(spark, tiny_data("transfer.splits=[class]", "transfer.size_split=day_night",
                                      "transfer.batch_size=8"), None)
    with pytest.raises(ConfigError, match="time of day"):
        transfer.run(spark, tiny_data("transfer.task=tl_classifier", "transfer.layers=[conv1,fc5]",
                                      "transfer.splits=[day_night]",
                                      "transfer.size_split=day_night", "transfer.batch_size=8"), None)


# ----------------------------------------------------------------------------------------- planted truths

PLANTED = {"baseB": 0.90, "baseA": 0.85, "BnB": 0.80, "AnB": 0.60, "BnB+": 0.88, "AnB+": 0.84,
           "scratch": 0.50, "pretrained": 0.70, "aux": 0.55}
SPREAD = (-0.02, 0.0, 0.02)       # seed s adds SPREAD[s]: the mean is the planted value, min and max +- 0.02


def test_summarize_gives_planted_means_spreads_and_gaps():
    """Accuracies planted per variant, layer and size: every grid point's mean, min and max, the co-adaptation gap
    (baseB - BnB) and the specificity gap (BnB - AnB) are known before the stage computes them."""
    from pipeline.config import load_config

    c = load_config(overrides=["transfer.layers=[conv1,fc7]", "transfer.seeds=3", "transfer.sizes=[10,20]",
                               "transfer.splits=[class,day_night]"]).transfer
    first, second = plan_cells(c)
    layer_step = {"conv1": 0.0, "fc7": -0.1}        # deeper chops transfer worse
    size_step = {10: 0.0, 20: 0.05}

    def planted(cell):
        return PLANTED[cell.variant] + (layer_step[cell.layer] if cell.layer and cell.variant[0] == "A" else 0.0) \
            + (size_step[cell.size] if cell.size else 0.0) + SPREAD[cell.seed]
    results = {cell.key: {"key": cell.key, "test_accuracy": planted(cell)} for cell in first + second}
    out = transfer.summarize(results, first + second, c)
    expected = {}
    for split in c.splits:
        for name, value in (("baseB", 0.90), ("baseA_on_A", 0.85)):
            expected[f"{split}.{name}"] = value
        for n in c.layers:
            for v in transfer.GRID_VARIANTS:
                expected[f"{split}.{transfer.metric_key(v)}.{n}"] = PLANTED[v] + (layer_step[n] if v[0] == "A" else 0)
    for size in c.sizes:
        for v in transfer.SIZE_VARIANTS:
            expected[f"sizes.{v}.n{size}"] = PLANTED[v] + size_step[size]
    for name, value in expected.items():
        assert out.pop(f"{name}.mean") == pytest.approx(value), name
        assert out.pop(f"{name}.min") == pytest.approx(value - 0.02), name
        assert out.pop(f"{name}.max") == pytest.approx(value + 0.02), name
    gaps = {f"{split}.{gap}.{n}": value for split in c.splits for n in c.layers for gap, value in (
        ("coadaptation_gap", 0.90 - 0.80), ("specificity_gap", 0.80 - 0.60 - layer_step[n]))}
    assert out.keys() == gaps.keys()
    for name, value in gaps.items():
        assert out[name] == pytest.approx(value), name


def _cells_logged(conf) -> list:
    """Every cell's child run: ``(split, variant, layer, size, seed, test accuracy)`` from its tags and metric."""
    client = MlflowClient(conf.mlflow.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(conf.mlflow.experiment).experiment_id],
                              "tags.`pipeline.kind` = 'transfer-cell'")
    return [(r.data.tags["transfer.split"], r.data.tags["transfer.variant"], r.data.tags["transfer.layer"],
             r.data.tags["transfer.size"], int(r.data.tags["transfer.seed"]), r.data.metrics["test_accuracy"])
            for r in runs]


def test_the_logged_summary_is_recomputed_from_the_cells_logged_accuracies(grid):
    """A direct implementation on what the cells logged (tags and test accuracy), against the stage's metrics."""
    conf, results = grid
    cells = _cells_logged(conf)
    logged = MlflowClient(conf.mlflow.tracking_uri).get_run(results["run_id"]).data.metrics

    def mean(**match):
        values = [acc for s, v, n, z, _, acc in cells
                  if all(dict(split=s, variant=v, layer=n, size=z)[k] == x for k, x in match.items())]
        assert values, match
        return float(np.mean(values)), float(np.min(values)), float(np.max(values))
    expected = {}
    for split in ("class", "day_night"):
        expected[f"{split}.baseB"] = mean(split=split, variant="baseB")
        expected[f"{split}.baseA_on_A"] = mean(split=split, variant="baseA")
        for n in ("conv1", "fc7"):
            for v in transfer.GRID_VARIANTS:
                expected[f"{split}.{transfer.metric_key(v)}.{n}"] = mean(split=split, variant=v, layer=n)
            bnb, anb = mean(split=split, variant="BnB", layer=n)[0], mean(split=split, variant="AnB", layer=n)[0]
            assert logged[f"{split}.specificity_gap.{n}"] == pytest.approx(bnb - anb)
            assert logged[f"{split}.coadaptation_gap.{n}"] == pytest.approx(expected[f"{split}.baseB"][0] - bnb)
    for size in ("16", "1000"):
        for v in transfer.SIZE_VARIANTS:
            expected[f"sizes.{v}.n{size}"] = mean(variant=v, size=size)
    for name, (m, lo, hi) in expected.items():
        assert (logged[f"{name}.mean"], logged[f"{name}.min"], logged[f"{name}.max"]) == \
            pytest.approx((m, lo, hi)), name


def _spec_of(checkpoint: dict, url: str, **changes):
    """The :class:`TrainSpec` a cell trained with, from what its checkpoint records."""
    from pipeline.config import TrainSection
    from pipeline.train.spec import TrainSpec

    a = checkpoint["args"]
    return TrainSpec(train=TrainSection.model_validate(a["train"]), kind=a["kind"], data_root=a["data_root"],
                     classes=tuple(a["classes"]), in_hw=tuple(a["in_hw"]), steps_per_epoch=a["steps_per_epoch"],
                     checkpoint_url=url, init_url=a["init_url"] or None, init_layers=tuple(a["init_layers"]),
                     freeze=a["freeze"], init_lr_scale=a["init_lr_scale"], aux=a["aux"] or None,
                     aux_weight=a["aux_weight"], **changes)


@pytest.mark.parametrize("key, base, copied", [("class/AnB+/fc7/seed0", "class/baseA/seed0", 7),
                                               ("class/BnB+/conv1/seed0", "class/baseB/seed0", 1),
                                               ("day_night/AnB+/conv1/seed0", "day_night/baseA/seed0", 1)])
def test_fine_tuned_cells_start_from_the_copied_weights(grid, one_thread, key, base, copied):
    """The net a fine-tuned cell's training builds at step 0: its first ``copied`` layers hold the base's trained
    weights, the layers above are fresh; the trained cell has moved away from them, but only by small steps."""
    conf, _ = grid
    root = f"{conf.paths.checkpoint_url}/transfer/synthetic"
    cell, source = load_checkpoint(f"{root}/{key}"), load_checkpoint(f"{root}/{base}")["model"]
    start, *_ = build(_spec_of(cell, f"{root}/{key}"))
    names = start.layer_names
    for name in names[:copied]:
        for part in ("weight", "bias"):
            assert torch.equal(getattr(start, name).state_dict()[part], source[f"{name}.{part}"]), (name, part)
    assert not torch.equal(start.state_dict()[f"{names[copied]}.weight"], source[f"{names[copied]}.weight"])
    assert all(p.requires_grad for p in start.parameters())                     # fine-tuned, not frozen
    moved = (cell["model"]["conv1.weight"] - source["conv1.weight"]).abs()
    assert 0 < moved.max() < 0.01


@pytest.mark.parametrize("key", ["class/AnB/fc7/seed0", "class/BnB+/conv1/seed0", "day_night/AnB+/fc7/seed0",
                                 "class/pretrained/n16/seed0"])
def test_every_cell_is_scored_on_b_s_test_split(grid, one_thread, key):
    """Re-evaluate a cell's checkpoint on half B's test split: the accuracy its run logged."""
    from pipeline.analysis.transfer import dataset_name
    from pipeline.train.evaluate import evaluate
    from pipeline.train.run import load_trained

    conf, _ = grid
    url = f"{conf.paths.checkpoint_url}/transfer/synthetic/{key}"
    spec = _spec_of(load_checkpoint(url), url)
    split = key.split("/")[0]
    assert spec.data_root == dataset_root(conf.paths.data_url, dataset_name("synthetic", split, "B"))
    model = load_trained(spec).eval()
    accuracy = evaluate(model, spec.task, spec.loader("test"), list(spec.classes), "test_").metrics["test_accuracy"]
    logged = {(s, v, n or z, seed): acc for s, v, n, z, seed, acc in _cells_logged(conf)}
    _, variant, where, seed = key.split("/")
    assert accuracy == pytest.approx(logged[(split, variant, where.lstrip("n"), int(seed[4:]))], abs=1e-9)


# --------------------------------------------------------------------------- transfer.mode=sizes (any dataset)

@pytest.fixture(scope="module")
def own_sizes(spark, tiny_data):
    """The size curve on tiny_data itself, from scratch and from a logged lane net (untrained: the test is of
    what is copied, trained and scored, not of how much it helps; benchmarks/domain_gap.sh measures that)."""
    from tests.faults.util import log_untrained_lane_net

    source = log_untrained_lane_net(Tracker(tiny_data()))
    conf = tiny_data("transfer.mode=sizes", f"transfer.init_model={source}", "transfer.seeds=2",
                     "transfer.steps=3", "transfer.epochs=1", "transfer.sizes=[8,1000]", "transfer.batch_size=8")
    return conf, source, run_stage(get_stage("transfer"), spark, conf, Tracker(conf))


def test_sizes_mode_trains_each_size_and_seed_from_scratch_and_from_the_model(own_sizes, one_thread):
    from pipeline.models import stored
    from pipeline.train.spec import first_rows

    conf, source, results = own_sizes
    client = MlflowClient(conf.mlflow.tracking_uri)
    stage = client.get_run(results["run_id"])
    runs = client.search_runs([stage.info.experiment_id], f"tags.`mlflow.parentRunId` = '{results['run_id']}'")
    assert sorted(r.info.run_name for r in runs) == sorted(
        f"transfer dataset/{v}/n{n}/seed{s}" for v in ("scratch", "pretrained") for n in (8, 1000) for s in (0, 1))
    assert all(r.info.status == "FINISHED" for r in runs)
    train_url = f"{dataset_root(conf.paths.data_url, 'synthetic')}/road_frames/train"
    every = read_meta(dataset_root(conf.paths.data_url, "synthetic"))["datasets"]["road_frames"]["splits"]["train"]
    assert stage.data.params["transfer.rows.n8"] == "8" and stage.data.params["transfer.rows.n1000"] == str(every)
    assert stage.data.params["transfer.init_model_resolved"] == source
    assert first_rows(train_url, 8) < first_rows(train_url, 1000)            # nested
    weights = stored.load(source, conf.mlflow.tracking_uri).state_dict()
    root = f"{conf.paths.checkpoint_url}/transfer/synthetic/dataset"
    for key in ("pretrained/n8/seed0", "pretrained/n1000/seed1", "scratch/n8/seed1"):
        checkpoint = load_checkpoint(f"{root}/{key}")
        assert checkpoint["args"]["train_rows"] == (8 if "/n8/" in key else every)
        start, *_ = build(_spec_of(checkpoint, f"{root}/{key}", init_head=checkpoint["args"]["init_head"]))
        same = [torch.equal(v, weights[k]) for k, v in start.state_dict().items() if k.endswith("weight")]
        if key.startswith("pretrained"):   # every layer, the head too (the same six lane classes in order)
            assert all(same) and checkpoint["args"]["init_head"]
        else:
            assert not any(same)
        assert checkpoint["args"]["train"]["seed"] == int(key[-1])
    # the summary, recomputed from what the cells logged; a cell re-scored on the dataset's own test split
    logged = {(r.data.tags["transfer.variant"], int(r.data.tags["transfer.size"]), int(r.data.tags["transfer.seed"])):
              r.data.metrics["test_accuracy"] for r in runs}
    for v in ("scratch", "pretrained"):
        for n in (8, 1000):
            values = [logged[(v, n, s)] for s in (0, 1)]
            assert stage.data.metrics[f"sizes.{v}.n{n}.mean"] == pytest.approx(np.mean(values), abs=1e-12)
            assert stage.data.metrics[f"sizes.{v}.n{n}.min"] == pytest.approx(min(values), abs=1e-12)
    assert stage.data.metrics["sizes.gain.n8"] == pytest.approx(
        np.mean([logged[("pretrained", 8, s)] for s in (0, 1)]) - np.mean([logged[("scratch", 8, s)] for s in (0, 1)]),
        abs=1e-12)
    from pipeline.train.evaluate import evaluate
    from pipeline.train.run import load_trained

    spec = _spec_of(load_checkpoint(f"{root}/pretrained/n8/seed1"), f"{root}/pretrained/n8/seed1")
    assert spec.data_root == dataset_root(conf.paths.data_url, "synthetic")
    accuracy = evaluate(load_trained(spec).eval(), spec.task, spec.loader("test"), list(spec.classes),
                        "test_").metrics["test_accuracy"]
    assert accuracy == pytest.approx(logged[("pretrained", 8, 1)], abs=1e-9)
    assert "figures/transfer_sizes.png" in {a.path for a in client.list_artifacts(results["run_id"], "figures")}
    # the model as it is (same classes: its head is kept) on the same test split, before any fine-tuning
    source_net = stored.load(source, conf.mlflow.tracking_uri).eval()
    as_is = evaluate(source_net, spec.task, spec.loader("test"), list(spec.classes), "test_").metrics["test_accuracy"]
    assert stage.data.metrics["sizes.as_is"] == pytest.approx(as_is, abs=1e-9)


def test_the_report_shows_the_size_curve_and_the_model_as_it_is(own_sizes, tmp_path):
    from pipeline import report

    conf, source, results = own_sizes
    client = MlflowClient(conf.mlflow.tracking_uri)
    stage = client.get_run(results["run_id"])
    found = report.find_runs(client, stage.info.experiment_id, None, set(), conf)
    html = report.transfer_section(found, report.Artifacts(client, tmp_path))
    m = stage.data.metrics
    assert f"fine-tuned from <code>{source}</code>" in html
    assert f"the model as it is, before fine-tuning: {report.fmt(m['sizes.as_is'])}" in html
    for v in ("scratch", "pretrained"):      # the size table's row: each size's mean, as logged
        row = f"<tr><td>{v}</td>" + "".join(f'<td class="num">{report.fmt(m[f"sizes.{v}.n{n}.mean"])}</td>'
                                            for n in (8, 1000)) + "</tr>"
        assert row in html, (v, row)


def test_sizes_mode_without_a_model_is_one_line(spark, tiny_data):
    with pytest.raises(ConfigError, match="transfer.mode=sizes needs transfer.init_model"):
        transfer.run(spark, tiny_data("transfer.mode=sizes", "transfer.batch_size=8"), None)
