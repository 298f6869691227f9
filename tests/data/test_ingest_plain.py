"""Ingest's transform and accounting as plain Python: no Spark, no MLflow (the transform / load split)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.data import ingest, parts
from pipeline.data.ingest import AccountingError, IngestOptions, carve_val, process_partition, write_partition
from pipeline.data.records import SourceRecord
from pipeline.errors import UserError
from tests.conftest import make_conf

SMALL = ["ingest.render_hw=[90,160]", "ingest.frame_hw=[36,64]", "ingest.road_hw=[32,32]",
         "ingest.class_hw=[16,16]", "ingest.frames_per_sequence=2", "ingest.min_size=4"]


def options(tmp_path, *overrides, classes=("dashed", "solid")):
    return IngestOptions(make_conf(tmp_path, *SMALL, *overrides).ingest, classes)


def _image(path, seed, size=(24, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))
    return str(path)


def _record(path, label="solid", group=None, **fields) -> dict:
    return SourceRecord(source_id=str(path), path=str(path), group=group or str(path), label=label,
                        **fields).as_dict()


def by_kind(pairs):
    out = {}
    for kind, row in pairs:
        out.setdefault(kind, []).append(row)
    return out


def test_synthetic_input_yields_every_kind_and_exactly_one_ledger_row(tmp_path):
    from pipeline.data.synth import LANE_CLASSES

    opts = options(tmp_path, classes=tuple(LANE_CLASSES))
    rows = by_kind(process_partition([{"index": i} for i in range(4)], opts))
    assert set(rows) == {"road_frames", "tl_frames", "tl_crops", ingest.LEDGER}
    assert [r["status"] for r in rows[ingest.LEDGER]] == ["written"] * 4
    assert {r["input_id"] for r in rows[ingest.LEDGER]} == {r["id"] for r in rows["road_frames"]}
    frames = {r["id"]: r for r in rows["tl_frames"]}
    for crop in rows["tl_crops"]:         # every crop is traced back to its frame and shares its split
        assert frames[crop["id"].split("#")[0]]["split"] == crop["split"]


def test_a_good_record_gives_its_rows_and_bad_ones_are_quarantined_with_reasons(tmp_path):
    opts = options(tmp_path, "ingest.source=imagefolder")
    good = _record(_image(tmp_path / "img" / "a.png", 1), label="solid")
    truncated = tmp_path / "img" / "b.png"
    truncated.write_bytes(open(good["path"], "rb").read()[:60])
    flagged = _record(tmp_path / "img" / "c.png", reason="missing_file:c.png")
    broken = _record(_image(tmp_path / "img" / "d.png", 2), boxes=[{"x_min": 1}])   # a record nobody foresaw
    rows = by_kind(process_partition([{"record": r} for r in (good, _record(truncated), flagged, broken)], opts))
    assert set(rows) == {"class_images", ingest.LEDGER}
    (image,) = rows["class_images"]
    assert image["label"] == 1 and image["label_name"] == "solid" and image["id"] == good["source_id"]
    status = {r["input_id"].rsplit("/", 1)[-1]: (r["status"], r["reason"].split(":")[0]) for r in rows[ingest.LEDGER]}
    assert status == {"a.png": ("written", ""), "b.png": ("quarantined", "truncated"),
                      "c.png": ("quarantined", "missing_file"), "d.png": ("quarantined", "error")}


def test_boxes_with_labels_that_are_not_states_are_quarantined_unless_mapped(tmp_path):
    path = _image(tmp_path / "f.png", 3, size=(60, 80))
    rec = _record(path, label=None, boxes=[{"x_min": 10, "y_min": 10, "x_max": 20, "y_max": 30, "label": "car"},
                                           {"x_min": 40, "y_min": 5, "x_max": 48, "y_max": 25, "label": "traffic light"}])
    rows = by_kind(ingest._from_record(rec, options(tmp_path, "ingest.source=coco"), ingest._Emitter(
        options(tmp_path, "ingest.source=coco"))))
    assert rows[ingest.LEDGER][0]["reason"] == "unknown_label:car"
    mapped = options(tmp_path, "ingest.source=coco", "ingest.label_map={car: drop, traffic light: red}")
    rows = by_kind(ingest._from_record(rec, mapped, ingest._Emitter(mapped)))
    assert len(rows["tl_frames"]) == 1 and rows[ingest.LEDGER][0]["status"] == "written"
    assert [c["label_name"] for c in rows["tl_crops"] if c["label_name"] != "background"] == ["red"]


def _reports(tmp_path, opts, items, drop_first_ledger_row=False, monkeypatch=None):
    if drop_first_ledger_row:     # a task that loses one input: its ledger row never reaches the writer
        real = ingest.process_partition

        def lossy(items, opts):
            dropped = False
            for kind, row in real(items, opts):
                if kind == ingest.LEDGER and not dropped:
                    dropped = True
                    continue
                yield kind, row
        monkeypatch.setattr(ingest, "process_partition", lossy)
    out = (tmp_path / "out").as_uri()
    reports = list(write_partition(0, items, opts, out, 1)) + list(write_partition(1, [], opts, out, 1))
    files = parts.merge(r["files"] for r in reports)
    return reports, {folder: sum(i["rows"] for i in infos) for folder, infos in files.items()}


def test_accounting_reconciles_rows_in_with_written_and_quarantined(tmp_path):
    from pipeline.data.synth import LANE_CLASSES

    opts = options(tmp_path, classes=tuple(LANE_CLASSES))
    reports, written = _reports(tmp_path, opts, [{"index": i} for i in range(3)])
    summary = ingest.account(reports, written, list(opts.kinds), rows_in=3)
    assert (summary["rows_in"], summary["rows_written"], summary["rows_quarantined"]) == (3, 3, 0)
    assert summary["datasets"]["road_frames"]["rows"] == 3


def test_a_task_that_drops_a_row_stops_the_stage_naming_the_count(tmp_path, monkeypatch):
    from pipeline.data.synth import LANE_CLASSES

    opts = options(tmp_path, classes=tuple(LANE_CLASSES))
    reports, written = _reports(tmp_path, opts, [{"index": i} for i in range(3)], True, monkeypatch)
    with pytest.raises(AccountingError, match=r"3 inputs in, 2 written \+ 0 quarantined = 2 accounted for \(1 missing\)"):
        ingest.account(reports, written, list(opts.kinds), rows_in=3)
    assert not issubclass(AccountingError, UserError)   # a broken invariant shows its traceback


def _folder_records(n_train=40, n_test=10, val=0):
    recs = [SourceRecord(f"train/{i}", f"/x/train/{i}.png", f"g{i}", "a", split="train") for i in range(n_train)]
    recs += [SourceRecord(f"test/{i}", f"/x/test/{i}.png", f"t{i}", "a", split="test") for i in range(n_test)]
    recs += [SourceRecord(f"val/{i}", f"/x/val/{i}.png", f"v{i}", "a", split="val") for i in range(val)]
    return recs


def test_val_is_carved_from_the_train_folder_by_group_and_test_is_never_touched():
    recs = _folder_records(400, 50)
    moved = carve_val(recs, 0.25)
    assert moved == sum(r.split == "val" for r in recs) and 70 < moved < 130
    assert all(r.split == "test" for r in recs if r.source_id.startswith("test/"))
    again = _folder_records(400, 50)
    carve_val(again, 0.25)
    assert [r.split for r in again] == [r.split for r in recs]          # by group hash: the same every run
    grouped = [SourceRecord(f"train/{i}", f"/x/{i}.png", f"g{i // 4}", "a", split="train") for i in range(200)]
    grouped += [SourceRecord("test/0", "/x/t.png", "t", "a", split="test")]
    carve_val(grouped, 0.3)
    splits_of = {}
    for r in grouped:
        splits_of.setdefault(r.group, set()).add(r.split)
    assert all(len(s) == 1 for s in splits_of.values())                 # a group never straddles


def test_no_carve_when_the_source_has_a_val_folder_or_no_fixed_splits_or_share_zero():
    with_val = _folder_records(20, 5, val=3)
    assert carve_val(with_val, 0.2) is None and sum(r.split == "val" for r in with_val) == 3
    free = [SourceRecord(f"{i}", f"/x/{i}.png", f"g{i}", "a") for i in range(10)]
    assert carve_val(free, 0.2) is None
    assert carve_val(_folder_records(), 0.0) is None


@pytest.mark.parametrize("n", [2, 5])
def test_the_sample_grid_keeps_ingest_samples_rows_per_kind(tmp_path, n):
    """ingest.samples rows of each kind reach the logged sample grid (the report shows that grid): each task keeps
    at most that many, and the driver takes that many of the first tasks'."""
    from pipeline.data.synth import LANE_CLASSES

    opts = options(tmp_path, f"ingest.samples={n}", classes=tuple(LANE_CLASSES))
    reports, _ = _reports(tmp_path, opts, [{"index": i} for i in range(4)])
    assert all(len(rows) <= n for r in reports for rows in r["samples"].values())
    grids = ingest.samples_of(reports + reports, list(opts.kinds), n)
    assert {kind: len(rows) for kind, rows in grids.items()} == {kind: n for kind in opts.kinds}
