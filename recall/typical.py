"""Typical samples: a few representative texts of the new task, picked by clustering.

RECALL extracts representations on "typical samples" chosen by clustering. Our reading of the
paper: k-means with k clusters on the newly fine-tuned model's mean-pooled last hidden state, and
the sample nearest each centroid is kept. ``method="random"`` (ablation) and ``"minibatch"``
(MiniBatchKMeans, for pools of many thousands) are the alternatives.
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


def select_typical(embeddings, k: int, method: str = "kmeans", seed: int = 0, n_init: int = 10) -> list[int]:
    """Indices of ``k`` typical rows of ``embeddings`` (N, H), sorted ascending.

    Parameters
    ----------
    embeddings
        (N, H) numpy array or torch tensor.
    k
        Number of samples to keep, 1 <= k <= N.
    method
        ``"kmeans"`` (default): scikit-learn KMeans with k clusters, ``n_init`` seeded
        initializations; keep the sample nearest each centroid (if two centroids share their
        nearest sample, the later cluster takes its next nearest unused one, so the k indices are
        distinct). ``"minibatch"``: the same with MiniBatchKMeans. ``"random"``: k distinct indices
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
    from sklearn.cluster import KMeans, MiniBatchKMeans

    cls = KMeans if method == "kmeans" else MiniBatchKMeans
    km = cls(n_clusters=k, n_init=n_init, random_state=seed).fit(x)
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
