"""What the analysis stages read before they analyse: the model a config key names (resolved, loaded safely,
checked against the task), the layers they are asked for, and the nets they train for themselves.

- :func:`stage_model`: ``<stage>.model_uri`` or, unset, the newest model of ``train.task`` on ``train.data``;
  loaded through :mod:`pipeline.models.lookup` (nothing in its files runs), in eval mode, refused with one line
  when it is not the net of ``train.task``; the URI it resolved to is logged as ``<stage>.model_uri_resolved``.
- :func:`check_layers`: named layers the net has, or one line listing the layers it has.
- :func:`side_net`: a net an analysis trains for itself (correlate's seeds, the audit's frame-split net) goes
  through the stage graph (:func:`pipeline.stages.run_side_job`): its own child run tagged with its role
  (:data:`~pipeline.models.lookup.ROLE_TAG`, so no later stage takes it for "the newest model"), its own marker,
  so that a second audit or correlate with the same config, code and inputs reuses it instead of training again.
"""
from __future__ import annotations

from typing import Optional, Sequence

from pipeline.config import Config, ConfigError
from pipeline.models.lookup import load_model, resolve


def resolved_param(key: str) -> str:
    """The param :func:`stage_model` logs the URI it resolved ``key`` to under (the report reads it)."""
    return f"{key}_resolved"


def stage_model(tracker, conf: Config, uri: Optional[str], key: str, net: Optional[str] = None):
    """``(uri, model)``: the model ``key`` names (``uri``; unset: the newest of ``train.task``), in eval mode.
    ``net``: the class it must be (default: ``train.task``'s net). Logs ``<key>_resolved``."""
    import mlflow

    from pipeline.tasks import get_task

    resolved = resolve(tracker, conf, uri, key)
    model = load_model(resolved, conf, key).eval()
    check_net(model, net or get_task(conf.train.task).net, resolved, key)
    mlflow.log_param(resolved_param(key), resolved)
    return resolved, model


def load_partner(conf: Config, uri: str, key: str):
    """A second net a stage compares with (no newest-model default), in eval mode."""
    return load_model(uri, conf, key).eval()


def check_net(model, net: str, uri: str, key: str) -> None:
    """One line when ``model`` is not a ``net`` (e.g. a detector where ``train.task`` is a classifier)."""
    if type(model).__name__ != net:
        raise ConfigError(f"{key}: {uri} is a {type(model).__name__}, not the {net} of train.task: set train.task "
                          f"to the model's task, or {key} to a model of train.task")


def check_layers(model, layers: Sequence[str], key: str) -> tuple:
    """``layers`` as a tuple when ``model`` has every one; else one line naming the missing and the net's layers."""
    unknown = [name for name in layers if name not in model.layer_names]
    if unknown:
        raise ConfigError(f"{key}: {type(model).__name__} has no layer {', '.join(unknown)}; its layers: "
                          f"{', '.join(model.layer_names)}")
    return tuple(layers)


def side_net(spark, conf: Config, tracker, role: str, run_name: str, variant: str, needs=("ingest",)) -> dict:
    """Train (or reuse) the net of ``conf`` for an analysis: the train stage run as a side job of the stage graph
    (``variant`` names its marker), its run tagged ``ROLE_TAG=role``. Returns the train stage's results
    (``model_uri``, ...)."""
    from pipeline.stages import run_side_job

    return run_side_job("train", spark, conf, tracker, variant=variant, role=role, run_name=run_name, needs=needs)


def side_data(spark, conf: Config, tracker, role: str, run_name: str, variant: str) -> dict:
    """Ingest (or reuse) the dataset of ``conf`` for an analysis, as a side job of the stage graph."""
    from pipeline.stages import run_side_job

    return run_side_job("ingest", spark, conf, tracker, variant=variant, role=role, run_name=run_name)
