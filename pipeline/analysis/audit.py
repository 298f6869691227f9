"""The audit stage: does a trained net look at the object or only at its context, and is its test accuracy
honest?

extract   : a logged model (``audit.model_uri``, default: the newest train run of ``train.task`` on
            ``train.data``) and one split of ``audit.data`` (default ``train.data``) with what the rows carry
            about the object: lane masks, light boxes, the light's place in a crop;
transform : the context audit. For lane classifiers on the synthetic lane classes, first the counterfactual
            test (:mod:`pipeline.analysis.counterfactual`: twins of fresh scenes with the lanes of one class in
            the context of another, ``p_lanes`` / ``p_context`` with intervals over sequences, the verdict on
            intervals) and linear probes of every layer (:mod:`pipeline.analysis.layer_probes`); for every
            classifier the split's accuracy with its interval, and on road frames and light crops the
            backgrounds protocol (:mod:`pipeline.analysis.backgrounds`: only-FG, only-BG, mixed-same /
            mixed-rand, BG-Gap); then occlusion (:mod:`pipeline.analysis.context`): accuracy with the object
            filled against with the context filled, the share of input-gradient (or integrated-gradient) mass on
            the object against the object's share of the image, its verdict secondary where the counterfactual
            test ran (reported as agreeing or not);
            and the independence audit (:mod:`pipeline.analysis.independence`): the split's accuracy on every row
            and on the rows with no near-duplicate in train (perceptual hash within
            ``ingest.near_duplicate_bits``), side by side; with ``audit.frame_split``, the same source ingested
            frame by frame and trained on, its val accuracy (inflated) beside the group split's; and val - test
            accuracy with its interval over groups, flagged when it excludes 0;
load      : metrics (``context.*``, ``independence.*``), both verdicts as tags and text, figures with overlays and
            the near-duplicate pairs.
"""
from __future__ import annotations

from typing import Optional

from pipeline.analysis.inputs import resolved_param
from pipeline.config import Config

# What the report reads of an audit run besides its metrics (context.*, independence.*), named once here
CONTEXT_VERDICT, INDEPENDENCE_VERDICT = "audit.context_verdict", "audit.independence_verdict"
CONTEXT_NOTES = "audit/context.txt"
MODEL_PARAM, DATA_PARAM = resolved_param("audit.model_uri"), "audit.data_url"
FRAME_SPLIT_ROLE = "audit-frame-split"   # the role tag of the net audit.frame_split trains
CONTEXT_PREFIX, INDEPENDENCE_PREFIX = "context.", "independence."   # the audit's metrics
INDEPENDENCE_FIGURE = "independence"
WHOLE_RECALL_AT_P90 = "independence.whole_recall_at_p90"   # the detector's, on the whole audited split: the gate's


def audit_rows(spec, split: str):
    """Decoded rows of ``split`` with what the context audit needs of each kind (lane masks of road frames)."""
    from pipeline.train.loader import LoaderSpec, rows

    extra = "lane_mask" if spec.kind == "road_frames" else None
    return rows(LoaderSpec(spec.split_url(split), spec.kind, 32, aux=extra))


def context_audit(model, spec, conf: Config, split: str):
    """The context audit of ``model`` on one split of the dataset ``spec`` reads (no figures:
    :func:`pipeline.analysis.context.figures`)."""
    from pipeline.analysis.context import Options, audit

    a = conf.audit
    options = Options(fill=a.fill, dilate=a.dilate, attribution=a.attribution, ig_steps=a.ig_steps,
                      examples=a.examples, seed=a.seed, max_rows=a.max_rows, threshold=conf.evaluate.threshold,
                      match_radius=conf.evaluate.match_radius)
    return audit(model, spec.train.task, audit_rows(spec, split), options, kind=spec.kind)


def split_counts(model, spec, split: str, cache: dict) -> tuple:
    """(correct, rows) per group of a classifier on one split, read once per audit (``cache``: split -> counts)."""
    from pipeline.analysis.intervals import grouped_counts
    from pipeline.train.loader import LoaderSpec, rows

    if split not in cache:
        cache[split] = grouped_counts(model, rows(LoaderSpec(spec.split_url(split), spec.kind, 64,
                                                             extra=("group",))))
    return cache[split]


