"""Per-layer merge weights from similarities: a softmax over models at each layer.

Two readings of the paper's "softmax of the similarities":

- literal (:func:`layer_weights`): w_i^l = softmax_i(s_i^l / T), s_i^l in [0, 1] the similarity of model i
  to the newly fine-tuned model M_N at layer l. Because s lies in [0, 1], at T = 1 no two weights differ by
  more than a factor e, and with the median-heuristic RBF every s is 0.97-0.999 on fine-tuned LLMs: the
  weights are uniform (averaging). Kept as the named negative control.
- relative (:func:`relative_weights`): w_i^l = softmax_i(-delta_i^l / (tau T)), delta_i^l a divergence of
  model i from M_N at layer l that is comparable across layers (RECALL uses D_i^l / S^l, the mean paired
  squared distance over the spread between samples), tau one scale for the whole merge (the median of
  delta over the models other than M_N and all layers). This is the softmax of the log of an RBF
  similarity exp(-D / (tau S)) whose bandwidth follows each layer's spread with one factor for all layers,
  so the weights keep the depth trend: where the models agree with M_N they are near uniform, where they
  diverge M_N takes over.

``centrality_weights`` is the alternative to similarity-to-M_N: softmax of each model's mean similarity
to all models (itself included).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return t


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def _check_sims(s, ndim: int, what: str) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != ndim or s.shape[-1] == 0:
        raise ValueError(f"{what} must be {ndim}-D with at least one model, got shape {s.shape}")
    if not np.isfinite(s).all():
        bad = sorted(set(np.where(~np.isfinite(s))[0].tolist()))
        raise ValueError(f"{what} contain NaN or infinite values (layers {bad})")
    return s


def layer_weights(sim_to_new, temperature: float = 1.0) -> np.ndarray:
    """(L+1, M) weights, each row a softmax over models of ``sim_to_new / temperature``.

    ``sim_to_new`` is (L+1, M): similarity of each model to M_N at each layer
    (:func:`recall.similarity.similarity_to_reference`).
    """
    t = _check_temperature(temperature)
    return _softmax(_check_sims(sim_to_new, 2, "similarities") / t, axis=1)


def centrality_weights(sim_matrix, temperature: float = 1.0) -> np.ndarray:
    """(L+1, M) weights: softmax over i of the mean similarity of model i to all models (itself
    included) at each layer; ``sim_matrix`` is (L+1, M, M) (:func:`recall.similarity.similarity_matrix`)."""
    t = _check_temperature(temperature)
    s = _check_sims(sim_matrix, 3, "similarity matrices")
    if s.shape[1] != s.shape[2]:
        raise ValueError(f"similarity matrices must be square (L+1, M, M), got shape {s.shape}")
    return _softmax(s.mean(axis=2) / t, axis=1)


def weights_frame(weights, model_names: Sequence[str]) -> pd.DataFrame:
    """The (L+1, M) weights as a DataFrame: index ``layer`` (0..L), one column per model."""
    w = np.asarray(weights, dtype=np.float64)
    names = list(model_names)
    if w.ndim != 2 or w.shape[1] != len(names):
        raise ValueError(f"weights of shape {w.shape} do not match {len(names)} model names")
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be distinct, got {names}")
    return pd.DataFrame(w, index=pd.RangeIndex(w.shape[0], name="layer"), columns=names)


TAU_MIN = 1e-6


def relative_weights(delta, temperature: float = 1.0, ref: int = -1,
                     tau: float | None = None) -> tuple[np.ndarray, float]:
    """(weights (L+1, M), tau): w_i^l = softmax_i(-delta_i^l / (tau * temperature)).

    ``delta`` is (L+1, M), >= 0: the divergence of each model from the reference model ``ref`` (M_N) at each
    layer. ``tau`` defaults to the median of ``delta`` over the models other than ``ref`` and all layers,
    floored at ``TAU_MIN``: relative divergences below it are float noise (representations are float32, so
    identical models read in other batches differ by about 1e-12 of the spread), and scaling noise up to
    order 1 would give identical models different weights.
    """
    t = _check_temperature(temperature)
    d = _check_sims(delta, 2, "divergences")
    if (d < 0).any():
        raise ValueError(f"divergences must be >= 0, got a minimum of {d.min():g}")
    m = d.shape[1]
    if not -m <= ref < m:
        raise ValueError(f"ref = {ref} out of range for {m} models")
    if tau is None:
        others = np.delete(d, ref % m, axis=1)
        tau = max(float(np.median(others)) if others.size else 0.0, TAU_MIN)
    elif not (np.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau}")
    return _softmax(-d / (float(tau) * t), axis=1), float(tau)
