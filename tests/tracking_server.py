"""A team's tracking server for tests: ``mlflow server`` on a PostgreSQL database of its own, its artifacts on a
``file://`` URL it proxies (clients log through ``mlflow-artifacts:``; none writes the folder itself).

PostgreSQL is found through ``ROAD_TEST_POSTGRES``, the URL of a role that may create databases (``bash
.ci/postgres`` installs and starts Debian's PostgreSQL, makes that role and prints the URL; ``.ci/run`` exports it).
Each server gets a database made for it and dropped afterwards. Without ``ROAD_TEST_POSTGRES`` a test that needs
one skips, saying how to get it, except under CI (``CI=true``), where it fails.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Optional

import pytest

ENV = "ROAD_TEST_POSTGRES"
SETUP = f"export {ENV}=$(bash .ci/postgres)"
BIN = Path(sys.executable).parent


def postgres_url(environ=os.environ) -> Optional[str]:
    return environ.get(ENV) or None


def require_postgres(environ=os.environ) -> str:
    """The admin URL; else skip (fail under CI) with the command that gives one."""
    url = postgres_url(environ)
    if url:
        return url
    message = f"no PostgreSQL for the team tracking server's tests ({ENV} is not set): `{SETUP}`"
    if environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"{message}; under CI these tests must run, not skip", pytrace=False)
    pytest.skip(message)


def _admin(url: str, sql: str) -> None:
    import psycopg

    # CREATE / DROP DATABASE cannot run in a transaction
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrackingServer:
    """``mlflow server`` on a fresh PostgreSQL database; :meth:`stop` ends it and drops the database."""

    def __init__(self, root: Path, admin_url: str, env: Optional[dict] = None, workers: int = 2):
        self.root, self.admin_url = root, admin_url
        self.database = f"mlflow_{uuid.uuid4().hex[:12]}"
        self.backend_uri = admin_url.rsplit("/", 1)[0] + "/" + self.database
        self.artifacts = f"file://{root}/artifacts"
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = root / "mlflow-server.log"
        root.mkdir(parents=True, exist_ok=True)
        _admin(admin_url, f'CREATE DATABASE "{self.database}"')
        try:
            self.proc = self._start(env, workers)
        except BaseException:
            self.drop()
            raise

    def _start(self, env: Optional[dict], workers: int) -> subprocess.Popen:
        with open(self.log, "wb") as out:
            return subprocess.Popen(
                [str(BIN / "mlflow"), "server", "--backend-store-uri", self.backend_uri,
                 "--artifacts-destination", self.artifacts, "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", str(workers)],
                cwd=self.root, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**(env or os.environ), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})

    def wait(self, deadline_s: float = 180) -> "TrackingServer":
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.read().decode().strip() == "OK":
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"mlflow server {self.uri}: no /health after {deadline_s:.0f} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.drop()

    def drop(self) -> None:
        """Drop the server's database (its server stopped)."""
        _admin(self.admin_url, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def run_ids(self) -> set:
        """The ids of the runs in the server's PostgreSQL database."""
        import psycopg

        with psycopg.connect(self.backend_uri) as conn:
            return {row[0] for row in conn.execute("SELECT run_uuid FROM runs")}

    def backend(self) -> dict:
        """What the server's database holds, asked of PostgreSQL itself: ``{table: rows}`` of runs, metrics,
        params and tags."""
        import psycopg

        with psycopg.connect(self.backend_uri) as conn:
            return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                    for table in ("runs", "metrics", "latest_metrics", "params", "tags", "logged_models")}

