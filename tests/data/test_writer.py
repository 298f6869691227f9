"""The dataset writer: units of work planned into Spark tasks, the tasks' job, the output committed and swapped in."""
import numpy as np
import pytest

from pipeline.data import parts, store, writer
from schemas.datasets import TLCropSchema
from tests.datasets import read_dataset


def _flat(groups):
    return [unit for group in groups for unit in group]


def _load(group, weight):
    return sum(weight[u] for u in group)


# ------------------------------------------------------------------------------------------------- plan

def test_weighted_plan_puts_every_unit_in_one_task_heaviest_first_onto_the_lightest():
    rng = np.random.default_rng(0)
    units = [f"file-{i:02d}" for i in range(37)]
    weight = dict(zip(units, rng.pareto(1.5, len(units)) * 100 + 1))    # a few heavy files, many light ones
    groups = writer.plan_tasks(units, 4, [weight[u] for u in units])
    assert len(groups) == 4 and all(groups)
    assert sorted(_flat(groups)) == units                               # every unit, in exactly one task
    loads = [_load(g, weight) for g in groups]
    heaviest = groups[loads.index(max(loads))]
    # largest first onto the lightest: the heaviest task was the lightest when its last (smallest) unit came
    assert max(loads) - min(loads) <= min(weight[u] for u in heaviest)
    assert [weight[u] for u in heaviest] == sorted((weight[u] for u in heaviest), reverse=True)


def test_weighted_plan_balances_where_dealing_in_turn_would_not():
    units = ["big", "a", "b", "c", "d", "e"]
    assert writer.plan_tasks(units, 2, [5, 1, 1, 1, 1, 1]) == [["big"], ["a", "b", "c", "d", "e"]]
    # equal weights deal the units out in turn: what transfer's derive did before the writer planned its tasks
    assert writer.plan_tasks(range(10), 4, [1] * 10) == [[0, 4, 8], [1, 5, 9], [2, 6], [3, 7]]
    assert writer.plan_tasks(["x", "y"], 8, [3, 1]) == [["x"], ["y"]]            # no empty task
    assert writer.plan_tasks([], 8, []) == []
    with pytest.raises(ValueError, match="2 weights for 3 units"):
        writer.plan_tasks(["x", "y", "z"], 2, [1, 1])


@pytest.mark.parametrize("n", [0, 1, 7, 10, 23, 48, 50, 401, 5000])
def test_unweighted_plan_is_the_runs_spark_cuts_a_list_into(spark, n):
    """Without weights (ingest's inputs) the tasks get the inputs Spark's ``parallelize`` gave them before the
    writer planned them: every ingest writes the same files, row for row."""
    for tasks in (1, 2, 3, 4, 5, 8):
        planned = writer.plan_tasks(list(range(n)), tasks)
        assert len(planned) == tasks and _flat(planned) == list(range(n))
        assert planned == spark.sparkContext.parallelize(list(range(n)), tasks).glom().collect(), (n, tasks)


# ------------------------------------------------------------------------------------------------ write

def test_the_job_runs_one_task_per_group_with_its_index(spark):
    groups = writer.plan_tasks([f"u{i}" for i in range(11)], 3)
    job = writer.task_job(spark, groups, lambda index, units: [(index, units)])
    assert job.getNumPartitions() == 3
    assert job.collect() == list(enumerate(groups))


# ----------------------------------------------------------------------------------------------- commit

def _crop(i: int) -> dict:
    return {"id": f"r{i:03d}", "group": "g", "split": "train", "source": "test",
            "image": np.full((32, 32, 3), i, np.uint8), "label": 0, "label_name": "red", "distance": "near"}


def _write(url: str, name: str, ids) -> dict:
    part = parts.PartWriter(url, name, 1)
    for i in ids:
        part.add("tl_crops/train", parts.arrow_schema(TLCropSchema), parts.encode_row(TLCropSchema, _crop(i)))
    return part.close()


def _ids(url: str) -> list:
    return sorted(read_dataset(url, ["id"]))


def test_an_output_replaces_the_dataset_whole_and_only_when_published(tmp_path):
    root = (tmp_path / "ds").as_uri()
    first = writer.Output(root)
    first.commit(parts.merge([_write(first.tmp, "part-00000", range(3))]), lambda folder: TLCropSchema)
    first.publish({"datasets": {"tl_crops": {"rows": 3}}})
    (tmp_path / "ds.tmp-deadbeef").mkdir()                             # what a killed writer left
    out = writer.Output(root)
    assert not (tmp_path / "ds.tmp-deadbeef").exists() and out.tmp.startswith(f"{root}.tmp-")
    reports = [_write(out.tmp, "part-00000", range(0, 5)), _write(out.tmp, "part-00001", range(5, 8))]
    _write(out.tmp, "part-00001", range(5, 8))                          # an attempt whose report was lost
    written = out.commit(parts.merge(reports), lambda folder: TLCropSchema)
    assert written == {"tl_crops/train": 8}
    assert _ids(f"{root}/tl_crops/train") == ["r000", "r001", "r002"]   # the old dataset until published
    writer.expect_rows("test", written, {"tl_crops/train": 8})
    out.publish({"datasets": {"tl_crops": {"rows": 8}}})
    assert _ids(f"{root}/tl_crops/train") == [f"r{i:03d}" for i in range(8)]   # none lost, none twice
    assert store.read_meta(root)["datasets"]["tl_crops"]["rows"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]         # no temporary folder left


def test_expect_rows_names_the_folder_that_is_short():
    writer.expect_rows("augment", {"a/train": 6, "a/val": 2}, {"a/train": 6, "a/val": 2})
    with pytest.raises(writer.AccountingError, match=r"augment wrote 5 rows to a/train, expected 6 \(2 copies"):
        writer.expect_rows("augment", {"a/train": 5}, {"a/val": 0, "a/train": 6}, {"a/train": "2 copies each"})
    with pytest.raises(writer.AccountingError, match="wrote 0 rows to a/test, expected 1"):
        writer.expect_rows("x", {}, {"a/test": 1})
