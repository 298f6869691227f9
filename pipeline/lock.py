"""One pipeline at a time per output: a lock the kernel releases when its holder dies.

``hold(conf, command)`` takes an exclusive ``flock`` on a file beside the output (``<data>/_stages/.lock`` for a
local ``paths.data_url``, else ``<paths.work_dir>/.pipeline-<hash of data_url>.lock``) and writes who holds it. A
second run on the same output stops at once with a :class:`PipelineBusy` naming the holder. A killed run (even
SIGKILL) holds nothing: the lock goes with its file descriptor, so nothing is left stuck and nothing to clean.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from pipeline.config import Config
from pipeline.errors import UserError


class PipelineBusy(UserError, RuntimeError):
    """Another run holds the lock on this output."""


def lock_path(conf: Config) -> Path:
    url = conf.paths.data_url
    if url.startswith("file://"):
        return Path(url[len("file://"):]) / "_stages" / ".lock"
    if "://" not in url:
        return Path(url) / "_stages" / ".lock"
    return Path(conf.paths.work_dir) / f".pipeline-{hashlib.sha256(url.encode()).hexdigest()[:12]}.lock"


@contextlib.contextmanager
def hold(conf: Config, command: str) -> Iterator[Path]:
    import fcntl

    path = lock_path(conf)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            try:
                h = json.loads(holder)
                who = (f"'{h['command']}' (pid {h['pid']} on {h['host']}, since "
                       f"{time.strftime('%H:%M:%S', time.localtime(h['since']))})")
            except (ValueError, KeyError):
                who = "another run"
            raise PipelineBusy(f"{who} is writing to {conf.paths.data_url} (lock {path}): wait for it to finish, "
                               f"or stop it (a stopped or killed run releases the lock by itself)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                                  "command": command or " ".join(sys.argv)}).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
