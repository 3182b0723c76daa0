"""Exact McNemar, bootstrap p-values and Holm's step-down correction, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from recall.stats import bootstrap_pvalues, holm, mcnemar


def test_mcnemar_exact_by_hand():
    # 4 discordant examples, all won by a: P(X >= 4 | n=4, 1/2) = 1/16; two-sided 1/8 (the SMS case of issue 10)
    a = [1, 1, 1, 1, 0, 1, 0]
    b = [0, 0, 0, 0, 0, 1, 0]
    r = mcnemar(a, b)
    assert (r["n_a"], r["n_b"]) == (4, 0)
    assert r["p_greater"] == pytest.approx(1 / 16) and r["p_less"] == 1.0
    assert r["p_two_sided"] == pytest.approx(0.125)
    assert mcnemar([1, 0], [1, 0])["p_two_sided"] == 1.0  # no discordant pair
    r = mcnemar([1, 1, 0], [0, 0, 1])  # 2 vs 1: P(X >= 2 | 3) = 4/8
    assert r["p_greater"] == pytest.approx(0.5) and r["p_less"] == pytest.approx(7 / 8)
    assert np.isnan(mcnemar([0.5, 1], [0, 1])["p_greater"])  # not 0/1: no exact test


def test_bootstrap_pvalues():
    boot = np.array([-0.03, -0.01, 0.0, 0.01, 0.02, 0.04, 0.05, 0.06, 0.07])
    p = bootstrap_pvalues(boot, margin=0.05)
    assert p["p_greater"] == pytest.approx((3 + 1) / 10)  # three replicates <= 0
    assert p["p_less"] == pytest.approx((7 + 1) / 10)  # seven replicates >= 0 (0.0 counts on both sides)
    assert p["p_equiv"] == pytest.approx((3 + 1) / 10)  # replicates >= 0.05: 3, <= -0.05: 0
    wide = bootstrap_pvalues(np.zeros((4, 2)), margin=0.01)
    assert wide["p_equiv"].tolist() == pytest.approx([0.2, 0.2])


@pytest.mark.parametrize("p,expected", [
    ([0.01, 0.04, 0.03], [0.03, 0.06, 0.06]),
    ([0.2, 0.001], [0.2, 0.002]),
    ([0.04, np.nan, 0.01], [0.04, np.nan, 0.02]),
    ([0.5, 0.6, 0.7], [1.0, 1.0, 1.0]),
])
def test_holm(p, expected):
    np.testing.assert_allclose(holm(p), expected)
