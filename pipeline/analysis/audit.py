"""The audit stage: does a trained net look at the object or only at its context, and is its test accuracy
honest?

extract   : a logged model (``audit.model_uri``, default: the newest train run of ``train.task`` on
            ``train.data``) and one split of ``audit.data`` (default ``train.data``) with what the rows carry
            about the object: lane masks, light boxes, the light's place in a crop;
transform : the context audit (:mod:`pipeline.analysis.context`): accuracy with the object filled against
            with the context filled, the share of input-gradient (or integrated-gradient) mass on the object
            against the object's share of the image, and a verdict in words;
            and the independence audit (:mod:`pipeline.analysis.independence`): the split's accuracy on every row
            and on the rows with no near-duplicate in train (perceptual hash within
            ``ingest.near_duplicate_bits``), side by side; with ``audit.frame_split``, the same source ingested
            frame by frame and trained on, its val accuracy (inflated) beside the group split's;
load      : metrics (``context.*``, ``independence.*``), both verdicts as tags and text, figures with overlays and
            the near-duplicate pairs.
"""
from __future__ import annotations

from pipeline.config import Config


def audit_rows(spec, split: str):
    """Decoded rows of ``split`` with what the context audit needs of each kind (lane masks of road frames)."""
    from pipeline.train.loader import LoaderSpec, rows

    extra = "lane_mask" if spec.kind == "road_frames" else None
    return rows(LoaderSpec(spec.split_url(split), spec.kind, 32, aux=extra))


def context_audit(model, spec, conf: Config, split: str):
    """The context audit of ``model`` on one split of the dataset ``spec`` reads."""
    from pipeline.analysis.context import audit

    a = conf.audit
    return audit(model, spec.train.task, audit_rows(spec, split), kind=spec.kind, fill=a.fill, dilate=a.dilate,
                 attribution=a.attribution, ig_steps=a.ig_steps, examples=a.examples, seed=a.seed,
                 max_rows=a.max_rows, threshold=conf.evaluate.threshold,
                 match_distance=conf.evaluate.match_distance, classes=list(spec.classes))


def independence_audit(spark, model, spec, conf: Config, split: str, tracker) -> tuple[dict, str]:
    """Accuracy with and without the near-duplicates of train; with ``audit.frame_split``, the frame-split
    comparison. Returns metrics and the verdict."""
    import mlflow

    from pipeline.analysis import independence as ind

    bits = conf.ingest.near_duplicate_bits
    twins = ind.near_duplicates_of_train(spark, spec.data_root, spec.kind, split, bits)
    result = ind.accuracy_with_and_without(model, spec.task, spec.loader(split), list(spec.classes), twins.ids,
                                           threshold=conf.evaluate.threshold,
                                           match_distance=conf.evaluate.match_distance)
    metrics = {"independence.whole": result.whole, "independence.without_near_duplicates": result.without,
               "independence.near_duplicate_rows": float(len(twins.ids)), "independence.rows": float(twins.rows)}
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
    tracker.log_figure(ind.independence_figure(result, frame_twins or twins, examples, comparison), "independence")
    mlflow.log_dict({"pairs": [list(p) for p in twins.pairs[:500]]}, "audit/near_duplicates_of_train.json")
    return {k: float(v) for k, v in metrics.items()}, text


def frame_split_comparison(spark, conf: Config, spec, model, tracker):
    """Ingest the same source split frame by frame, train the same task on it (both as child runs), and compare
    the two nets' val accuracy, each on its own dataset's val split."""
    from pipeline.analysis import independence as ind
    from pipeline.stages import get_stage
    from pipeline.train.evaluate import evaluate, load_model
    from pipeline.train.spec import make_spec

    name = f"{conf.ingest.name}-framesplit"
    framed = conf.model_copy(update={
        "ingest": conf.ingest.model_copy(update={"split_by": "frame", "group_near_duplicates": False, "name": name}),
        "train": conf.train.model_copy(update={"data": name, "resume": False}),
        "paths": conf.paths.model_copy(update={"checkpoint_url": f"{conf.paths.checkpoint_url.rstrip('/')}/framesplit"})})
    print(f"audit: ingesting {conf.ingest.source} again split by frame into {name}, and training "
          f"{conf.train.task} on it", flush=True)
    with tracker.stage_run("ingest", framed, run_name="audit: ingest split by frame"):
        get_stage("ingest").function()(spark, framed, tracker)
    with tracker.stage_run("train", framed, run_name=f"audit: train {conf.train.task} on the frame split"):
        import mlflow

        mlflow.set_tag("pipeline.role", "audit-frame-split")   # not "the newest model" of later stages
        trained = get_stage("train").function()(spark, framed, tracker)
    framed_spec = make_spec(framed)
    framed_model = load_model(trained["model_uri"], conf).eval()
    metric = "val_ap" if spec.task.detector else "val_accuracy"
    scores = []
    for net, s in ((model, spec), (framed_model, framed_spec)):
        result = evaluate(net, s.task, s.loader("val"), list(s.classes), "val_", threshold=conf.evaluate.threshold,
                          match_distance=conf.evaluate.match_distance)
        scores.append(float(result.metrics.get(metric, float("nan"))))
    twins = ind.near_duplicates_of_train(spark, framed_spec.data_root, framed_spec.kind, "val",
                                         conf.ingest.near_duplicate_bits)
    return ind.SplitComparison(group=scores[0], frame=scores[1], split="val", metric=metric[4:]), twins


def run(spark, conf: Config, tracker) -> dict:
    """The audit stage (registered in pipeline.stages)."""
    import mlflow

    from pipeline.train.evaluate import latest_model_uri, load_model
    from pipeline.train.spec import make_spec

    a = conf.audit
    uri = a.model_uri or latest_model_uri(tracker, conf.train.task, conf.train.data)
    model = load_model(uri, conf).eval()
    data = a.data or conf.train.data
    spec = make_spec(conf.model_copy(update={"train": conf.train.model_copy(update={"data": data})}))
    if not spec.has_split(a.split):
        from pipeline.config import ConfigError

        raise ConfigError(f"audit.split={a.split}: {spec.data_root}/{spec.kind} has no {a.split} split")
    mlflow.log_params({"audit.model_uri_resolved": uri, "audit.data_url": spec.split_url(a.split)})
    result = context_audit(model, spec, conf, a.split)
    metrics = {f"context.{k}": float(v) for k, v in result.metrics.items() if v == v}
    metrics["context.relies_on_context"] = float(result.relies_on_context)
    mlflow.log_metrics(metrics)
    mlflow.set_tag("audit.context_verdict", result.verdict[:5000])
    mlflow.log_text(result.verdict + "\n" + "".join(f"- {n}\n" for n in result.notes), "audit/context.txt")
    for name, fig in result.figures.items():
        tracker.log_figure(fig, name)
    print(f"audit: {spec.train.task} ({uri}) on {data}/{spec.kind}/{a.split}: {result.verdict}", flush=True)
    independent, said = independence_audit(spark, model, spec, conf, a.split, tracker)
    mlflow.log_metrics({k: v for k, v in independent.items() if v == v})
    mlflow.set_tag("audit.independence_verdict", said[:5000])
    mlflow.log_text(said + "\n", "audit/independence.txt")
    print(f"audit: independence: {said}", flush=True)
    return {"context.verdict": result.verdict, "context.relies_on_context": result.relies_on_context,
            **{k: v for k, v in metrics.items() if k.split(".", 1)[1].startswith(("occlusion.", "attribution."))},
            "independence.verdict": said, **independent}
