"""Tests of augmentation policies: the named ones load and apply, runs are reproducible from
(seed, row id, copy index) alone, and bad policy files fail naming the policy, the step and the problem."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.augment import OPS, OpStep, Policy, PolicyError, Sample, get_policy, load_policies, stable_hash
from tests.augment import LIGHT_FRAMES, frame, sample_of

NAMED = ("none", "basic", "noise", "frequency", "context", "all")
REPO = Path(__file__).resolve().parents[2]


def digest(sample: Sample, applied: list) -> str:
    """A hash of everything a policy produced: pixels, boxes, labels, masks and the applied-op list."""
    h = hashlib.sha256()
    for array in (sample.image, sample.boxes, sample.mask, sample.instance_mask):
        h.update(b"-" if array is None else np.ascontiguousarray(array).tobytes())
    h.update(json.dumps([sample.labels, sample.label, applied], sort_keys=True).encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def sample() -> Sample:
    return sample_of(frame(LIGHT_FRAMES[5]), labels=None)


@pytest.fixture(scope="module")
def background() -> np.ndarray:
    return frame(1).image


def test_every_named_policy_loads_and_applies(sample, background):
    policies = load_policies()
    assert set(NAMED) <= set(policies)
    for name, policy in policies.items():
        assert policy.name == name and policy.seed == 0
        steps = [step.op for step in policy.ops]
        for copy_index in range(12):
            out, applied = policy.apply(sample, f"row-{name}", copy_index, background=background)
            assert isinstance(out, Sample) and out.image.shape == sample.image.shape
            assert len(out.boxes) == len(out.labels)
            json.dumps(applied)
            ran = [entry["op"] for entry in applied]
            positions = [steps.index(op, i) for i, op in enumerate(ran)] if ran else []
            assert positions == sorted(positions), (name, ran)        # in the policy's order
        json.dumps(policy.describe())


def test_none_is_the_identity(sample):
    out, applied = get_policy("none").apply(sample, "row", 0)
    assert out is sample and applied == []


def test_basic_and_all_use_the_ops_they_are_documented_with():
    basic = {step.op for step in get_policy("basic").ops}
    assert {"hflip", "crop_rescale", "rotate", "brightness", "contrast", "saturation", "hue"} <= basic
    assert {step.op for step in get_policy("all").ops} == set(OPS)
    assert {step.op for step in get_policy("frequency").ops} == {"freq_lowpass", "freq_highpass", "freq_bandpass"}
    assert "context_paste" in {step.op for step in get_policy("context").ops}


def test_same_seed_row_and_copy_give_identical_bytes(sample, background):
    policy = get_policy("all", seed=3)
    for copy_index in range(8):
        first = policy.apply(sample, "synth-5-00000012", copy_index, background=background)
        again = get_policy("all", seed=3).apply(sample, "synth-5-00000012", copy_index, background=background)
        assert digest(*first) == digest(*again)
        assert first[1] == again[1]


def test_another_copy_row_or_seed_gives_another_result(sample):
    policy = Policy("strong", [OpStep("rotate", 1.0), OpStep("gaussian_noise", 1.0)], seed=0)
    base = digest(*policy.apply(sample, "row", 0))
    assert digest(*policy.apply(sample, "row", 1)) != base
    assert digest(*policy.apply(sample, "row2", 0)) != base
    assert digest(*Policy("strong", policy.ops, seed=1).apply(sample, "row", 0)) != base


def test_a_step_draws_the_same_whether_or_not_earlier_steps_ran(sample):
    with_brightness = Policy("a", [OpStep("brightness", 1.0), OpStep("rotate", 1.0)])
    without = Policy("a", [OpStep("brightness", 0.0), OpStep("rotate", 1.0)])
    _, applied_with = with_brightness.apply(sample, "row", 4)
    _, applied_without = without.apply(sample, "row", 4)
    assert [e["op"] for e in applied_with] == ["brightness", "rotate"]
    assert applied_without == applied_with[1:]


def test_steps_run_with_their_probability(sample):
    policy = Policy("half", [OpStep("brightness", 0.5, {"factor": [0.9, 1.1]}), OpStep("hflip", 0.0)])
    runs = [len(policy.apply(sample, "row", i)[1]) for i in range(300)]
    assert set(runs) == {0, 1}
    assert 0.4 < np.mean(runs) < 0.6


def test_results_can_be_rederived_in_a_fresh_process(sample, background):
    """No dependence on Python's salted hash() or on anything but (seed, row id, copy index)."""
    expected = [digest(*get_policy("all", seed=7).apply(sample, f"row-{i}", i, background=background))
                for i in range(3)]
    script = textwrap.dedent(f"""
        from pipeline.augment import get_policy
        from tests.augment import LIGHT_FRAMES, frame, sample_of
        from tests.augment.test_policy import digest
        sample = sample_of(frame(LIGHT_FRAMES[5]))
        for i in range(3):
            print(digest(*get_policy("all", seed=7).apply(sample, f"row-{{i}}", i, background=frame(1).image)))
    """)
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == expected


def test_policies_survive_pickling(sample, background):
    """Spark ships the policy to its executors inside the task closure."""
    policy = get_policy("all", seed=1)
    clone = pickle.loads(pickle.dumps(policy))
    assert clone == policy and clone.describe() == policy.describe()
    for i in range(4):
        assert digest(*clone.apply(sample, "r", i, background)) == digest(*policy.apply(sample, "r", i, background))


