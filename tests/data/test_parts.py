"""Datasets written by the tasks themselves: readable by Petastorm and Spark, retry-safe, checked on disk."""
import numpy as np
import pytest
from pipeline.data import parts
from schemas.datasets import TLCropSchema
from tests.datasets import needs_petastorm, read_dataset


def crop_row(i: int) -> dict:
    rng = np.random.default_rng(i)
    return {"id": f"r{i:03d}", "group": f"g{i // 4}", "split": "train", "source": "test",
            "image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), "label": i % 5,
            "label_name": "red", "distance": "near"}


def write(url: str, name: str, rows: list, rowgroup_mb: float = 0.01) -> dict:
    writer = parts.PartWriter(url, name, rowgroup_mb)
    schema = parts.arrow_schema(TLCropSchema)
    for i in rows:
        writer.add("tl_crops/train", schema, parts.encode_row(TLCropSchema, crop_row(i)))
    return writer.close()


def test_rows_must_match_the_schema():
    row = crop_row(0)
    del row["label"]
    with pytest.raises(ValueError, match=r"missing \['label'\]"):
        parts.encode_row(TLCropSchema, {**row, "colour": "red"})
    with pytest.raises((TypeError, ValueError), match="label"):   # the codec checks values
        parts.encode_row(TLCropSchema, {**crop_row(0), "label": np.zeros(2, np.int32)})


def test_task_files_make_a_petastorm_dataset_spark_reads_too(tmp_path, spark):
    url = (tmp_path / "ds").as_uri()
    reports = [write(url, "part-00000", range(0, 30)), write(url, "part-00001", range(30, 45))]
    files = parts.merge(reports)["tl_crops/train"]
    assert [f["file"] for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    assert files[0]["row_groups"] > 1                       # about 10 kB row groups: several per file
    assert parts.finalize(f"{url}/tl_crops/train", TLCropSchema, files) == 45
    got = read_dataset(f"{url}/tl_crops/train")
    assert len(got) == 45 and np.array_equal(got["r007"]["image"], crop_row(7)["image"])
    df = spark.read.parquet(f"{url}/tl_crops/train")
    assert df.count() == 45 and dict(zip(df.columns, [None] * 8)).keys() == set(TLCropSchema.fields)


def test_attempts_never_duplicate_rows_and_a_late_attempt_cannot_touch_a_committed_file(tmp_path):
    url = (tmp_path / "ds").as_uri()
    folder = tmp_path / "ds" / "tl_crops" / "train"
    write(url, "part-00000", range(0, 10))                     # a failed first attempt (its report is lost)
    report = write(url, "part-00000", range(0, 10))            # the retry whose report the driver got
    zombie = parts.PartWriter(url, "part-00000", 0.01)         # a speculative attempt still running
    schema = parts.arrow_schema(TLCropSchema)
    zombie.add("tl_crops/train", schema, parts.encode_row(TLCropSchema, crop_row(99)))
    files = parts.merge([report])["tl_crops/train"]
    assert parts.finalize(f"{url}/tl_crops/train", TLCropSchema, files) == 10
    assert sorted(p.name for p in folder.iterdir()) == ["_common_metadata", "part-00000.parquet"]
    committed = (folder / "part-00000.parquet").read_bytes()
    zombie.close()                                             # finishes after the commit: a hidden file only
    assert (folder / "part-00000.parquet").read_bytes() == committed
    assert sorted(read_dataset(f"{url}/tl_crops/train")) == [f"r{i:03d}" for i in range(10)]


def test_a_task_with_no_rows_writes_an_empty_file_that_commits(tmp_path):
    url = (tmp_path / "ds").as_uri()
    writer = parts.PartWriter(url, "part-00003", 4)
    writer.ensure("quarantine", parts.arrow_schema(TLCropSchema))
    files = parts.merge([writer.close()])["quarantine"]
    assert files[0]["rows"] == 0 and files[0]["row_groups"] == 0
    assert parts.commit(f"{url}/quarantine", files) == 0


@needs_petastorm
def test_petastorms_ranks_shard_the_row_groups_and_together_read_every_row_once(tmp_path):
    """Petastorm's own sharding on the project's datasets (the project's: tests/data/test_format.py)."""
    from petastorm import make_batch_reader

    url = (tmp_path / "ds").as_uri()
    reports = [write(url, f"part-{k:05d}", range(20 * k, 20 * k + 20)) for k in range(3)]
    files = parts.merge(reports)["tl_crops/train"]
    assert parts.finalize(f"{url}/tl_crops/train", TLCropSchema, files) == 60
    seen = []
    for rank in range(3):
        with make_batch_reader(f"{url}/tl_crops/train", cur_shard=rank, shard_count=3, reader_pool_type="dummy",
                               num_epochs=1, schema_fields=["id"]) as reader:
            ids = [i for batch in reader for i in batch.id]
        assert ids                                            # every rank gets a share
        seen += ids
    assert sorted(seen) == [f"r{i:03d}" for i in range(60)]


def test_finalize_refuses_what_the_tasks_did_not_report(tmp_path):
    url = (tmp_path / "ds").as_uri()
    both = parts.merge([write(url, "part-00000", range(0, 10)), write(url, "part-00001", range(10, 12))])
    parts.commit(f"{url}/tl_crops/train", both["tl_crops/train"])
    first = [{k: v for k, v in both["tl_crops/train"][0].items() if k != "hidden"}]   # committed already
    with pytest.raises(RuntimeError, match="part-00001.parquet"):   # on disk, but in no report
        parts.finalize(f"{url}/tl_crops/train", TLCropSchema, first)
    (tmp_path / "ds" / "tl_crops" / "train" / "part-00001.parquet").unlink()
    with pytest.raises(RuntimeError, match="10 rows .* 11 in"):
        parts.finalize(f"{url}/tl_crops/train", TLCropSchema, [dict(first[0], rows=11)])
    with pytest.raises(RuntimeError, match="no task wrote"):
        parts.finalize(f"{url}/tl_crops/val", TLCropSchema, [])


def test_png_level_changes_the_bytes_not_the_pixels():
    from schemas.datasets import RoadFrameSchema

    field = RoadFrameSchema.fields["image"]
    image = np.tile(np.arange(64, dtype=np.uint8)[:, None, None], (1, 64, 3))
    stored = {level: parts.encode_png(field, image, level) for level in (0, 1, 9)}
    assert len(stored[0]) > 2 * len(stored[9])                       # level 0 stores, 9 compresses
    for data in stored.values():
        assert np.array_equal(field.codec.decode(field, data), image)   # the codec reads any level
    with pytest.raises(ValueError, match="image"):
        parts.encode_png(field, image.astype(np.float32), 0)
