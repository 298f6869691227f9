"""The ``pipeline`` command and the spark-submit jobs' shared entry point.

    pipeline [-v] [--profile P] [--conf FILE] run [--force] [--only STAGE,...] [--from STAGE] [KEY=VALUE ...]
    pipeline [-v] [--profile P] [--conf FILE] <stage> [--skip-up-to-date] [KEY=VALUE ...]
    spark-submit jobs/<stage>.py [--skip-up-to-date] [--profile P] [--conf FILE] [KEY=VALUE ...]

Exit codes: 0 done; 3 done, but a job (or part of one) was skipped for an empty split (:data:`SKIP_RULE`);
2 an input or config error (:class:`~pipeline.errors.UserError`, one line); 1 a bug (its traceback).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from pipeline.config import CONF_DIR, Config, ConfigError, load_config, profiles
from pipeline.errors import EmptySplit, UserError
from pipeline.stages import SKIPPED_JOB_TAG, STAGES, Job, get_stage, job_name, plan, run_stage, select, why_not_done

EXIT_SKIPPED = 3
SKIP_RULE = ("An empty split (one with no rows: a small ingest may place no group in val or test) never stops a "
             "run: a job that reads one is skipped with one line naming the split, the dataset and kind, why and "
             "the fix; so is every later job that needs a skipped job, but the report, which shows what ran. The "
             "train stage trains on: it leaves out per-epoch validation when val is empty, and its test pass when "
             "test is empty, each said in one line. Exit codes: 0 everything ran (or was up to date); 3 the run "
             "finished but something was skipped for an empty split (a skipped job never counts as done: the "
             "next run tries it again); 2 an input or config error stopped it (one line); 1 a bug (a traceback).")
EPILOG = ("KEY=VALUE overrides any config key with a dotted name, e.g. train.epochs=5 ingest.num_frames=200. "
          f"Config files: {CONF_DIR}/base.yaml, then the profile, then --conf.")


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="INFO logs from Spark and the pipeline (default: warnings only)")
    common.add_argument("--profile", default=argparse.SUPPRESS, choices=profiles(),
                        help=f"config profile (conf/<profile>.yaml): {', '.join(profiles())}; default local")
    common.add_argument("--conf", dest="conf_file", metavar="FILE", default=argparse.SUPPRESS,
                        help="a YAML file layered over base + profile")
    common.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return common


def get_args_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="pipeline", description="Spark training pipeline for road-lane and traffic-light nets.", epilog=EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help="INFO logs (default: warnings only)")
    parser.add_argument("--profile", default="local", choices=profiles(),
                        help=f"config profile (conf/<profile>.yaml): {', '.join(profiles())}; default local")
    parser.add_argument("--conf", dest="conf_file", metavar="FILE", help="a YAML file layered over the profile")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", parents=[common], epilog=EPILOG,
                         help=f"run every stage in the order their needs give ({' -> '.join(s.name for s in STAGES)})",
                         description="Run every stage in one MLflow parent run, in the order the stage graph gives "
                                     "(pipeline/stages.py); train and evaluate once per task of run.tasks. A job "
                                     "is skipped when its config, the code and its inputs are unchanged since it "
                                     "last finished and its output is there; a failed job is where the next run "
                                     "resumes. One run at a time per output (a lock; a killed run frees it). "
                                     + SKIP_RULE)
    run.add_argument("--force", action="store_true", help="rerun jobs even if their output is up to date")
    run.add_argument("--only", metavar="STAGE,...", type=lambda v: [x for x in v.split(",") if x],
                     help="only these stages (every task of train / evaluate); with --force even if up to date")
    run.add_argument("--from", dest="start", metavar="STAGE",
                     help="this stage and every job after it in order; with --force even if up to date")
    for stage in STAGES:
        _skip_option(sub.add_parser(
            stage.name, parents=[common], help=stage.help, epilog=EPILOG,
            description=f"{stage.help} Reads: {', '.join(stage.reads) or '-'}. "
                        f"Writes: {', '.join(stage.writes) or '-'}."
                        + (f" Splits: {', '.join(stage.splits)}; one with no rows skips the stage with "
                           f"one line (exit 3)." if stage.splits else "")))
    return parser


def _skip_option(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A single job runs whenever it is asked to; ``--skip-up-to-date`` gives it ``pipeline run``'s rule (what a
    scheduler that runs the jobs one by one, like the Airflow DAG, wants)."""
    parser.add_argument("--skip-up-to-date", dest="skip_done", action="store_true",
                        help="do nothing (exit 0, no Spark session, no MLflow run) when the job last finished "
                             "with the same config, code and inputs and its output is still there: pipeline "
                             "run's rule")
    return parser


