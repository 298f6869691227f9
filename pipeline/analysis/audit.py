"""The audit stage: does a trained net look at the object or only at its context, and is its test accuracy
honest?

extract   : a logged model (``audit.model_uri``, default: the newest train run of ``train.task`` on
            ``train.data``) and one split of ``audit.data`` (default ``train.data``) with what the rows carry
            about the object: lane masks, light boxes, the light's place in a crop;
transform : the context audit (:mod:`pipeline.analysis.context`): accuracy with the object filled against
            with the context filled, the share of input-gradient (or integrated-gradient) mass on the object
            against the object's share of the image, and a verdict in words;
load      : metrics (``context.*``), the verdict as a tag and a text, figures with example overlays.
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
    return {"context.verdict": result.verdict, "context.relies_on_context": result.relies_on_context,
            **{k: v for k, v in metrics.items() if k.split(".", 1)[1].startswith(("occlusion.", "attribution."))}}
