"""The names the report reads: tags, params, metrics, files and figures, each imported from the module that
writes it where that module exports it (tracking, the stage registry, the train and evaluate stages, the registry's
gate, the analyses); the others are kept here beside the name of their writer. Names that correlate, visualize and
audit export for their tables are imported from them in :mod:`pipeline.report.analysis`; the role tag from
:mod:`pipeline.models.lookup`; MLflow's own tags from ``mlflow.utils.mlflow_tags``. A ``{...}`` is filled in with
``str.format``; a ``*`` is a glob. Params named for a config key (``train.epochs``) are logged by
``Tracker.log_config`` (pipeline/tracking.py) from ``Config.flat()``.
"""
from __future__ import annotations

from pipeline.analysis import context, correlate, matching, counterfactual, layer_probes, transfer, visualize
from pipeline.augment import stage as augment
from pipeline.data import ingest
from pipeline.analysis.audit import CONTEXT_PREFIX, INDEPENDENCE_FIGURE, INDEPENDENCE_PREFIX  # noqa: F401
from pipeline.registry import GATE_LINE, GATE_PASSED  # noqa: F401
from pipeline.stages import SKIPPED_JOB_TAG as PARENT_SKIPPED_TAG, SKIPPED_TAG  # noqa: F401
from pipeline.tracking import (ERROR_TAG, KIND_PIPELINE, KIND_STAGE, KIND_TAG, STAGE_TAG,  # noqa: F401
                               TASK_TAG)
from pipeline.train import evaluate
from pipeline.train.run import (CLASSES_PARAM as TRAIN_CLASSES, DATASET_PARAM as TRAIN_DATASET_URL,  # noqa: F401
                                EPOCHS_RUN, SAMPLES_PER_S, TRAIN_LOSS, TRAIN_SECONDS)

# ------------------------------------------------------------------------------------------ ingest
INGEST_SUMMARY = ingest.SUMMARY_FILE
# the summary's keys besides the counts below (pipeline/data/ingest.py: account, describe), a dataset's entry's
SUMMARY_DATASETS, SUMMARY_REASONS, SUMMARY_FIXES = "datasets", "quarantine_reasons", "fixes"
SUMMARY_SPLIT_BY = "split_by"
DATASET_ROWS, DATASET_SPLITS, DATASET_CLASSES = "rows", "splits", "classes"
# metrics (and summary keys) of the ingest run
ROWS_IN, ROWS_WRITTEN, ROWS_QUARANTINED, NEAR_DUPLICATES_ACROSS_SPLITS, GROUPS_ACROSS_SPLITS = ingest.COUNTS
QUARANTINE_PREFIX = ingest.QUARANTINE_METRIC.format(reason="")     # quarantine.<reason>
FIXES_PREFIX = ingest.FIX_METRIC.format(fix="")                    # fixes.<fix>
KIND_SPLIT_METRIC = ingest.SPLIT_METRIC                            # also the augment run's
KIND_CLASS_PREFIX = ingest.CLASS_METRIC.replace("{name}", "")      # <kind>.class.<name>
SAMPLES_FIGURE, NEAR_DUPLICATES_FIGURE = ingest.SAMPLES_FIGURE, ingest.NEAR_DUPLICATES_FIGURE
INGEST_NOTE_TAGS = ingest.NOTE_TAGS
INGEST_SOURCE, INGEST_NAME, INGEST_SPLIT_BY = "ingest.source", "ingest.name", "ingest.split_by"   # config keys

# ----------------------------------------------------------------------------------------- augment
OPS_PREFIX = augment.OPS_METRIC.split("{")[0]                      # ops.<kind>.<op>
AUGMENT_OUTPUT_URL = augment.OUTPUT_PARAM
AUGMENT_POLICY, AUGMENT_COPIES, AUGMENT_NAME = "augment.policy", "augment.copies", "augment.name"   # config keys
AUGMENT_FIGURES = tuple(name.replace("{kind}", "*") for name in augment.FIGURES)

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
TRANSFER_MODE, TRANSFER_DATA = transfer.MODE_PARAM, transfer.DATA_PARAM
MODE_SIZES = "sizes"
TRANSFER_INIT = ("transfer.init_model_resolved", "transfer.init_layers", "transfer.init_head")   # run_sizes
TRANSFER_LAYERS = transfer.LAYERS_PARAM
TRAININGS, GRID_SECONDS, AS_IS = transfer.TRAININGS, transfer.GRID_SECONDS, transfer.AS_IS
MEAN_SUFFIX = ".mean"        # <split>.<variant>[.<layer>].mean, sizes.<variant>.n<size>.mean: transfer.summarize
SIZES_PREFIX = "sizes"
TRANSFER_FIGURES = transfer.FIGURES

# ------------------------------------------------------------------------------ correlate, visualize
MATCHING_METHOD = matching.METHODS[1]        # the Hungarian matching
PERMUTED = correlate.PERMUTED
CORRELATE_FIGURES = tuple(name.replace("{layer}", "*") for name in correlate.FIGURES)
VISUALIZE_FIGURES = visualize.FIGURES

# ------------------------------------------------------------------------------------------- audit
CONTEXT_FIGURES = (counterfactual.FIGURE, layer_probes.FIGURE) + context.FIGURES
