"""Similarity measures and the per-layer helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recall.similarity import (
    SIMILARITIES,
    ResampledPairs,
    adjacent_layer_similarity,
    combo_similarity,
    get_similarity,
    layer_similarity,
    rbf_similarity,
    similarity_matrix,
    similarity_to_reference,
)

NAMES = list(SIMILARITIES)
SYMMETRIC = NAMES  # every built-in measure is symmetric


def _x(n=12, h=6, seed=0):
    return np.random.default_rng(seed).normal(size=(n, h))


# --- pure-numpy references from the published formulas -------------------------------------------------

def _hsic(k, l):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def _cka_ref(k, l):
    return _hsic(k, l) / np.sqrt(_hsic(k, k) * _hsic(l, l))


def _rbf_gram_ref(x):
    n = len(x)
    d = np.array([[np.sum((x[i] - x[j]) ** 2) for j in range(n)] for i in range(n)])
    s2 = np.median([d[i, j] for i in range(n) for j in range(n) if i != j])
    return np.exp(-d / (2 * s2))


def _rbf_sim_ref(x, y):
    z = np.concatenate([x, y])
    d = [np.sum((z[i] - z[j]) ** 2) for i in range(len(z)) for j in range(len(z)) if i != j]
    s2 = np.median(d)
    return np.mean([np.exp(-np.sum((a - b) ** 2) / (2 * s2)) for a, b in zip(x, y)])


# --- per-measure properties ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_self_similarity_is_one_and_in_range(name):
    fn = SIMILARITIES[name]
    x, y = _x(), _x(seed=1)
    assert fn(x, x) == pytest.approx(1.0, abs=1e-9)
    assert 0.0 <= fn(x, y) <= 1.0
    xt = torch.tensor(x, dtype=torch.float32)
    assert fn(xt, xt) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", SYMMETRIC)
def test_symmetric(name):
    x, y = _x(), _x(seed=1) + 0.5 * _x()
    assert SIMILARITIES[name](x, y) == pytest.approx(SIMILARITIES[name](y, x), abs=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", [0.0, 3.7, -1e4])
def test_constant_identical_inputs_give_one_not_nan(name, value):
    x = np.full((8, 4), value)
    s = SIMILARITIES[name](x, x.copy())
    assert np.isfinite(s) and s == pytest.approx(1.0)


def test_rbf_matches_reference_and_decreases_with_noise():
    x = _x()
    noise = _x(seed=2)
    assert rbf_similarity(x, x + 0.3 * noise) == pytest.approx(_rbf_sim_ref(x, x + 0.3 * noise), rel=1e-10)
    sims = [rbf_similarity(x, x + s * noise) for s in (0.0, 0.05, 0.2, 0.5, 1.0, 3.0)]
    assert sims[0] == 1.0 and all(a > b for a, b in zip(sims, sims[1:]))


def test_rbf_sigma_guards():
    # more than half the pairwise distances are 0: falls back to the mean nonzero distance
    x = np.zeros((6, 3))
    y = x.copy()
    y[0] = 1.0
    s = rbf_similarity(x, y)
    assert np.isfinite(s) and 0.0 < s < 1.0
    assert rbf_similarity(x, y, sigma2=1.5) == pytest.approx((5 + np.exp(-3 / 3.0)) / 6)
    with pytest.raises(ValueError, match="sigma2"):
        rbf_similarity(x, y, sigma2=0.0)


def test_cka_linear_matches_reference():
    x, y = _x(), _x(h=9, seed=1) + 0.3 * np.repeat(_x(h=3), 3, axis=1)
    assert SIMILARITIES["cka_linear"](x, y) == pytest.approx(_cka_ref(x @ x.T, y @ y.T), rel=1e-10)


def test_cka_rbf_matches_reference():
    x, y = _x(), np.tanh(_x(h=9, seed=1) + np.repeat(_x(h=3), 3, axis=1))
    assert SIMILARITIES["cka_rbf"](x, y) == pytest.approx(_cka_ref(_rbf_gram_ref(x), _rbf_gram_ref(y)), rel=1e-10)


@pytest.mark.parametrize("name", ["cka_linear", "cka_rbf"])
def test_cka_invariances(name):
    fn = SIMILARITIES[name]
    x, y = _x(), _x(seed=1) + _x()
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(6, 6)))
    assert fn(x @ q, y) == pytest.approx(fn(x, y), abs=1e-10)  # orthogonal transform
    assert fn(x @ q, x) == pytest.approx(1.0, abs=1e-10)
    assert fn(x * 7.5, y) == pytest.approx(fn(x, y), abs=1e-10)  # isotropic scaling
    assert fn(x + 4.0, y) == pytest.approx(fn(x, y), abs=1e-10)  # translation


def test_cka_one_constant_set_gives_zero():
    assert SIMILARITIES["cka_linear"](np.ones((5, 3)), _x(n=5)) == 0.0
    assert SIMILARITIES["cka_rbf"](_x(n=5), np.ones((5, 3))) == 0.0


def test_cosine_mapping():
    x = _x()
    assert SIMILARITIES["cosine"](x, -x) == pytest.approx(0.0, abs=1e-12)
    y = np.stack([x[:, 1], -x[:, 0]], axis=1)
    assert SIMILARITIES["cosine"](x[:, :2], y) == pytest.approx(0.5, abs=1e-12)  # orthogonal pairs


def test_combo_weights():
    x, y = _x(), _x(seed=1) + _x()
    parts = {n: SIMILARITIES[n](x, y) for n in ("rbf", "cka_rbf", "cka_linear", "cosine")}
    assert combo_similarity(x, y) == pytest.approx(np.mean(list(parts.values())))
    assert combo_similarity(x, y, weights={"rbf": 3, "cosine": 1}) == pytest.approx(
        0.75 * parts["rbf"] + 0.25 * parts["cosine"])
    with pytest.raises(ValueError, match="unknown measures"):
        combo_similarity(x, y, weights={"combo": 1})
    with pytest.raises(ValueError, match="not all 0"):
        combo_similarity(x, y, weights={"rbf": 0})


@pytest.mark.parametrize("x,y,match", [
    (np.zeros((4, 3)), np.zeros((5, 3)), "same samples"),
    (np.zeros(4), np.zeros(4), "2-D"),
    (np.full((2, 2), np.nan), np.zeros((2, 2)), "NaN"),
])
def test_bad_inputs(x, y, match):
    with pytest.raises(ValueError, match=match):
        rbf_similarity(x, y)


# --- per-layer helpers --------------------------------------------------------------------------------

def _stacks(m=3, layers=5, n=10, h=4):
    """Model i = base + noise growing with depth and with i (a toy of shallow-similar, deep-divergent)."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(layers, n, h))
    return [base + (0.1 + i) * np.linspace(0, 1, layers)[:, None, None] * rng.normal(size=base.shape)
            for i in range(m)]


