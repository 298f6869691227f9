"""Data augmentation, one implementation for the offline Spark job and the online training loader.

Samples go in and out as numpy (:class:`Sample`); ops are pure functions registered in :data:`OPS`;
a :class:`Policy` (named ones in ``conf/augment.yaml``) applies a list of ops with probabilities, seeded
only by ``(policy seed, row id, copy index)`` so that every augmented row can be re-derived from its parent.
"""
from pipeline.augment.ops import FLIP_LABELS, OPS, OpSpec, Param, Sample
from pipeline.augment.policy import OpStep, Policy, PolicyError, get_policy, load_policies, stable_hash

__all__ = ["FLIP_LABELS", "OPS", "OpSpec", "OpStep", "Param", "Policy", "PolicyError", "Sample",
           "get_policy", "load_policies", "stable_hash"]
