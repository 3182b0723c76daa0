"""select_typical / typical_samples: cluster representatives, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from recall.tiny import make_tiny_checkpoint
from recall.typical import _nearest_distinct, select_typical, typical_samples


def _blobs(k=4, per=10, dim=5, seed=0):
    """k well-separated Gaussian blobs; returns points and each blob's member indices."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim)) * 50
    x = np.concatenate([c + rng.normal(size=(per, dim)) for c in centers])
    perm = rng.permutation(len(x))
    x = x[perm]
    inv = np.argsort(perm)
    return x, [set(inv[j * per:(j + 1) * per].tolist()) for j in range(k)]


@pytest.mark.parametrize("method", ["kmeans", "minibatch"])
def test_one_representative_per_cluster(method):
    x, blobs = _blobs()
    idx = select_typical(x, 4, method=method, seed=0, n_init=3)
    assert idx == sorted(idx) and len(set(idx)) == 4
    assert all(len(b & set(idx)) == 1 for b in blobs)


def test_kmeans_picks_nearest_to_centroid():
    x, blobs = _blobs()
    idx = select_typical(x, 4)
    for b in blobs:
        members = sorted(b)
        centroid = x[members].mean(axis=0)
        nearest = members[int(np.argmin(((x[members] - centroid) ** 2).sum(1)))]
        assert nearest in idx


@pytest.mark.parametrize("method", ["kmeans", "minibatch", "random"])
def test_deterministic_for_seed_and_accepts_torch(method):
    x = np.random.default_rng(1).normal(size=(30, 4))
    a = select_typical(x, 5, method=method, seed=3, n_init=2)
    b = select_typical(torch.tensor(x, dtype=torch.float32), 5, method=method, seed=3, n_init=2)
    assert a == b and len(set(a)) == 5 and all(0 <= i < 30 for i in a)


def test_random_differs_across_seeds():
    x = np.zeros((100, 2))
    assert select_typical(x, 5, method="random", seed=0) != select_typical(x, 5, method="random", seed=1)


def test_duplicate_nearest_takes_next_unused():
    # both centroids nearest to sample 0; the second takes its next nearest (sample 2)
    dist = np.array([[0.0, 0.1], [1.0, 3.0], [2.0, 0.5]])
    assert _nearest_distinct(dist) == [0, 2]


def test_k_equals_n_with_duplicate_points():
    x = np.ones((3, 2))
    with pytest.warns(UserWarning, match="1 distinct candidate rows for k = 3"):
        idx = select_typical(x, 3, n_init=1)
    assert idx == [0, 1, 2]


@pytest.mark.parametrize("shape,k,kw,match", [
    ((5, 2), 6, {}, r"k = 6 .* N = 5 .* 1 <= k <= 5"),
    ((5, 2), 0, {}, "k = 0"),
    ((0, 2), 1, {}, "N = 0"),
    ((5, 2), 2, {"method": "dbscan"}, "kmeans, minibatch, random"),
    ((5,), 1, {}, "2-D"),
])
def test_errors(shape, k, kw, match):
    with pytest.raises(ValueError, match=match):
        select_typical(np.zeros(shape), k, **kw)


def test_nan_rejected():
    with pytest.raises(ValueError, match="NaN"):
        select_typical(np.array([[0.0], [np.nan]]), 1)


def test_typical_samples_end_to_end(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "m")
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    texts = [f"{w} message number {i}" for i, w in enumerate(["spam", "ham", "free", "prize", "call", "now"] * 2)]
    a = typical_samples(model, tok, texts, 3, progress=False)
    assert a == typical_samples(model, tok, texts, 3, progress=False, batch_size=5)
    assert len(set(a)) == 3 and a == sorted(a)
    assert len(typical_samples(model, tok, texts, 3, layer=0, progress=False)) == 3
    assert len(typical_samples(model, tok, texts, 4, method="random")) == 4
    with pytest.raises(ValueError, match="k = 13"):
        typical_samples(model, tok, texts, 13, progress=False)


def test_kmeans_matches_sklearn_quality():
    """Our BLAS-free k-means finds as good a clustering as scikit-learn's on blobs (inertia within 1%)."""
    from sklearn.cluster import KMeans

    from recall.typical import kmeans

    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(loc=rng.normal(size=12) * 4, size=(30, 12)) for _ in range(5)])
    _, ours = kmeans(x, 5, n_init=5, seed=0)
    theirs = KMeans(n_clusters=5, n_init=5, random_state=0).fit(x).inertia_
    assert ours <= theirs * 1.01


def test_typical_samples_do_not_depend_on_the_blas_kernel():
    """The same typical samples whatever OpenBLAS kernel a process picks (scikit-learn's KMeans picked 5 of 16
    samples differently between a shell and tox, which set different OPENBLAS_CORETYPE)."""
    import os
    import subprocess
    import sys

    code = ("import numpy as np; from recall.typical import select_typical; rng = np.random.default_rng(0); "
            "c = rng.normal(size=(6, 576)) * 3; "
            "x = np.stack([c[i % 6] + rng.normal(size=576) * 4 for i in range(64)]) * 1e2 + 5e3; "
            "print(select_typical(x.astype(np.float32), 16))")
    out = set()
    for coretype in ("Prescott", "Sandybridge", "Haswell"):
        env = {**os.environ, "OPENBLAS_CORETYPE": coretype}
        out.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                               check=True).stdout)
    assert len(out) == 1, out
