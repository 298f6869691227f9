"""Untrusted files: a dataset, a checkpoint or an annotation file is data, never code. Each payload below would
create a marker file if it ran. Decompression bombs (refused from their header) are shown by
tests/data/test_images.py::test_too_large_refused_from_header_before_decoding and the bomb.png of
tests/data/test_ingest.py's folder ingest; `..` and absolute annotation paths by
tests/data/test_readers.py::test_resolve_never_leaves_root."""
from __future__ import annotations

import ast
import io
import os
import pickle
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.data import readers, store
from pipeline.train.loader import LoaderSpec, rows
from pipeline.train.run import load_checkpoint
from schemas.datasets import TLFrameSchema, field_decoders
from tests.datasets import needs_petastorm
from tests.faults.util import REPO, record


class Payload:
    """Unpickled, it runs ``exec`` (a builtin: Petastorm's "restricted" unpickler allows builtins)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _poison(split: Path, marker: Path) -> None:
    """Replace the pickled Unischema in a split's ``_common_metadata`` by a payload."""
    from schemas.format import UNISCHEMA_KEY

    schema = pq.read_metadata(str(split / "_common_metadata")).schema.to_arrow_schema()
    pq.write_metadata(schema.with_metadata({**schema.metadata, UNISCHEMA_KEY: pickle.dumps(Payload(marker))}),
                      str(split / "_common_metadata"))


def test_nothing_read_from_a_dataset_is_unpickled(tiny_data, tmp_path):
    split = tmp_path / "tl_crops" / "train"
    shutil.copytree(Path(tiny_data().paths.data_url[len("file://"):]) / "synthetic" / "tl_crops" / "train", split)
    marker = tmp_path / "ran"
    _poison(split, marker)
    got = list(rows(LoaderSpec(split.as_uri(), "tl_crops", 8)))      # what training, evaluation and the analyses read
    assert not marker.exists(), "the training loader unpickled the dataset's metadata"
    assert len(got) == pq.read_table(str(split)).num_rows and got[0]["image"].shape == (32, 32, 3)
    record("untrusted: a dataset whose _common_metadata pickle runs code", "the loader read every row with the "
           "Unischema from code; the payload did not run (plain Petastorm runs it)")


@needs_petastorm
def test_petastorms_own_reader_does_run_the_payload(tiny_data, tmp_path):
    """Why the project reads datasets itself: Petastorm's reader unpickles the stored schema."""
    from petastorm import make_batch_reader

    split = tmp_path / "tl_crops" / "train"
    shutil.copytree(Path(tiny_data().paths.data_url[len("file://"):]) / "synthetic" / "tl_crops" / "train", split)
    marker = tmp_path / "ran"
    _poison(split, marker)
    with pytest.raises(Exception):
        make_batch_reader(split.as_uri(), reader_pool_type="dummy")
    assert marker.exists()


