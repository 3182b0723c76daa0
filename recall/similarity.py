"""Similarity of two models' representations of the same samples, layer by layer.

A measure takes X, Y of shape (N, H) (row n: both models' representation of sample n; CKA also
allows different widths) and returns a float in [0, 1] with sim(X, X) = 1. All arithmetic is float64.

- ``"rbf"`` (default; our reading of the paper, which names an RBF kernel): mean over samples of
  exp(-||x_n - y_n||^2 / (2 sigma^2)), sigma^2 = median of the pairwise squared distances among
  all 2N points of X and Y (median heuristic, zero diagonal excluded; ``bandwidth="samples"``).
  The option ``bandwidth="models"`` of ``similarity_to_reference``/``similarity_matrix`` takes
  instead, per layer, the median of the paired distances ||x_n - y_n||^2 over the compared model
  pairs: the scale of the differences between models rather than between samples.
- ``"cka_rbf"``: kernel CKA with RBF kernels, bandwidth by the median heuristic per set
  (Kornblith et al. 2019).
- ``"cka_linear"``: linear CKA (Kornblith et al. 2019).
- ``"cosine"``: mean paired cosine similarity mapped to [0, 1] as (1 + cos) / 2.
- ``"combo"``: weighted mean of the above; default equal weights (the paper's summaries mention a
  combination without saying which; equal weights are the neutral reading).

``bandwidth="hidden"`` is what ``sklearn.metrics.pairwise.rbf_kernel`` does by default: gamma = 1/H, that
is 2 sigma^2 = H (the width of the representations), whatever their scale.

The distances behind the RBF readings are exposed on their own (RECALL's diagnostics and its
``reading="relative"``): :func:`paired_sq_distance` (D: mean over samples of ||r_i(x) - r_ref(x)||^2, per
layer) and :func:`sample_spread` (S: median squared distance between two samples' representations, per
layer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Measure = Callable[..., float]
EPS = 1e-12


def _as64(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _check_pair(x, y, paired: bool) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as64(x), _as64(y)
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"representations must be 2-D (N, H), got shapes {x.shape} and {y.shape}")
    if x.shape[0] != y.shape[0] or (paired and x.shape != y.shape):
        raise ValueError(f"representations of the same samples needed, got shapes {x.shape} and {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("no samples (N = 0)")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("representations contain NaN or infinite values")
    return x, y


def _gram(z: np.ndarray) -> np.ndarray:
    """``z @ z.T`` without BLAS (numpy's own einsum loop): a BLAS product's rounding depends on the kernel the
    process picks (``OPENBLAS_CORETYPE``), which made the representation tables differ between a shell and tox."""
    return np.einsum("ik,jk->ij", z, z, optimize=False)


def _sq_dists(z: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances (Gram trick on centered rows: equal rows give ~0)."""
    z = z - z.mean(axis=0, keepdims=True)
    sq = (z * z).sum(axis=1)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * _gram(z), 0.0)


def _median_heuristic(d: np.ndarray, eps: float) -> float:
    """sigma^2 from squared distances ``d`` (1-D): their median; when that is 0 (more than half the
    pairs coincide), the mean of the nonzero ones; floored at ``eps``."""
    s2 = float(np.median(d)) if d.size else 0.0
    if s2 <= eps:
        pos = d[d > eps]
        s2 = float(pos.mean()) if pos.size else eps
    return max(s2, eps)


def _bandwidth(d: np.ndarray, eps: float) -> float:
    """sigma^2 by the median heuristic over the pairs of a square distance matrix (diagonal excluded)."""
    return _median_heuristic(d[np.triu_indices(d.shape[0], k=1)], eps)


