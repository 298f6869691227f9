"""MLflow's model registry: one registered model per task, a version per trained net, an alias only a gate moves.

The train stage registers every model it logs (``registry.enabled``) as a new version of the task's registered
model (``registry.names``). The audit stage then decides, for the model it audited, whether the version earns the
alias ``registry.alias`` (``audited``), so that ``models:/<name>@audited`` always names the last net that passed.

The gate's rule (fixed before any net was measured; the README states it too). A net passes when all hold:

1. **context**: its context verdict does not say it relies on context (the counterfactual test's verdict where it
   ran, else the occlusion audit's);
2. **accuracy**: a classifier's accuracy on the audited split reaches ``registry.gate.accuracy``; the detector's
   recall at precision 0.9 reaches ``registry.gate.detector_recall``;
3. **independence**: the independence audit raised no flag (the val - test accuracy interval includes 0).

The decision and its evidence become tags of the version (``gate.passed``, ``gate.reasons``,
``audit.context_verdict``, ``audit.independence_verdict``, ``gate.audit_run``); a failed gate leaves the alias
where it was and prints one line saying why. A model that is not a registered version (``registry.enabled``
off) keeps the same tags on its LoggedModel, and no alias moves.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from pipeline.config import Config

GATE_PASSED, GATE_LINE = "gate.passed", "gate.line"   # the decision (tags of the version and the audit run)

RELIES = "relies on context"     # the verdicts' phrase (pipeline.analysis.counterfactual / context)


@dataclass
class Gate:
    passed: bool
    reasons: list = field(default_factory=list)    # why it failed (empty when it passed)
    checks: dict = field(default_factory=dict)     # each criterion: what was measured against what

    def line(self) -> str:
        return "passed: " + "; ".join(self.checks.values()) if self.passed else "failed: " + "; ".join(self.reasons)


def decide(conf: Config, task_detector: bool, context_verdict: str, relies: bool, score: Optional[float],
           flagged: bool, independence_verdict: str = "") -> Gate:
    """Apply the rule of the module's docstring to one audit's findings. ``score``: the classifier's accuracy
    (the detector's recall at precision 0.9) on the audited split, None when it could not be measured."""
    g = conf.registry.gate
    gate = Gate(passed=True)
    floor, what = (g.detector_recall, "recall at precision 0.9") if task_detector else (g.accuracy, "accuracy")
    first = _sentence(context_verdict)
    gate.checks["context"] = f"context verdict: {first}"
    if relies:
        gate.reasons.append(f"it relies on context ({first})")
    if score is None or score != score:
        gate.checks[what] = f"{what} not measured"
        gate.reasons.append(f"{what} on the audited split could not be measured")
    else:
        gate.checks[what] = f"{what} {score:.3f} >= {floor:g}" if score >= floor else f"{what} {score:.3f} < {floor:g}"
        if score < floor:
            gate.reasons.append(f"{what} {score:.3f} is below the floor {floor:g} (registry.gate)")
    gate.checks["independence"] = "independence: no flag" if not flagged else "independence: flagged"
    if flagged:
        gate.reasons.append(f"the independence audit flagged the dataset ({_sentence(independence_verdict)})")
    gate.passed = not gate.reasons
    return gate


def _sentence(text: str) -> str:
    """The first sentence of a verdict (a full stop followed by a space or the end; not a decimal point)."""
    return re.split(r"\.(?:\s|$)", text.strip(), maxsplit=1)[0]


# -------------------------------------------------------------------------------------------- registry

def client(conf: Config):
    from mlflow.tracking import MlflowClient

    return MlflowClient(conf.mlflow.tracking_uri)


def register(conf: Config, task: str, model_id: str, run_id: str):
    """Register the LoggedModel ``model_id`` as a new version of the task's registered model; returns it."""
    from mlflow.exceptions import MlflowException

    c, name = client(conf), conf.registry.names[task]
    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, tags={"pipeline.task": task},
                                  description=f"The pipeline's {task} nets; @{conf.registry.alias}: the last one "
                                              f"whose audit passed the gate")
    version = c.create_model_version(name, f"models:/{model_id}", run_id=run_id, model_id=model_id,
                                     tags={"pipeline.task": task, "pipeline.run_id": run_id})
    print(f"registry: {name} version {version.version} ({task}, models:/{model_id})", flush=True)
    return version


