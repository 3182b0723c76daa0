"""The paper's claims and the rules that decide them from the results tables.

:func:`evaluate` reads the tables of one profile (``results/<profile>/``, other task orders in their
``order-*`` subfolders) and returns two tables: ``claims`` (one row per claim: verdict and the evidence
that drives it) and ``claim_comparisons`` (every comparison that enters a verdict, or is shown beside
it). Notebook ``07_claims`` writes them; the book renders them. Each claim's rule is the docstring of
its rule function (``RULES``): stated once, here.

A comparison is an interval of (RECALL minus other) or (variant minus default):

- **supported** when it lies entirely on the side the claim predicts (``better``: higher or lower),
- **refuted** when it lies entirely on the other side,
- **inconclusive** when it contains 0,
- **not run** when the profile did not run that baseline (it is listed, never dropped silently).

A claim with several comparisons is **supported** when every comparison that ran is supported,
**refuted** when at least one is refuted, otherwise **inconclusive**; **not run in this profile**
without any comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .catalog import label, merge_baselines, sequential_baselines
from .tables import MEAN, Source, ci_text

NOT_RUN = "not run in this profile"
VERDICTS = ("supported", "refuted", "inconclusive", "not run")

CLAIMS = {
    "C1": "Across models fine-tuned from one base on different tasks, shallow layers stay similar and deep layers "
          "diverge.",
    "C2": "In multi-model merging, RECALL beats the merging baselines on the training tasks.",
    "C3": "In sequential fine-tuning, RECALL forgets less than sequential LoRA fine-tuning (SFT) and EWC.",
    "C4": "RECALL generalizes better: it beats the merging baselines on unseen tasks.",
    "C5": "Typical samples chosen by clustering (KMeans) work better than random samples.",
}
# The paper's reported numbers (notes section 1; arXiv 2510.20479 as summarised): other models, other tasks.
PAPER = {
    "C1": "qualitative (no number)",
    "C2": "56.93 and 62.83 (multi-model merging, averages on the two backbones)",
    "C3": "+6.28% and +7.86% (average gains over baselines in sequential fine-tuning)",
    "C4": "38.92 (+7.86%) (generalization to unseen tasks)",
    "C5": "qualitative (no number)",
}
COMPARISON_COLUMNS = ("claim", "source", "comparison", "scope", "metric", "better", "estimate", "low", "high",
                      "verdict", "in_verdict")
CLAIM_COLUMNS = ("claim", "statement", "verdict", "evidence", "paper")


def verdict(low, high, better: str = "higher") -> str:
    """supported / refuted / inconclusive from the interval of a difference, or "not run" without one."""
    try:
        lo, hi = float(low), float(high)
    except (TypeError, ValueError):
        return "not run"
    if math.isnan(lo) or math.isnan(hi):
        return "not run"
    if better == "higher":
        return "supported" if lo > 0 else "refuted" if hi < 0 else "inconclusive"
    return "supported" if hi < 0 else "refuted" if lo > 0 else "inconclusive"


def combine(verdicts: Sequence[str]) -> str:
    """A claim's verdict from its comparisons' (see the module docstring)."""
    ran = [v for v in verdicts if v != "not run"]
    if not ran:
        return NOT_RUN
    if "refuted" in ran:
        return "refuted"
    return "supported" if all(v == "supported" for v in ran) else "inconclusive"


@dataclass
class Outcome:
    verdict: str
    evidence: str
    comparisons: list[dict]


def _row(claim, source, comparison, scope, metric, better, r, in_verdict=True) -> dict:
    est, lo, hi = (None, None, None) if r is None else (r["estimate"], r["low"], r["high"])
    v = verdict(lo, hi, better) if r is not None else "not run"
    return {"claim": claim, "source": source, "comparison": comparison, "scope": scope, "metric": metric,
            "better": better, "estimate": est, "low": lo, "high": hi, "verdict": v, "in_verdict": in_verdict}


def _counts(rows: list[dict], what: str) -> str:
    vs = [r["verdict"] for r in rows if r["in_verdict"]]
    text = (f"{vs.count('supported')} supported, {vs.count('refuted')} refuted, {vs.count('inconclusive')} "
            f"inconclusive of {len(vs)} {what}")
    if "not run" in vs:
        text += f" ({vs.count('not run')} not run: " + ", ".join(
            r["comparison"] for r in rows if r["in_verdict"] and r["verdict"] == "not run") + ")"
    return text


def _mean_accuracy(table: pd.DataFrame | None) -> str:
    if table is None:
        return NOT_RUN
    r = table[(table["method"] == "recall") & (table["task"] == MEAN)]
    return NOT_RUN if r.empty else f"RECALL mean accuracy {ci_text(*r.iloc[0][['estimate', 'low', 'high']])}"


def rule_c1(src: Source) -> Outcome:
    """From ``c1_summary`` (measure ``rbf``, the paper's kernel; transformer blocks 1..L): **supported** if the
    Spearman correlation between depth and the mean similarity between experts is below 0 and the interval of
    (mean similarity over the first third of the blocks minus the last third) lies entirely above 0; **refuted**
    if the correlation is above 0 and that interval lies entirely below 0; otherwise **inconclusive**. (Intervals
    resample expert pairs.)"""
    c1 = src.get("c1_summary")
    if c1 is None:
        return Outcome(NOT_RUN, NOT_RUN, [])

    def stat(measure, name):
        r = c1[(c1["measure"] == measure) & (c1["statistic"] == name)]
        return None if r.empty else r.iloc[0]

    rows = [_row("C1", "c1_summary", f"{measure}: {name}", "blocks 1..L", name, "lower" if name == "spearman_depth"
                 else "higher", stat(measure, name), in_verdict=measure == "rbf")
            for measure in pd.unique(c1["measure"]) for name in ("spearman_depth", "first_minus_last")]
    rho, dfl = stat("rbf", "spearman_depth"), stat("rbf", "first_minus_last")
    if rho is None or dfl is None:
        return Outcome("inconclusive", "rbf statistics missing", rows)
    r, lo, hi = float(rho["estimate"]), float(dfl["low"]), float(dfl["high"])
    if math.isnan(r) or math.isnan(lo) or math.isnan(hi):
        v = "inconclusive"
    elif r < 0 and lo > 0:
        v = "supported"
    elif r > 0 and hi < 0:
        v = "refuted"
    else:
        v = "inconclusive"
    for row in rows:  # the rule reads the correlation's sign and the difference's interval
        if row["in_verdict"] and row["metric"] == "spearman_depth":
            row["verdict"] = "supported" if r < 0 else "refuted" if r > 0 else "inconclusive"
    ev = (f"rbf: Spearman(depth, similarity) = {ci_text(rho['estimate'], rho['low'], rho['high'], 1, 2)}; "
          f"first third minus last third = {ci_text(dfl['estimate'], dfl['low'], dfl['high'], 1, 3)}")
    return Outcome(v, ev, rows)


def _merge_claim(claim: str, src: Source, scope: str, accuracy: str) -> Outcome:
    md = src.get("multi_diff")
    if md is None:
        return Outcome(NOT_RUN, NOT_RUN, [])
    sub = md[(md["scope"] == scope) & (md["task"] == MEAN)]
    rows = []
    for other in merge_baselines():  # every registered baseline: one not run is listed, never dropped
        r = sub[sub["other"] == other]
        rows.append(_row(claim, "multi_diff", f"RECALL - {label(other)}", scope, "accuracy", "higher",
                         None if r.empty else r.iloc[0]))
    if claim == "C4":
        sd = src.get("single_diff")
        if sd is not None:
            s = sd[(sd["scope"] == "unseen tasks") & (sd["task"] == MEAN)]
            for other in merge_baselines():
                r = s[s["other"] == other]
                if not r.empty:
                    rows.append(_row(claim, "single_diff", f"RECALL - {label(other)}", "single-model, unseen",
                                     "accuracy", "higher", r.iloc[0], in_verdict=False))
    ev = f"{_counts(rows, 'baselines')}; {_mean_accuracy(src.get(accuracy))}"
    return Outcome(combine([r["verdict"] for r in rows if r["in_verdict"]]), ev, rows)


def rule_c2(src: Source) -> Outcome:
    """From ``multi_diff`` (training tasks, task mean): for each registered merging baseline, the paired
    difference RECALL minus baseline; combined over the baselines as stated above."""
    return _merge_claim("C2", src, "training tasks", "multi_train")


def rule_c4(src: Source) -> Outcome:
    """From ``multi_diff`` (unseen tasks, task mean), as for C2: RECALL minus each merging baseline. The
    single-model comparison on unseen tasks (``single_diff``) is shown beside it but does not enter the verdict."""
    return _merge_claim("C4", src, "unseen tasks", "multi_unseen")


def rule_c3(src: Source) -> Outcome:
    """From ``seq_diff`` (the profile's task order and every other order run): RECALL minus SFT and RECALL minus
    EWC in forgetting (lower is better) and in BWT (higher is better), combined as stated above. AP is shown but
    does not enter the verdict."""
    rows = []
    for sd in [None, *src.subdirs("order-")]:
        d = src.get("seq_diff", sd)
        if d is None or not len(d):
            continue
        where = "profile order" if sd is None else sd.removeprefix("order-").replace("-", ">")
        for other in sequential_baselines():
            for metric, better in (("forgetting", "lower"), ("BWT", "higher"), ("AP", "higher")):
                r = d[(d["other"] == other) & (d["metric"] == metric)]
                rows.append(_row("C3", "seq_diff" if sd is None else f"{sd}/seq_diff", f"RECALL - {label(other)}",
                                 where, metric, better, None if r.empty else r.iloc[0], in_verdict=metric != "AP"))
    if not rows:
        return Outcome(NOT_RUN, NOT_RUN, [])
    ours = NOT_RUN
    sm = src.get("seq_metrics")
    if sm is not None:
        ap = sm[sm["metric"] == "AP"].set_index("method")["estimate"]
        if "recall" in ap:
            gains = [f"{(ap['recall'] - ap[o]) / ap[o] * 100:+.2f}% vs {label(o)}" for o in sequential_baselines()
                     if o in ap and ap[o] > 0]
            ours = f"RECALL AP {ap['recall'] * 100:.1f}" + (f" ({', '.join(gains)}, relative)" if gains else "")
    return Outcome(combine([r["verdict"] for r in rows if r["in_verdict"]]), f"{_counts(rows, 'comparisons')}; {ours}",
                   rows)


def rule_c5(src: Source) -> Outcome:
    """From ``ablation_diff`` (task mean): the paired difference random samples minus default (KMeans) is
    **supported** if its interval lies entirely below 0, **refuted** if entirely above 0, else inconclusive."""
    ad = src.get("ablation_diff")
    if ad is None:
        return Outcome(NOT_RUN, NOT_RUN, [])
    r = ad[(ad["variant"] == "random_samples") & (ad["task"] == MEAN)]
    if r.empty:
        return Outcome(NOT_RUN, "the profile's ablations do not include `random_samples`", [])
    row = _row("C5", "ablation_diff", "random samples - KMeans", "training tasks", "accuracy", "lower", r.iloc[0])
    ev = f"random samples minus KMeans (default), task mean: {ci_text(row['estimate'], row['low'], row['high'])} points"
    v = row["verdict"]
    return Outcome(NOT_RUN if v == "not run" else v, ev, [row])


RULES: dict[str, Callable[[Source], Outcome]] = {"C1": rule_c1, "C2": rule_c2, "C3": rule_c3, "C4": rule_c4,
                                                 "C5": rule_c5}


def rule_text(claim: str) -> str:
    """The rule of ``claim``: its rule function's docstring, on one line."""
    return " ".join(RULES[claim].__doc__.split())


def evaluate(folder: str | Path) -> dict[str, pd.DataFrame]:
    """The ``claims`` and ``claim_comparisons`` tables of the results in ``folder``."""
    src = Source(folder)
    summary, comparisons = [], []
    for claim, rule in RULES.items():
        out = rule(src)
        summary.append({"claim": claim, "statement": CLAIMS[claim], "verdict": out.verdict, "evidence": out.evidence,
                        "paper": PAPER[claim]})
        comparisons += out.comparisons
    return {"claims": pd.DataFrame(summary, columns=CLAIM_COLUMNS),
            "claim_comparisons": pd.DataFrame(comparisons, columns=COMPARISON_COLUMNS)}


__all__ = ["CLAIMS", "PAPER", "RULES", "VERDICTS", "NOT_RUN", "verdict", "combine", "evaluate", "rule_text"]