def rbf_similarity(x, y, sigma2: float | None = None, eps: float = EPS) -> float:
    """Mean paired RBF kernel exp(-||x_n - y_n||^2 / (2 sigma^2)); ``sigma2`` defaults to the median
    of pairwise squared distances among the 2N points of X and Y. All points equal -> 1."""
    x, y = _check_pair(x, y, paired=True)
    if sigma2 is None:
        sigma2 = _bandwidth(_sq_dists(np.concatenate([x, y])), eps)
    elif not sigma2 > 0:
        raise ValueError(f"sigma2 must be > 0, got {sigma2}")
    d = ((x - y) ** 2).sum(axis=1)
    return float(np.clip(np.exp(-d / (2.0 * sigma2)).mean(), 0.0, 1.0))


def _centered(k: np.ndarray) -> np.ndarray:
    """H K H with H = I - 11^T / n, of a matrix or of each matrix of a stack (..., n, n)."""
    return k - k.mean(axis=-2, keepdims=True) - k.mean(axis=-1, keepdims=True) + k.mean(axis=(-2, -1), keepdims=True)


def _cka(kc: np.ndarray, lc: np.ndarray, const_x: bool, const_y: bool) -> float:
    """HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) from centered Gram matrices (the 1/(n-1)^2 of HSIC
    cancels). CKA is undefined when a set has all points equal: both -> 1, only one -> 0."""
    if const_x or const_y:
        return 1.0 if const_x and const_y else 0.0
    kk, ll = float((kc * kc).sum()), float((lc * lc).sum())
    if kk <= 0.0 or ll <= 0.0:
        return 1.0 if kk == ll else 0.0
    return float(np.clip((kc * lc).sum() / np.sqrt(kk * ll), 0.0, 1.0))


def cka_linear(x, y, eps: float = EPS) -> float:
    """Linear CKA: Gram matrices of the column-centered X and Y (equal to H X X^T H)."""
    x, y = _check_pair(x, y, paired=False)
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    const = [np.abs(c).max() <= eps * np.abs(v).max() for c, v in ((xc, x), (yc, y))]
    return _cka(_gram(xc), _gram(yc), *const)


def cka_rbf(x, y, eps: float = EPS) -> float:
    """Kernel CKA with RBF Gram matrices, sigma^2 of each set by the median heuristic (zero
    diagonal excluded; Kornblith et al.'s code includes it, which differs only for tiny N)."""
    x, y = _check_pair(x, y, paired=False)
    dx, dy = _sq_dists(x), _sq_dists(y)
    k = np.exp(-dx / (2.0 * _bandwidth(dx, eps)))
    l = np.exp(-dy / (2.0 * _bandwidth(dy, eps)))
    return _cka(_centered(k), _centered(l), dx.max() <= eps, dy.max() <= eps)


def cosine_similarity(x, y, eps: float = EPS) -> float:
    """Mean over samples of (1 + cos(x_n, y_n)) / 2, in [0, 1]. Two zero vectors count as cos = 1,
    one zero vector as cos = 0."""
    x, y = _check_pair(x, y, paired=True)
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    cos = (x * y).sum(axis=1) / np.maximum(nx * ny, eps)
    cos = np.where((nx <= eps) & (ny <= eps), 1.0, cos)
    return float(np.clip(((1.0 + cos) / 2.0).mean(), 0.0, 1.0))


DEFAULT_COMBO_WEIGHTS = {"rbf": 0.25, "cka_rbf": 0.25, "cka_linear": 0.25, "cosine": 0.25}


def combo_similarity(x, y, weights: dict[str, float] | None = None) -> float:
    """Weighted mean of other measures; ``weights`` (name -> weight >= 0, normalized to sum 1)
    defaults to ``DEFAULT_COMBO_WEIGHTS`` (equal weights)."""
    weights = dict(DEFAULT_COMBO_WEIGHTS if weights is None else weights)
    unknown = sorted(set(weights) - (set(SIMILARITIES) - {"combo"}))
    if unknown:
        raise ValueError(f"combo weights name unknown measures {unknown}; choose from: "
                         f"{', '.join(n for n in SIMILARITIES if n != 'combo')}")
    if any(not (w >= 0 and np.isfinite(w)) for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"combo weights must be finite, >= 0 and not all 0, got {weights}")
    total = sum(weights.values())
    return float(sum(w * SIMILARITIES[n](x, y) for n, w in weights.items() if w > 0) / total)