def split_evidence(model, spec, conf: Config, notes: list, counts: dict) -> dict:
    """Classifiers: the audited split's accuracy with its interval over groups (sequences); on rows that say where
    the object is (road frames, light crops), Xiao et al.'s backgrounds protocol (:mod:`pipeline.analysis.
    backgrounds`), its sentence added to ``notes``."""
    from pipeline.analysis.backgrounds import measure as backgrounds
    from pipeline.analysis.intervals import bootstrap, triple_metrics
    from pipeline.train.loader import LoaderSpec, rows

    a = conf.audit
    if spec.task.detector:
        return {}
    url = spec.split_url(a.split)
    accuracy = bootstrap(*split_counts(model, spec, a.split, counts), a.counterfactual.resamples, a.seed)
    metrics = triple_metrics("context.accuracy", accuracy)
    if spec.kind in ("road_frames", "tl_crops"):
        extra = ("group", "lane_mask") if spec.kind == "road_frames" else ("group", "label_name")
        bg = backgrounds(model, rows(LoaderSpec(url, spec.kind, 64, extra=extra)), spec.kind, list(spec.classes),
                         dilate=a.dilate, max_rows=a.max_rows, resamples=a.counterfactual.resamples, seed=a.seed)
        metrics.update({f"context.{k}": float(v) for k, v in bg.metrics.items() if v == v})
        notes.append(bg.text)
    return metrics


def counterfactual_skipped(spec, conf: Config) -> str:
    """Why the counterfactual test does not apply to this audit ("" when it does)."""
    from pipeline.vocab import LANE_CLASSES

    c = conf.audit.counterfactual
    if c.sequences == 0:
        return "audit.counterfactual.sequences=0"
    if spec.train.task != "lane_classifier":
        return (f"{spec.train.task}: the generator ties only the lane class to the context, so twins exist for the "
                f"lane classifier only")
    if not set(LANE_CLASSES) <= set(spec.classes):
        return (f"the net's classes ({', '.join(spec.classes)}) are not the synthetic lane classes: no twin can be "
                f"rendered for them")
    if spec.kind != "road_frames":
        return f"the audited rows are {spec.kind}, not synthetic road frames"
    from pipeline.train.loader import LoaderSpec, rows

    first = next(rows(LoaderSpec(spec.split_url(conf.audit.split), spec.kind, 1, extra=("source",))), {})
    source = str(first.get("source", ""))
    if not source.startswith("synthetic"):
        return (f"the audited data comes from {source or 'an unknown source'}, not the synthetic generator: twins of "
                f"synthetic scenes would test the net outside its distribution (the backgrounds protocol is the "
                f"evidence for such data)")
    return ""


def counterfactual_audit(spark, model, spec, conf: Config):
    """Render the twins of ``audit.counterfactual.sequences`` fresh synthetic sequences on the executors (one task
    per few sequences), resized to the audited images' size, and measure ``model`` on them on the driver."""
    from pipeline.analysis import counterfactual as cf
    from pipeline.config import ConfigError
    from pipeline.data.ingest import IngestOptions

    c = conf.audit.counterfactual
    if c.seed == conf.ingest.seed:
        raise ConfigError(f"audit.counterfactual.seed={c.seed} is ingest.seed: the twins' scenes would be the "
                          f"training scenes; give audit.counterfactual.seed another value")
    synth = IngestOptions(conf.ingest, tuple(spec.classes)).synth_config()
    if c.frames > synth.frames_per_sequence:
        raise ConfigError(f"audit.counterfactual.frames={c.frames} is more than ingest.frames_per_sequence="
                          f"{synth.frames_per_sequence}: lower it")
    hw = tuple(spec.in_hw)                      # the audited dataset's stored size (the net's input)
    seed, frames = c.seed, c.frames
    print(f"audit: rendering {c.sequences} sequences x {frames} frames x 3 (aligned, context twin, lanes twin) "
          f"of synthetic seed {seed} at {synth.height}x{synth.width} -> {hw[0]}x{hw[1]}", flush=True)
    sc = spark.sparkContext
    twins = (sc.parallelize(range(c.sequences), max(1, min(c.sequences, sc.defaultParallelism * 4)))
             .flatMap(lambda s: cf.render_sequence(seed, s, synth, hw, frames)).collect())
    twins.sort(key=lambda t: (t.sequence, t.frame))
    return cf.measure(model, twins, list(spec.classes), resamples=c.resamples, seed=conf.audit.seed,
                      examples=min(conf.audit.examples, 4))


