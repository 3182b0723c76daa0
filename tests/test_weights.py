"""Softmax layer weights and their table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recall.weights import centrality_weights, layer_weights, weights_frame

SIMS = np.array([[1.0, 0.9, 1.0], [0.2, 0.5, 1.0], [0.0, 0.3, 1.0], [0.7, 0.7, 1.0]])


def _sim_matrix():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=(4, 3, 3))
    m = (a + a.transpose(0, 2, 1)) / 2
    m[:, range(3), range(3)] = 1.0
    return m


@pytest.mark.parametrize("fn,sims", [(layer_weights, SIMS), (centrality_weights, _sim_matrix())])
@pytest.mark.parametrize("temperature", [1e-3, 0.1, 1.0, 5.0, 1e6])
def test_rows_are_distributions(fn, sims, temperature):
    w = fn(sims, temperature=temperature)
    assert w.shape == (4, 3) and np.isfinite(w).all() and (w >= 0).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0)


def test_literal_softmax_at_default_temperature():
    e = np.exp(SIMS)
    np.testing.assert_allclose(layer_weights(SIMS), e / e.sum(axis=1, keepdims=True))


def test_high_temperature_is_uniform_low_is_one_hot():
    np.testing.assert_allclose(layer_weights(SIMS, 1e9), 1 / 3, atol=1e-9)
    w = layer_weights(SIMS[1:3], 1e-6)
    np.testing.assert_allclose(w, [[0, 0, 1], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(layer_weights(SIMS[3:], 1e-6), [[0, 0, 1]], atol=1e-12)


def test_equal_similarities_give_equal_weights():
    np.testing.assert_allclose(layer_weights(SIMS[3:, :2], 0.01), [[0.5, 0.5]])


def test_numerically_stable_for_extreme_values():
    w = layer_weights(np.array([[1e4, 1e4 - 1.0, -1e4]]), temperature=1e-3)
    assert np.isfinite(w).all()
    np.testing.assert_allclose(w, [[1, 0, 0]], atol=1e-12)


def test_centrality_is_softmax_of_row_means():
    m = _sim_matrix()
    mean = m.mean(axis=2)
    e = np.exp(mean / 0.5)
    np.testing.assert_allclose(centrality_weights(m, 0.5), e / e.sum(axis=1, keepdims=True))


@pytest.mark.parametrize("temperature", [0.0, -1.0, np.inf, np.nan])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        layer_weights(SIMS, temperature)
    with pytest.raises(ValueError, match="temperature"):
        centrality_weights(_sim_matrix(), temperature)


@pytest.mark.parametrize("fn,sims,match", [
    (layer_weights, np.array([[0.5, np.nan]]), "NaN"),
    (layer_weights, np.ones(3), "2-D"),
    (centrality_weights, np.ones((2, 3, 3)) * np.nan, "NaN"),
    (centrality_weights, np.ones((2, 3, 2)), "square"),
])
def test_bad_similarities(fn, sims, match):
    with pytest.raises(ValueError, match=match):
        fn(sims)


def test_weights_frame():
    df = weights_frame(layer_weights(SIMS), ["base", "expert", "new"])
    assert isinstance(df, pd.DataFrame) and list(df.columns) == ["base", "expert", "new"]
    assert df.index.name == "layer" and list(df.index) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="2 model names"):
        weights_frame(layer_weights(SIMS), ["a", "b"])
    with pytest.raises(ValueError, match="distinct"):
        weights_frame(layer_weights(SIMS), ["a", "a", "b"])
