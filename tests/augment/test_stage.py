"""The augment stage on Spark, and the same functions online in the training loader."""
import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.augment.policy import PolicyError, get_policy
from pipeline.augment.rows import augment_row
from pipeline.data.store import dataset_root, read_meta
from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker
from pipeline.train import loader
from pipeline.train.spec import make_spec
from tests.datasets import read_dataset


def read(url, fields=None):
    return read_dataset(url, fields)


def augment(spark, conf):
    return run_stage(get_stage("augment"), spark, conf, Tracker(conf))


@pytest.fixture(scope="module")
def augmented(spark, tiny_data):
    conf = tiny_data("augment.policy=basic", "augment.copies=2")
    return conf, augment(spark, conf)


def test_train_rows_get_copies_with_lineage_val_and_test_untouched(augmented):
    conf, results = augmented
    src, dst = dataset_root(conf.paths.data_url, "synthetic"), dataset_root(conf.paths.data_url, "synthetic-basic")
    assert results["dataset_url"] == dst
    source, out = read(f"{src}/road_frames/train"), read(f"{dst}/road_frames/train")
    assert len(out) == 3 * len(source)
    for parent_id, parent in source.items():
        copies = {r["copy"]: r for r in out.values() if r["parent_id"] == parent_id}
        assert sorted(copies) == [0, 1, 2]
        assert np.array_equal(copies[0]["image"], parent["image"]) and copies[0]["ops"] == "[]"
        assert all(r["label"] == parent["label"] and r["group"] == parent["group"] for r in copies.values())
    changed = [r for r in out.values() if r["copy"] and json.loads(r["ops"])]
    differs = [not np.array_equal(r["image"], source[r["parent_id"]]["image"]) for r in changed]
    assert changed and sum(differs) >= 0.9 * len(changed)
    for split in ("val", "test"):
        before, after = read(f"{src}/road_frames/{split}"), read(f"{dst}/road_frames/{split}")
        assert set(before) == set(after)
        assert all(np.array_equal(before[k]["image"], after[k]["image"]) for k in before)
    meta = read_meta(dst)
    assert meta["augment"]["copies"] == 2 and meta["augment"]["policy"]["name"] == "basic"
    # the augmented dataset trains like the ingested one: its class names in label order are kept
    assert meta["datasets"]["road_frames"]["labels"] == read_meta(src)["datasets"]["road_frames"]["labels"]
    make_spec(conf.model_copy(update={"train": conf.train.model_copy(update={"data": "synthetic-basic"})}))


def test_any_augmented_row_is_re_derived_from_its_parent(augmented):
    conf, _ = augmented
    src, dst = dataset_root(conf.paths.data_url, "synthetic"), dataset_root(conf.paths.data_url, "synthetic-basic")
    policy = get_policy("basic", seed=0)
    for kind in ("tl_frames", "road_frames"):
        source, out = read(f"{src}/{kind}/train"), read(f"{dst}/{kind}/train")
        for row in list(out.values())[:12]:
            if row["copy"] == 0:
                continue
            again, applied = augment_row(kind, source[row["parent_id"]], policy, row["parent_id"], row["copy"])
            assert applied == json.loads(row["ops"])
            assert np.array_equal(again["image"], row["image"])
            if kind == "tl_frames":
                np.testing.assert_allclose(again["boxes"], row["boxes"], atol=1e-5)
                assert list(again["states"]) == list(row["states"])


def test_rerun_is_bit_identical(spark, augmented):
    conf, _ = augmented
    dst = dataset_root(conf.paths.data_url, "synthetic-basic")
    first = read(f"{dst}/tl_frames/train")
    augment(spark, conf)
    second = read(f"{dst}/tl_frames/train")
    assert set(first) == set(second)
    assert all(np.array_equal(first[k]["image"], second[k]["image"]) and first[k]["ops"] == second[k]["ops"]
               for k in first)


def test_augment_is_tracked_with_op_counts_and_pictures(augmented):
    conf, results = augmented
    client = MlflowClient(conf.mlflow.tracking_uri)
    run = client.get_run(results["run_id"])
    out = read(f"{dataset_root(conf.paths.data_url, 'synthetic-basic')}/road_frames/train")
    flips = sum(a["op"] == "hflip" for r in out.values() for a in json.loads(r["ops"]))
    assert run.data.metrics["ops.road_frames.hflip"] == flips > 0
    figures = {a.path for a in client.list_artifacts(results["run_id"], "figures")}
    assert {"figures/policy_road_frames.png", "figures/ops_tl_frames.png"} <= figures


