"""Layered, typed configuration.

``conf/base.yaml`` is read first, then one profile (``conf/<profile>.yaml``), then an optional extra file,
then ``KEY=VALUE`` overrides with dotted keys (``train.epochs=3``). Strings may refer to other keys
(``${paths.work_dir}``) and to the environment (``${env:NAME}`` or ``${env:NAME,default}``).

Every error names the key, where the value came from (file or override) and the valid choices.
This module imports nothing of ours: everything else may import it.
"""
from __future__ import annotations

import copy
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
SOURCES = ("synthetic", "imagefolder", "bosch", "lisa", "dtld", "tusimple", "culane", "coco")
TASKS = ("lane_classifier", "tl_classifier", "tl_detector")
LIGHT_LABELS = ("red", "yellow", "green", "off", "drop")   # pipeline.data.records.TL_STATES + "drop"
NOT_PROFILES = ("base", "augment")   # conf/ files that are not profiles (augment.yaml holds the named policies)


class ConfigError(ValueError):
    """A configuration problem; the message is one line that names the key, its origin and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SparkSection(_Section):
    master: str = "local[*]"
    app_name: str = "road-pipeline"
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"
    conf: dict[str, str] = {}

    @field_validator("conf", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        return {str(k): str(x) for k, x in v.items()} if isinstance(v, dict) else v


class MlflowSection(_Section):
    tracking_uri: str
    artifact_location: Optional[str] = None
    experiment: str = "road-pipeline"
    register_model: bool = False


class PathsSection(_Section):
    work_dir: str
    data_url: str
    checkpoint_url: str


class SplitFractions(_Section):
    train: float = 0.7
    val: float = 0.15
    test: float = 0.15

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitFractions":
        total = self.train + self.val + self.test
        if min(self.train, self.val, self.test) < 0 or abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {total:g}")
        return self


HW = tuple[int, int]


class IngestSection(_Section):
    source: Literal["synthetic", "imagefolder", "bosch", "lisa", "dtld", "tusimple", "culane", "coco"] = "synthetic"
    source_path: Optional[str] = None
    name: str = "synthetic"
    num_frames: int = 2000
    frames_per_sequence: int = 8
    seed: int = 0
    render_hw: HW = (720, 1280)
    context_bias: float = 0.0
    road_hw: HW = (128, 128)
    frame_hw: HW = (144, 256)
    crop_hw: HW = (32, 32)
    negatives_per_frame: int = 1
    split: SplitFractions = SplitFractions()
    min_size: int = 16
    max_pixels: int = 50_000_000
    distance_buckets: tuple[float, float] = (0.04, 0.09)
    partitions: int = 0
    rowgroup_size_mb: int = 4
    png_compression: int = 0
    near_duplicate_bits: int = 4
    label_map: dict[str, str] = {}

    @field_validator("label_map")
    @classmethod
    def _states(cls, v: dict) -> dict:
        bad = {k: x for k, x in v.items() if x not in LIGHT_LABELS}
        if bad:
            raise ValueError(f"maps to {bad}; each label must map to one of: {', '.join(LIGHT_LABELS)}")
        return v

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", v):
            raise ValueError("must be a plain folder name (letters, digits, _ and -)")
        return v

    @field_validator("num_frames", "frames_per_sequence", "min_size", "max_pixels", "rowgroup_size_mb")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("png_compression")
    @classmethod
    def _zlib_level(cls, v: int) -> int:
        if not 0 <= v <= 9:
            raise ValueError("must be a zlib level in 0..9 (0: stored, fastest to decode; 9: smallest)")
        return v

    @field_validator("context_bias")
    @classmethod
    def _unit(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("must be in [0, 1]")
        return v


class TrainSection(_Section):
    task: Literal["lane_classifier", "tl_classifier", "tl_detector"] = "lane_classifier"
    data: str = "synthetic"
    dataset: Optional[Literal["road_frames", "tl_frames", "tl_crops"]] = None
    epochs: int = 5
    batch_size: int = 32
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-4
    width: float = 0.25
    num_processes: int = 1
    local_mode: bool = True
    use_gpu: bool = False
    amp: bool = True
    seed: int = 0
    resume: bool = False
    steps_per_epoch: int = 0
    eval_batches: int = 0
    loader_workers: int = 1
    augment_policy: Optional[str] = None

    @field_validator("epochs", "batch_size", "num_processes")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class AugmentSection(_Section):
    source: str = "synthetic"
    name: str = "synthetic-basic"
    policy: str = "basic"
    copies: int = 2
    seed: int = 0
    policies_file: Optional[str] = None

    @field_validator("copies")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class EvaluateSection(_Section):
    model_uri: Optional[str] = None
    split: Literal["train", "val", "test"] = "test"
    max_batches: int = 0
    threshold: float = 0.5
    match_distance: float = 8.0

    @field_validator("threshold")
    @classmethod
    def _unit(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError("must be in (0, 1)")
        return v


class Config(_Section):
    spark: SparkSection = SparkSection()
    mlflow: MlflowSection
    paths: PathsSection
    ingest: IngestSection = IngestSection()
    augment: AugmentSection = AugmentSection()
    train: TrainSection = TrainSection()
    evaluate: EvaluateSection = EvaluateSection()

    def flat(self) -> dict[str, Any]:
        """The resolved config as ``{"dotted.key": value}``."""
        return _flatten(self.model_dump(mode="json"))


# ----------------------------------------------------------------------------------------- loading

def load_config(profile: str = "local", conf_file: Optional[str] = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Merge base + profile + file + overrides, resolve ``${...}`` references, validate."""
    data: dict = {}
    origin: dict[str, str] = {}
    profile_path = CONF_DIR / f"{profile}.yaml"
    if profile in NOT_PROFILES or not profile_path.exists():
        choices = sorted(p.stem for p in CONF_DIR.glob("*.yaml") if p.stem not in NOT_PROFILES)
        raise ConfigError(f"unknown profile '{profile}'; valid profiles: {', '.join(choices)} (files in {CONF_DIR})")
    for path in [CONF_DIR / "base.yaml", profile_path] + ([Path(conf_file)] if conf_file else []):
        _merge(data, _read_yaml(path), origin, str(path))
    for item in overrides:
        key, value = _parse_override(item)
        _merge(data, _nest(key, value), origin, f"override '{item}'")
    _check_keys(data, Config, "", origin)
    data = _interpolate(data, data, origin)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, origin) from None


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"invalid YAML in {where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(content).__name__}")
    return content


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
        raise ConfigError(f"bad override '{item}': expected KEY=VALUE with a dotted key, e.g. train.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _split_key(dotted: str) -> list[str]:
    """Split a dotted key, keeping the dots of a free-form mapping's keys (``spark.conf.spark.driver.memory``)."""
    parts, model = dotted.split("."), Config
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            break
        sub = _section_model(field.annotation)
        if sub is None:
            if typing.get_origin(field.annotation) is dict and i + 1 < len(parts):
                return parts[:i + 1] + [".".join(parts[i + 1:])]
            break
        model = sub
    return parts


def _nest(dotted: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(_split_key(dotted)):
        out = {part: out}
    return out


def _merge(into: dict, new: dict, origin: dict, source: str, prefix: str = "") -> None:
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, origin, source, dotted + ".")
        else:
            into[key] = copy.deepcopy(value)
            for stale in [k for k in origin if k.startswith(dotted + ".")]:
                del origin[stale]  # what this value replaced no longer has a say
            origin[dotted] = source
            if isinstance(value, dict):
                for sub in _flatten(value, dotted + "."):
                    origin[sub] = source


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _origin_of(dotted: str, origin: dict) -> str:
    below = sorted({src for key, src in origin.items() if key.startswith(dotted + ".")})
    if below:  # a section: name every source that set part of it
        return " and ".join(below)
    while dotted:
        if dotted in origin:
            return origin[dotted]
        dotted = dotted.rpartition(".")[0]
    return "defaults"


def _section_model(annotation: Any) -> Optional[type]:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _check_keys(data: Any, model: type, prefix: str, origin: dict) -> None:
    """Reject unknown keys with the list of valid ones (pydantic would say less)."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            where = _origin_of(dotted, origin)
            raise ConfigError(
                f"unknown key '{dotted}' (from {where}); valid keys"
                f"{' under ' + repr(prefix[:-1]) if prefix else ''}: {', '.join(fields)}")
        sub = _section_model(fields[key].annotation)
        if sub is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"'{dotted}' (from {_origin_of(dotted, origin)}) must be a section with keys: "
                                  f"{', '.join(sub.model_fields)}")
            _check_keys(value, sub, dotted + ".", origin)


_REF = re.compile(r"\$\{([^}]+)\}")
# References that are not keys: the repository root (the embedded default keeps its data there) and the cwd.
BUILTINS = {"repo": lambda: str(CONF_DIR.parent), "cwd": os.getcwd}


def _interpolate(node: Any, root: dict, origin: dict, key: str = "", depth: int = 0) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, root, origin, f"{key}.{k}" if key else k, depth) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, root, origin, key, depth) for v in node]
    if not isinstance(node, str) or "${" not in node:
        return node
    if depth > 10:
        raise ConfigError(f"'{key}' (from {_origin_of(key, origin)}): reference cycle in '{node}'")

    def resolve(match: re.Match) -> str:
        ref = match.group(1).strip()
        if ref in BUILTINS:
            return BUILTINS[ref]()
        if ref.startswith("env:"):
            name, has_default, default = ref[4:].partition(",")
            value = os.environ.get(name.strip())
            if value is None:
                if not has_default:
                    raise ConfigError(f"'{key}' (from {_origin_of(key, origin)}) needs the environment variable "
                                      f"{name.strip()}: export it, or override {key}=...")
                value = default.strip()
            return value
        target: Any = root
        for part in ref.split("."):
            if not isinstance(target, dict) or part not in target:
                raise ConfigError(f"'{key}' (from {_origin_of(key, origin)}) refers to unknown key '{ref}'")
            target = target[part]
        return str(_interpolate(target, root, origin, ref, depth + 1))

    return _REF.sub(resolve, node)


def _choices(model: type, loc: tuple) -> Optional[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        sub = _section_model(field.annotation) if field else None
        if sub is None:
            return None
        model = sub
    field = model.model_fields.get(loc[-1]) if isinstance(loc[-1], str) else None
    if field is not None and typing.get_origin(field.annotation) is Literal:
        return ", ".join(map(str, typing.get_args(field.annotation)))
    return None


def _explain(exc: ValidationError, origin: dict) -> ConfigError:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if isinstance(p, str))
    dotted = ".".join(loc) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    given = err.get("input")
    line = f"bad value for '{dotted}' (from {_origin_of(dotted, origin)}): {msg}"
    if loc and not isinstance(given, dict):
        line += f"; got {given!r}"
    choices = _choices(Config, loc) if loc else None
    if choices:
        line += f"; valid choices: {choices}"
    if err["type"] == "missing":
        line = f"missing key '{dotted}': set it in a conf file or as {dotted}=..."
    return ConfigError(line)


def dump_yaml(conf: Config) -> str:
    """The resolved config as YAML, e.g. for logging next to a run."""
    return yaml.safe_dump(conf.model_dump(mode="json"), sort_keys=False)
