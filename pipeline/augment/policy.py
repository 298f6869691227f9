"""Augmentation policies: ordered ops with probabilities and parameter ranges, reproducible per row.

``Policy.apply(sample, row_id, copy_index)`` draws everything from ``(policy seed, stable_hash(row_id),
copy_index)`` alone: step ``i`` uses ``np.random.default_rng([seed, stable_hash(row_id), copy_index, i])``,
first to decide whether it runs (``random() < p``), then for the op's own draws. A re-run is therefore
bit-identical in any process, any augmented row can be re-derived from its parent row, and one step's
randomness does not depend on which earlier steps ran.

Named policies live in ``conf/augment.yaml`` (see there for the format); bad ones raise
:class:`PolicyError` naming the policy, the step and what is wrong.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
import yaml

from pipeline import yamltext
from pipeline.augment.ops import OPS, Sample
from pipeline.config import CONF_DIR
from pipeline.data.records import stable_hash
from pipeline.errors import UserError

DEFAULT_PATH = CONF_DIR / "augment.yaml"
_STEP_KEYS = ("op", "p", "params")


class PolicyError(UserError, ValueError):
    """A policy that cannot be used; the message names the policy, the step (index and op) and the problem."""


@dataclass(frozen=True)
class OpStep:
    """One step of a policy: the op's name, the probability it runs and ``{param: [lo, hi] or value}``
    (parameters left out use the op's default range)."""

    op: str
    p: float = 1.0
    params_ranges: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """A named, seeded list of :class:`OpStep`; validated on construction (:class:`PolicyError`)."""

    name: str
    ops: tuple
    seed: int = 0
    _ranges: tuple = field(init=False, repr=False, compare=False)   # per step: {param: (lo, hi)}, defaults filled

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise PolicyError(f"policy {self.name!r}: seed={self.seed!r} must be a non-negative integer")
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "_ranges", tuple(self._check(i, step) for i, step in enumerate(self.ops)))

    def _check(self, index: int, step: OpStep) -> dict:
        where = f"policy {self.name!r}, op #{index} ({getattr(step, 'op', step)!r})"
        if not isinstance(step, OpStep):
            raise PolicyError(f"{where}: expected an OpStep, got {type(step).__name__}")
        if step.op not in OPS:
            raise PolicyError(f"{where}: unknown op (valid ops: {', '.join(sorted(OPS))})")
        if isinstance(step.p, bool) or not isinstance(step.p, numbers.Real) or not 0.0 <= step.p <= 1.0:
            raise PolicyError(f"{where}: probability p={step.p!r} is outside [0, 1]")
        if not isinstance(step.params_ranges, Mapping):
            raise PolicyError(f"{where}: params must be a mapping of parameter name -> [lo, hi]")
        try:
            return OPS[step.op].resolve(dict(step.params_ranges))
        except ValueError as exc:
            raise PolicyError(f"{where}: {exc}") from None

    def apply(self, sample: Sample, row_id: str, copy_index: int,
              background: Optional[np.ndarray] = None) -> tuple[Sample, list]:
        """Augment ``sample`` as copy ``copy_index`` of row ``row_id``. Returns the new sample and the steps
        that ran, each as ``{"op": name, **drawn params}`` (JSON-serialisable). ``background`` (uint8 HxWx3,
        another frame) goes to the ops that take one (``context_paste``); without it they are skipped."""
        if isinstance(copy_index, bool) or not isinstance(copy_index, numbers.Integral) or copy_index < 0:
            raise ValueError(f"copy_index={copy_index!r} must be a non-negative integer")
        key = [self.seed, stable_hash(str(row_id)), int(copy_index)]
        applied = []
        for index, (step, ranges) in enumerate(zip(self.ops, self._ranges)):
            rng = np.random.default_rng(key + [index])
            if rng.random() >= step.p:
                continue
            spec = OPS[step.op]
            extra = {"background": background} if spec.takes_background else {}
            sample, drawn = spec(sample, rng, **ranges, **extra)
            applied.append({"op": step.op, **drawn})
        return sample, applied

    def describe(self) -> dict:
        """The policy as plain data (for logs and run parameters), with every op's full parameter ranges."""
        return {"name": self.name, "seed": int(self.seed),
                "ops": [{"op": step.op, "p": float(step.p), "params": {k: list(v) for k, v in ranges.items()}}
                        for step, ranges in zip(self.ops, self._ranges)]}


def load_policies(path: Union[str, Path, None] = None, seed: int = 0) -> dict:
    """Every policy of the YAML file ``path`` (default ``conf/augment.yaml``), by name, with ``seed``."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise PolicyError(f"policies file not found: {path} (augment.policies_file; the default is {DEFAULT_PATH})")
    try:
        data = yamltext.load(path.read_text())
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: expected a mapping of policy name -> list of steps")
    return {str(name): _policy_from_yaml(str(name), steps, seed) for name, steps in data.items()}


def get_policy(name: str, seed: int = 0, path: Union[str, Path, None] = None) -> Policy:
    """The policy ``name`` of ``path`` (default ``conf/augment.yaml``) with ``seed``."""
    policies = load_policies(path, seed)
    if name not in policies:
        raise PolicyError(f"unknown policy {name!r} (available: {', '.join(sorted(policies))})")
    return policies[name]


def _policy_from_yaml(name: str, steps, seed: int) -> Policy:
    if steps is None:
        steps = []
    if not isinstance(steps, list):
        raise PolicyError(f"policy {name!r}: expected a list of steps, got {type(steps).__name__}")
    return Policy(name, [_step_from_yaml(name, i, step) for i, step in enumerate(steps)], seed)


def _step_from_yaml(name: str, index: int, step) -> OpStep:
    op = step.get("op") if isinstance(step, dict) else None
    where = f"policy {name!r}, op #{index} ({op!r})"
    if not isinstance(step, dict) or not isinstance(op, str):
        raise PolicyError(f"{where}: a step must be a mapping with keys op, p and optionally params")
    unknown = sorted(set(step) - set(_STEP_KEYS))
    if unknown:
        raise PolicyError(f"{where}: unknown key {unknown[0]!r} (valid: {', '.join(_STEP_KEYS)})")
    if "p" not in step:
        raise PolicyError(f"{where}: missing its probability p")
    return OpStep(op, step["p"], step.get("params") or {})
