"""Layered, typed configuration.

``conf/base.yaml`` is read first, then one profile (``conf/<profile>.yaml``), then an optional extra file,
then ``KEY=VALUE`` overrides with dotted keys (``train.epochs=3``). Strings may refer to other keys
(``${paths.work_dir}``) and to the environment (``${env:NAME}`` or ``${env:NAME,default}``).

Every error names the key, where the value came from (file or override) and the valid choices.
It imports only the bottom of the library (the task table, the error type, the YAML reader).
"""
from __future__ import annotations

import copy
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal, Optional

from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline import yamltext
from pipeline.vocab import TL_STATES
from pipeline.errors import UserError
from pipeline.tasks import KINDS, SOURCES, TASKS

_HERE = Path(__file__).resolve().parent


def _conf_dir() -> Path:
    """conf/: $PIPELINE_CONF_DIR if set; else the checkout's (beside pipeline/: a source tree, `pip install -e`);
    else the installed package's own copy (the wheel ships conf/ as pipeline/conf)."""
    if os.environ.get("PIPELINE_CONF_DIR"):
        return Path(os.environ["PIPELINE_CONF_DIR"]).resolve()
    for candidate in (_HERE.parent / "conf", _HERE / "conf"):
        if (candidate / "base.yaml").is_file():
            return candidate
    return _HERE.parent / "conf"   # (not found: load_config says so, naming this folder)


CONF_DIR = _conf_dir()
# The repository root, for ${repo} (the embedded default keeps its data in ${repo}/work): a checkout's, else (an
# installed wheel) the working folder.
REPO_DIR = _HERE.parent if (_HERE.parent / "conf" / "base.yaml").is_file() else Path.cwd()
NOT_PROFILES = ("base", "augment")   # conf/ files that are not profiles (augment.yaml holds the named policies)
LIGHT_LABELS = TL_STATES + ("drop",)  # what ingest.label_map may map a dataset's box label to


class ConfigError(UserError, ValueError):
    """A configuration problem; the message is one line that names the key, its origin and the fix."""


# Every field is required: conf/base.yaml is the one place for defaults.
class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Positive = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
HW = tuple[Positive, Positive]


class SparkSection(_Section):
    master: str
    app_name: str
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"]
    conf: dict[str, str]

    @field_validator("conf", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        return {str(k): str(x) for k, x in v.items()} if isinstance(v, dict) else v


class MlflowSection(_Section):
    tracking_uri: str
    artifact_location: Optional[str]
    experiment: str
    system_metrics_s: Annotated[float, Field(ge=0.0)]


class GateSection(_Section):
    accuracy: Fraction           # a classifier's accuracy on the audited split reaches this
    detector_recall: Fraction    # the detector's recall at precision 0.9 on the audited split reaches this


class RegistrySection(_Section):
    enabled: bool
    names: dict[str, str]
    alias: str
    gate: GateSection

    @field_validator("names")
    @classmethod
    def _every_task(cls, v: dict) -> dict:
        missing = [t for t in TASKS if not v.get(t)]
        unknown = [t for t in v if t not in TASKS]
        if missing or unknown:
            raise ValueError(f"registry.names must name a registered model for each task of {', '.join(TASKS)} "
                             f"(missing: {', '.join(missing) or 'none'}; unknown: {', '.join(unknown) or 'none'})")
        return v

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", v) or re.fullmatch(r"[vV]\d+|latest", v):
            raise ValueError(f"registry.alias must be a name (letters, digits, _ and -), not a version like v1 or "
                             f"'latest'; got {v!r}")
        return v


class PathsSection(_Section):
    work_dir: str
    data_url: str
    checkpoint_url: str


class SplitFractions(_Section):
    train: Fraction
    val: Fraction
    test: Fraction

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitFractions":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:g}")
        return self


