"""Claim verdicts (recall.claims) on synthetic results tables that hit every outcome."""

from __future__ import annotations

import pandas as pd
import pytest

from recall import claims
from recall.catalog import label, merge_baselines, sequential_baselines


def _write(folder, name, df):
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / f"{name}.csv", index=False)


def _diff_rows(others, scopes, low, high):
    return pd.DataFrame([{"task": "mean", "estimate": (low + high) / 2, "low": low, "high": high, "n": 10,
                          "scope": s, "other": o} for o in others for s in scopes])


@pytest.mark.parametrize("low,high,better,expected", [
    (0.01, 0.2, "higher", "supported"), (-0.2, -0.01, "higher", "refuted"), (-0.1, 0.1, "higher", "inconclusive"),
    (0.0, 0.0, "higher", "inconclusive"), (-0.2, -0.01, "lower", "supported"), (0.01, 0.2, "lower", "refuted"),
    (float("nan"), 0.1, "higher", "not run"), (None, None, "higher", "not run"),
])
def test_verdict_of_one_interval(low, high, better, expected):
    assert claims.verdict(low, high, better) == expected


@pytest.mark.parametrize("verdicts,expected", [
    (["supported", "supported"], "supported"), (["supported", "inconclusive"], "inconclusive"),
    (["supported", "refuted"], "refuted"), (["supported", "not run"], "supported"), ([], claims.NOT_RUN),
    (["not run"], claims.NOT_RUN),
])
def test_combine(verdicts, expected):
    assert claims.combine(verdicts) == expected


def test_nothing_run_gives_not_run(tmp_path):
    out = claims.evaluate(tmp_path)
    assert list(out["claims"]["verdict"]) == [claims.NOT_RUN] * 5
    assert list(out["claims"]["claim"]) == list(claims.CLAIMS)
    assert out["claim_comparisons"].empty


@pytest.mark.parametrize("low,high,expected", [(0.01, 0.05, "supported"), (-0.05, -0.01, "refuted"),
                                               (-0.01, 0.01, "inconclusive")])
def test_c2_c4_every_registered_baseline(tmp_path, low, high, expected):
    _write(tmp_path, "multi_diff", _diff_rows(merge_baselines(), ("training tasks", "unseen tasks"), low, high))
    out = claims.evaluate(tmp_path)
    v = out["claims"].set_index("claim")["verdict"]
    assert v["C2"] == v["C4"] == expected
    comp = out["claim_comparisons"]
    assert set(comp[comp["claim"] == "C2"]["comparison"]) == {f"RECALL - {label(b)}" for b in merge_baselines()}


def test_a_baseline_not_run_is_listed_not_dropped(tmp_path):
    ran = merge_baselines()[:-1]
    _write(tmp_path, "multi_diff", _diff_rows(ran, ("training tasks",), 0.01, 0.05))
    out = claims.evaluate(tmp_path)
    c2 = out["claims"].set_index("claim").loc["C2"]
    assert c2["verdict"] == "supported"
    assert f"1 not run: RECALL - {label(merge_baselines()[-1])}" in c2["evidence"]
    comp = out["claim_comparisons"]
    assert (comp[comp["claim"] == "C2"]["verdict"] == "not run").sum() == 1


def test_one_refuted_baseline_refutes(tmp_path):
    d = _diff_rows(merge_baselines(), ("training tasks",), 0.01, 0.05)
    d.loc[0, ["low", "high"]] = (-0.05, -0.01)
    _write(tmp_path, "multi_diff", d)
    assert claims.evaluate(tmp_path)["claims"].set_index("claim").loc["C2", "verdict"] == "refuted"


def _seq_diff(forgetting, bwt, ap=(-0.1, -0.05)):
    rows = []
    for o in sequential_baselines():
        for metric, (lo, hi) in (("forgetting", forgetting), ("BWT", bwt), ("AP", ap)):
            rows.append({"other": o, "metric": metric, "estimate": (lo + hi) / 2, "low": lo, "high": hi})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("forgetting,bwt,expected", [((-0.1, -0.01), (0.01, 0.1), "supported"),
                                                     ((0.01, 0.1), (0.01, 0.1), "refuted"),
                                                     ((-0.1, 0.1), (0.01, 0.1), "inconclusive")])
def test_c3_over_orders(tmp_path, forgetting, bwt, expected):
    _write(tmp_path, "seq_diff", _seq_diff(forgetting, bwt))
    _write(tmp_path / "order-b-a", "seq_diff", _seq_diff(forgetting, bwt))
    out = claims.evaluate(tmp_path)
    assert out["claims"].set_index("claim").loc["C3", "verdict"] == expected
    comp = out["claim_comparisons"]
    c3 = comp[comp["claim"] == "C3"]
    assert set(c3["scope"]) == {"profile order", "b>a"}
    assert not c3[c3["metric"] == "AP"]["in_verdict"].any()


@pytest.mark.parametrize("rho,low,high,expected", [(-0.5, 0.001, 0.01, "supported"), (0.5, -0.01, -0.001, "refuted"),
                                                   (-0.5, -0.01, 0.01, "inconclusive"),
                                                   (float("nan"), 0.01, 0.02, "inconclusive")])
def test_c1(tmp_path, rho, low, high, expected):
    rows = [{"measure": "rbf", "statistic": "spearman_depth", "estimate": rho, "low": rho - 0.1, "high": rho + 0.1},
            {"measure": "rbf", "statistic": "first_minus_last", "estimate": (low + high) / 2, "low": low,
             "high": high}]
    df = pd.DataFrame(rows).assign(blocks=30, third=10, first_layers="1-10", last_layers="21-30", n_pairs=10,
                                   n_samples=30)
    _write(tmp_path, "c1_summary", df)
    assert claims.evaluate(tmp_path)["claims"].set_index("claim").loc["C1", "verdict"] == expected


@pytest.mark.parametrize("low,high,expected", [(-0.1, -0.01, "supported"), (0.01, 0.1, "refuted"),
                                               (0.0, 0.0, "inconclusive")])
def test_c5(tmp_path, low, high, expected):
    _write(tmp_path, "ablation_diff", pd.DataFrame([{"task": "mean", "estimate": 0, "low": low, "high": high, "n": 9,
                                                     "variant": "random_samples", "difference": "variant - default"}]))
    assert claims.evaluate(tmp_path)["claims"].set_index("claim").loc["C5", "verdict"] == expected


def test_rules_are_stated_once_in_the_rule_functions():
    for c in claims.CLAIMS:
        text = claims.rule_text(c)
        assert text and "\n" not in text
        assert claims.RULES[c].__doc__.split()[0] == text.split()[0]
