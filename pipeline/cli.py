"""The ``pipeline`` command and the spark-submit jobs' shared entry point.

    pipeline [-v] [--profile P] [--conf FILE] run [--force] [KEY=VALUE ...]
    pipeline [-v] [--profile P] [--conf FILE] <stage> [KEY=VALUE ...]
    spark-submit jobs/<stage>.py [--profile P] [--conf FILE] [KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from pipeline.config import CONF_DIR, Config, ConfigError, load_config, profiles
from pipeline.errors import UserError
from pipeline.stages import STAGES, Stage, get_stage, is_done, run_stage

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
                         help=f"run every stage in order ({' -> '.join(s.name for s in STAGES) or 'none yet'})",
                         description="Run every stage in order in one MLflow parent run. A stage whose output "
                                     "exists from the same config is skipped; --force reruns it.")
    run.add_argument("--force", action="store_true", help="rerun stages even if their output is up to date")
    for stage in STAGES:
        sub.add_parser(stage.name, parents=[common], help=stage.help, epilog=EPILOG,
                       description=f"{stage.help} Reads: {', '.join(stage.reads) or '-'}. "
                                   f"Writes: {', '.join(stage.writes) or '-'}.")
    return parser


def _resolve(args: argparse.Namespace) -> Config:
    profile = getattr(args, "profile", "local")
    conf_file = getattr(args, "conf_file", None)
    if conf_file and Path(conf_file).resolve().parent == CONF_DIR and Path(conf_file).stem in profiles():
        raise ConfigError(f"--conf {conf_file} is a profile: use --profile {Path(conf_file).stem} (--conf layers "
                          f"a file of your own over base + profile)")
    return load_config(profile, conf_file, getattr(args, "overrides", []))


def print_results(results: dict) -> None:
    """Key results, one per line as ``name value`` (what scripts and people grep for)."""
    for name, value in results.items():
        print(f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}")
    sys.stdout.flush()


def browse_hint(conf: Config) -> str:
    uri = conf.mlflow.tracking_uri
    if uri.startswith(("http://", "https://")):
        return f"Browse the runs at {uri}"
    return f"Browse the runs: mlflow ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)"


def _execute(conf: Config, stages: Sequence[Stage], name: str, verbose: bool, force: bool = True) -> None:
    from pipeline.session import build_session
    from pipeline.tracking import Tracker

    tracker = Tracker(conf)
    spark = build_session(conf, verbose=verbose)
    with tracker.pipeline_run(name) as parent:
        for stage in stages:
            if not force and is_done(conf, stage):
                print(f"{stage.name}: up to date (same config), skipped; --force reruns it")
                continue
            print(f"== {stage.name}", flush=True)
            print_results(run_stage(stage, spark, conf, tracker))
        print(f"pipeline.run_id {parent.info.run_id}")
    print(browse_hint(conf))


def _guarded(prog: str, args: argparse.Namespace, work) -> int:
    """Run ``work(conf, verbose)``; a :class:`UserError` (fix your input or config) prints one line and exits 2
    (the run is still marked FAILED; ``-v`` adds the traceback). Anything else is a bug: its traceback shows."""
    verbose = bool(getattr(args, "verbose", False))
    try:
        work(_resolve(args), verbose)
    except UserError as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.command == "run":
        return _guarded("pipeline", args, lambda conf, v: _execute(conf, STAGES, "pipeline", v, force=args.force))
    stage = get_stage(args.command)
    return _guarded("pipeline", args, lambda conf, v: _execute(conf, [stage], stage.name, v))


def job_main(stage_name: str, argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``jobs/<stage>.py`` under spark-submit: the same stage function as the CLI."""
    stage = get_stage(stage_name)
    parser = argparse.ArgumentParser(prog=f"spark-submit jobs/{stage_name}.py", parents=[_common()],
                                     description=stage.help, epilog=EPILOG)
    args = parser.parse_args(argv)
    return _guarded(parser.prog, args, lambda conf, v: _execute(conf, [stage], stage_name, v))


if __name__ == "__main__":
    sys.exit(main())
