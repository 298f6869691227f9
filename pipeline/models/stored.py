"""Models stored as data: the weights as safetensors and the net's card as JSON; loading runs nothing in the files.

A model the pipeline logs is an MLflow model of the ``python_function`` flavour whose loader is this module
(``loader_module``, imported from the installed package, never from the store). Its ``data/net`` folder holds

- ``net.json``: the format, the task, the net's class and constructor arguments (classes, input size, width)
  and the dataset kind it was trained on;
- ``weights.safetensors``: the state dict, tensors only (safetensors has no code path: no pickle at all).

:func:`load` rebuilds the net from the project's own code (:func:`pipeline.models.build_model`) with the card's
arguments and fills it with the tensors, after checking that every name and shape matches. MLflow's own API
loads the same model through the same code: ``mlflow.pyfunc.load_model(uri).predict(batch)`` returns the logits
(the detector: its heat map) of a float32 batch ``(N, 3, H, W)`` in [0, 1].

A model logged by an earlier version of the pipeline (``mlflow.pytorch``'s pickled module) is refused with one
line (unpickling would run whatever the file says); so is any model whose files are not this module's form.
Every URI MLflow resolves is accepted: ``models:/<model_id>``, ``models:/<name>/<version>``,
``models:/<name>@<alias>``, ``runs:/<run id>/<name>``, or a local folder.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pipeline.errors import UserError

FORMAT = "road-pipeline-net/1"
DATA = "net"                     # the folder under the model's data/ holding the two files
CARD = "net.json"
WEIGHTS = "weights.safetensors"
LOADER = __name__                # the loader_module MLflow records (and imports to predict)


class ModelNotFound(UserError, LookupError):
    """No logged model where the URI points."""


class UnsafeModel(UserError, ValueError):
    """A model whose files are not weights and a card (a pickled module, or another flavour): never loaded."""


# ------------------------------------------------------------------------------------------- the card

def card(task: str, classes, in_hw, width: float, kind: str, **extra) -> dict:
    """What rebuilds the net: the task (its class in pipeline.models.nets), its classes in label order, the input
    size, the width multiplier, and the dataset kind it was trained on (plain values; ``extra`` too)."""
    from pipeline.tasks import get_task

    return {"format": FORMAT, "task": task, "net": get_task(task).net, "classes": list(classes),
            "in_hw": [int(v) for v in in_hw], "width": float(width), "kind": kind, **extra}


def build_from_card(info: dict, where: str):
    """The untrained net the card describes; a card that does not describe a net of this project is refused."""
    from pipeline.models import build_model
    from pipeline.tasks import TASKS

    if info.get("format") != FORMAT:
        raise UnsafeModel(f"{where}: {CARD} has format {info.get('format')!r}, not {FORMAT!r}: not a model of this "
                          f"pipeline's form (re-log it with `pipeline train`)")
    task = info.get("task")
    if task not in TASKS or TASKS[task].net != info.get("net"):
        raise UnsafeModel(f"{where}: {CARD} names task {task!r} / net {info.get('net')!r}; this pipeline knows "
                          f"{', '.join(f'{t} ({v.net})' for t, v in TASKS.items())}")
    detector = TASKS[task].detector
    try:
        return build_model(task, None if detector else len(info["classes"]), tuple(info["in_hw"]),
                           float(info["width"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise UnsafeModel(f"{where}: {CARD} cannot build a {info.get('net')}: {exc}") from None


# ------------------------------------------------------------------------------------------- files

def save(model, info: dict, folder: Path) -> Path:
    """Write ``model``'s state dict and its card into ``folder`` (created); returns the folder."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": FORMAT})
    (folder / CARD).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return folder


def read(folder: Path, where: Optional[str] = None):
    """The net stored in ``folder`` (a card and its weights), in eval mode, on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    where = where or str(folder)
    try:
        info = json.loads((folder / CARD).read_text())
    except (OSError, ValueError) as exc:
        raise UnsafeModel(f"{where}: no readable {CARD} ({type(exc).__name__}): not a model of this pipeline's "
                          f"form (re-log it with `pipeline train`)") from None
    net = build_from_card(info, where)
    try:
        state = load_file(str(folder / WEIGHTS), device="cpu")
    except (OSError, SafetensorError) as exc:
        raise UnsafeModel(f"{where}: {WEIGHTS} is not a safetensors file ({str(exc)[:120]})") from None
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        wrong = sorted(set(got) ^ set(expected)) or [k for k in expected if got[k] != expected[k]]
        raise UnsafeModel(f"{where}: the weights do not fit the {info['net']} the card describes (first "
                          f"mismatches: {', '.join(wrong[:4])})")
    net.load_state_dict(state)
    net.card = info
    return net.eval()


# ------------------------------------------------------------------------------------------- MLflow

def log_model(model, info: dict, name: str, requirements: list, params: Optional[dict] = None):
    """Log ``model`` into the active run as a LoggedModel called ``name`` (its ``python_function`` flavour loads
    through this module), with an input example and a signature; returns MLflow's ModelInfo."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    detector = info["net"] == "TLDetector"          # any input size: a heat map of the same stride
    h, w = info["in_hw"]
    example = np.zeros((1, 3, h, w), np.float32)
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(example)).numpy()
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1) if detector else (-1, 3, h, w))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *(-1 if detector else d for d in out.shape[1:])))]))
    chatty = logging.getLogger("mlflow.pyfunc")          # "Validating input example ...": on every log
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save(model, info, Path(tmp) / DATA)
        try:
            return mlflow.pyfunc.log_model(name=name, loader_module=LOADER, data_path=str(folder),
                                           signature=signature,
                                           input_example=example, pip_requirements=requirements,
                                           params={k: str(v) for k, v in (params or {}).items()} or None)
        finally:
            chatty.setLevel(level)