SIMILARITIES: dict[str, Measure] = {
    "rbf": rbf_similarity,
    "cka_rbf": cka_rbf,
    "cka_linear": cka_linear,
    "cosine": cosine_similarity,
    "combo": combo_similarity,
}


def get_similarity(measure: str | Measure) -> Measure:
    """The measure function for a name in ``SIMILARITIES`` (a callable is returned as is)."""
    if callable(measure):
        return measure
    try:
        return SIMILARITIES[measure]
    except KeyError:
        raise ValueError(f"unknown similarity measure {measure!r}; choose one of: "
                         f"{', '.join(SIMILARITIES)}") from None


def _stack(reps) -> np.ndarray:
    r = _as64(reps)
    if r.ndim != 3:
        raise ValueError(f"layer representations must be 3-D (L+1, N, H), got shape {r.shape}")
    return r


def layer_similarity(reps_a, reps_b, measure: str | Measure = "rbf", **kw) -> np.ndarray:
    """Similarity of two models at each layer: (L+1,) from two (L+1, N, H) stacks."""
    fn = get_similarity(measure)
    a, b = _stack(reps_a), _stack(reps_b)
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"representations differ in layers or samples: {a.shape} vs {b.shape}")
    return np.array([fn(a[l], b[l], **kw) for l in range(a.shape[0])], dtype=np.float64)


BANDWIDTHS = ("samples", "models", "hidden")


def paired_sq_distance(reps: Sequence, ref: int = -1) -> np.ndarray:
    """(L+1, M) D: at each layer, the mean over samples of ||r_i(x) - r_ref(x)||^2 (0 for ``ref`` itself)."""
    stacks = [_stack(r) for r in reps]
    if not stacks:
        raise ValueError("no models' representations given")
    if not -len(stacks) <= ref < len(stacks):
        raise ValueError(f"ref = {ref} out of range for {len(stacks)} models")
    r = stacks[ref]
    if any(x.shape != r.shape for x in stacks):
        raise ValueError(f"representations differ in shape: {[x.shape for x in stacks]}")
    return np.stack([((x - r) ** 2).sum(axis=2).mean(axis=1) for x in stacks], axis=1)


def paired_sq_distance_matrix(reps: Sequence) -> np.ndarray:
    """(L+1, M, M): :func:`paired_sq_distance` between every pair of models."""
    return np.stack([paired_sq_distance(reps, ref=j) for j in range(len(reps))], axis=2)


def sample_spread(reps, eps: float = EPS) -> np.ndarray:
    """(L+1,) S: per layer, the median of the squared distances between the representations of two different
    samples (by one model; the median heuristic of ``rbf_similarity`` on one set), floored at ``eps``."""
    r = _stack(reps)
    if r.shape[1] < 2:
        raise ValueError(f"the spread between samples needs at least 2 samples, got {r.shape[1]}")
    return np.array([_bandwidth(_sq_dists(r[l]), eps) for l in range(r.shape[0])])


def model_bandwidths(reps: Sequence, pairs: Sequence[tuple[int, int]], eps: float = EPS) -> np.ndarray:
    """(L+1,) sigma^2 per layer for ``bandwidth="models"``: the median over the model ``pairs`` (i, j) and
    the samples n of ||r_i[l, n] - r_j[l, n]||^2; when that median is 0, the mean of the nonzero
    distances; a layer where all models agree gets ``eps`` (its similarities are then 1)."""
    stacks = [_stack(r) for r in reps]
    return np.array([_median_heuristic(np.concatenate([((stacks[i][l] - stacks[j][l]) ** 2).sum(axis=1)
                                                       for i, j in pairs]), eps)
                     for l in range(stacks[0].shape[0])])


