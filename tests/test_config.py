import pytest

from pipeline.config import CONF_DIR, ConfigError, load_config


def test_base_and_local_profile_resolve_paths_under_the_repo():
    conf = load_config("local")
    repo = str(CONF_DIR.parent)
    assert conf.paths.work_dir == f"{repo}/work"
    assert conf.paths.data_url == f"file://{repo}/work/data"
    assert conf.mlflow.tracking_uri == f"sqlite:///{repo}/work/mlflow.db"
    assert conf.spark.master == "local[*]"
    assert conf.spark.conf["spark.driver.memory"] == "4g"          # from the profile
    assert conf.spark.conf["spark.sql.shuffle.partitions"] == "8"  # kept from base: sections merge


def test_overrides_are_typed_and_win(tmp_path):
    conf = load_config("local", overrides=["train.epochs=7", "train.lr=0.5", "train.use_gpu=true",
                                           "ingest.road_hw=[64, 96]", f"paths.work_dir={tmp_path}"])
    assert conf.train.epochs == 7 and conf.train.lr == 0.5 and conf.train.use_gpu is True
    assert conf.ingest.road_hw == (64, 96)
    assert conf.paths.data_url == f"file://{tmp_path}/data"  # references follow the override


def test_extra_file_layers_over_profile(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text("train:\n  epochs: 11\n")
    conf = load_config("local", str(extra), ["train.batch_size=4"])
    assert conf.train.epochs == 11 and conf.train.batch_size == 4


def test_gpu_profile():
    conf = load_config("gpu")
    assert conf.train.use_gpu and conf.train.width == 1.0


def test_cluster_profile_reads_environment(monkeypatch):
    monkeypatch.setenv("SPARK_MASTER", "spark://m:7077")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("DATA_URL", "s3://bucket/data")
    monkeypatch.setenv("CHECKPOINT_URL", "s3://bucket/ckpt")
    conf = load_config("cluster")
    assert conf.spark.master == "spark://m:7077"
    assert conf.paths.data_url == "s3://bucket/data" and conf.train.local_mode is False


def test_cluster_profile_without_environment_names_the_variable(monkeypatch):
    monkeypatch.delenv("SPARK_MASTER", raising=False)
    with pytest.raises(ConfigError, match=r"spark.master.*cluster.yaml.*SPARK_MASTER"):
        load_config("cluster")


@pytest.mark.parametrize("override, pattern", [
    ("train.epoch=3", r"unknown key 'train.epoch' \(from override 'train.epoch=3'\); valid keys under 'train': task, data, kind, epochs"),
    ("nope.x=1", r"unknown key 'nope' .* valid keys: spark, mlflow, registry, paths, ingest, augment, train, evaluate"),
    ("train.task=foo", r"bad value for 'train.task' .*got 'foo'; valid choices: lane_classifier, tl_classifier, tl_detector"),
    ("train.epochs=abc", r"bad value for 'train.epochs' \(from override 'train.epochs=abc'\): .*integer"),
    ("train.epochs=0", r"'train.epochs'.*greater than or equal to 1; got 0"),
    ("ingest.context_bias=2", r"'ingest.context_bias'.*less than or equal to 1; got 2"),
    ("ingest.png_compression=10", r"'ingest.png_compression'.*less than or equal to 9; got 10"),
    ("ingest.split.train=0.9", r"'ingest.split' \(from .*base.yaml and override 'ingest.split.train=0.9'\).*sum to 1"),
    ("ingest.source=pascal", r"valid choices: synthetic, imagefolder, bosch, lisa, dtld, coco, tusimple, culane"),
    ("train=3", r"'train' \(from override 'train=3'\) must be a section with keys: task, data, kind, epochs"),
    ("notakey", r"bad override 'notakey': expected KEY=VALUE"),
    ("paths.data_url=${nope.x}", r"refers to unknown key 'nope.x'"),
])
def test_errors_name_key_origin_and_choices(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config("local", overrides=[override])


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest:\n  num_frame: 3\n")
    with pytest.raises(ConfigError, match=rf"unknown key 'ingest.num_frame' \(from {bad}\)"):
        load_config("local", str(bad))


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("train:\n  epochs: 3\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"invalid YAML in {bad}:\d+"):
        load_config("local", str(bad))


def test_unknown_profile_lists_profiles():
    with pytest.raises(ConfigError, match="unknown profile 'prod'; valid profiles: cluster, full, gpu, local"):
        load_config("prod")


def test_flat_has_every_leaf():
    flat = load_config("local").flat()
    assert flat["train.epochs"] == 5 and flat["ingest.split.val"] == 0.15
    assert flat["spark.conf.spark.driver.memory"] == "4g"


def test_per_task_settings_apply_to_their_task_only_and_under_command_line_overrides():
    full = load_config("full", overrides=["train.task=tl_detector"])
    assert full.train.epochs == 6 and full.train.lr == 0.003        # the detector's own settings (full.yaml, base)
    assert load_config("full", overrides=["train.task=lane_classifier"]).train.epochs == 10
    assert load_config("full", overrides=["train.task=tl_detector", "train.epochs=3"]).train.epochs == 3
    with pytest.raises(ConfigError, match=r"unknown key 'train.epoch'"):
        load_config("local", overrides=["train.per_task={tl_classifier: {epoch: 3}}"])
    with pytest.raises(ConfigError, match=r"'train.per_task'.*unknown task 'nope'"):
        load_config("local", overrides=["train.per_task={nope: {epochs: 3}}"])


def test_a_profile_file_given_as_conf_is_refused_naming_the_flag(capsys):
    from pipeline.cli import main

    assert main(["ingest", "--conf", "conf/full.yaml"]) == 2
    err = capsys.readouterr().err
    assert "--conf conf/full.yaml is a profile: use --profile full" in err and len(err.strip().splitlines()) == 1


def test_yaml_keeps_off_as_text_in_config_values():
    conf = load_config("local", overrides=["ingest.label_map={traffic light: off, car: drop}"])
    assert conf.ingest.label_map == {"traffic light": "off", "car": "drop"}