def test_copies_of_one_stored_row_without_spark_or_files():
    """The stage's transform alone: copy 0 is the stored row with its lineage, copies 1..N its re-derivable
    augmentations, each with the ops it says were applied."""
    from pipeline.augment.stage import copies_of
    from pipeline.data.parts import encode_row
    from schemas.datasets import AUGMENTED_SCHEMAS, SCHEMAS, decode_row

    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    stored = encode_row(SCHEMAS["tl_crops"], {"id": "f1#0", "group": "g", "split": "train", "source": "s",
                                              "image": image, "label": 0, "label_name": "red", "distance": "near"})
    policy = get_policy("basic", seed=0)
    out = list(copies_of("tl_crops", stored, policy, 2))
    assert [(r["id"], r["parent_id"], r["copy"]) for r, _ in out] == [
        ("f1#0", "f1#0", 0), ("f1#0~1", "f1#0", 1), ("f1#0~2", "f1#0", 2)]
    assert out[0][0]["image"] == stored["image"] and out[0][1] == [] and out[0][0]["ops"] == "[]"
    for row, applied in out[1:]:
        again, ops = augment_row("tl_crops", decode_row(SCHEMAS["tl_crops"], stored), policy, "f1#0", row["copy"])
        assert applied == ops == json.loads(row["ops"])
        assert np.array_equal(decode_row(AUGMENTED_SCHEMAS["tl_crops"], row)["image"], again["image"])
    assert any(json.loads(row["ops"]) for row, _ in out[1:])


def test_context_policy_pastes_onto_a_recorded_background(spark, tiny_data):
    conf = tiny_data("augment.policy=context", "augment.copies=1", "augment.name=ctx")
    augment(spark, conf)
    out = read(f"{dataset_root(conf.paths.data_url, 'ctx')}/tl_frames/train")
    pasted = [a for r in out.values() for a in json.loads(r["ops"]) if a["op"] == "context_paste"
              and "background" in a]
    assert pasted and all(a["background"] in out for a in pasted)


def test_unknown_policy_is_named(spark, tiny_data):
    with pytest.raises(PolicyError, match="unknown policy 'fancy'"):
        augment(spark, tiny_data("augment.policy=fancy"))
    with pytest.raises(PolicyError, match="unknown policy 'fancy'"):
        make_spec(tiny_data("train.augment_policy=fancy"))


def test_online_augmentation_is_the_offline_function(augmented):
    """The loader's copy e+1 of a row equals the Spark job's copy e+1 of it: one implementation."""
    conf, _ = augmented
    online_conf = conf.model_copy(update={"train": conf.train.model_copy(update={"augment_policy": "basic"})})
    train = make_spec(online_conf).loader("train")
    assert train.policy is not None
    batch = [r for r in loader.rows(train)][:6]
    online = loader.augment_batch(train, batch, epoch=0)            # copy 1
    offline = read(f"{dataset_root(conf.paths.data_url, 'synthetic-basic')}/road_frames/train")
    for row, aug in zip(batch, online):
        assert np.array_equal(aug["image"], offline[f"{row['id']}~1"]["image"])
    x_plain, _ = loader.collate("road_frames", batch)
    x_aug, _ = loader.collate("road_frames", online)
    assert not np.array_equal(x_plain.numpy(), x_aug.numpy())


def _online(conf, policy: str, task: str = "lane_classifier"):
    t = conf.train.model_copy(update={"augment_policy": policy, "task": task})
    return make_spec(conf.model_copy(update={"train": t})).loader("train")


def test_online_context_paste_moves_road_frames_onto_other_backgrounds(tiny_data):
    """The loader reads the lane masks the context ops need: the online context policy is not a no-op."""
    train = _online(tiny_data(), "context")
    assert "lane_mask" in train.fields
    batch = [r for r in loader.rows(train)][:16]
    counts: dict = {}
    online = loader.augment_batch(train, batch, epoch=0, op_counts=counts)
    applied, skipped = counts["context_paste"]
    assert applied > 0 and skipped < applied, counts
    changed = [not np.array_equal(a["image"], r["image"]) for r, a in zip(batch, online)]
    assert sum(changed) >= applied
    # ... and it is the offline stage's function: the same row, copy and background give the same pixels
    from pipeline.augment.rows import augment_row

    again, _ = augment_row("road_frames", batch[0], train.policy, batch[0]["id"], 1, background=batch[1]["image"])
    assert np.array_equal(again["image"], online[0]["image"])


def test_an_op_skipped_for_every_row_of_an_epoch_says_so(tiny_data, capsys):
    from pipeline.train.run import augment_counts

    crops = _online(tiny_data(), "context", task="tl_classifier")        # crops: no box, no mask to keep
    batch = [r for r in loader.rows(crops)][:16]
    counts: dict = {}
    loader.augment_batch(crops, batch, epoch=0, op_counts=counts)
    assert counts["context_paste"][0] == 0 and counts["context_paste"][1] > 0
    metrics = augment_counts(counts, epoch=0)
    assert metrics["augment.context_paste.skipped"] == counts["context_paste"][1]
    assert metrics["augment.context_paste.applied"] == 0
    assert "context_paste was skipped for all" in capsys.readouterr().out