def _resolve(args: argparse.Namespace, extra: Sequence[str] = ()) -> Config:
    profile = getattr(args, "profile", "local")
    conf_file = getattr(args, "conf_file", None)
    if conf_file and Path(conf_file).resolve().parent == CONF_DIR and Path(conf_file).stem in profiles():
        raise ConfigError(f"--conf {conf_file} is a profile: use --profile {Path(conf_file).stem} (--conf layers "
                          f"a file of your own over base + profile)")
    return load_config(profile, conf_file, [*getattr(args, "overrides", []), *extra])


def print_results(results: dict) -> None:
    """Key results, one per line as ``name value`` (what scripts and people grep for)."""
    for name, value in results.items():
        print(f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}")
    sys.stdout.flush()


def browse_hint(conf: Config, experiment_id: Optional[str] = None) -> str:
    """How to open the runs: the MLflow 3 UI opens an experiment in its GenAI view unless the URL asks for
    model training (``workflowType=machine_learning``)."""
    uri = conf.mlflow.tracking_uri
    page = f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning" if experiment_id else ""
    if uri.startswith(("http://", "https://")):
        return f"Browse the runs at {uri.rstrip('/')}{page}"
    return f"Browse the runs: mlflow ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000{page})"


def _execute(conf: Config, jobs: Sequence[Job], name: str, verbose: bool, force: bool = True,
             conf_for=None) -> dict:
    """Run ``jobs`` in order under one MLflow parent run, holding the output's lock. ``conf_for(job)``: the
    config of a per-task job (the invocation's with ``train.task=<task>``). Returns ``{job or part: line}`` of
    what was skipped for an empty split (:data:`SKIP_RULE`)."""
    from pipeline.data import splits
    from pipeline.lock import hold
    from pipeline.session import build_session
    from pipeline.tracking import Tracker

    times: list = []   # (job, seconds) of the jobs run
    report = None
    skipped: dict = {}  # job name -> the line it was skipped with (an empty split, or a need that was skipped)
    parts: dict = {}    # job name -> the lines of the parts it left out (train's validation / test pass)
    with hold(conf, f"pipeline {name}"):
        tracker = Tracker(conf)
        spark = build_session(conf, verbose=verbose)
        with tracker.pipeline_run(name) as parent:
            for i, job in enumerate(jobs, 1):
                job_conf = conf_for(job) if conf_for and job.task else conf
                blocked = [n for n in job.needs if n in skipped]
                if blocked and not job.stage.partial:
                    skipped[job.name] = f"it needs {', '.join(blocked)}, skipped above"
                    print(f"-- [{i}/{len(jobs)}] {job.name} skipped: {skipped[job.name]}", flush=True)
                    parent_tag(SKIPPED_JOB_TAG.format(job=job.name), skipped[job.name])
                    continue
                reason = "forced" if force else why_not_done(job_conf, job.stage, job.needs)
                if reason is None:
                    print(f"[{i}/{len(jobs)}] {job.name}: up to date (same config, code and inputs), skipped; "
                          f"--force reruns it", flush=True)
                    continue
                print(f"== [{i}/{len(jobs)}] {job.name}" + ("" if len(jobs) == 1 else f" ({reason})"), flush=True)
                started = time.monotonic()
                said = len(splits.PART_SKIPS)
                try:
                    results = run_stage(job.stage, spark, job_conf, tracker, needs=job.needs)
                    if len(splits.PART_SKIPS) > said:
                        parts[job.name] = splits.PART_SKIPS[said:]
                    print_results(results)
                    report = results.get("report_path", report) if isinstance(results, dict) else report
                    times.append((job.name, time.monotonic() - started))
                    if len(jobs) > 1:
                        print(f"-- {job.name} done in {times[-1][1]:.0f} s", flush=True)
                except EmptySplit as exc:
                    skipped[job.name] = str(exc)
                    if len(jobs) > 1:   # a stage run alone says it in its last line
                        print(f"-- [{i}/{len(jobs)}] {job.name} skipped: {exc}", flush=True)
                    parent_tag(SKIPPED_JOB_TAG.format(job=job.name), str(exc))
                except UserError as exc:
                    if len(jobs) > 1:  # say which stage; a stage run alone says it in its command already
                        exc.args = (f"stage {job.name}: {exc}", *exc.args[1:])
                    raise
                except Exception as exc:
                    print(f"{name}: stage {job.name} failed ({type(exc).__name__}: {exc}); its MLflow run is "
                          f"marked FAILED, and `pipeline run` resumes from it", file=sys.stderr, flush=True)
                    raise
            print(f"pipeline.run_id {parent.info.run_id}")
    if len(jobs) > 1 and times:
        print("time per job: " + ", ".join(f"{n} {t:.0f} s" for n, t in times)
              + f"; total {sum(t for _, t in times):.0f} s")
    if report:
        print(f"Report: {report}")
    print(browse_hint(conf, tracker.experiment_id))
    left_out = {**skipped, **{f"{job} (part)": "; ".join(lines) for job, lines in parts.items()}}
    if len(jobs) == 1 and skipped:
        print(f"{name}: skipped (exit 3): {next(iter(skipped.values()))}", file=sys.stderr, flush=True)
    elif left_out:
        jobs_part = f"{len(skipped)} of {len(jobs)} jobs skipped" if skipped else "no job skipped"
        print(f"{name}: finished, {jobs_part}" + (f", {len(parts)} left a part out" if parts else "")
              + f" for an empty split (exit 3): {', '.join(left_out)}; the lines above say which split and "
                f"what to do", file=sys.stderr, flush=True)
    return left_out


