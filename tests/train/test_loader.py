import numpy as np
import pytest
import torch

from pipeline.train import loader
from pipeline.train.spec import make_spec
from tests.datasets import read_dataset


def test_heat_target_peaks_at_each_light_centre():
    t = loader.heat_target(np.array([[8, 8, 16, 24], [40, 0, 44, 6]], np.float32), (32, 64))
    assert t.shape == (1, 8, 16)
    assert t[0, 4, 3] == 1.0 and t[0, 0, 10] == 1.0          # centres (12, 16) and (42, 3) in 4-px cells
    assert t.max() == 1.0 and 0 < t[0, 4, 2] < 1 and t[0, 7, 15] < 1e-3


def _frame_with_lights(height=64, width=96):
    """A frame whose pixels say where they are (row, column), with two lights."""
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([ys, xs, np.zeros_like(ys)], axis=-1).astype(np.uint8)
    return {"id": "f", "image": image, "boxes": np.array([[10, 6, 14, 18], [70, 40, 73, 47]], np.float32)}


def test_detector_crops_are_the_frame_cut_on_its_cells_with_its_target_cut_alike():
    row = _frame_with_lights()
    whole = loader.heat_target(row["boxes"], (64, 96))
    rng = np.random.default_rng(0)
    starts = set()
    for on_lights in (1.0, 0.0):
        for _ in range(40):
            crop = loader.crop_frames([row], (32, 48), rng, on_lights)[0]
            top, left = int(crop["image"][0, 0, 0]), int(crop["image"][0, 0, 1])
            starts.add((top, left))
            assert crop["image"].shape == (32, 48, 3) and top % 4 == 0 and left % 4 == 0
            assert (crop["image"][..., 0] == np.arange(top, top + 32)[:, None]).all()
            target = loader.heat_target(crop["boxes"], (32, 48))
            np.testing.assert_allclose(target, whole[:, top // 4:top // 4 + 8, left // 4:left // 4 + 12], atol=1e-6)
            if on_lights:   # a light's centre (its cell exactly 1) is inside every crop placed on a light
                assert target.max() == 1.0
    assert len(starts) > 20   # placed at random, not at one spot


def test_crops_on_lights_follow_the_share_asked_for():
    row = _frame_with_lights(144, 256)
    rng = np.random.default_rng(1)
    holds = lambda share: np.mean([loader.heat_target(c["boxes"], (32, 32)).max() == 1.0  # noqa: E731
                                   for c in loader.crop_frames([row] * 400, (32, 32), rng, share)])
    none, half, every = holds(0.0), holds(0.5), holds(1.0)
    assert every == 1.0 and none < 0.15 and 0.4 < half < 0.65


def test_a_frame_no_larger_than_the_crop_stays_whole():
    row = _frame_with_lights(24, 40)
    crop = loader.crop_frames([row], (32, 48), np.random.default_rng(0), 1.0)[0]
    assert crop["image"].shape == (24, 40, 3) and (crop["boxes"] == row["boxes"]).all()


def test_shards_are_disjoint_and_cover_the_split(tiny_data):
    spec = make_spec(tiny_data()).loader("train")
    everything = sorted(r["id"] for r in loader.rows(spec))
    shard0 = [r["id"] for r in loader.rows(spec, rank=0, world=2)]
    shard1 = [r["id"] for r in loader.rows(spec, rank=1, world=2)]
    assert not set(shard0) & set(shard1)
    assert sorted(shard0 + shard1) == everything and shard0 and shard1


def test_every_rank_gets_exactly_the_requested_steps_even_when_its_shard_is_short(tiny_data):
    spec = make_spec(tiny_data()).loader("train")
    total = len(list(loader.rows(spec)))
    steps = total  # far more batches than one shard holds: the shard cycles
    for rank in (0, 1):
        got = list(loader.batches(spec, steps, rank=rank, world=2, epoch=0))
        assert len(got) == steps
        x, y = got[0]
        assert x.shape == (8, 3, 64, 64) and y.shape == (8,) and x.dtype == loader.torch.float32


def test_batches_are_reproducible_per_seed_and_epoch(tiny_data):
    spec = make_spec(tiny_data()).loader("train")
    first = [y.tolist() for _, y in loader.batches(spec, 3, epoch=1)]
    again = [y.tolist() for _, y in loader.batches(spec, 3, epoch=1)]
    other = [y.tolist() for _, y in loader.batches(spec, 3, epoch=2)]
    assert first == again
    ids = lambda epoch: [r["id"] for r in loader.rows(spec, seed=epoch, shuffle=True)]  # noqa: E731
    assert ids(1) == ids(1) and ids(1) != ids(2)
    assert other  # a different epoch still yields full batches


def test_detector_batches_carry_heat_maps(tiny_data):
    spec = make_spec(tiny_data("train.task=tl_detector", "train.crop_hw=null")).loader("train")
    x, y = next(loader.batches(spec, 1))
    assert x.shape == (8, 3, 72, 128) and y.shape == (8, 1, 18, 32)
    assert y.max() == 1.0


def test_the_detector_trains_on_crops_and_is_validated_on_whole_frames(tiny_data):
    spec = make_spec(tiny_data("train.task=tl_detector", "train.crop_hw=[32,48]"))
    x, y = next(loader.batches(spec.loader("train"), 1))
    assert x.shape == (8, 3, 32, 48) and y.shape == (8, 1, 8, 12)
    x, y, _ = next(loader.eval_batches(spec.loader("val")))
    assert x.shape[1:] == (3, 72, 128) and y.shape[1:] == (1, 18, 32)
    classifier = make_spec(tiny_data("train.task=tl_classifier", "train.crop_hw=[16,16]")).loader("train")
    assert classifier.crop is None   # classifiers ignore it


def test_missing_dataset_names_the_fix(tiny_data):
    with pytest.raises(Exception, match="run `pipeline ingest` first"):
        make_spec(tiny_data("train.data=nowhere"))


def test_to_tensor_normalises_and_from_tensor_inverts():
    from pipeline.models import normalize

    images = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    x = normalize.to_tensor(images)
    assert x.shape == (3, 3, 5, 7) and x.dtype == torch.float32
    expected = (torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255 - normalize.MEAN) / normalize.STD
    assert torch.allclose(x.double(), expected, atol=1e-5)
    assert np.array_equal(normalize.from_tensor(x), images)


def test_image_decode_matches_the_petastorm_codec_and_is_contiguous():
    from schemas.datasets import RoadFrameSchema, field_decoders

    field = RoadFrameSchema.fields["image"]
    image = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    stored = field.codec.encode(field, image)
    decoded = field_decoders(RoadFrameSchema, ["image", "label"])["image"](stored)
    assert np.array_equal(decoded, field.codec.decode(field, stored)) and np.array_equal(decoded, image)
    assert decoded.flags["C_CONTIGUOUS"]


@pytest.fixture(scope="module")
def other_format(spark, tiny_data, tmp_path_factory):
    """The tiny synthetic ingest again (the same frames) with the other ``ingest.image_format`` than the
    shared one's; returns ``{format: config factory}`` for both."""
    from pipeline.stages import get_stage, run_stage
    from pipeline.tracking import Tracker
    from tests.conftest import TINY, make_conf

    shared = tiny_data().ingest.image_format
    other = {"raw": "png", "png": "raw"}[shared]
    work = tmp_path_factory.mktemp(other)
    conf = make_conf(work, *TINY, f"ingest.image_format={other}")
    run_stage(get_stage("ingest"), spark, conf, Tracker(conf))
    return {shared: tiny_data, other: lambda *overrides: make_conf(work, *TINY, f"ingest.image_format={other}",
                                                                   *overrides)}


@pytest.mark.parametrize("task", ["lane_classifier", "tl_detector"])
def test_raw_images_give_the_same_batches_as_png_and_petastorm_reads_them(other_format, task):
    import pyarrow.parquet as pq

    png, raw = (make_spec(other_format[fmt](f"train.task={task}")).loader("train") for fmt in ("png", "raw"))
    for fmt, spec in (("png", png), ("raw", raw)):   # stored as asked: PNG bytes, or NumPy's .npy bytes
        first = pq.read_table(spec.url[len("file://"):], columns=["image"]).column("image")[0].as_py()
        assert bytes(first[:6]) == (b"\x93NUMPY" if fmt == "raw" else b"\x89PNG\r\n"), fmt
    for (xp, yp), (xr, yr) in zip(loader.batches(png, 3, epoch=1), loader.batches(raw, 3, epoch=1)):
        assert torch.equal(xp, xr) and torch.equal(yp, yr)
    # the stored Unischema says how the images are stored: Petastorm's own reader decodes them (petastorm set)
    stored = {k: r["image"] for k, r in read_dataset(raw.url, ["image"]).items()}
    ours = {r["id"]: r["image"] for r in loader.rows(png)}
    assert stored.keys() == ours.keys() and all(np.array_equal(stored[k], ours[k]) for k in ours)


def test_raw_stored_column_decodes_in_one_copy_and_falls_back_when_it_cannot():
    import io

    from schemas.datasets import decode_image, decode_images

    def npy(a):
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    images = np.random.default_rng(2).integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    whole = decode_images(np.array([npy(a) for a in images], dtype=object))
    assert whole.shape == (4, 6, 5, 3) and np.array_equal(whole, images)
    assert decode_images([npy(images[0]), npy(images[1][:5])]) is None                 # two shapes
    assert decode_images([npy(images[0]), npy(images[1].astype(np.int16)[..., :1])]) is None
    field = loader_png_field()
    assert decode_images([field.codec.encode(field, images[0])]) is None               # PNG: one by one
    assert np.array_equal(decode_image(npy(images[3])), images[3])
    assert np.array_equal(decode_image(field.codec.encode(field, images[3])), images[3])


def loader_png_field():
    from schemas.datasets import RoadFrameSchema

    return RoadFrameSchema.fields["image"]


def test_decode_workers_change_nothing_but_speed(tiny_data):
    from dataclasses import replace

    spec = make_spec(tiny_data()).loader("train")
    one = [(x, y) for x, y in loader.batches(replace(spec, workers=1), 4, epoch=3)]
    three = [(x, y) for x, y in loader.batches(replace(spec, workers=3), 4, epoch=3)]
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(one, three))
    assert loader.decode_workers(0, 1) >= 1 and loader.decode_workers(5, 2) == 5


def test_gpu_settings_on_a_machine_without_a_gpu_say_how_to_train_on_the_cpu(tiny_data):
    from pipeline.config import ConfigError
    from pipeline.train.run import resolve_devices

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the message is for machines without one")
    with pytest.raises(ConfigError, match=r"no CUDA GPU.*--profile local.*train.use_gpu=false"):
        resolve_devices(tiny_data("train.use_gpu=true", "train.num_processes=0"))
    assert resolve_devices(tiny_data("train.num_processes=0")).train.num_processes == 1
    with pytest.raises(ConfigError, match="set train.num_processes to the GPUs"):
        resolve_devices(tiny_data("train.use_gpu=true", "train.num_processes=0", "train.local_mode=false"))
