import pytest

from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker
from tests.conftest import make_conf

TINY = ["ingest.num_frames=48", "ingest.frames_per_sequence=2", "ingest.render_hw=[180,320]",
        "ingest.frame_hw=[72,128]", "ingest.road_hw=[64,64]", "ingest.partitions=4",
        "ingest.split={train: 0.5, val: 0.25, test: 0.25}",
        "train.batch_size=8", "train.epochs=2", "train.width=0.25", "train.lr=0.002"]


@pytest.fixture(scope="session")
def tiny_data(spark, tmp_path_factory):
    """A tiny synthetic ingest shared by the training tests; returns a factory of configs that use it."""
    work = tmp_path_factory.mktemp("train")
    conf = make_conf(work, *TINY)
    run_stage(get_stage("ingest"), spark, conf, Tracker(conf))
    return lambda *overrides: make_conf(work, *TINY, *overrides)
