"""Claim verdicts (recall.claims) on synthetic results tables that hit every outcome, Holm's step and the
leave-one-task-out sensitivity."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from recall import claims
from recall.catalog import label, merge_baselines, sequential_baselines
from recall.claims import Comparison, combine, decide


def _write(folder, name, df):
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / f"{name}.csv", index=False)


def _diff(p_greater=0.5, p_less=0.5, p_equiv=0.5, n_a=5, n_b=5, exact=(math.nan, math.nan), est=0.0, **kw):
    return {"estimate": est, "low": est - 0.01, "high": est + 0.01, "n": 100, "p_greater": p_greater,
            "p_less": p_less, "p_equiv": p_equiv, "n_a": n_a, "n_b": n_b, "p_exact_greater": exact[0],
            "p_exact_less": exact[1], **kw}


def _cmp(row, better="higher", in_verdict=True, loto=()):
    return Comparison("C2", "multi_diff", "x", "training tasks", "accuracy", better, row, in_verdict, list(loto))


@pytest.mark.parametrize("row,better,expected", [
    (_diff(p_greater=0.001), "higher", "supported"),
    (_diff(p_less=0.001), "higher", "refuted"),
    (_diff(p_less=0.001), "lower", "supported"),  # forgetting: lower is the claim's side
    (_diff(p_equiv=0.001), "higher", "equivalent"),
    (_diff(n_a=0, n_b=0, p_equiv=0.001), "higher", "identical"),  # nothing differs: not evidence of anything
    (_diff(), "higher", "inconclusive"),
    (_diff(p_greater=0.001, exact=(0.125, 1.0)), "higher", "inconclusive"),  # 4 discordant examples are not enough
    (None, "higher", "not run"),
])
def test_outcome_of_one_comparison(row, better, expected):
    c = _cmp(row, better)
    decide([c])
    assert c.verdict == expected


@pytest.mark.parametrize("raw,expected", [
    ((0.01, 0.02, 0.04), ["supported", "supported", "supported"]),  # Holm: 0.03, 0.04, 0.04
    ((0.01, 0.03, 0.04), ["supported", "inconclusive", "inconclusive"]),  # Holm: 0.03, 0.06, 0.06
    ((0.02, 0.02, 0.02), ["inconclusive"] * 3),  # Holm: 0.06 each; unadjusted all would pass
])
def test_holm_over_the_comparisons_of_a_claim(raw, expected):
    comps = [_cmp(_diff(p_greater=p)) for p in raw]
    decide(comps)
    assert [c.verdict for c in comps] == expected
    assert comps[0].adjusted[0] == pytest.approx(min(1.0, 3 * min(raw)))


def test_comparisons_beside_the_verdict_are_not_in_the_family():
    inside = [_cmp(_diff(p_greater=0.03))]
    beside = _cmp(_diff(p_greater=0.001), in_verdict=False)
    decide(inside + [beside])
    assert inside[0].verdict == "supported" and beside.verdict == "supported"  # family of one: 0.03 < 0.05


def test_leave_one_task_out_sensitivity():
    c = _cmp(_diff(p_greater=0.001), loto=[("sms", _diff(p_greater=0.2)), ("rt", _diff(p_greater=0.002))])
    decide([c])
    assert c.verdict == "supported" and c.loto_text == "without sms: inconclusive"


@pytest.mark.parametrize("verdicts,expected", [
    (["supported", "supported"], "supported"), (["refuted", "refuted"], "refuted"),
    (["equivalent", "not run"], "equivalent"), (["identical"], "identical"),
    (["inconclusive", "inconclusive"], "inconclusive"), (["supported", "inconclusive"], "mixed"),
    (["supported", "refuted"], "mixed"), (["refuted", "equivalent"], "mixed"), ([], claims.NOT_RUN),
    (["not run"], claims.NOT_RUN),
])
def test_combine_is_symmetric(verdicts, expected):
    assert combine(verdicts) == expected


def _multi_diff(rows_by_other, scopes=("training tasks", "unseen tasks")):
    out = []
    for other, row in rows_by_other.items():
        for scope in scopes:
            out.append({"task": "mean", **row, "scope": scope, "other": other})
            out.append({"task": "mean without sms", **_diff(p_greater=0.5), "scope": scope, "other": other})
    return pd.DataFrame(out)


def test_nothing_run_gives_not_run(tmp_path):
    out = claims.evaluate(tmp_path)
    assert list(out["claims"]["verdict"]) == [claims.NOT_RUN] * 5
    assert list(out["claims"]["claim"]) == list(claims.CLAIMS)
    assert out["claim_comparisons"].empty


def test_c2_c4_cover_every_registered_baseline_and_name_the_drivers(tmp_path):
    rows = {b: _diff(p_greater=0.001) for b in merge_baselines()}
    rows[merge_baselines()[0]] = _diff(p_equiv=0.001)
    _write(tmp_path, "multi_diff", _multi_diff(rows))
    out = claims.evaluate(tmp_path)
    c2 = out["claims"].set_index("claim").loc["C2"]
    assert c2["verdict"] == "mixed"
    assert f"equivalent: RECALL - {label(merge_baselines()[0])}" in c2["drivers"]
    assert "depends on one task" in c2["drivers"] and "without sms: inconclusive" in c2["drivers"]
    comp = out["claim_comparisons"]
    assert set(comp[comp["claim"] == "C2"]["comparison"]) == {f"RECALL - {label(b)}" for b in merge_baselines()}


def test_a_baseline_not_run_is_listed_not_dropped(tmp_path):
    ran = merge_baselines()[:-1]
    _write(tmp_path, "multi_diff", _multi_diff({b: _diff(p_greater=0.001) for b in ran}))
    out = claims.evaluate(tmp_path)
    assert out["claims"].set_index("claim").loc["C2", "verdict"] == "supported"
    comp = out["claim_comparisons"]
    missing = comp[(comp["claim"] == "C2") & (comp["verdict"] == "not run")]
    assert list(missing["comparison"]) == [f"RECALL - {label(merge_baselines()[-1])}"]
    assert "1 not run" in out["claims"].set_index("claim").loc["C2", "evidence"]


def test_c3_judges_ap_bwt_and_forgetting_together_pooled(tmp_path):
    rows = []
    for o in sequential_baselines():
        rows += [{"other": o, "metric": "AP", **_diff(p_less=0.001), "n_chains": 2},
                 {"other": o, "metric": "BWT", **_diff(p_greater=0.001), "n_chains": 2},
                 {"other": o, "metric": "forgetting", **_diff(p_less=0.001), "n_chains": 2}]
    _write(tmp_path, "seq_diff_pooled", pd.DataFrame(rows))
    out = claims.evaluate(tmp_path)
    c3 = out["claims"].set_index("claim").loc["C3"]
    assert c3["verdict"] == "mixed" and "refuted: RECALL - LoRA SFT AP" in c3["drivers"]
    assert "pooled over 2 chain(s)" in c3["drivers"]
    comp = out["claim_comparisons"]
    assert (comp[comp["claim"] == "C3"]["in_verdict"]).sum() == 6


def _c1(tmp_path, stats):
    rows = [{"measure": m, "statistic": s, "estimate": (lo + hi) / 2, "low": lo, "high": hi}
            for m, per in stats.items() for s, (lo, hi) in per.items()]
    df = pd.DataFrame(rows).assign(blocks=30, third=10, first_layers="1-10", last_layers="21-30", n_pairs=10,
                                   n_samples=30)
    _write(tmp_path, "c1_summary", df)
    return claims.evaluate(tmp_path)["claims"].set_index("claim").loc["C1", "verdict"]


SUPPORT = {"spearman_depth": (-0.8, -0.5), "depth_ratio": (2.5, 4.0), "task_ratio": (2.2, 5.0)}
REFUTE = {"spearman_depth": (0.2, 0.5), "depth_ratio": (0.5, 0.9), "task_ratio": (0.5, 0.8)}
WEAK = {"spearman_depth": (-0.8, -0.5), "depth_ratio": (1.5, 2.3), "task_ratio": (2.2, 5.0)}  # below the floor


@pytest.mark.parametrize("rbf,cka,expected", [
    (SUPPORT, SUPPORT, "supported"), (REFUTE, REFUTE, "refuted"), (WEAK, SUPPORT, "inconclusive"),
    (SUPPORT, REFUTE, "inconclusive"),  # the measures disagree
    (SUPPORT, WEAK, "supported"),
])
def test_c1(tmp_path, rbf, cka, expected):
    assert _c1(tmp_path, {"rbf": rbf, "cka_linear": cka}) == expected


@pytest.mark.parametrize("row,expected", [(_diff(p_less=0.001), "supported"), (_diff(p_greater=0.001), "refuted"),
                                          (_diff(n_a=0, n_b=0, p_equiv=0.001), "identical"),
                                          (_diff(p_equiv=0.001), "equivalent")])
def test_c5(tmp_path, row, expected):
    _write(tmp_path, "ablation_diff", pd.DataFrame([{"task": "mean", **row, "variant": "random_samples",
                                                     "difference": "variant - default"}]))
    out = claims.evaluate(tmp_path)["claims"].set_index("claim").loc["C5"]
    assert out["verdict"] == expected
    assert f"{row['n_a'] + row['n_b']} of 100 test predictions differ" in out["drivers"]


def test_rules_are_stated_once_in_the_rule_functions():
    for c in claims.CLAIMS:
        text = claims.rule_text(c)
        assert text and "\n" not in text
    assert "2" in claims.rule_text("C1") and claims.MIN_DEPTH_RATIO == 2.0


def test_the_weights_fact_says_how_far_from_uniform_and_who_holds_the_weight(tmp_path):
    w = pd.DataFrame({"layer": [0, 1, 2], "base": [0.5, 0.3, 0.05], "expert-a": [0.5, 0.7, 0.95]})
    _write(tmp_path, "multi_recall_weights", w)
    fact = claims._weights_fact(claims.Source(tmp_path))
    assert fact == ["RECALL's multi-model weights depart from uniform (1/2) by up to 0.450: at layer 2 expert-a "
                    "takes 0.950; one model takes more than half at 2 of 3 layers"]
