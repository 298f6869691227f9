"""schemas.format writes Petastorm's dataset format without importing Petastorm, and the project reads datasets
with pyarrow alone. Checked here against Petastorm itself (on the pin set that has it): the pickled Unischema
byte for byte, each codec's stored bytes, the Arrow schema Spark gives, and a dataset read the same by both; the
project's reader on both sets."""
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.data import parts, store
from pipeline.train import loader
from schemas import format as fmt
from schemas.datasets import AUGMENTED_SCHEMAS, SCHEMAS, TLCropSchema, with_image_format
from tests.datasets import needs_petastorm, sample

ALL = [*SCHEMAS.values(), *AUGMENTED_SCHEMAS.values(),
       *(with_image_format(s, "raw") for s in [*SCHEMAS.values(), *AUGMENTED_SCHEMAS.values()])]


@needs_petastorm
@pytest.mark.parametrize("schema", ALL, ids=lambda s: s._name)
def test_the_stored_schema_is_petastorms_own_pickle_byte_for_byte(schema):
    petastorm_schema = schema.as_unischema()
    assert type(petastorm_schema).__module__ == "petastorm.unischema"
    assert fmt.unischema_bytes(schema) == pickle.dumps(petastorm_schema, protocol=4)
    metadata = schema.metadata({"part-00000.parquet": 2})
    assert metadata[fmt.UNISCHEMA_KEY] == pickle.dumps(petastorm_schema, protocol=4)
    from petastorm.etl.dataset_metadata import ROW_GROUPS_PER_FILE_KEY, UNISCHEMA_KEY

    assert (fmt.UNISCHEMA_KEY, fmt.ROW_GROUPS_PER_FILE_KEY) == (UNISCHEMA_KEY, ROW_GROUPS_PER_FILE_KEY)


@needs_petastorm
@pytest.mark.parametrize("schema", ALL, ids=lambda s: s._name)
def test_columns_are_what_spark_writes_for_petastorms_schema(schema):
    from pyspark.sql.pandas.types import to_arrow_schema

    assert schema.arrow_schema() == to_arrow_schema(schema.as_unischema().as_spark_schema())


@needs_petastorm
@pytest.mark.parametrize("schema", ALL, ids=lambda s: s._name)
def test_every_codec_stores_petastorms_bytes_and_decodes_them_alike(schema):
    rng = np.random.default_rng(len(schema._name))
    theirs = schema.as_unischema().fields
    for name, field in schema.fields.items():
        value = sample(field, rng)
        ours = field.codec.encode(field, value)
        assert ours == theirs[name].codec.encode(theirs[name], value), name
        assert np.array_equal(field.codec.decode(field, ours), theirs[name].codec.decode(theirs[name], ours)), name
        assert np.array_equal(field.codec.decode(field, ours), value), name
    image = schema.fields["image"]
    with pytest.raises(ValueError, match="image"):
        image.codec.encode(image, np.zeros((4, 4, 3), np.float32))


def _dataset(tmp_path, files=3, rows=20):
    from tests.data.test_parts import write

    url = (tmp_path / "ds").as_uri()
    reports = [write(url, f"part-{k:05d}", range(rows * k, rows * k + rows)) for k in range(files)]
    assert parts.finalize(f"{url}/tl_crops/train", TLCropSchema, parts.merge(reports)["tl_crops/train"]) \
        == files * rows
    return f"{url}/tl_crops/train"


@needs_petastorm
def test_petastorms_reader_and_the_projects_read_the_same_rows(tmp_path):
    from petastorm import make_reader

    url = _dataset(tmp_path)
    with make_reader(url, reader_pool_type="dummy", num_epochs=1, shuffle_row_groups=False) as reader:
        theirs = {r.id: r for r in reader}          # (Petastorm unpickles the stored schema: ours, written here)
    spec = loader.LoaderSpec(url, "tl_crops", 8, extra=("group", "label_name", "distance"))
    ours = {r["id"]: r for r in loader.rows(spec)}
    assert sorted(ours) == sorted(theirs) and len(ours) == 60
    for key, row in ours.items():
        assert np.array_equal(row["image"], theirs[key].image) and row["label"] == theirs[key].label
        assert row["distance"] == theirs[key].distance and row["group"] == theirs[key].group


def test_ranks_read_whole_row_groups_and_together_every_row_once(tmp_path):
    url = _dataset(tmp_path)
    pieces = store.row_groups_of(url)
    files = {p.path.rsplit("/", 1)[1] for p in pieces}
    assert files == {"part-00000.parquet", "part-00001.parquet", "part-00002.parquet"}     # no _common_metadata
    assert len(pieces) == sum(pq.ParquetFile(f"{url[7:]}/{f}").num_row_groups for f in files) > 3
    spec = loader.LoaderSpec(url, "tl_crops", 8)
    seen = []
    for rank in range(3):
        reader, stride, offset = loader._reader(spec, rank=rank, world=3)
        assert (stride, offset) == (1, 0)              # enough row groups: each rank reads its own, whole
        ids = [i for columns in reader for i in columns["id"]]
        assert ids
        seen += ids
    assert sorted(seen) == [f"r{i:03d}" for i in range(60)]
    # fewer row groups than ranks: every rank reads them all and keeps every world-th row
    few = loader.LoaderSpec(_dataset(tmp_path / "few", files=1, rows=2), "tl_crops", 8)
    assert len(store.row_groups_of(few.url)) < 3
    shards = [[r["id"] for r in loader.rows(few, rank=rank, world=3)] for rank in range(3)]
    assert sorted(sum(shards, [])) == ["r000", "r001"] and shards[2] == []


def test_a_missing_dataset_is_one_line_naming_it(tmp_path):
    with pytest.raises(store.DatasetNotFound, match="no dataset at .*nowhere"):
        store.row_groups_of((tmp_path / "nowhere").as_uri())
