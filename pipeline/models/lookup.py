"""Which logged model a stage means, and loading it safely: the one place every stage resolves a model URI.

A train run tags itself with the URI of the model it logged (:data:`MODEL_TAG`); nets an analysis trains for
itself (correlate's seeds, the audit's frame-split net) carry :data:`ROLE_TAG` and are never "the newest model"
of a later stage. :func:`load_model` goes through :mod:`pipeline.models.stored` (weights and a card: nothing in
the files runs); its errors name the config key that named the model.
"""
from __future__ import annotations

from typing import Optional

from pipeline.models.stored import ModelNotFound

MODEL_TAG = "pipeline.model_uri"       # a train run's tag: the URI of the model it logged (models:/<model_id>)
ROLE_TAG = "pipeline.role"             # a train run made for an analysis (its value says which): not a stage's


def train_runs(tracker, params: dict, max_results: int = 50) -> list:
    """The finished train runs of this experiment whose params equal ``params`` (``{"train.task": ..., ...}``),
    newest first, including those an analysis trained (:data:`ROLE_TAG`)."""
    where = ["tags.`pipeline.stage` = 'train'", "attributes.status = 'FINISHED'"]
    where += [f"params.`{k}` = '{v}'" for k, v in params.items()]
    return tracker.client.search_runs([tracker.experiment_id], filter_string=" and ".join(where),
                                      order_by=["attributes.start_time DESC"], max_results=max_results)


def latest_model_uri(tracker, task: str, data: str, key: str = "evaluate.model_uri") -> str:
    """The model of the newest finished train run of ``task`` on dataset ``data`` in this experiment that no
    analysis trained for itself; none: :class:`ModelNotFound` saying to train one or to set ``key``."""
    runs = [r for r in train_runs(tracker, {"train.task": task, "train.data": data})
            if not r.data.tags.get(ROLE_TAG)]
    if not runs:
        raise ModelNotFound(f"no finished train run of train.task={task} on train.data={data} in experiment "
                            f"'{tracker.conf.mlflow.experiment}': run `pipeline train` first, or set "
                            f"{key}=models:/<model id> (or models:/<name>@<alias>)")
    return model_of(runs[0])


def model_of(run) -> str:
    """The URI of the model a finished train run logged (a run of an earlier version: its ``runs:/`` URI, which
    :func:`load_model` refuses with the line that says how to re-log it)."""
    return run.data.tags.get(MODEL_TAG) or f"runs:/{run.info.run_id}/model"


def load_model(uri: str, conf, key: str = "the model URI"):
    """A logged model by URI (``models:/<model id>``, ``models:/<name>/<version>``, ``models:/<name>@<alias>``,
    ``runs:/<run id>/<name>``), rebuilt from the project's code with its stored weights (nothing in its files
    runs: :mod:`pipeline.models.stored`). A URI that names nothing is a :class:`ModelNotFound` naming the URI and
    how to list the logged models (``key``: the config key that named it)."""
    from pipeline.models import stored

    try:
        return stored.load(uri, conf.mlflow.tracking_uri)
    except ModelNotFound as exc:
        raise ModelNotFound(
            f"{exc}; list the logged models on the experiment's Models page of `mlflow ui --backend-store-uri "
            f"{conf.mlflow.tracking_uri}` (each train run logs one, models:/<model id>) or with "
            f"mlflow.search_logged_models(), or leave {key} unset for the newest") from None


def resolve(tracker, conf, uri: Optional[str], key: str) -> str:
    """``uri``, or (unset) the newest model of ``train.task`` on ``train.data`` (``key``: the config key a user
    sets instead)."""
    return uri or latest_model_uri(tracker, conf.train.task, conf.train.data, key)