def _check_bandwidth(bandwidth: str, measure) -> None:
    if bandwidth not in BANDWIDTHS:
        raise ValueError(f"unknown bandwidth {bandwidth!r}; choose one of: {', '.join(BANDWIDTHS)}")
    if bandwidth != "samples" and measure != "rbf":
        raise ValueError(f"bandwidth={bandwidth!r} applies to the rbf similarity only, not {measure!r}")


def _hidden_bandwidth(reps) -> np.ndarray:
    """sigma^2 = H / 2 at every layer (sklearn's rbf_kernel default gamma = 1/H)."""
    r = _stack(reps[0])
    return np.full(r.shape[0], r.shape[2] / 2.0)


def _rbf_per_layer(x, y, sigma2: np.ndarray) -> np.ndarray:
    a, b = _stack(x), _stack(y)
    return np.array([rbf_similarity(a[l], b[l], sigma2=float(sigma2[l])) for l in range(a.shape[0])])


def similarity_to_reference(reps: Sequence, ref: int = -1, measure: str | Measure = "rbf",
                            bandwidth: str = "samples", **kw) -> np.ndarray:
    """(L+1, M): column i is model i's similarity to model ``ref`` (default the last: the newly
    fine-tuned M_N) at each layer; column ``ref`` is the self-similarity (1). ``bandwidth``: see the
    module docstring (``"models"``: pairs (i, ref), i != ref)."""
    if not len(reps):
        raise ValueError("no models' representations given")
    if not -len(reps) <= ref < len(reps):
        raise ValueError(f"ref = {ref} out of range for {len(reps)} models")
    _check_bandwidth(bandwidth, measure)
    r = reps[ref]
    if bandwidth == "hidden":
        return np.stack([_rbf_per_layer(x, r, _hidden_bandwidth(reps)) for x in reps], axis=1)
    if bandwidth == "models":
        ref_i = ref % len(reps)
        sigma2 = model_bandwidths(reps, [(i, ref_i) for i in range(len(reps)) if i != ref_i] or [(ref_i, ref_i)])
        return np.stack([_rbf_per_layer(x, r, sigma2) for x in reps], axis=1)
    return np.stack([layer_similarity(x, r, measure, **kw) for x in reps], axis=1)


def similarity_matrix(reps: Sequence, measure: str | Measure = "rbf", bandwidth: str = "samples",
                      **kw) -> np.ndarray:
    """(L+1, M, M): similarity of every pair of models at each layer. Measures are taken to be
    symmetric (all built-in ones are): only i <= j is computed. ``bandwidth="models"``: one sigma^2 per
    layer from all pairs i < j."""
    m = len(reps)
    if not m:
        raise ValueError("no models' representations given")
    _check_bandwidth(bandwidth, measure)
    sigma2 = model_bandwidths(reps, [(i, j) for i in range(m) for j in range(i + 1, m)] or [(0, 0)]) \
        if bandwidth == "models" else _hidden_bandwidth(reps) if bandwidth == "hidden" else None
    out = None
    for i in range(m):
        for j in range(i, m):
            s = _rbf_per_layer(reps[i], reps[j], sigma2) if sigma2 is not None else \
                layer_similarity(reps[i], reps[j], measure, **kw)
            if out is None:
                out = np.empty((s.shape[0], m, m))
            out[:, i, j] = out[:, j, i] = s
    return out


def adjacent_layer_similarity(reps, measure: str | Measure = "rbf", **kw) -> np.ndarray:
    """(L,): similarity between layers l and l+1 of one model (the paper's within-model analysis)."""
    fn = get_similarity(measure)
    r = _stack(reps)
    return np.array([fn(r[l], r[l + 1], **kw) for l in range(r.shape[0] - 1)], dtype=np.float64)