class IngestSection(_Section):
    source: Literal[tuple(SOURCES)]  # type: ignore[valid-type]
    source_path: Optional[str]
    image_root: Optional[str]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")]
    num_frames: Positive
    frames_per_sequence: Positive
    seed: int
    render_hw: HW
    context_bias: Fraction
    road_hw: HW
    frame_hw: HW
    crop_hw: HW
    class_hw: HW
    negatives_per_frame: Annotated[int, Field(ge=0)]
    split: SplitFractions
    val_from_train: Optional[Fraction]
    min_size: Positive
    max_pixels: Positive
    distance_buckets: tuple[float, float]
    partitions: Annotated[int, Field(ge=0)]
    rowgroup_size_mb: Positive
    png_compression: Annotated[int, Field(ge=0, le=9)]
    image_format: Literal["png", "raw"]
    near_duplicate_bits: Annotated[int, Field(ge=0, le=63)]
    samples: Positive
    split_by: Literal["group", "frame"]
    group_near_duplicates: bool
    label_map: dict[str, str]

    @field_validator("label_map")
    @classmethod
    def _states(cls, v: dict) -> dict:
        bad = {k: x for k, x in v.items() if x not in LIGHT_LABELS}
        if bad:
            raise ValueError(f"maps to {bad}; each label must map to one of: {', '.join(LIGHT_LABELS)}")
        return v

    @property
    def kinds(self) -> tuple[str, ...]:
        """The dataset kinds this source yields."""
        return SOURCES[self.source]

    @property
    def val_share(self) -> float:
        """The share of a train folder carved out as val when a source fixes train and test but not val."""
        if self.val_from_train is not None:
            return self.val_from_train
        return self.split.val / (self.split.train + self.split.val) if self.split.train + self.split.val else 0.0


class TrainSection(_Section):
    task: Literal[tuple(TASKS)]  # type: ignore[valid-type]
    data: str
    kind: Optional[Literal[KINDS]]  # type: ignore[valid-type]
    epochs: Positive
    batch_size: Positive
    optimizer: Literal["sgd", "adamw"]
    lr: Annotated[float, Field(gt=0)]
    momentum: float
    weight_decay: Annotated[float, Field(ge=0)]
    width: Annotated[float, Field(gt=0)]
    num_processes: Annotated[int, Field(ge=0)]
    local_mode: bool
    use_gpu: bool
    amp: bool
    seed: int
    resume: bool
    steps_per_epoch: Annotated[int, Field(ge=0)]
    eval_batches: Annotated[int, Field(ge=0)]
    loader_workers: Annotated[int, Field(ge=0)]
    channels_last: bool
    augment_policy: Optional[str]
    init_model: Optional[str]
    init_freeze: Optional[str]
    init_lr_scale: Annotated[float, Field(gt=0)]
    max_rows: Annotated[int, Field(ge=0)]
    crop_hw: Optional[HW]
    crop_on_lights: Fraction
    crops_per_frame: Positive
    per_task: dict[str, dict[str, Any]]

    @field_validator("per_task")
    @classmethod
    def _known_tasks(cls, v: dict) -> dict:
        unknown = sorted(set(v) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown task {unknown[0]!r}; valid tasks: {', '.join(TASKS)}")
        return v


class AugmentSection(_Section):
    source: str
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    policy: str
    copies: Positive
    seed: int
    policies_file: Optional[str]


class EvaluateSection(_Section):
    model_uri: Optional[str]
    split: Literal["train", "val", "test"]
    max_batches: Annotated[int, Field(ge=0)]
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)]
    match_radius: Annotated[float, Field(gt=0.0)]


class CorrelateSection(_Section):
    models: list[str]
    seeds: Annotated[int, Field(ge=2)]
    width: Annotated[float, Field(gt=0)]
    epochs: Optional[Positive]
    split: Literal["train", "val", "test"]
    layers: Optional[list[str]]
    unit: Literal["mean", "position"]
    max_rows: Annotated[int, Field(ge=0)]
    partitions: Annotated[int, Field(ge=0)]
    batch_size: Positive
    match_threshold: Fraction
    mi_pairs: Annotated[int, Field(ge=0)]
    mi_bins: Annotated[int, Field(ge=2)]
    clusters: Positive
    random_seed: int


class VisualizeSection(_Section):
    model_uri: Optional[str]
    partner_model: Optional[str]
    layers: Optional[list[str]]
    units: Positive
    split: Literal["train", "val", "test"]
    top_k: Positive
    max_rows: Annotated[int, Field(ge=0)]
    partitions: Annotated[int, Field(ge=0)]
    param: Literal["pixels", "fourier"]
    decorrelate: bool
    color_images: Positive
    steps: Positive
    lr: Annotated[float, Field(gt=0)]
    jitter: Fraction
    scale: Annotated[float, Field(ge=0, lt=1)]
    rotate: Annotated[float, Field(ge=0)]
    l2: Annotated[float, Field(ge=0)]
    tv: Annotated[float, Field(ge=0)]
    blur_every: Annotated[int, Field(ge=0)]
    blur_sigma: Annotated[float, Field(ge=0)]
    facets: Annotated[int, Field(ge=0)]
    facet_units: Annotated[int, Field(ge=0)]
    dream_layer: Optional[str]
    dream_steps: Annotated[int, Field(ge=0)]
    seed: int


