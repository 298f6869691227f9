"""What the fault tests share: processes started in their own session and killed for real, polling with
deadlines on what the process really did, and the rows and runs a fault may have lost, duplicated or left open.

``FAULT_TABLE=<file>`` appends one JSON line per fault (what happened, rows lost, rows duplicated, runs left
RUNNING) for the report; the tests assert the zeros either way.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pyarrow.parquet as pq
import pytest

from pipeline.tracking import _proc_stat

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PIPELINE = str(BIN / "pipeline")

# The data of tests/conftest.py's TINY, as command-line overrides (the same rows as the tiny_data fixture).
TINY_ARGS = ["ingest.num_frames=48", "ingest.frames_per_sequence=2", "ingest.render_hw=[180,320]",
             "ingest.frame_hw=[72,128]", "ingest.road_hw=[64,64]", "ingest.partitions=4",
             "ingest.split={train: 0.5, val: 0.25, test: 0.25}", "train.batch_size=8", "train.width=0.25",
             "train.lr=0.002", "spark.master=local[2]", "spark.conf.spark.driver.memory=1g",
             "spark.conf.spark.sql.shuffle.partitions=4"]


# ------------------------------------------------------------------------------------------ processes

class Proc:
    """A command in its own session (so its whole tree can be killed), its output in a log file."""

    def __init__(self, args: list, log: Path, env: Optional[dict] = None, cwd: Path = REPO):
        self.args, self.log = [str(a) for a in args], log
        self._out = open(log, "wb")
        self.popen = subprocess.Popen(self.args, cwd=cwd, stdout=self._out, stderr=subprocess.STDOUT,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                      start_new_session=True)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")

    def tail(self, chars: int = 4000) -> str:
        return self.output()[-chars:]

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_tree()
            pytest.fail(f"{' '.join(self.args[:3])} ... did not end within {timeout:.0f} s:\n{self.tail()}")

    def tree(self) -> set:
        """Its live descendants (torchrun starts each rank in a session of its own) and its session's members."""
        return descendants(self.pid) | set(session_members(self.pid))

    def kill(self, sig=signal.SIGKILL) -> None:
        """Kill the process itself (not its children; they are remembered for :meth:`settle`)."""
        self._known = getattr(self, "_known", set()) | self.tree()
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill_tree(self) -> None:
        """SIGKILL the process and everything it started (its JVM, Spark's Python workers, torchrun, the ranks)
        at once."""
        for pid in self.tree() | {p for p in getattr(self, "_known", set()) if alive(p)}:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        if not self._out.closed:
            self._out.close()

    def settle(self, deadline_s: float = 60) -> None:
        """Wait (with a deadline) until nothing it started runs any more; then make sure of it."""
        end = time.monotonic() + deadline_s
        known = getattr(self, "_known", set())
        while time.monotonic() < end and (self.tree() | {p for p in known if alive(p)}) - {self.pid}:
            time.sleep(0.1)
        self.kill_tree()