def test_unknown_measure_lists_names():
    with pytest.raises(ValueError, match="rbf, cka_rbf, cka_linear, cosine, combo"):
        layer_similarity(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), measure="euclid")
    assert get_similarity(len) is len


@pytest.mark.parametrize("name", NAMES)
def test_layer_helpers(name):
    reps = _stacks()
    ls = layer_similarity(reps[0], reps[-1], name)
    assert ls.shape == (5,) and ls.dtype == np.float64 and ls[0] == pytest.approx(1.0)
    to_ref = similarity_to_reference(reps, measure=name)
    assert to_ref.shape == (5, 3)
    np.testing.assert_allclose(to_ref[:, -1], 1.0, atol=1e-9)
    np.testing.assert_allclose(to_ref[:, 0], ls)
    mat = similarity_matrix(reps, name)
    assert mat.shape == (5, 3, 3)
    np.testing.assert_allclose(mat, mat.transpose(0, 2, 1))
    np.testing.assert_allclose(np.diagonal(mat, axis1=1, axis2=2), 1.0, atol=1e-9)
    np.testing.assert_allclose(mat[:, :, -1], to_ref, atol=1e-12)
    adj = adjacent_layer_similarity(torch.tensor(reps[1]), name)
    assert adj.shape == (4,) and ((adj >= 0) & (adj <= 1)).all()


def test_rbf_deep_layers_diverge_more():
    sims = layer_similarity(*_stacks(m=2)[::-1])
    assert sims[0] == 1.0 and sims[-1] < sims[1]


def test_similarity_to_reference_errors():
    with pytest.raises(ValueError, match="ref = 3"):
        similarity_to_reference(_stacks(), ref=3)
    with pytest.raises(ValueError, match="layers or samples"):
        layer_similarity(np.zeros((2, 3, 4)), np.zeros((3, 3, 4)))


def _bandwidth_ref(reps, pairs, l):
    return np.median([np.sum((reps[i][l, n] - reps[j][l, n]) ** 2) for i, j in pairs
                      for n in range(reps[0].shape[1])])