def test_stable_hash_is_a_64_bit_content_hash():
    assert stable_hash("row-1") == stable_hash("row-1") != stable_hash("row-2")
    assert 0 <= stable_hash("") < 2 ** 64
    assert stable_hash("a") == int(hashlib.sha256(b"a").hexdigest()[:16], 16)


def test_background_reaches_context_paste_only_through_apply(sample, background):
    policy = Policy("ctx", [OpStep("context_paste", 1.0, {"margin": 0})])
    out, applied = policy.apply(sample, "row", 0)
    assert out is sample and applied == [{"op": "context_paste", "skipped": "no background"}]
    out, applied = policy.apply(sample, "row", 0, background=background)
    assert applied == [{"op": "context_paste", "margin": 0}]
    assert not np.array_equal(out.image, sample.image)


def test_describe_lists_every_step_with_its_full_ranges():
    described = get_policy("basic", seed=2).describe()
    assert described["name"] == "basic" and described["seed"] == 2
    first = described["ops"][0]
    assert first == {"op": "hflip", "p": 0.5, "params": {}}
    rotate = next(step for step in described["ops"] if step["op"] == "rotate")
    assert rotate["params"] == {"angle": [-5.0, 5.0]}
    defaults = Policy("d", [OpStep("cutout", 1.0)]).describe()["ops"][0]["params"]
    assert defaults == {name: list(p.default) for name, p in OPS["cutout"].params.items()}
    json.dumps(described)


def test_apply_checks_copy_index(sample):
    with pytest.raises(ValueError, match="copy_index"):
        get_policy("basic").apply(sample, "row", -1)


# ------------------------------------------------------------------------------------------- errors

def write(tmp_path, text: str) -> Path:
    path = tmp_path / "augment.yaml"
    path.write_text(textwrap.dedent(text))
    return path


BAD = {
    "unknown op": ("- {op: rotat, p: 0.5}", ["op #1 ('rotat')", "unknown op", "valid ops:", "rotate", "hflip"]),
    "p too big": ("- {op: rotate, p: 1.5}", ["op #1 ('rotate')", "p=1.5", "outside [0, 1]"]),
    "p negative": ("- {op: rotate, p: -0.1}", ["op #1 ('rotate')", "outside [0, 1]"]),
    "p missing": ("- {op: rotate}", ["op #1 ('rotate')", "missing its probability p"]),
    "inverted range": ("- {op: rotate, p: 0.5, params: {angle: [10, -10]}}",
                       ["op #1 ('rotate')", "'angle'", "[10, -10]", "inverted"]),
    "unknown parameter": ("- {op: rotate, p: 0.5, params: {angel: [1, 2]}}",
                          ["op #1 ('rotate')", "unknown parameter 'angel'", "valid: angle"]),
    "outside domain": ("- {op: rotate, p: 0.5, params: {angle: [-90, 10]}}",
                       ["op #1 ('rotate')", "'angle'", "outside the allowed domain [-45.0, 45.0]"]),
    "not a number": ("- {op: blur, p: 0.5, params: {sigma: [a, b]}}", ["op #1 ('blur')", "'sigma'", "a number"]),
    "float for int": ("- {op: jpeg, p: 0.5, params: {quality: [50.5, 60]}}",
                      ["op #1 ('jpeg')", "'quality'", "an integer"]),
    "unknown key": ("- {op: rotate, p: 0.5, prob: 0.5}", ["op #1 ('rotate')", "unknown key 'prob'"]),
    "no op": ("- {p: 0.5}", ["op #1 (None)", "a step must be a mapping"]),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_policies_fail_naming_policy_op_and_problem(tmp_path, case):
    step, fragments = BAD[case]
    path = write(tmp_path, f"""
        fine:
          - {{op: hflip, p: 0.5}}
        broken:
          - {{op: hflip, p: 0.5}}
          {step}
        """)
    with pytest.raises(PolicyError) as error:
        load_policies(path)
    message = str(error.value)
    assert isinstance(error.value, ValueError)
    assert message.startswith("policy 'broken', "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_bad_files_and_names_fail_clearly(tmp_path):
    with pytest.raises(PolicyError, match="policy 'p': expected a list of steps"):
        load_policies(write(tmp_path, "p: {op: hflip}\n"))
    with pytest.raises(PolicyError, match="expected a mapping of policy name"):
        load_policies(write(tmp_path, "- hflip\n"))
    with pytest.raises(PolicyError, match=r"unknown policy 'nope' \(available: .*basic"):
        get_policy("nope")
    with pytest.raises(PolicyError, match="seed"):
        get_policy("basic", seed=-1)


def test_policies_built_in_code_are_checked_too():
    with pytest.raises(PolicyError, match=r"policy 'mine', op #0 \('blur'\): parameter 'sigma' range \[2, 1\]"):
        Policy("mine", [OpStep("blur", 0.5, {"sigma": [2, 1]})])
    with pytest.raises(PolicyError, match=r"policy 'mine', op #0 \('zoom'\): unknown op"):
        Policy("mine", [OpStep("zoom", 0.5)])