def _flavour(local: Path, uri: str) -> Path:
    """The ``data/net`` folder of the downloaded model at ``local``, after checking its MLmodel names this
    module's form; anything else is an :class:`UnsafeModel` saying why and how to re-log it."""
    from pipeline import yamltext

    try:
        mlmodel = yamltext.load((local / "MLmodel").read_text()) or {}
    except OSError:
        raise ModelNotFound(f"{uri} holds no MLmodel file: not an MLflow model") from None
    flavours = mlmodel.get("flavors") or {}
    pyfunc = flavours.get("python_function") or {}
    if pyfunc.get("loader_module") == LOADER and pyfunc.get("data"):
        return local / pyfunc["data"]
    if "pytorch" in flavours:
        raise UnsafeModel(f"{uri} was logged by an earlier version of the pipeline as a pickled torch module, which "
                          f"the pipeline never loads (unpickling runs whatever the file says): train it again with "
                          f"`pipeline train` to log it as weights and a net card")
    raise UnsafeModel(f"{uri} is not a model of this pipeline (flavours: {', '.join(flavours) or 'none'}; loader "
                      f"{pyfunc.get('loader_module')!r}): only weights with a net card are loaded")


def load(uri: str, tracking_uri: Optional[str] = None):
    """The net at a model URI (or a local model folder) of the store at ``tracking_uri`` (default: MLflow's
    current one), rebuilt from the project's code: nothing in its files runs. A URI that names nothing is a
    :class:`ModelNotFound`; another form an :class:`UnsafeModel`."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    if Path(uri).is_dir():
        return read(_flavour(Path(uri), uri), uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            source = _underlying(uri, tracking_uri) if tracking_uri and uri.startswith(("models:", "runs:")) else uri
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp,
                                                             tracking_uri=tracking_uri))
        except (MlflowException, OSError) as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise ModelNotFound(f"cannot find the model {uri} ({reason})") from None
        return read(_flavour(local, uri), uri)


def _underlying(uri: str, tracking_uri: str) -> str:
    """Where a ``models:/`` URI's files are, looked up in the store at ``tracking_uri``. (MLflow's own lookup
    asks the process's current tracking URI whatever ``tracking_uri`` says: a process that never set one would
    look in ./mlruns.)"""
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
    from mlflow.store.artifact.utils.models import get_model_name_and_version
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if uri.startswith("runs:"):          # runs:/<run>/<name>: the LoggedModel of that name the run logged, if any
        run_id, path = RunsArtifactRepository.parse_runs_uri(uri)
        name, _, rest = (path or "").partition("/")
        experiment = client.get_run(run_id).info.experiment_id
        token = None
        while name:
            page = client.search_logged_models([experiment], filter_string=f"name = '{name}'", page_token=token)
            model = next((m for m in page if m.source_run_id == run_id), None)
            if model:
                return _underlying(f"models:/{model.model_id}" + (f"/{rest}" if rest else ""), tracking_uri)
            token = page.token
            if not token:
                break
        return uri                       # files of the run itself (its artifact store is found from the run)
    base, inside = ModelsArtifactRepository.split_models_uri(uri)
    found = get_model_name_and_version(client, base)
    where = (client.get_logged_model(found[0]).artifact_location if len(found) == 1
             else client.get_model_version_download_uri(*found))
    if where.startswith("models:"):      # a version registered from a logged model: its files are the model's
        where = _underlying(where, tracking_uri)
    return f"{where.rstrip('/')}/{inside}" if inside else where


# ---------------------------------------------------------------------------------- MLflow's pyfunc hook

class Predictor:
    """What ``mlflow.pyfunc.load_model`` returns: the net's logits for a float32 batch (N, 3, H, W)."""

    def __init__(self, net):
        self.net = net

    def predict(self, model_input, params=None):  # noqa: ARG002  (MLflow's signature)
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(model_input, dtype=np.float32)))
        with torch.no_grad():
            return self.net(x).numpy()


def _load_pyfunc(data_path: str) -> Predictor:
    """MLflow's ``loader_module`` entry point: ``data_path`` is the model's ``data/net`` folder."""
    return Predictor(read(Path(data_path)))