def test_a_checkpoint_is_loaded_with_weights_only(tmp_path):
    marker = tmp_path / "ran"
    buf = io.BytesIO()
    torch.save({"model": {}, "epoch": 0, "extra": Payload(marker)}, buf)
    (tmp_path / "last.pt").write_bytes(buf.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(tmp_path.as_uri())
    assert not marker.exists()


def test_stored_arrays_are_read_without_pickle(tmp_path):
    marker = tmp_path / "ran"
    value = io.BytesIO()
    np.save(value, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    decode = field_decoders(TLFrameSchema, ["boxes"])["boxes"]
    with pytest.raises(ValueError, match="allow_pickle=False"):
        decode(bytearray(value.getvalue()))
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ logged models

def _artifacts(model_uri: str) -> Path:
    """The local folder of a LoggedModel's files (the tests' artifact store is a folder)."""
    import mlflow

    location = mlflow.get_logged_model(model_uri[len("models:/"):]).artifact_location
    return Path(location[len("file://"):] if location.startswith("file://") else location)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Logged models whose files carry a payload that creates ``marker`` when unpickled: {case: (uri, marker)}."""
    import mlflow
    import mlflow.pytorch

    from pipeline.models import build_model
    from pipeline.tracking import Tracker
    from tests.conftest import make_conf
    from tests.faults.util import log_untrained_lane_net

    work = tmp_path_factory.mktemp("planted")
    tracker = Tracker(make_conf(work))
    cases = {}
    # 1. a model as earlier versions logged it (mlflow.pytorch, a pickled module), its pickle replaced by a payload
    with tracker.stage_run("train"):
        old = mlflow.pytorch.log_model(build_model("lane_classifier", 6, (64, 64), 0.25), name="model",
                                       serialization_format="pickle").model_uri
    marker = work / "ran-old"
    torch.save(Payload(marker), _artifacts(old) / "data" / "model.pth")
    cases["an earlier version's pickled module"] = (old, marker)
    # 2. the pipeline's form, with a pickled payload beside it and a pytorch flavour in MLmodel pointing at it
    uri = log_untrained_lane_net(tracker)
    marker = work / "ran-beside"
    (_artifacts(uri) / "data" / "model.pth").write_bytes(pickle.dumps(Payload(marker)))
    mlmodel = _artifacts(uri) / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("flavors:\n", "flavors:\n  pytorch:\n    model_data: data\n"
                                                   "    pickle_module_name: mlflow.pytorch.pickle_module\n", 1))
    cases["a payload beside the weights"] = (uri, marker)
    # 3. the weights file replaced by a torch.save pickle that carries the payload
    uri = log_untrained_lane_net(tracker)
    marker = work / "ran-weights"
    buf = io.BytesIO()
    torch.save({"conv1.weight": Payload(marker)}, buf)
    next((_artifacts(uri) / "data").rglob("weights.safetensors")).write_bytes(buf.getvalue())
    cases["weights replaced by a pickle"] = (uri, marker)
    return work, cases


def test_no_loader_runs_a_payload_planted_in_a_logged_model(spark, planted, capsys):
    """Every stage loads models through pipeline.models.lookup.load_model (the scan below shows no other
    loader exists): a planted pickle never runs; the earlier form and a foreign weights file are refused with one
    line, a pickle beside the pipeline's files is ignored. The evaluate command says so and exits 2."""
    from pipeline.cli import main
    from pipeline.models.stored import UnsafeModel
    from pipeline.models.lookup import load_model
    from tests.conftest import TINY, make_conf

    work, cases = planted
    conf = make_conf(work)
    old, marker = cases["an earlier version's pickled module"]
    with pytest.raises(UnsafeModel, match="earlier version of the pipeline as a pickled torch module.*train it "
                                          "again with `pipeline train`"):
        load_model(old, conf)
    shared = ["spark.master=local[2]", "spark.conf.spark.sql.shuffle.partitions=4"]   # the shared session's kept
    assert main(["evaluate", f"paths.work_dir={work}", *shared, *TINY, f"evaluate.model_uri={old}"]) == 2
    said = capsys.readouterr().err
    assert "pickled torch module" in said and len(said.strip().splitlines()) == 1, said
    assert not marker.exists(), "loading a model logged in the earlier form ran its pickle"
    uri, marker = cases["a payload beside the weights"]
    net = load_model(uri, conf)
    assert type(net).__name__ == "LaneNet" and not marker.exists()
    uri, marker = cases["weights replaced by a pickle"]
    with pytest.raises(UnsafeModel, match="weights.safetensors is not a safetensors file"):
        load_model(uri, conf)
    assert not marker.exists()
    record("untrusted: logged models carrying a pickled payload", "an earlier version's pickled module and a "
           "pickle in place of the weights are refused with one line, a pickle beside the weights is ignored; "
           "no payload ran")


def test_the_safe_form_loads_with_mlflows_own_api_too(planted):
    """What a user outside the pipeline does: mlflow.pyfunc.load_model imports pipeline.models.stored (the
    installed package, not code from the store) and predicts the same logits as the pipeline's loader."""
    import mlflow.pyfunc

    from pipeline.models.lookup import load_model
    from tests.conftest import make_conf

    work, cases = planted
    uri, marker = cases["a payload beside the weights"]
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        ours = load_model(uri, make_conf(work))(torch.from_numpy(x)).numpy()
    assert np.allclose(mlflow.pyfunc.load_model(uri).predict(x), ours, atol=1e-6)
    assert not marker.exists()


FORBIDDEN = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "cloudpickle.load",
             "cloudpickle.loads", "dill.load", "dill.loads", "joblib.load", "marshal.load", "marshal.loads",
             "yaml.unsafe_load", "yaml.full_load", "shelve.open", "pandas.read_pickle", "torch.jit.load",
             "mlflow.pytorch.load_model", "mlflow.pyfunc.load_model", "mlflow.sklearn.load_model"}


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else ""
    return ""


def deserializers(source: str, where: str) -> list:
    """Calls in ``source`` that may run code from what they read, named by what they resolve to through the
    module's imports (``import pickle as p``, ``from pickle import loads as l``, ``import numpy as np``)."""
    tree = ast.parse(source, where)
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not _dotted(node.func):
            continue
        head, _, rest = _dotted(node.func).partition(".")
        called = names.get(head, head) + (f".{rest}" if rest else "")
        kwargs = {k.arg: k.value for k in node.keywords}
        at = f"{where}:{node.lineno}"

        def constant(key):
            return kwargs[key].value if isinstance(kwargs.get(key), ast.Constant) else None

        if called in FORBIDDEN:
            problems.append(f"{at}: {called}")
        elif called == "torch.load" and constant("weights_only") is not True:
            problems.append(f"{at}: torch.load without weights_only=True")
        elif called == "numpy.load" and "allow_pickle" in kwargs and constant("allow_pickle") is not False:
            problems.append(f"{at}: numpy.load(allow_pickle=...)")
        elif called == "yaml.load" and "Loader" not in kwargs:
            problems.append(f"{at}: yaml.load without a Loader")
    return problems


def test_the_scan_sees_through_aliases_and_from_imports():
    flagged = {
        "from pickle import loads as l\nl(b'')": "pickle.loads",
        "import pickle as p\np.loads(b'')": "pickle.loads",
        "from mlflow.pytorch import load_model\nload_model('runs:/x/model')": "mlflow.pytorch.load_model",
        "import mlflow.pyfunc\nmlflow.pyfunc.load_model('models:/m')": "mlflow.pyfunc.load_model",
        "import torch as t\nt.load('f')": "torch.load without weights_only=True",
        "from torch import load\nload('f', weights_only=False)": "torch.load without weights_only=True",
        "import numpy as n\nn.load('f', allow_pickle=True)": "numpy.load(allow_pickle=...)",
        "from yaml import load\nload('a: 1')": "yaml.load without a Loader",
    }
    for source, what in flagged.items():
        assert [p.split(": ", 1)[1] for p in deserializers(source, "x.py")] == [what], source
    assert deserializers("import torch\ntorch.load('f', weights_only=True)\nimport numpy as np\nnp.load('f')",
                         "x.py") == []


def test_no_code_path_deserializes_with_pickle_outside_the_safe_loaders():
    """Every torch.load passes weights_only=True; no pickle-family loader, MLflow model loader (models load
    through pipeline.models.stored: weights and a card), numpy.load(allow_pickle=True) or yaml.load without our
    safe Loader anywhere in pipeline/, schemas/ or jobs/; no Petastorm reader (they unpickle the stored schema):
    datasets are read with pyarrow, their schema from code."""
    problems = []
    for folder in ("pipeline", "schemas", "jobs"):
        for path in sorted((REPO / folder).rglob("*.py")):
            problems += deserializers(path.read_text(), str(path.relative_to(REPO)))
    assert problems == []
    readers_of_petastorm = sorted(str(p.relative_to(REPO)) for folder in ("pipeline", "schemas", "jobs")
                                  for p in (REPO / folder).rglob("*.py")
                                  if re.search(r"\bmake_(batch_)?reader\(|\bpetastorm\.reader\b", p.read_text()))
    assert readers_of_petastorm == []
    assert "store.read_row_group," in (REPO / "pipeline" / "train" / "loader.py").read_text()
    assert "Loader = CSafeLoader" in (REPO / "pipeline" / "yamltext.py").read_text()
    assert "stored.load(uri, conf.mlflow.tracking_uri)" in (REPO / "pipeline" / "models" / "lookup.py").read_text()
    record("untrusted: checkpoints, models and stored values", "checkpoints load with weights_only=True (a pickled "
           "payload is refused), models as safetensors weights and a JSON card rebuilt by the project's code, "
           "stored arrays with allow_pickle=False; no other deserializer in pipeline/, schemas/ or jobs/ (aliases "
           "and from-imports resolved)")


def test_annotation_paths_cannot_escape_the_root_through_a_symlink(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "rgb").mkdir(parents=True)
    outside.mkdir()
    for folder in (outside, root / "rgb"):
        cv2.imwrite(str(folder / "frame.png"), np.zeros((40, 40, 3), np.uint8))
    os.symlink(outside / "frame.png", root / "rgb" / "link.png")      # a file link leading out
    os.symlink(outside, root / "out")                                # a folder link leading out
    os.symlink(root / "rgb" / "frame.png", root / "rgb" / "inner.png")   # a link that stays inside: fine
    (root / "train.yaml").write_text("".join(f"- path: {p}\n  boxes: []\n" for p in
                                             ("./rgb/frame.png", "./rgb/inner.png", "./rgb/link.png",
                                              "./out/frame.png", "../outside/frame.png")))
    got = {r.source_id: r.reason for r in readers.read_source("bosch", str(root / "train.yaml"))}
    assert got == {"rgb/frame.png": None, "rgb/inner.png": None,
                   "./rgb/link.png": "path_escapes_root:./rgb/link.png",
                   "./out/frame.png": "path_escapes_root:./out/frame.png",
                   "../outside/frame.png": "path_escapes_root:../outside/frame.png"}, got
    record("untrusted: annotation paths leading out of the root", "`..`, absolute paths and symlinks leading out "
           "are quarantined as path_escapes_root")