class ResampledPairs:
    """Similarities of several models' representations of the same N samples, layer by layer, on resamples of
    the samples (bootstrap replicates): each layer's Gram matrix of all the models' representations is computed
    once (numpy's einsum loop, as :func:`_gram`), so that a replicate costs indexing and a median instead of new
    products. ``similarity(a, b, idx, measure)`` equals ``layer_similarity(reps[a][:, idx], reps[b][:, idx],
    measure)`` to rounding (float64), for ``"rbf"`` (median-heuristic bandwidth) and ``"cka_linear"``."""

    MEASURES = ("rbf", "cka_linear")

    def __init__(self, reps: Sequence, eps: float = EPS):
        stacks = [_stack(r) for r in reps]
        if not stacks or any(s.shape != stacks[0].shape for s in stacks):
            raise ValueError(f"representations of the same layers and samples needed, got shapes "
                             f"{[s.shape for s in stacks]}")
        self.n, self.m, self.eps = stacks[0].shape[1], len(stacks), eps
        self._stacks = stacks
        z = np.concatenate(stacks, axis=1)  # (L+1, M N, H)
        z = z - z.mean(axis=1, keepdims=True)  # distances and centered Grams do not change; rounding shrinks
        self._g = np.einsum("lik,ljk->lij", z, z, optimize=False)  # (L+1, M N, M N)
        self._sq = np.einsum("lii->li", self._g)  # squared norms of the centered rows
        self._paired: dict[tuple[int, int], np.ndarray] = {}

    def _rows(self, a: int, idx: np.ndarray) -> np.ndarray:
        return a * self.n + np.asarray(idx)

    def _block(self, a: int, b: int, idx: np.ndarray) -> np.ndarray:
        ra, rb = self._rows(a, idx), self._rows(b, idx)
        return self._g[:, ra[:, None], rb[None, :]]

    def paired_sq_distance(self, a: int, b: int) -> np.ndarray:
        """(L+1, N): ||r_a[l, n] - r_b[l, n]||^2, by direct differences (as ``rbf_similarity``)."""
        key = (min(a, b), max(a, b))
        if key not in self._paired:
            self._paired[key] = ((self._stacks[a] - self._stacks[b]) ** 2).sum(axis=2)
        return self._paired[key]

    def similarity(self, a: int, b: int, idx, measure: str = "rbf") -> np.ndarray:
        """(L+1,): models ``a`` and ``b`` compared on the samples ``idx`` (repeats allowed)."""
        idx = np.asarray(idx)
        if measure == "rbf":
            rows = np.concatenate([self._rows(a, idx), self._rows(b, idx)])
            sq = self._sq[:, rows]
            d = np.maximum(sq[:, :, None] + sq[:, None, :] - 2.0 * self._g[:, rows[:, None], rows[None, :]], 0.0)
            iu = np.triu_indices(len(rows), k=1)
            pairs = d[:, iu[0], iu[1]]
            sigma2 = np.median(pairs, axis=1)
            for l in np.flatnonzero(sigma2 <= self.eps):  # the median heuristic's fallback (rare)
                sigma2[l] = _median_heuristic(pairs[l], self.eps)
            paired = self.paired_sq_distance(a, b)[:, idx]
            return np.clip(np.exp(-paired / (2.0 * sigma2[:, None])).mean(axis=1), 0.0, 1.0)
        if measure == "cka_linear":
            kc, lc = _centered(self._block(a, a, idx)), _centered(self._block(b, b, idx))
            scale = [np.einsum("lii->l", self._block(c, c, idx)).max() for c in (a, b)]
            return np.array([_cka(kc[l], lc[l], *(np.trace(k[l]) <= self.eps ** 2 * max(s, self.eps)
                                                   for k, s in ((kc, scale[0]), (lc, scale[1]))))
                             for l in range(kc.shape[0])])
        raise ValueError(f"ResampledPairs computes {' and '.join(self.MEASURES)}, not {measure!r}")

