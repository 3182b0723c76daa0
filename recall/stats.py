"""Tests behind the verdicts: exact McNemar, bootstrap p-values, equivalence (TOST) and Holm's correction.

Conventions: a difference is ``a - b`` (RECALL minus another method, a variant minus the default). A
one-sided p-value ``p_greater`` is evidence that the difference is above 0, ``p_less`` below 0;
``p_equiv`` is the two one-sided tests (TOST) of ``|difference| < margin``: the larger of the two
one-sided p-values of ``difference > -margin`` and ``difference < margin``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mcnemar(a, b) -> dict[str, float]:
    """Exact McNemar test of two paired 0/1 vectors: ``n_a`` examples only ``a`` gets right, ``n_b`` only ``b``;
    under H0 each discordant example goes either way with probability 1/2. Returns n_a, n_b and the exact
    one-sided p-values (``p_greater``: a better) and the two-sided one. NaN when the vectors are not 0/1."""
    from scipy.stats import binom

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        return {"n_a": np.nan, "n_b": np.nan, "p_greater": np.nan, "p_less": np.nan, "p_two_sided": np.nan}
    n_a = int(((a == 1) & (b == 0)).sum())
    n_b = int(((a == 0) & (b == 1)).sum())
    n = n_a + n_b
    p_greater = float(binom.sf(n_a - 1, n, 0.5)) if n else 1.0  # P(X >= n_a)
    p_less = float(binom.cdf(n_a, n, 0.5)) if n else 1.0  # P(X <= n_a)
    return {"n_a": n_a, "n_b": n_b, "p_greater": p_greater, "p_less": p_less,
            "p_two_sided": min(1.0, 2 * min(p_greater, p_less))}


def bootstrap_pvalues(boot: np.ndarray, margin: float) -> dict[str, np.ndarray]:
    """One-sided bootstrap p-values of a difference from its replicates (axis 0), with the +1 correction
    ((count + 1) / (B + 1), never 0): ``p_greater`` = share of replicates <= 0, ``p_less`` = share >= 0, and
    TOST ``p_equiv`` = max(share <= -margin, share >= margin)."""
    boot = np.asarray(boot, dtype=float)
    B = boot.shape[0]

    def share(mask):
        return (mask.sum(axis=0) + 1.0) / (B + 1.0)

    return {"p_greater": share(boot <= 0), "p_less": share(boot >= 0),
            "p_equiv": np.maximum(share(boot <= -margin), share(boot >= margin))}


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error); NaN entries stay NaN and do not count."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


__all__ = ["mcnemar", "bootstrap_pvalues", "holm"]
