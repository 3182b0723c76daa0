"""Typical samples: a few representative texts of the new task, picked by clustering.

RECALL extracts representations on "typical samples" chosen by clustering. Our reading of the
paper: k-means with k clusters on the newly fine-tuned model's mean-pooled last hidden state, and
the sample nearest each centroid is kept. ``method="random"`` (ablation) and ``"minibatch"``
(scikit-learn's MiniBatchKMeans, for pools of many thousands) are the alternatives.

The k-means here is Lloyd's algorithm with k-means++ seeding (scikit-learn's recipe: greedy
seeding with 2 + log k trials, ``n_init`` runs, the lowest inertia kept) written without BLAS:
distances are elementwise differences summed by numpy. scikit-learn's KMeans computes them with a
matrix product, whose rounding depends on the BLAS kernel the machine picks (``OPENBLAS_CORETYPE``),
and picked 5 of 16 typical samples differently between two shells of one machine.
"""

from __future__ import annotations

import numpy as np

METHODS = ("kmeans", "minibatch", "random")


def _as_matrix(embeddings) -> np.ndarray:
    if hasattr(embeddings, "detach"):  # torch tensor
        embeddings = embeddings.detach().cpu().double().numpy()
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (N, H) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return x


def _nearest_distinct(dist: np.ndarray) -> list[int]:
    """For each cluster j (in order), the sample nearest its centroid that no earlier cluster took.
    ``dist`` is (N, k): distance of sample n to centroid j."""
    taken: set[int] = set()
    for j in range(dist.shape[1]):
        for n in np.argsort(dist[:, j], kind="stable"):
            if int(n) not in taken:
                taken.add(int(n))
                break
    return sorted(taken)


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(N, k) squared euclidean distances, without a matrix product (no BLAS), in chunks of bounded memory."""
    step = max(1, int(2**23 // max(1, c.size)))
    return np.concatenate([((x[i:i + step, None, :] - c[None, :, :]) ** 2).sum(axis=2)
                           for i in range(0, len(x), step)])


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur and Vassilvitskii 2007; scikit-learn's 2 + log k local trials)."""
    n = len(x)
    trials = 2 + int(np.log(k))
    centers = [x[rng.integers(n)]]
    closest = _sq_dist(x, centers[0][None])[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # every point sits on a center: take any point not yet a center
            centers.append(x[rng.integers(n)])
            continue
        cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
        cand = np.minimum(cand, n - 1)
        d = np.minimum(closest[:, None], _sq_dist(x, x[cand]))  # (N, trials)
        best = int(np.argmin(d.sum(axis=0)))
        centers.append(x[cand[best]])
        closest = d[:, best]
    return np.stack(centers)


def kmeans(x: np.ndarray, k: int, n_init: int = 10, seed: int = 0, max_iter: int = 300,
           tol: float = 1e-4) -> tuple[np.ndarray, float]:
    """Lloyd's k-means on ``x`` (N, H) float64: (centers (k, H), inertia) of the best of ``n_init`` seeded runs.
    Stops when the centers move by at most ``tol`` x the mean feature variance (scikit-learn's rule); an empty
    cluster takes the point farthest from its center."""
    distinct = len(np.unique(x, axis=0))
    if distinct < k:
        import warnings

        warnings.warn(f"{distinct} distinct candidate rows for k = {k} clusters: some typical samples repeat "
                      f"others; give more distinct candidates or a smaller k", stacklevel=3)
    rng = np.random.default_rng(seed)
    tol = tol * float(np.var(x, axis=0).mean())
    best: tuple[np.ndarray, float] | None = None
    for _ in range(n_init):
        c = _kmeans_pp(x, k, rng)
        for _ in range(max_iter):
            d = _sq_dist(x, c)
            labels = np.argmin(d, axis=1)
            new = c.copy()
            for j in range(k):
                members = x[labels == j]
                if len(members):
                    new[j] = members.mean(axis=0)
                else:
                    far = int(np.argmax(d[np.arange(len(x)), labels]))
                    new[j] = x[far]
                    labels[far] = j
            shift = float(((new - c) ** 2).sum())
            c = new
            if shift <= tol:
                break
        inertia = float(_sq_dist(x, c).min(axis=1).sum())
        if best is None or inertia < best[1]:
            best = (c, inertia)
    return best


def select_typical(embeddings, k: int, method: str = "kmeans", seed: int = 0, n_init: int = 10) -> list[int]:
    """Indices of ``k`` typical rows of ``embeddings`` (N, H), sorted ascending.

    Parameters
    ----------
    embeddings
        (N, H) numpy array or torch tensor.
    k
        Number of samples to keep, 1 <= k <= N.
    method
        ``"kmeans"`` (default): :func:`kmeans` with k clusters, ``n_init`` seeded
        initializations (the same samples whatever BLAS kernel the machine picks); keep the sample
        nearest each centroid (if two centroids share their nearest sample, the later cluster takes
        its next nearest unused one, so the k indices are distinct). ``"minibatch"``: the same with
        scikit-learn's MiniBatchKMeans. ``"random"``: k distinct indices
        from ``numpy.random.default_rng(seed)``.
    seed
        Makes the result deterministic.
    """
    if method not in METHODS:
        raise ValueError(f"unknown typical-sample method {method!r}; choose one of: {', '.join(METHODS)}")
    x = _as_matrix(embeddings)
    n = x.shape[0]
    if n == 0:
        raise ValueError("no candidate samples (N = 0); pass at least k candidate texts")
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= n:
        raise ValueError(f"k = {k} typical samples requested from N = {n} candidates; choose an integer "
                         f"1 <= k <= {n}, or provide more candidates")
    k = int(k)
    if method == "random":
        return sorted(int(i) for i in np.random.default_rng(seed).choice(n, size=k, replace=False))
    if n_init < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init}")
    if method == "kmeans":
        centers, _ = kmeans(x, k, n_init=n_init, seed=seed)
        return _nearest_distinct(np.sqrt(_sq_dist(x, centers)))
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x)
    return _nearest_distinct(km.transform(x))


def typical_samples(model, tokenizer, texts: list[str], k: int, method: str = "kmeans", layer: int = -1,
                    seed: int = 0, batch_size: int = 8, progress: bool = True) -> list[int]:
    """Indices of ``k`` typical ``texts``: embed each text with ``model`` (mean-pooled hidden state
    ``layer`` of :func:`recall.representations.layer_representations`, default the last) and call
    :func:`select_typical`. ``method="random"`` skips the forward pass."""
    texts = list(texts)
    if method == "random":
        return select_typical(np.zeros((len(texts), 1)), k, method="random", seed=seed)
    if not texts:
        raise ValueError("no candidate texts (N = 0); pass at least k candidate texts")
    if not 1 <= k <= len(texts):  # fail before the forward pass
        select_typical(np.zeros((len(texts), 1)), k, method="random")
    from .representations import layer_representations

    emb = layer_representations(model, tokenizer, texts, batch_size=batch_size, progress=progress,
                                desc="typical samples", layers=[layer])[0]
    return select_typical(emb, k, method=method, seed=seed)
