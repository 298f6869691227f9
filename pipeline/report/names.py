"""The names the report reads: tags, params, metrics, files and figures, each imported from the module that
writes it where that module exports it (tracking, the stage registry, the train and evaluate stages, the registry's
gate, the analyses); the others are kept here beside the name of their writer. Names that correlate, visualize and
audit export for their tables are imported from them in :mod:`pipeline.report.analysis`; the role tag from
:mod:`pipeline.models.lookup`; MLflow's own tags from ``mlflow.utils.mlflow_tags``. A ``{...}`` is filled in with
``str.format``; a ``*`` is a glob. Params named for a config key (``train.epochs``) are logged by
``Tracker.log_config`` (pipeline/tracking.py) from ``Config.flat()``.
"""
from __future__ import annotations

from pipeline.analysis import context, correlate, counterfactual, layer_probes, visualize
from pipeline.analysis.audit import CONTEXT_PREFIX, INDEPENDENCE_FIGURE, INDEPENDENCE_PREFIX  # noqa: F401
from pipeline.registry import GATE_LINE, GATE_PASSED  # noqa: F401
from pipeline.stages import SKIPPED_JOB_TAG as PARENT_SKIPPED_TAG, SKIPPED_TAG  # noqa: F401
from pipeline.tracking import (ERROR_TAG, KIND_PIPELINE, KIND_STAGE, KIND_TAG, STAGE_TAG,  # noqa: F401
                               TASK_TAG)
from pipeline.train import evaluate
from pipeline.train.run import (CLASSES_PARAM as TRAIN_CLASSES, DATASET_PARAM as TRAIN_DATASET_URL,  # noqa: F401
                                EPOCHS_RUN, SAMPLES_PER_S, TRAIN_LOSS, TRAIN_SECONDS)

# ------------------------------------------------------------------------------------------ ingest
INGEST_SUMMARY = "ingest_summary.json"      # pipeline/data/ingest.py: log_run (mlflow.log_dict)
# the summary's keys besides the counts below (pipeline/data/ingest.py: account, describe), a dataset's entry's
SUMMARY_DATASETS, SUMMARY_REASONS, SUMMARY_FIXES = "datasets", "quarantine_reasons", "fixes"
SUMMARY_SPLIT_BY = "split_by"
DATASET_ROWS, DATASET_SPLITS, DATASET_CLASSES = "rows", "splits", "classes"
# metrics (and summary keys) of pipeline/data/ingest.py: log_run
ROWS_IN, ROWS_WRITTEN, ROWS_QUARANTINED = "rows_in", "rows_written", "rows_quarantined"
NEAR_DUPLICATES_ACROSS_SPLITS = "near_duplicates_across_splits"
GROUPS_ACROSS_SPLITS = "groups_across_splits"
QUARANTINE_PREFIX = "quarantine."           # quarantine.<reason>
FIXES_PREFIX = "fixes."                     # fixes.<fix>
KIND_SPLIT_METRIC = "{kind}.{split}"        # also pipeline/augment/stage.py: log_run
KIND_CLASS_PREFIX = "{kind}.class."         # <kind>.class.<name>
SAMPLES_FIGURE = "samples_{kind}"           # pipeline/data/ingest.py: log_run (figures.sample_grid)
NEAR_DUPLICATES_FIGURE = "near_duplicates"  # pipeline/data/ingest.py: log_run (figures.pair_grid)
INGEST_NOTE_TAGS = ("ingest.split_note", "ingest.group_near_duplicates", "ingest.val_carve")   # ingest.py: plan_notes
INGEST_SOURCE, INGEST_NAME, INGEST_SPLIT_BY = "ingest.source", "ingest.name", "ingest.split_by"   # config keys

# ----------------------------------------------------------------------------------------- augment
OPS_PREFIX = "ops."                         # ops.<kind>.<op>: pipeline/augment/stage.py: log_run
AUGMENT_OUTPUT_URL = "augment.output_url"   # pipeline/augment/stage.py: run
AUGMENT_POLICY, AUGMENT_COPIES, AUGMENT_NAME = "augment.policy", "augment.copies", "augment.name"   # config keys
AUGMENT_FIGURES = ("policy_*", "ops_*")     # policy_<kind>, ops_<kind>: augment/stage.py: log_run

# ------------------------------------------------------------------------------------------- train
VAL_LOSS = "val_loss"                       # read when present (no stage logs it today)
TRAIN_SETTINGS = ("train.epochs", "train.batch_size", "train.optimizer", "train.lr", "train.width",
                  "train.data")             # config keys

# --------------------------------------------------------------------------------- evaluate (train)
# Every evaluation metric is "<split>_<metric>" (the ``prefix`` of pipeline/train/evaluate.py and
# pipeline/train/scoring.py): classifiers' accuracy, precision_<class>, recall_<class>, f1_<class>, f1_macro
# (scoring.classification_metrics); the detector's precision, recall, ap, recall_at_p90, lights, each also
# with "_<distance>" for a distance bucket (scoring.DetectorTally.metrics).
SPLIT_METRIC = "{split}_{metric}"
CLASS_METRIC = "{split}_{metric}_{name}"    # metric: precision, recall or f1
CLASS_STATS = ("precision", "recall", "f1")
CLASSIFIER_ROWS = ("accuracy", "f1_macro", "loss")
DETECTOR_ROWS = ("ap", "recall", "precision", "recall_at_p90", "lights", "loss")
DETECTOR_COLUMNS = ("precision", "recall", "ap", "recall_at_p90", "lights")
DISTANCE_METRIC = "{split}_{metric}_{distance}"
EVALUATE_SPLIT = "evaluate.split"           # a config key
CLASSIFIER_FIGURES = tuple("{split}_" + name for name in evaluate.CLASSIFIER_FIGURES)
DETECTOR_FIGURES = tuple("{split}_" + name for name in evaluate.DETECTOR_FIGURES)

# ---------------------------------------------------------------------------------------- transfer
TRANSFER_MODE, TRANSFER_DATA = "transfer.mode", "transfer.data"   # pipeline/analysis/transfer.py: run_sizes
MODE_SIZES = "sizes"
TRANSFER_INIT = ("transfer.init_model_resolved", "transfer.init_layers", "transfer.init_head")   # run_sizes
TRANSFER_LAYERS = "transfer.layers_resolved"                      # pipeline/analysis/transfer.py: run
TRAININGS, GRID_SECONDS = "trainings", "grid_seconds"             # pipeline/analysis/transfer.py: run, run_sizes
AS_IS = "sizes.as_is"                                             # pipeline/analysis/transfer.py: run_sizes
MEAN_SUFFIX = ".mean"        # <split>.<variant>[.<layer>].mean, sizes.<variant>.n<size>.mean: transfer.summarize
SIZES_PREFIX = "sizes"
TRANSFER_FIGURES = ("transfer_{split}", "transfer_sizes", "transfer_conv1")   # transfer.py: _log_figures

# ------------------------------------------------------------------------------ correlate, visualize
MATCHING_METHOD = "hungarian"               # one of pipeline/analysis/matching.py: METHODS
PERMUTED = correlate.PERMUTED
CORRELATE_FIGURES = tuple(name.replace("{layer}", "*") for name in correlate.FIGURES)
VISUALIZE_FIGURES = visualize.FIGURES

# ------------------------------------------------------------------------------------------- audit
CONTEXT_FIGURES = (counterfactual.FIGURE, layer_probes.FIGURE) + context.FIGURES