def layer_probe_audit(spark, model, spec, conf: Config):
    """Linear probes of every layer of ``model`` for the lane class, time of day and scenery, on fresh unbiased
    synthetic scenes (:mod:`pipeline.analysis.layer_probes`), as one Spark job."""
    from pipeline.analysis import layer_probes as lp
    from pipeline.data.ingest import IngestOptions

    c = conf.audit.counterfactual
    synth = IngestOptions(conf.ingest, tuple(spec.classes)).synth_config()
    frames = min(c.frames, synth.frames_per_sequence)
    print(f"audit: linear probes of {', '.join(model.layer_names)} on {c.probe_sequences} sequences x {frames} "
          f"frames of synthetic seed {c.seed + 1} (every 4th sequence held out)", flush=True)
    return lp.probe_layers(spark, model, list(model.layer_names), seed=c.seed + 1, cfg=synth, hw=tuple(spec.in_hw),
                           sequences=c.probe_sequences, frames=frames, resamples=c.resamples)


def combined_verdict(occlusion, counterfactual) -> tuple[str, bool]:
    """The context verdict: the counterfactual test's where it ran, with occlusion reported as agreeing or not;
    occlusion's alone otherwise."""
    if counterfactual is None:
        return occlusion.verdict, occlusion.relies_on_context
    head = occlusion.verdict.split(":", 1)[0]
    occ = ("relies on context" if occlusion.relies_on_context else
           "looks at the lanes" if head.startswith("looks at") else
           "uses both" if head.startswith("uses both") else "inconclusive")
    agrees = "agrees" if occ == counterfactual.verdict else f"disagrees ({occ})"
    return (f"{counterfactual.text}. Occlusion (secondary: fills are out of distribution) {agrees}: "
            f"{occlusion.verdict}"), counterfactual.relies_on_context


def independence_audit(spark, model, spec, conf: Config, split: str, tracker,
                       counts: Optional[dict] = None) -> tuple[dict, str]:
    """Accuracy with and without the near-duplicates of train; with ``audit.frame_split``, the frame-split
    comparison; the val - test gap (``counts``: per-group counts of splits already scored). Returns metrics and
    the verdict."""
    import mlflow

    from pipeline.analysis import independence as ind

    bits = conf.ingest.near_duplicate_bits
    twins = ind.near_duplicates_of_train(spark, spec.data_root, spec.kind, split, bits)
    result = ind.accuracy_with_and_without(model, spec.task, spec.loader(split), list(spec.classes), twins.ids,
                                           threshold=conf.evaluate.threshold,
                                           match_radius=conf.evaluate.match_radius)
    metrics = {"independence.whole": result.whole, "independence.without_near_duplicates": result.without,
               "independence.near_duplicate_rows": float(len(twins.ids)), "independence.rows": float(twins.rows)}
    if spec.task.detector:   # the gate's score, from this same pass over the audited split (not a second one)
        metrics[WHOLE_RECALL_AT_P90] = float(result.metrics["whole"]["recall_at_p90"])
    comparison = frame_twins = None
    if conf.audit.frame_split:
        comparison, frame_twins = frame_split_comparison(spark, conf, spec, model, tracker)
        metrics.update({"independence.val_group_split": comparison.group,
                        "independence.val_frame_split": comparison.frame,
                        "independence.val_inflation": comparison.inflation,
                        "independence.frame_split_val_near_duplicates": float(len(frame_twins.ids))})
    examples = ind.example_pairs(spark, spec.data_root, twins) if twins.ids else []
    if frame_twins is not None and frame_twins.ids:
        root = f"{spec.data_root}-framesplit"
        examples = ind.example_pairs(spark, root, frame_twins)
    text = ind.verdict(result, twins, comparison, frame_twins)
    gap = val_test_gap(model, spec, conf, {} if counts is None else counts)
    if gap is not None:
        metrics.update(gap[0])
        text += " " + gap[1]
    tracker.log_figure(ind.independence_figure(result, frame_twins or twins, examples, comparison), INDEPENDENCE_FIGURE)
    mlflow.log_dict({"pairs": [list(p) for p in twins.pairs[:500]]}, "audit/near_duplicates_of_train.json")
    return {k: float(v) for k, v in metrics.items()}, text


