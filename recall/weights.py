"""Per-layer merge weights from similarities: a softmax over models at each layer.

Our reading of the paper: w_i^l = softmax_i(s_i^l / tau), s_i^l the similarity of model i to the
newly fine-tuned model M_N at layer l. The paper says only "softmax", so the literal reading tau = 1
is the default; since similarities lie in [0, 1], tau = 1 keeps weights within a factor e of each
other (lower tau sharpens them). ``centrality_weights`` is the alternative: softmax of each model's
mean similarity to all models (itself included).
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
