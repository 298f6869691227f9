"""Run by test_executor_kill.py in a process of its own: ingest, then augment, on ``local-cluster[2,1,1024]`` (two
executor JVMs), logging to the work folder's store. Prints one JSON line when the session is up (app id, UI) and
one when both stages are done (their results, and what the Spark UI's REST API says of failed tasks and lost
executors). Usage: python cluster_job.py WORK_DIR KEY=VALUE ..."""
from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.config import load_config  # noqa: E402
from pipeline.session import build_session  # noqa: E402
from pipeline.stages import get_stage, run_stage  # noqa: E402
from pipeline.tracking import Tracker  # noqa: E402


def rest(ui: str, app: str, path: str):
    with urllib.request.urlopen(f"{ui}/api/v1/applications/{app}/{path}", timeout=30) as resp:
        return json.loads(resp.read())


def main(work: str, overrides: list) -> None:
    conf = load_config("local", overrides=[f"paths.work_dir={work}", *overrides])
    spark = build_session(conf)
    sc = spark.sparkContext
    print(json.dumps({"event": "started", "app": sc.applicationId, "ui": sc.uiWebUrl}), flush=True)
    results = {}
    for stage in ("ingest", "augment"):
        results[stage] = run_stage(get_stage(stage), spark, conf, Tracker(conf),
                                   needs=("ingest",) if stage == "augment" else ())
        print(json.dumps({"event": f"{stage} done"}), flush=True)
    stages = rest(sc.uiWebUrl, sc.applicationId, "stages?status=complete")
    executors = rest(sc.uiWebUrl, sc.applicationId, "allexecutors")
    print(json.dumps({"event": "done", "results": results,
                      "stages": [{"name": s["name"], "failed": s["numFailedTasks"], "tasks": s["numTasks"],
                                  "complete": s["numCompleteTasks"]} for s in stages],
                      "lost": [{"id": e["id"], "reason": e.get("removeReason", "")} for e in executors
                               if not e["isActive"] and e["id"] != "driver"]}, default=str), flush=True)
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