def val_test_gap(model, spec, conf: Config, counts: dict):
    """(metrics, sentence) of val accuracy - test accuracy with its 95% interval (each split's groups resampled
    on their own), or None (the detector, or a split missing). The rule, stated before measuring: the interval
    excluding 0 flags the dataset, since two splits drawn from one population by group score alike."""
    from pipeline.analysis.intervals import gap as gap_of, triple_metrics

    if spec.task.detector or not (spec.has_split("val") and spec.has_split("test")):
        return None
    val, test = (split_counts(model, spec, s, counts) for s in ("val", "test"))
    if not (val[1].sum() and test[1].sum()):
        return None
    g = gap_of(val, test, conf.audit.counterfactual.resamples, conf.audit.seed)
    flagged = g[1] > 0 or g[2] < 0
    metrics = {**triple_metrics("independence.val_test_gap", g), "independence.val_test_gap_flagged": float(flagged)}
    said = f"val accuracy - test accuracy {g[0]:+.2f} [{g[1]:+.2f}, {g[2]:+.2f}] (95%, over groups)"
    if g[1] > 0:
        said = (f"Flagged: {said} excludes 0: val scores above test beyond chance, as when val frames share "
                f"sequences or near-duplicates with train (or test is harder); trust neither split's number alone.")
    elif g[2] < 0:
        said = f"Flagged: {said} excludes 0: test scores above val beyond chance (val is harder or not alike)."
    else:
        said = f"{said}: the two splits agree."
    return metrics, said


def frame_split_comparison(spark, conf: Config, spec, model, tracker):
    """Ingest the same source split frame by frame, train the same task on it (both as child runs), and compare
    the two nets' val accuracy, each on its own dataset's val split."""
    from pipeline.analysis import independence as ind
    from pipeline.analysis.inputs import load_partner, side_data, side_net
    from pipeline.train.evaluate import evaluate
    from pipeline.train.spec import make_spec

    name = f"{conf.ingest.name}-framesplit"
    framed = conf.model_copy(update={
        "ingest": conf.ingest.model_copy(update={"split_by": "frame", "group_near_duplicates": False, "name": name}),
        "train": conf.train.model_copy(update={"data": name, "resume": False}),
        "paths": conf.paths.model_copy(update={"checkpoint_url": f"{conf.paths.checkpoint_url.rstrip('/')}/framesplit"})})
    print(f"audit: ingesting {conf.ingest.source} again split by frame into {name}, and training "
          f"{conf.train.task} on it", flush=True)
    side_data(spark, framed, tracker, FRAME_SPLIT_ROLE, "audit: ingest split by frame", "framesplit")
    trained = side_net(spark, framed, tracker, FRAME_SPLIT_ROLE, f"audit: train {conf.train.task} on the frame "
                       f"split", "framesplit", needs=("ingest@framesplit",))
    framed_spec = make_spec(framed)
    framed_model = load_partner(conf, trained["model_uri"], "the frame-split model")
    metric = "val_ap" if spec.task.detector else "val_accuracy"
    scores = []
    for net, s in ((model, spec), (framed_model, framed_spec)):
        result = evaluate(net, s.task, s.loader("val"), list(s.classes), "val_", threshold=conf.evaluate.threshold,
                          match_radius=conf.evaluate.match_radius, figures=False)
        scores.append(float(result.metrics.get(metric, float("nan"))))
    twins = ind.near_duplicates_of_train(spark, framed_spec.data_root, framed_spec.kind, "val",
                                         conf.ingest.near_duplicate_bits)
    return ind.SplitComparison(group=scores[0], frame=scores[1], split="val", metric=metric[4:]), twins


