"""Datasets written by the tasks themselves: readable by Petastorm and Spark, retry-safe, checked on disk."""
import numpy as np
import pytest
from petastorm import make_batch_reader, make_reader

from pipeline.data import parts
from schemas.datasets import TLCropSchema


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
    with make_reader(f"{url}/tl_crops/train", reader_pool_type="dummy", num_epochs=1) as reader:
        got = {r.id: r for r in reader}
    assert len(got) == 45 and np.array_equal(got["r007"].image, crop_row(7)["image"])
    with make_batch_reader(f"{url}/tl_crops/train", reader_pool_type="dummy", num_epochs=1) as reader:
        assert sum(len(b.id) for b in reader) == 45
    df = spark.read.parquet(f"{url}/tl_crops/train")
    assert df.count() == 45 and dict(zip(df.columns, [None] * 8)).keys() == set(TLCropSchema.fields)


def test_a_retried_task_replaces_its_file_and_leftovers_are_removed(tmp_path):
    url = (tmp_path / "ds").as_uri()
    write(url, "part-00000", range(0, 10))
    report = write(url, "part-00000", range(0, 10))            # the retry: same name, same rows
    leftover = tmp_path / "ds" / "tl_crops" / "train" / ".part-00000.parquet.dead.inprogress"
    leftover.write_bytes(b"half a file from a killed attempt")
    files = parts.merge([report])["tl_crops/train"]
    assert parts.finalize(f"{url}/tl_crops/train", TLCropSchema, files) == 10
    assert not leftover.exists()
    assert parts.count_rows(f"{url}/tl_crops/train") == 10


def test_finalize_refuses_what_the_tasks_did_not_report(tmp_path):
    url = (tmp_path / "ds").as_uri()
    report = write(url, "part-00000", range(0, 10))
    write(url, "part-00001", range(10, 12))                   # on disk, but its report is lost
    with pytest.raises(RuntimeError, match="part-00001.parquet"):
        parts.finalize(f"{url}/tl_crops/train", TLCropSchema, parts.merge([report])["tl_crops/train"])
    wrong = [dict(parts.merge([report])["tl_crops/train"][0], rows=11)]
    (tmp_path / "ds" / "tl_crops" / "train" / "part-00001.parquet").unlink()
    with pytest.raises(RuntimeError, match="10 rows .* 11 in"):
        parts.finalize(f"{url}/tl_crops/train", TLCropSchema, wrong)