class TransferSection(_Section):
    task: Literal["lane_classifier", "tl_classifier"]
    mode: Literal["halves", "sizes"]
    init_model: Optional[str]
    splits: list[Literal["class", "day_night"]]
    layers: Optional[list[str]]
    seeds: Positive
    steps: Positive
    epochs: Positive
    image_hw: Optional[HW]
    train_rows: Annotated[int, Field(ge=0)]
    sizes: list[Positive]
    size_split: Literal["class", "day_night"]
    aux_weight: Annotated[float, Field(ge=0)]
    lr: Annotated[float, Field(gt=0)]
    fine_tune_lr: Annotated[float, Field(gt=0, le=1)]
    batch_size: Positive
    partitions: Annotated[int, Field(ge=0)]


class CounterfactualSection(_Section):
    sequences: Annotated[int, Field(ge=0)]
    frames: Positive
    seed: Annotated[int, Field(ge=0)]
    resamples: Annotated[int, Field(ge=100)]
    probe_sequences: Annotated[int, Field(ge=0)]


class AuditSection(_Section):
    model_uri: Optional[str]
    data: Optional[str]
    split: Literal["train", "val", "test"]
    max_rows: Annotated[int, Field(ge=0)]
    fill: Literal["grey", "mean", "blur", "noise"]
    dilate: Annotated[int, Field(ge=0)]
    attribution: Literal["gradient", "integrated"]
    ig_steps: Positive
    examples: Annotated[int, Field(ge=0)]
    seed: int
    frame_split: bool
    counterfactual: CounterfactualSection


class ReportSection(_Section):
    out_dir: str


class RunSection(_Section):
    tasks: list[Literal[tuple(TASKS)]]  # type: ignore[valid-type]

    @field_validator("tasks")
    @classmethod
    def _some(cls, v: list) -> list:
        if not v:
            raise ValueError("name one or more tasks for pipeline run to train and evaluate")
        return v


class Config(_Section):
    spark: SparkSection
    mlflow: MlflowSection
    registry: RegistrySection
    paths: PathsSection
    ingest: IngestSection
    augment: AugmentSection
    train: TrainSection
    evaluate: EvaluateSection
    correlate: CorrelateSection
    visualize: VisualizeSection
    transfer: TransferSection
    audit: AuditSection
    report: ReportSection
    run: RunSection

    def flat(self) -> dict[str, Any]:
        """The resolved config as ``{"dotted.key": value}``."""
        return _flatten(self.model_dump(mode="json"))


# ----------------------------------------------------------------------------------------- loading

def load_config(profile: str = "local", conf_file: Optional[str] = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Merge base + profile + file, then ``train.per_task.<task>`` of the task that will train, then the
    overrides; resolve ``${...}`` references, validate."""
    data: dict = {}
    origin: dict[str, str] = {}
    profile_path = CONF_DIR / f"{profile}.yaml"
    if profile in NOT_PROFILES or not profile_path.exists():
        raise ConfigError(f"unknown profile '{profile}'; valid profiles: {', '.join(profiles())} (files in {CONF_DIR})")
    for path in [CONF_DIR / "base.yaml", profile_path] + ([Path(conf_file)] if conf_file else []):
        _merge(data, _read_yaml(path), origin, str(path))
    parsed = [(item, *_parse_override(item)) for item in overrides]
    task = next((v for _, k, v in reversed(parsed) if k == "train.task"), data.get("train", {}).get("task"))
    per_task = data.get("train", {}).get("per_task") or {}
    if isinstance(per_task, dict) and isinstance(per_task.get(task), dict):
        _merge(data, {"train": per_task[task]}, origin, f"train.per_task.{task} (from "
                                                        f"{_origin_of(f'train.per_task.{task}', origin)})")
    for item, key, value in parsed:
        _merge(data, _nest(key, value), origin, f"override '{item}'")
    _check_keys(data, Config, "", origin)
    per_task = data.get("train", {}).get("per_task") or {}
    for name, entry in per_task.items() if isinstance(per_task, dict) else ():
        if isinstance(entry, dict):  # every task's block, not only this run's
            _check_keys({"train": entry}, Config, "", {f"train.{k}": _origin_of(f"train.per_task.{name}", origin)
                                                       for k in entry})
    data = _interpolate(data, data, origin)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, origin) from None


def profiles() -> list[str]:
    """The profiles in conf/ (every YAML file there but base and the augment policies)."""
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml") if p.stem not in NOT_PROFILES)


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        content = yamltext.load(path.read_text()) or {}
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
        value = yamltext.load(raw) if raw != "" else ""
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
BUILTINS = {"repo": lambda: str(REPO_DIR), "cwd": os.getcwd}


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