def test_models_bandwidth_matches_reference_and_spreads_similarities():
    reps = _stacks(m=4)
    sim = similarity_to_reference(reps, bandwidth="models")
    pairs = [(0, 3), (1, 3), (2, 3)]
    for l in range(1, reps[0].shape[0]):
        s2 = _bandwidth_ref(reps, pairs, l)
        for i in range(4):
            want = np.mean([np.exp(-np.sum((reps[i][l, n] - reps[3][l, n]) ** 2) / (2 * s2))
                            for n in range(reps[0].shape[1])])
            assert sim[l, i] == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(sim[:, -1], 1.0)
    np.testing.assert_allclose(sim[0], 1.0)  # the layer where all models agree
    # the sample-scale bandwidth squeezes the differences between models; the model-scale one does not
    spread = lambda s: float((s[1:, :-1].max(axis=1) - s[1:, :-1].min(axis=1)).mean())  # noqa: E731
    assert spread(sim) > spread(similarity_to_reference(reps))
    mat = similarity_matrix(reps, bandwidth="models")
    np.testing.assert_allclose(mat, mat.transpose(0, 2, 1))
    np.testing.assert_allclose(np.diagonal(mat, axis1=1, axis2=2), 1.0)
    s2 = _bandwidth_ref(reps, [(i, j) for i in range(4) for j in range(i + 1, 4)], 2)
    want = np.mean([np.exp(-np.sum((reps[0][2, n] - reps[1][2, n]) ** 2) / (2 * s2)) for n in range(reps[0].shape[1])])
    assert mat[2, 0, 1] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("call,match", [
    (lambda r: similarity_to_reference(r, bandwidth="global"), "unknown bandwidth"),
    (lambda r: similarity_to_reference(r, measure="cka_linear", bandwidth="models"), "rbf similarity only"),
    (lambda r: similarity_matrix(r, "cosine", bandwidth="models"), "rbf similarity only"),
])
def test_bandwidth_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(_stacks())


def test_similarities_do_not_depend_on_the_blas_kernel():
    """The same bits whatever OpenBLAS kernel a process picks: with BLAS products the representation tables of
    notebook 01 differed in their last digits between a shell and tox (different OPENBLAS_CORETYPE)."""
    import os
    import subprocess
    import sys

    code = ("import hashlib, numpy as np; from recall.similarity import similarity_matrix, sample_spread, "
            "ResampledPairs; rng = np.random.default_rng(0); b = rng.normal(size=(3, 32, 576)).astype(np.float32); "
            "reps = [b + rng.normal(size=b.shape).astype(np.float32) * 0.1 * (i + 1) for i in range(3)]; "
            "out = [similarity_matrix(reps, m).ravel() for m in ('rbf', 'cka_linear', 'cka_rbf')]; "
            "idx = rng.integers(0, 32, size=32); rp = ResampledPairs(reps); "
            "out += [rp.similarity(0, 2, idx, m) for m in ('rbf', 'cka_linear')]; "
            "print(hashlib.sha256(np.concatenate(out + [sample_spread(reps[0])]).tobytes()).hexdigest())")
    out = set()
    for coretype in ("Prescott", "Sandybridge", "Haswell"):
        env = {**os.environ, "OPENBLAS_CORETYPE": coretype}
        out.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                               check=True).stdout)
    assert len(out) == 1, out


def test_resampled_pairs_equal_the_direct_measures():
    """C1's bootstrap computes each layer's Gram matrices once and indexes them: the same similarities (to
    rounding) as the measures on the resampled arrays, repeats and an all-equal layer included."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(4, 20, 16)) * np.array([1.0, 5.0, 20.0, 50.0])[:, None, None]
    reps = [base + rng.normal(size=base.shape) * s * np.arange(4)[:, None, None] for s in (0.1, 0.3, 1.0)]
    for r in reps:
        r[0] = base[0]  # layer 0: every model the same
    pairs = ResampledPairs(reps)
    for _ in range(3):
        idx = rng.integers(0, 20, size=20)
        for a, b in [(0, 1), (0, 2), (2, 1), (1, 1)]:
            for measure in ResampledPairs.MEASURES:
                want = layer_similarity(reps[a][:, idx], reps[b][:, idx], measure)
                np.testing.assert_allclose(pairs.similarity(a, b, idx, measure), want, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="not 'cosine'"):
        pairs.similarity(0, 1, idx, "cosine")
    with pytest.raises(ValueError, match="same layers and samples"):
        ResampledPairs([base, base[:, :5]])
