"""ingest.split_by and ingest.group_near_duplicates: the frame-level leak, and near-duplicates kept together."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.data import ingest, store
from pipeline.data.ingest import IngestOptions, forced_splits, merge_groups, split_for, split_of
from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker
from tests.conftest import make_conf

# 48 frames in 12 sequences of 4: at 64x64, 8 bits make about half the pairs within a sequence near-duplicates
# and none across sequences (measured on these renders), so the leak is a count, not a coin toss.
SYNTH = ["ingest.num_frames=48", "ingest.frames_per_sequence=4", "ingest.render_hw=[180,320]",
         "ingest.frame_hw=[36,64]", "ingest.road_hw=[64,64]", "ingest.crop_hw=[16,16]", "ingest.partitions=2",
         "ingest.near_duplicate_bits=8", "ingest.split={train: 0.5, val: 0.25, test: 0.25}"]


def run_ingest(spark, conf):
    return run_stage(get_stage("ingest"), spark, conf, Tracker(conf))


def root_of(conf):
    return store.dataset_root(conf.paths.data_url, conf.ingest.name)


def ledger(spark, conf) -> dict:
    return {r["input_id"]: r.asDict() for r in spark.read.parquet(f"{root_of(conf)}/ledger").collect()}


def popcount(a: int, b: int) -> int:
    return bin((a ^ b) & ((1 << 64) - 1)).count("1")


def cross_pairs(rows: dict, bits: int) -> set:
    """Brute force: written pairs in different splits within ``bits`` bits."""
    written = [r for r in rows.values() if r["status"] == "written"]
    return {tuple(sorted((a["input_id"], b["input_id"]))) for i, a in enumerate(written) for b in written[:i]
            if a["split"] != b["split"] and popcount(a["phash"], b["phash"]) <= bits}


# ------------------------------------------------------------------------------------- pure parts

def test_merge_groups_is_union_find_named_by_the_smallest_member_whatever_the_order():
    pairs = [("g5", "g9"), ("g2", "g5"), ("x", "y"), ("g9", "g7"), ("a", "a2")]
    merged = merge_groups(pairs)
    assert merged == {"g2": "g2", "g5": "g2", "g7": "g2", "g9": "g2", "x": "x", "y": "x", "a": "a", "a2": "a"}
    assert merge_groups(reversed(pairs)) == merged
    assert merge_groups([(b, a) for a, b in pairs]) == merged
    assert merge_groups([]) == {}


def test_split_for_frame_level_group_level_merged_and_fixed_splits(tmp_path):
    frame = IngestOptions(make_conf(tmp_path, "ingest.split_by=frame").ingest, ())
    fractions = frame.fractions
    assert split_for(frame, "seq1/f3", "seq1") == (split_of("seq1/f3", fractions), "seq1/f3", "seq1")
    assert split_for(frame, "seq1/f3", "seq1", "test")[0] == "test"           # a fixed split still wins
    plain = IngestOptions(make_conf(tmp_path).ingest, ())
    assert split_for(plain, "seq1/f3", "seq1") == (split_of("seq1", fractions), "seq1", "seq1")
    merged = IngestOptions(plain.section, (), {"seq1": "seq0", "seq0": "seq0"}, {"seq0": "val"})
    assert split_for(merged, "seq1/f3", "seq1") == ("val", "seq0", "seq0")     # follows the fixed inputs
    assert split_for(merged, "seq1/f3", "seq1", "test") == ("test", "seq0", "seq0")
    assert split_for(merged, "other/f", "other") == (split_of("other", fractions), "other", "other")


def test_synthetic_hash_pass_matches_the_ledger_and_merged_sequences_share_a_split(tmp_path):
    from pipeline.data.synth import LANE_CLASSES

    conf = make_conf(tmp_path, "ingest.render_hw=[90,160]", "ingest.road_hw=[32,32]", "ingest.frame_hw=[36,64]",
                     "ingest.frames_per_sequence=2", "ingest.negatives_per_frame=0")
    items = [{"index": i} for i in range(6)]                 # sequences synth-0-000000 .. 000002
    plain = IngestOptions(conf.ingest, tuple(LANE_CLASSES))
    hashed = {i: (g, h) for i, g, h in ingest.hash_partition(items, plain)}
    rows = {}
    for kind, row in ingest.process_partition(items, plain):
        rows.setdefault(kind, []).append(row)
    assert hashed == {r["input_id"]: (r["group"], r["phash"]) for r in rows[ingest.LEDGER]}
    seqs = sorted({g for g, _ in hashed.values()})
    target = next(s for s in ("train", "val", "test") if s != split_of(seqs[0], plain.fractions))
    merged = IngestOptions(conf.ingest, tuple(LANE_CLASSES), {seqs[2]: seqs[0], seqs[0]: seqs[0]},
                           {seqs[0]: target})          # as if a source had fixed one of its inputs there
    out = {}
    for kind, row in ingest.process_partition(items, merged):
        out.setdefault(kind, []).append(row)
    moved = [r for r in out[ingest.LEDGER] if r["group"] in (seqs[0], seqs[2])]
    assert len(moved) == 4 and {(r["split_group"], r["split"]) for r in moved} == {(seqs[0], target)}
    assert {r["group"] for r in out["road_frames"] if r["id"] in {m["input_id"] for m in moved}} == {seqs[0]}
    kept = [r for r in out[ingest.LEDGER] if r["group"] == seqs[1]]
    assert all(r["split"] == split_of(seqs[1], plain.fractions) and r["split_group"] == seqs[1] for r in kept)


def test_forced_splits_free_inputs_follow_one_fixed_split_and_spanning_groups_are_counted():
    def item(group, split=None):
        return {"record": {"source_id": f"{group}-{split}", "group": group, "split": split}}

    inputs = [item("a", "train"), item("b"), item("c", "train"), item("d", "test"), item("e"), item("f")]
    merged = {"a": "a", "b": "a", "c": "c", "d": "c", "e": "e", "f": "e"}
    forced, spanning = forced_splits(inputs, merged)
    assert forced == {"a": "train"} and spanning == 1          # c+d: train and test fixed, nothing can move


# ------------------------------------------------------------------------------- synthetic: split_by

@pytest.fixture(scope="module")
def by_group_and_frame(spark, tmp_path_factory):
    out = {}
    for mode in ("group", "frame"):
        conf = make_conf(tmp_path_factory.mktemp(f"split-{mode}"), *SYNTH, f"ingest.split_by={mode}")
        out[mode] = conf, run_ingest(spark, conf), ledger(spark, conf)
    return out


def test_group_split_keeps_sequences_whole_and_no_near_duplicates_cross(by_group_and_frame):
    conf, results, rows = by_group_and_frame["group"]
    assert results["rows_in"] == results["rows_written"] == 48
    splits_of = {}
    for r in rows.values():
        splits_of.setdefault(r["group"], set()).add(r["split"])
        assert r["split_group"] == r["group"] and r["split"] == split_of(r["group"], (0.5, 0.25, 0.25))
    assert len(splits_of) == 12 and all(len(s) == 1 for s in splits_of.values())
    assert results["groups_across_splits"] == 0
    assert results["near_duplicates_across_splits"] == len(cross_pairs(rows, 8)) == 0


def test_frame_split_straddles_sequences_and_leaks_near_duplicates(by_group_and_frame, spark):
    conf, results, rows = by_group_and_frame["frame"]
    _, _, group_rows = by_group_and_frame["group"]
    assert results["rows_in"] == results["rows_written"] == 48
    assert {i: r["phash"] for i, r in rows.items()} == {i: r["phash"] for i, r in group_rows.items()}  # same frames
    for r in rows.values():
        assert r["split_group"] == r["input_id"] and r["split"] == split_of(r["input_id"], (0.5, 0.25, 0.25))
    splits_of = {}
    for r in rows.values():
        splits_of.setdefault(r["group"], set()).add(r["split"])
    straddling = sum(len(s) > 1 for s in splits_of.values())
    assert results["groups_across_splits"] == straddling >= 6
    leaked = cross_pairs(rows, 8)
    assert results["near_duplicates_across_splits"] == len(leaked) >= 8     # ~0 with the group split
    assert all(rows[a]["group"] == rows[b]["group"] for a, b in leaked)     # twins of one sequence
    root = root_of(conf)
    road = spark.read.parquet(f"{root}/road_frames/*").select("id", "group", "split").collect()
    assert {r["id"]: (r["group"], r["split"]) for r in road} == {i: (r["group"], r["split"]) for i, r in rows.items()}
    crops = spark.read.parquet(f"{root}/tl_crops/*").select("id", "split").collect()
    assert crops and all(c["split"] == rows[c["id"].rsplit("#", 1)[0]]["split"] for c in crops)
    run = MlflowClient(conf.mlflow.tracking_uri).get_run(results["run_id"])
    assert run.data.metrics["split_by_frame"] == 1 and run.data.metrics["groups_across_splits"] == straddling
    assert "never for real models" in run.data.tags["ingest.split_note"]
    assert store.read_meta(root)["split_by"] == "frame"


def test_frame_split_with_near_duplicate_grouping_is_refused(spark, tmp_path):
    conf = make_conf(tmp_path, *SYNTH, "ingest.split_by=frame", "ingest.group_near_duplicates=true")
    with pytest.raises(ingest.IngestError, match="ingest.split_by=frame .* ingest.group_near_duplicates=true"):
        run_ingest(spark, conf)


# ------------------------------------------------------------------- ImageFolder: group_near_duplicates

def noisy(seed, h=48, w=64):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)


def tweak(image, seed):
    """A copy with a few pixels nudged: not the same bytes, the same picture."""
    out = image.copy()
    rng = np.random.default_rng(seed)
    ys, xs = rng.integers(0, image.shape[0], 6), rng.integers(0, image.shape[1], 6)
    out[ys, xs] = np.clip(out[ys, xs].astype(int) + 3, 0, 255).astype(np.uint8)
    return out


# The planted near-duplicates, as sets of file names (each file its own group unless named <group>__<rest>):
PLANTED = [{f"a/dup{i}.png", f"b/dup{i}_copy.png"} for i in range(6)]                  # one image, two folders
PLANTED += [{f"a/tweak{i}.png", f"b/tweak{i}_nudged.png"} for i in range(2)]           # tiny changes
PLANTED += [{"a/tri.png", "b/tri_1.png", "b/tri_2.png"}]                               # a chain of three
PLANTED += [{"a/drive1__x.png", "b/drive2__z.png"}]                                    # two groups of two files


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """24 distinct images, the planted near-duplicates and two unusable files, split by hash (no split folders)."""
    root = tmp_path_factory.mktemp("nd") / "images"
    for i in range(24):
        write(root / ("a" if i % 2 else "b") / f"single{i}.png", noisy(100 + i))
    for i in range(6):
        write(root / "a" / f"dup{i}.png", noisy(200 + i))
        write(root / "b" / f"dup{i}_copy.png", noisy(200 + i))
    for i in range(2):
        write(root / "a" / f"tweak{i}.png", noisy(300 + i))
        write(root / "b" / f"tweak{i}_nudged.png", tweak(noisy(300 + i), i))
    for name in ("a/tri.png", "b/tri_1.png", "b/tri_2.png"):
        write(root / name, noisy(400))
    write(root / "a" / "drive1__x.png", noisy(500))
    write(root / "a" / "drive1__y.png", noisy(501))        # not a near-duplicate: follows its group
    write(root / "b" / "drive2__z.png", noisy(500))
    write(root / "b" / "drive2__w.png", noisy(502))
    (root / "a" / "broken.png").write_bytes(cv2.imencode(".png", noisy(600))[1].tobytes()[:80])  # truncated
    (root / "b" / "text.png").write_bytes(b"not an image\n" * 8)
    return root


def folder_conf(tmp_path_factory, root, name, *overrides):
    return make_conf(tmp_path_factory.mktemp(name), "ingest.source=imagefolder", f"ingest.source_path={root}",
                     "ingest.class_hw=[32,32]", "ingest.min_size=4", "ingest.partitions=2",
                     "ingest.split={train: 0.5, val: 0.25, test: 0.25}", *overrides)


@pytest.fixture(scope="module")
def folder_runs(spark, folder, tmp_path_factory):
    plain = folder_conf(tmp_path_factory, folder, "nd-plain")
    merged = folder_conf(tmp_path_factory, folder, "nd-merged", "ingest.group_near_duplicates=true")
    return {"plain": (plain, run_ingest(spark, plain), ledger(spark, plain)),
            "merged": (merged, run_ingest(spark, merged), ledger(spark, merged))}


def test_without_grouping_planted_near_duplicates_cross_splits(folder_runs):
    conf, results, rows = folder_runs["plain"]
    assert results["rows_in"] == 24 + 12 + 4 + 3 + 4 + 2 and results["rows_quarantined"] == 2
    assert results["near_duplicates_across_splits"] == len(cross_pairs(rows, 4)) > 0
    assert "near_duplicate_groups_merged" not in results


def test_grouping_near_duplicates_keeps_every_planted_set_in_one_split(folder_runs, spark):
    conf, results, rows = folder_runs["merged"]
    _, plain_results, plain_rows = folder_runs["plain"]
    assert results["rows_in"] == results["rows_written"] + results["rows_quarantined"] == plain_results["rows_in"]
    assert results["rows_quarantined"] == 2
    assert results["near_duplicates_across_splits"] == len(cross_pairs(rows, 4)) == 0
    by_name = {i: r for i, r in rows.items()}
    for planted in PLANTED:
        units = {by_name[n]["split_group"] for n in planted}
        assert len(units) == 1 and len({by_name[n]["split"] for n in planted}) == 1
        (unit,) = units
        assert unit == min(by_name[n]["group"] for n in planted)             # the smallest member's name
        assert by_name[next(iter(planted))]["split"] == split_of(unit, (0.5, 0.25, 0.25))
    assert by_name["a/drive1__y.png"]["split"] == by_name["b/drive2__z.png"]["split"]   # whole groups move
    assert by_name["a/drive1__y.png"]["group"] == "drive1"                   # the ledger keeps the own group
    for i, r in rows.items():                                                # the rest is split as before
        if not any(i in planted for planted in PLANTED) and not i.startswith("b/drive2__"):
            assert r["split"] == plain_rows[i]["split"] and r["split_group"] == r["group"]
    stored = {r["id"]: r["group"] for r in spark.read.parquet(f"{root_of(conf)}/class_images/*").collect()}
    assert stored["b/dup0_copy.png"] == by_name["b/dup0_copy.png"]["split_group"]   # rows carry the merged group
    assert stored["b/dup0_copy.png"] != by_name["b/dup0_copy.png"]["group"]
    meta = store.read_meta(root_of(conf))
    grouping = meta["near_duplicate_grouping"]
    merged_groups = 6 + 2 + 1 + 1
    joined = 6 + 2 + 2 + 1                            # groups that gave up their own split
    assert grouping == {"inputs_hashed": results["rows_written"], "pairs_across_groups": 6 + 2 + 3 + 1,
                        "groups_merged": joined, "merged_groups": merged_groups,
                        "inputs_regrouped": 6 + 2 + 2 + 2, "merges_spanning_fixed_splits": 0}
    assert results["near_duplicate_groups_merged"] == meta["near_duplicate_groups_merged"] == joined
    metrics = MlflowClient(conf.mlflow.tracking_uri).get_run(results["run_id"]).data.metrics
    assert metrics["near_duplicate_groups_merged"] == joined and metrics["near_duplicates_across_splits"] == 0
    assert metrics["near_duplicate_inputs_regrouped"] == 12 and metrics["split_by_frame"] == 0


def test_the_first_pass_hashes_exactly_what_the_ledger_records(folder_runs, folder):
    conf, _, rows = folder_runs["merged"]
    from pipeline.data.readers import read_source

    opts = IngestOptions(conf.ingest, ())
    records = [{"record": r.as_dict()} for r in read_source("imagefolder", str(folder))]
    hashed = {i: (g, h) for i, g, h in ingest.hash_partition(records, opts)}
    written = {i: r for i, r in rows.items() if r["status"] == "written"}
    assert set(hashed) == set(written)                                  # the quarantined are not hashed
    assert all(hashed[i] == (r["group"], r["phash"]) for i, r in written.items())


def test_grouped_reingest_is_deterministic(folder_runs, spark):
    conf, results, rows = folder_runs["merged"]
    again = run_ingest(spark, conf)
    rows_again = ledger(spark, conf)
    assert {i: (r["split"], r["split_group"], r["phash"]) for i, r in rows_again.items()} == \
        {i: (r["split"], r["split_group"], r["phash"]) for i, r in rows.items()}
    assert again["near_duplicate_groups_merged"] == results["near_duplicate_groups_merged"]


def test_fixed_folder_splits_stay_and_a_carved_val_moves_merged_groups_whole(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("carve") / "images"
    for i in range(16):
        write(root / "train" / ("a" if i % 2 else "b") / f"s{i}.png", noisy(700 + i))
    for i in range(4):                                    # near-duplicates inside the train folder
        write(root / "train" / "a" / f"d{i}.png", noisy(800 + i))
        write(root / "train" / "b" / f"d{i}_copy.png", noisy(800 + i))
    for i in range(4):
        write(root / "test" / "a" / f"t{i}.png", noisy(900 + i))
    write(root / "test" / "b" / "leak.png", noisy(700))   # the same picture as train/b/s0.png
    common = ["ingest.val_from_train=0.5"]
    plain = folder_conf(tmp_path_factory, root, "carve-plain", *common)
    merged = folder_conf(tmp_path_factory, root, "carve-merged", *common, "ingest.group_near_duplicates=true")
    plain_results = run_ingest(spark, plain)
    plain_rows = ledger(spark, plain)
    carve_crossing = {p for p in cross_pairs(plain_rows, 4) if "test" not in {plain_rows[i]["split"] for i in p}}
    assert carve_crossing and plain_results["near_duplicates_across_splits"] == len(carve_crossing) + 1
    results = run_ingest(spark, merged)
    rows = ledger(spark, merged)
    assert results["rows_in"] == results["rows_written"] == 29
    crossing = cross_pairs(rows, 4)
    assert crossing == {("test/b/leak.png", "train/b/s0.png")}            # fixed by the folders: nothing moves
    assert results["near_duplicates_across_splits"] == 1
    assert rows["test/b/leak.png"]["split"] == "test"
    assert all(r["split"] == "test" for i, r in rows.items() if i.startswith("test/"))
    for i in range(4):                                                     # carved together
        assert rows[f"train/a/d{i}.png"]["split"] == rows[f"train/b/d{i}_copy.png"]["split"]
    meta = store.read_meta(root_of(merged))
    assert meta["near_duplicate_grouping"]["merges_spanning_fixed_splits"] == 1
    assert meta["near_duplicate_grouping"]["groups_merged"] == 5
    assert meta["val_carved"] == sum(r["split"] == "val" for r in rows.values())
