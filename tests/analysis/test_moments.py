"""The sufficient statistics against direct implementations on materialised features (no Spark)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.analysis import matching
from pipeline.analysis.moments import Moments, PairHistograms


def features(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)) @ rng.normal(size=(6, 6))
    y = np.c_[x[:, :3] @ rng.normal(size=(3, 5)) + 0.5 * rng.normal(size=(n, 5)), np.zeros(n)]   # one dead unit
    return np.maximum(x, 0) + 0.1 * x, y


def moments_of(x, y, chunks=1):
    m = Moments({"x": x.shape[1], "y": y.shape[1]})
    parts = [Moments({"x": x.shape[1], "y": y.shape[1]}) for _ in range(chunks)]
    for part, idx in zip(parts, np.array_split(np.arange(len(x)), chunks)):
        part.add({"x": x[idx], "y": y[idx]})
    for part in parts:
        m.merge(part)
    return m


# Kornblith et al. (2019), written out directly on the centred feature matrices.
def direct_cka(x, y, debiased=False):
    x, y = x - x.mean(0), y - y.mean(0)
    xty = np.linalg.norm(x.T @ y) ** 2
    xx, yy = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    if not debiased:
        return xty / (xx * yy)
    n = len(x)
    rx, ry = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)

    def helper(v, a, b):
        return v - n / (n - 2) * a.dot(b) + a.sum() * b.sum() / ((n - 1) * (n - 2))

    return helper(xty, rx, ry) / np.sqrt(helper(xx ** 2, rx, rx) * helper(yy ** 2, ry, ry))


def direct_svcca(x, y, keep=0.99):
    def reduce(z):
        z = z - z.mean(0)
        u, s, _ = np.linalg.svd(z, full_matrices=False)
        k = int(np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), keep - 1e-12) + 1)
        return u[:, :k] * s[:k]

    qa, _ = np.linalg.qr(reduce(x))
    qb, _ = np.linalg.qr(reduce(y))
    return np.mean(np.linalg.svd(qa.T @ qb, compute_uv=False))


@pytest.mark.parametrize("chunks", [1, 4])
def test_correlation_and_covariance_equal_numpy(chunks):
    x, y = features()
    m = moments_of(x, y, chunks)
    expected = np.corrcoef(np.c_[x, y[:, :5]], rowvar=False)
    assert np.allclose(m.correlation("x", "x"), expected[:6, :6], atol=1e-9)
    assert np.allclose(m.correlation("x", "y")[:, :5], expected[:6, 6:], atol=1e-9)
    assert np.allclose(m.covariance("x", "y"), np.cov(np.c_[x, y], rowvar=False)[:6, 6:], atol=1e-9)
    assert m.dead("y").tolist() == [False] * 5 + [True]
    corr = m.correlation("x", "y")
    assert np.all(corr[:, 5] == 0) and not np.isnan(corr).any()              # a dead unit: no NaN anywhere
    assert np.allclose(m.min, np.c_[x, y].min(0)) and np.allclose(m.max, np.c_[x, y].max(0))


def test_chunked_and_whole_sums_agree_to_float64_rounding():
    x, y = features(n=997)
    whole, split = moments_of(x, y, 1), moments_of(x, y, 7)
    assert np.allclose(whole.cross, split.cross, rtol=1e-12, atol=1e-9)
    assert whole.cka("x", "y", debiased=True) == pytest.approx(split.cka("x", "y", debiased=True), abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_and_debiased_cka_equal_the_direct_implementations(debiased):
    x, y = features()
    m = moments_of(x, y, 3)
    assert m.cka("x", "y", debiased) == pytest.approx(direct_cka(x, y, debiased), abs=1e-9)
    assert m.cka("x", "x", debiased) == pytest.approx(1.0, abs=1e-9)
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    m2 = moments_of(x, 3 * x @ q + 7)                                      # CKA ignores rotation, scale, shift
    assert m2.cka("x", "y", debiased) == pytest.approx(1.0, abs=1e-9)


def test_debiased_cka_removes_the_small_sample_bias_of_independent_features():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 30)), rng.normal(size=(40, 30))
    m = moments_of(x, y)
    assert m.cka("x", "y") > 0.4                  # plain CKA of independent features on 40 samples is large
    assert abs(m.cka("x", "y", debiased=True)) < 0.1


def test_svcca_equals_a_direct_svd_then_cca():
    x, y = features()
    m = moments_of(x, y)
    assert m.svcca("x", "y") == pytest.approx(direct_svcca(x, y[:, :5]), abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_hungarian_equals_brute_force_and_greedy_semi_are_what_they_say(seed):
    corr = np.random.default_rng(seed).uniform(-1, 1, (5, 5))
    rows, cols = matching.hungarian(corr)
    best = max(itertools.permutations(range(5)), key=lambda p: sum(corr[i, p[i]] for i in range(5)))
    assert corr[rows, cols].sum() == pytest.approx(sum(corr[i, best[i]] for i in range(5)))
    gr, gc = matching.greedy(corr)
    assert sorted(gc.tolist()) == list(range(5))                     # one-to-one
    assert corr[gr, gc].max() == corr.max()                          # the best pair is taken first
    sr, sc = matching.semi(corr)
    assert np.array_equal(corr[sr, sc], corr.max(1))                 # each unit's best partner
    assert corr[rows, cols].sum() >= corr[gr, gc].sum() - 1e-12


def test_mutual_information_of_a_copy_is_its_entropy_and_of_independent_units_near_zero():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, 20000)
    m = Moments({"a": 2, "b": 2})
    parts = {"a": np.c_[a, a], "b": np.c_[a, rng.uniform(0, 1, 20000)]}
    m.add(parts)
    h = PairHistograms.for_pairs(m, [("a", 0, "b", 0), ("a", 0, "b", 1)], bins=8)
    h.add(parts)
    mi = h.mutual_information()
    assert mi[0] == pytest.approx(3.0, abs=0.01)                     # log2(8) bits: b is a copy of a
    assert mi[1] < 0.01
