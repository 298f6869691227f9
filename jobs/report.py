"""spark-submit jobs/report.py [--profile P] [--conf FILE] [KEY=VALUE ...]"""
import sys

from pipeline.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("report"))