def wait_for(what: str, check: Callable, deadline_s: float, proc: Optional[Proc] = None, interval: float = 0.05):
    """Poll ``check()`` until it returns something truthy; fail at the deadline, or at once when ``proc`` ends."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        result = check()
        if result:
            return result
        if proc is not None and not proc.alive():
            result = check()
            if result:
                return result
            pytest.fail(f"the process ended (exit {proc.popen.returncode}) before {what}:\n{proc.tail()}")
        time.sleep(interval)
    pytest.fail(f"not after {deadline_s:.0f} s: {what}" + (f"\n{proc.tail()}" if proc else ""))


def pids() -> list:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def session_members(sid: int) -> list:
    """Live (not zombie) processes of session ``sid``."""
    out = []
    for pid in pids():
        stat = _proc_stat(pid)
        if stat and int(stat[3]) == sid and stat[0] not in "ZX":
            out.append(pid)
    return out


def alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return bool(stat) and stat[0] not in "ZX"


def descendants(pid: int) -> set:
    """Live descendants of ``pid`` (by parent links; a process whose parent died is reparented and lost)."""
    children: dict = {}
    for p in pids():
        stat = _proc_stat(p)
        if stat and stat[0] not in "ZX":
            children.setdefault(int(stat[1]), []).append(p)
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def parent(pid: int) -> Optional[int]:
    stat = _proc_stat(pid)
    return int(stat[1]) if stat else None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def environ(pid: int) -> dict:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


# ------------------------------------------------------------------------------------------- datasets

def split_rows(folder: Path) -> list:
    """(id, content digest) of every row of one split folder, sorted; the readers' view (hidden and ``_`` files
    are not data). No Petastorm: nothing of the dataset is unpickled."""
    table = pq.read_table(str(folder))
    ids = table.column("id").to_pylist()
    digests = []
    for row in table.to_pylist():
        digest = hashlib.sha256()
        for key in sorted(row):
            digest.update(key.encode() + repr(row[key]).encode())
        digests.append(digest.hexdigest()[:16])
    return sorted(zip(ids, digests))


def dataset_rows(root: Path) -> dict:
    """``{"<kind>/<split>": [(id, digest), ...]}`` of a dataset, from the summary its writer left."""
    meta = json.loads((root / "_ingest.json").read_text())
    return {f"{kind}/{split}": split_rows(root / kind / split)
            for kind, info in meta["datasets"].items() for split in info["splits"]}


def lost_and_duplicated(expected: dict, got: dict) -> tuple[int, int]:
    """Rows of ``expected`` missing from ``got`` (by id and content), and rows of ``got`` beyond ``expected``
    (a second copy of an id, or a row that should not be there)."""
    lost = dup = 0
    for key in set(expected) | set(got):
        want, have = expected.get(key, []), got.get(key, [])
        have_ids = [i for i, _ in have]
        lost += len(set(want) - set(have))
        dup += (len(have_ids) - len(set(have_ids))) + len(set(have) - set(want))
    return lost, dup


def leftovers(data_dir: Path, name: str) -> list:
    """What a writer of dataset ``name`` left beside it: temporary and old folders."""
    return sorted(p.name for p in data_dir.iterdir() if p.name.startswith(f"{name}."))


def hidden_files(root: Path) -> list:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if p.is_file() and not p.name.endswith(".crc"))


# ---------------------------------------------------------------------------------------------- MLflow

def runs_by_status(tracking_uri: str) -> dict:
    """``{status: [run names]}`` of every run in every experiment of the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    out: dict = {}
    for run in client.search_runs(ids, max_results=5000) if ids else []:
        out.setdefault(run.info.status, []).append(run.info.run_name)
    return out


def running(tracking_uri: str) -> list:
    return runs_by_status(tracking_uri).get("RUNNING", [])


def record(fault: str, happened: str, lost: int = 0, duplicated: int = 0, left_running: int = 0,
           test: str = "") -> None:
    """One row of the report's table (``FAULT_TABLE=<file>``); every number must be 0."""
    path = os.environ.get("FAULT_TABLE")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"fault": fault, "happened": happened, "lost": lost, "duplicated": duplicated,
                                 "running": left_running,
                                 "test": test or os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]}) + "\n")
    assert (lost, duplicated, left_running) == (0, 0, 0), (fault, happened, lost, duplicated, left_running)


def log_untrained_lane_net(tracker) -> str:
    """An untrained width-0.25 lane net for 64x64 road frames (its numbers are as deterministic as a trained
    one's), logged in a train run as the train stage logs a model; returns its ``models:/`` URI."""
    from pipeline.data.synth import LANE_CLASSES
    from pipeline.models import build_model, stored

    with tracker.stage_run("train"):
        info = stored.card("lane_classifier", LANE_CLASSES, (64, 64), 0.25, "road_frames")
        return stored.log_model(build_model("lane_classifier", 6, (64, 64), 0.25), info, "lane_classifier",
                                requirements=[]).model_uri