def gate(spec, conf: Config, uri: str, said_context: str, relies: bool, metrics: dict, independent: dict,
         said: str) -> dict:
    """The registry's gate on this audit's findings (:mod:`pipeline.registry`): the held-out score (a classifier's
    accuracy on the audited split; the detector's recall at precision 0.9 there, both measured above), the
    decision as tags of the audit run and of the model's version, the alias moved only when it passed."""
    import mlflow

    from pipeline import registry

    score = independent.get(WHOLE_RECALL_AT_P90) if spec.task.detector else metrics.get("context.accuracy")
    flagged = bool(independent.get("independence.val_test_gap_flagged", 0.0))
    decided = registry.decide(conf, spec.task.detector, said_context, relies, score, flagged, said)
    run_id = mlflow.active_run().info.run_id
    decision = registry.apply(conf, spec.train.task, uri, decided, {CONTEXT_VERDICT: said_context,
                                                                    INDEPENDENCE_VERDICT: said}, run_id)
    mlflow.set_tags({k: v for k, v in decision.items() if k.startswith("gate.") and k != "gate.audit_run"})
    mlflow.log_metric(registry.GATE_PASSED, float(decided.passed))
    return {k: decision[k] for k in (registry.GATE_PASSED, registry.GATE_LINE, "gate.version")}


def run(spark, conf: Config, tracker) -> dict:
    """The audit stage (registered in pipeline.stages)."""
    import mlflow

    from pipeline.analysis.inputs import stage_model
    from pipeline.data.splits import require_split
    from pipeline.train.spec import make_spec

    a = conf.audit
    uri, model = stage_model(tracker, conf, a.model_uri, "audit.model_uri")      # logs MODEL_PARAM
    data = a.data or conf.train.data
    spec = make_spec(conf.model_copy(update={"train": conf.train.model_copy(update={"data": data})}))
    require_split(spec, a.split, "audit.split")
    mlflow.log_params({DATA_PARAM: spec.split_url(a.split)})
    result = context_audit(model, spec, conf, a.split)
    skipped = counterfactual_skipped(spec, conf)
    twins = None if skipped else counterfactual_audit(spark, model, spec, conf)
    if skipped:
        result.notes.append(f"no counterfactual test: {skipped}")
    said_context, relies = combined_verdict(result, twins)
    metrics = {f"context.{k}": float(v) for k, v in result.metrics.items() if v == v}
    counts: dict = {}                        # per-group counts of each split scored, read once
    metrics.update(split_evidence(model, spec, conf, result.notes, counts))
    probes = None
    if twins is not None:
        metrics.update({f"context.{k}": float(v) for k, v in twins.metrics.items() if v == v})
        mlflow.set_tag("audit.counterfactual_verdict", twins.verdict)
        from pipeline.analysis.layer_probes import HOLDOUT

        if a.counterfactual.probe_sequences >= HOLDOUT:        # one held-out sequence needs HOLDOUT of them
            probes = layer_probe_audit(spark, model, spec, conf)
            metrics.update({f"context.{k}": float(v) for k, v in probes.metrics.items() if v == v})
    metrics["context.relies_on_context"] = float(relies)
    mlflow.log_metrics(metrics)
    mlflow.set_tag(CONTEXT_VERDICT, said_context[:5000])
    mlflow.log_text(said_context + "\n" + "".join(f"- {n}\n" for n in result.notes), CONTEXT_NOTES)
    extra = {**(twins.figures if twins is not None else {}), **(probes.figures if probes is not None else {})}
    from pipeline.analysis.context import figures as context_figures

    for name, fig in {**context_figures(result, list(spec.classes)), **extra}.items():
        tracker.log_figure(fig, name)
    print(f"audit: {spec.train.task} ({uri}) on {data}/{spec.kind}/{a.split}: {said_context}", flush=True)
    independent, said = independence_audit(spark, model, spec, conf, a.split, tracker, counts)
    mlflow.log_metrics({k: v for k, v in independent.items() if v == v})
    mlflow.set_tag(INDEPENDENCE_VERDICT, said[:5000])
    mlflow.log_text(said + "\n", "audit/independence.txt")
    print(f"audit: independence: {said}", flush=True)
    decision = gate(spec, conf, uri, said_context, relies, metrics, independent, said)
    return {"context.verdict": said_context, "context.relies_on_context": relies, **decision,
            "context.counterfactual_verdict": twins.verdict if twins is not None else None,
            **{k: v for k, v in metrics.items()
               if k.split(".", 1)[1].startswith(("occlusion.", "attribution.", "counterfactual.", "accuracy",
                                                 "probe.", "backgrounds."))},
            "independence.verdict": said, **independent}
