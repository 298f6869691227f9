"""Start a training from a logged model (``train.init_model``): pre-train on the generator, fine-tune on your data.

The driver loads the source model through the safe loader (:func:`pipeline.models.lookup.load_model`: weights
and a net card, any model URI), checks that it is the same architecture as the net to train (the net's class,
width and, for the classifiers, the input size: one line naming both when not), and picks the layers to copy:
every named layer whose weights have the same shapes, the head only when the source's classes are this dataset's
classes (in another order: its rows reordered by name; else the head stays fresh, sized for this dataset). It writes the source's weights as a
checkpoint beside the run's (``<checkpoint>-init``), so the ranks copy them as the transfer stage's cells do
(:func:`pipeline.train.run.copy_layers`); ``train.init_freeze`` keeps the copied layers up to the named one fixed,
and the other copied layers learn at ``train.init_lr_scale`` x ``train.lr``.
"""
from __future__ import annotations

import dataclasses

from pipeline.config import Config, ConfigError
from pipeline.train.spec import TrainSpec


def resolve(spec: TrainSpec, conf: Config) -> tuple[TrainSpec, dict]:
    """``spec`` set to start from ``train.init_model``, and what to record of it (params)."""
    from pipeline.models import build_model
    from pipeline.models.lookup import load_model
    from pipeline.train.checkpoints import save_checkpoint

    t = spec.train
    uri = t.init_model
    source = load_model(uri, conf, "train.init_model")
    card = source.card
    task = spec.task
    where = f"train.init_model={uri}"
    if card["net"] != task.net:
        raise ConfigError(f"{where} is a {card['net']} ({card['task']}); train.task={t.task} trains a {task.net}: "
                          f"start from a model of the same task")
    if float(card["width"]) != float(t.width):
        raise ConfigError(f"{where} has width {card['width']:g}; train.width={t.width:g}: set "
                          f"train.width={card['width']:g} to fine-tune it")
    if not task.detector and tuple(card["in_hw"]) != tuple(spec.in_hw):
        h, w = card["in_hw"]
        raise ConfigError(f"{where} takes {h}x{w} images; train.data={t.data}'s {spec.kind} are "
                          f"{spec.in_hw[0]}x{spec.in_hw[1]}: ingest at {h}x{w} (ingest.road_hw / ingest.crop_hw / "
                          f"ingest.class_hw) or pre-train at this size")
    target = build_model(t.task, None if task.detector else len(spec.classes), spec.in_hw, t.width)
    theirs, ours = source.state_dict(), target.state_dict()
    head = target.layer_names[-1]
    source_classes, classes = list(card["classes"]), list(spec.classes)
    reordered = source_classes != classes and sorted(source_classes) == sorted(classes) \
        and len(set(classes)) == len(classes) and not task.detector
    if reordered:   # the same classes in another order (an ImageFolder sorts its folders): each row follows its name
        order = [source_classes.index(name) for name in classes]
        theirs = dict(theirs, **{f"{head}.{k}": theirs[f"{head}.{k}"][order].clone() for k in ("weight", "bias")})
    same_classes = source_classes == classes or reordered
    layers = tuple(n for n in target.layer_names
                   if all(f"{n}.{k}" in theirs and theirs[f"{n}.{k}"].shape == ours[f"{n}.{k}"].shape
                          for k in ("weight", "bias"))
                   and (n != head or same_classes))
    frozen: tuple = ()
    if t.init_freeze:
        if t.init_freeze not in layers:
            raise ConfigError(f"train.init_freeze={t.init_freeze}: not a layer copied from {uri} (copied: "
                              f"{', '.join(layers)})")
        frozen = layers[:layers.index(t.init_freeze) + 1]
    url = f"{spec.checkpoint_url}-init"
    save_checkpoint(url, {"model": theirs, "epoch": -1, "args": {"source": uri}})
    head_note = (f"; {head}'s rows reordered to this dataset's class order" if reordered and head in layers
                 else "" if head in layers else f"; a fresh {head} for {len(spec.classes)} classes")
    print(f"train: starting from {uri} ({card['task']}, classes {', '.join(card['classes'])}): copying "
          f"{', '.join(layers)}{head_note}"
          f"{f'; frozen up to {t.init_freeze}' if frozen else ''}", flush=True)
    spec = dataclasses.replace(spec, init_url=url, init_layers=layers, init_head=head in layers,
                               freeze_layers=frozen, init_lr_scale=t.init_lr_scale)
    from pipeline import registry

    model_id = registry.model_id_of(conf, uri) or ""
    params = {"train.init_model_resolved": uri, "train.init_model_id": model_id,
              "train.init_layers": ",".join(layers), "train.init_frozen": ",".join(frozen),
              "train.init_head": ("reordered" if reordered else "copied") if head in layers else "fresh"}
    source_run = _source_run(conf, model_id)
    if source_run:
        params["train.init_source_run"] = source_run
    return spec, params


def _source_run(conf: Config, model_id: str) -> str:
    """The run that logged the source model ("" when it cannot be found)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not model_id:
        return ""
    try:
        return MlflowClient(conf.mlflow.tracking_uri).get_logged_model(model_id).source_run_id or ""
    except MlflowException:
        return ""