def model_id_of(conf: Config, uri: str) -> Optional[str]:
    """The LoggedModel id a model URI names (``models:/<id>``, ``models:/<name>/<version>``,
    ``models:/<name>@<alias>``, ``runs:/<run>/<name>``), or None when it names none."""
    from mlflow.exceptions import MlflowException

    c = client(conf)
    try:
        if uri.startswith("models:/"):
            rest = uri[len("models:/"):].strip("/")
            if "@" in rest:
                name, alias = rest.split("@", 1)
                return _source_id(c.get_model_version_by_alias(name, alias).source)
            if "/" in rest:
                name, version = rest.split("/", 1)
                return _source_id(c.get_model_version(name, version).source)
            return rest
        if uri.startswith("runs:/"):
            run_id, _, name = uri[len("runs:/"):].partition("/")
            found = c.search_logged_models(experiment_ids=[c.get_run(run_id).info.experiment_id],
                                           filter_string=f"source_run_id = '{run_id}' and name = '{name}'")
            return found[0].model_id if found else None
    except MlflowException:
        return None
    return None


def _source_id(source: str) -> Optional[str]:
    return source[len("models:/"):] if source and source.startswith("models:/") else None


def version_of(conf: Config, task: str, model_id: str):
    """The version of the task's registered model that holds ``model_id``, or None."""
    from mlflow.exceptions import MlflowException

    name = conf.registry.names[task]
    try:
        versions = client(conf).search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    return next((v for v in versions if _source_id(v.source) == model_id), None)


def apply(conf: Config, task: str, uri: str, gate: Gate, evidence: dict, audit_run: str) -> dict:
    """Record ``gate`` on the audited model (its version's tags, else its LoggedModel's) and move the alias to
    the version when it passed. Returns the decision as run results / tags (``gate.*``)."""
    import mlflow

    c = client(conf)
    alias, name = conf.registry.alias, conf.registry.names[task]
    tags = {GATE_PASSED: str(gate.passed).lower(), "gate.decision": gate.line()[:5000],
            "gate.reasons": "; ".join(gate.reasons)[:5000], "gate.audit_run": audit_run,
            **{k: str(v)[:5000] for k, v in evidence.items()}}
    model_id = model_id_of(conf, uri)
    version = version_of(conf, task, model_id) if model_id else None
    holder = _alias_holder(c, name, alias)
    if version is not None:
        for key, value in tags.items():
            c.set_model_version_tag(name, version.version, key, value)
        target = f"{name} version {version.version}"
        if gate.passed:
            c.set_registered_model_alias(name, alias, version.version)
            said = f"gate: {target} is now {name}@{alias} ({gate.line()})"
        else:
            kept = f"{name}@{alias} stays on version {holder}" if holder else f"{name} has no @{alias} version"
            said = f"gate: {target} not given @{alias}: {gate.line()}; {kept}"
    else:
        if model_id:
            mlflow.set_logged_model_tags(model_id, tags)
        said = (f"gate: {uri} {gate.line()}; it is no registered version of {name} (registry.enabled=false, or "
                f"a net trained for an analysis), so no alias moves")
    print(said, flush=True)
    decision = {**tags, GATE_LINE: said[:5000],
                "gate.version": f"{name}/{version.version}" if version is not None else "",
                "gate.alias_holder": str(_alias_holder(c, name, alias) or "")}
    return decision


def _alias_holder(c, name: str, alias: str) -> Optional[str]:
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias).version
    except MlflowException:
        return None