def parent_tag(key: str, value: str) -> None:
    """A tag on the pipeline's parent run (the report reads what was skipped from it)."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.set_tag(key, value[:5000])


def _run_pipeline(args: argparse.Namespace, conf: Config, verbose: bool) -> None:
    jobs = plan(conf.run.tasks, conf.train.task)
    try:
        chosen = select(jobs, args.only, args.start)
    except KeyError as exc:
        raise ConfigError(f"--only / --from: {exc.args[0]}") from None

    def conf_for(job: Job) -> Config:
        return _resolve(args, [f"train.task={job.task}"])

    print(f"pipeline: {len(chosen)} of {len(jobs)} jobs: {' -> '.join(j.name for j in chosen)}", flush=True)
    return _execute(conf, chosen, "pipeline", verbose, force=args.force, conf_for=conf_for)


def _single(stage_name: str, conf: Config) -> list:
    """One stage as the job ``pipeline run`` would run for this config (its needs as the graph gives them)."""
    stage = get_stage(stage_name)
    name = job_name(stage, conf)
    needs = next((j.needs for j in plan(conf.run.tasks, conf.train.task) if j.name == name), ())
    return [Job(stage, conf.train.task if stage.per_task else None, needs)]


def _one_job(conf: Config, stage_name: str, verbose: bool, skip_done: bool) -> dict:
    """``pipeline <stage>`` and ``jobs/<stage>.py``: the stage's job; with ``skip_done`` nothing at all (no
    session, no MLflow run) when it is up to date by ``pipeline run``'s rule."""
    jobs = _single(stage_name, conf)
    if skip_done:
        from pipeline.tracking import prepare_client

        prepare_client(conf.mlflow.tracking_uri)   # as pipeline run's Tracker: a server that is down, said at once
    if skip_done and why_not_done(conf, jobs[0].stage, jobs[0].needs) is None:
        print(f"{jobs[0].name}: up to date (same config, code and inputs), skipped; without --skip-up-to-date "
              f"it reruns", flush=True)
        return {}
    return _execute(conf, jobs, stage_name, verbose)


def _guarded(prog: str, args: argparse.Namespace, work) -> int:
    """Run ``work(conf, verbose)``; a :class:`UserError` (fix your input or config) prints one line and exits 2
    (the run is still marked FAILED; ``-v`` adds the traceback). Anything else is a bug: its traceback shows.
    ``work`` returns what it skipped for an empty split: anything makes the exit code 3 (:data:`SKIP_RULE`)."""
    verbose = bool(getattr(args, "verbose", False))
    try:
        skipped = work(_resolve(args), verbose)
    except UserError as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return EXIT_SKIPPED if skipped else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.command == "run":
        return _guarded("pipeline", args, lambda conf, v: _run_pipeline(args, conf, v))
    return _guarded("pipeline", args, lambda conf, v: _one_job(conf, args.command, v, args.skip_done))


def job_main(stage_name: str, argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``jobs/<stage>.py`` under spark-submit: the same stage function as the CLI."""
    stage = get_stage(stage_name)
    parser = argparse.ArgumentParser(prog=f"spark-submit jobs/{stage_name}.py", parents=[_common()],
                                     description=stage.help, epilog=EPILOG)
    args = _skip_option(parser).parse_args(argv)
    return _guarded(parser.prog, args, lambda conf, v: _one_job(conf, stage.name, v, args.skip_done))


if __name__ == "__main__":
    sys.exit(main())
