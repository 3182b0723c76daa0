"""The paper's claims and the pre-registered rules that decide them from the results tables.

:func:`evaluate` reads the tables of one profile (``results/<profile>/``; other task orders and seeds in
their subfolders) and returns ``claims`` (one row per claim: verdict, evidence and the facts that drive
it) and ``claim_comparisons`` (every comparison a verdict rests on, or shown beside it). Notebook
``07_claims`` writes them; the book renders them. Each claim's rule is the docstring of its rule
function (``RULES``); the thresholds below were fixed in the code before the run that they judge.

**One comparison** is a paired difference (RECALL minus another method, or a variant minus the
default) with its tests (``recall.tables``: bootstrap p-values, two one-sided tests within
``EQUIVALENCE_MARGIN``, exact McNemar where the scores are 0/1). Its outcome, at family-wise level
``ALPHA`` with Holm's correction over the comparisons of the same claim:

- **supported**: the difference lies on the side the claim predicts (one-sided; where an exact
  McNemar test exists the larger of its p-value and the bootstrap's counts, so a difference that rests
  on a handful of discordant examples is not enough);
- **refuted**: it lies on the other side;
- **equivalent**: it lies within +-``EQUIVALENCE_MARGIN`` (TOST);
- **identical**: not a single prediction differs (the comparison could not differ);
- **inconclusive**: none of these; **not run**: the profile did not run it (listed, never dropped).

**A claim** combines its comparisons symmetrically: **supported**, **refuted**, **equivalent** or
**identical** when every comparison that ran has that outcome; **inconclusive** when none is decided;
**mixed** otherwise (some decided, not all the same way: the drivers say which way each went);
**not run in this profile** without comparisons. Task-mean comparisons also report their leave-one-task-out
sensitivity: the outcome with each task left out of the mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .catalog import label, merge_baselines, merge_controls, sequential_baselines
from .cl_metrics import LEAVE_OUT
from .stats import holm
from .tables import EQUIVALENCE_MARGIN, MEAN, Source, ci_text

ALPHA = 0.05  # family-wise error rate of each claim's comparisons (Holm)
MIN_DEPTH_RATIO = 2.0  # C1: deep blocks diverge at least twice as much as shallow ones (a doubling)
MIN_TASK_RATIO = 2.0  # C1: experts of different tasks diverge at least twice as much as two seeds of one task
NOT_RUN = "not run in this profile"
OUTCOMES = ("supported", "refuted", "equivalent", "identical", "inconclusive", "not run")

CLAIMS = {
    "C1": "Across models fine-tuned from one base on different tasks, shallow layers stay similar and deep layers "
          "diverge.",
    "C2": "In multi-model merging, RECALL beats the merging baselines on the training tasks.",
    "C3": "In sequential fine-tuning, RECALL forgets less than sequential LoRA fine-tuning (SFT) and EWC and "
          "performs better after the last task.",
    "C4": "RECALL generalizes better: it beats the merging baselines on unseen tasks.",
    "C5": "Typical samples chosen by clustering (KMeans) work better than random samples.",
}
# The paper's reported numbers (notes section 1; arXiv 2510.20479 as summarised): other models, other tasks.
PAPER = {
    "C1": "qualitative (no number)",
    "C2": "56.93 and 62.83 (multi-model merging, averages on the two backbones)",
    "C3": "+6.28% and +7.86% (average gains over baselines in sequential fine-tuning, as third-party summaries "
          "quote them; the same +7.86% is quoted for unseen-task generalization, C4)",
    "C4": "38.92 (+7.86%) (unseen-task generalization, as third-party summaries quote it; the same +7.86% is quoted "
          "among the sequential fine-tuning gains, C3)",
    "C5": "qualitative (no number)",
}
COMPARISON_COLUMNS = ("claim", "source", "comparison", "scope", "metric", "better", "estimate", "low", "high",
                      "p_support", "p_refute", "p_equiv", "verdict", "in_verdict", "leave_one_task_out")
CLAIM_COLUMNS = ("claim", "statement", "verdict", "evidence", "drivers", "paper")


# ------------------------------------------------------------------------------------------- outcomes


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _p(row, side: str) -> float:
    """The p-value of one side ("greater" / "less") of a difference row: the larger of the bootstrap's and the
    exact test's where both exist."""
    boot, exact = _num(row.get(f"p_{side}")), _num(row.get(f"p_exact_{side}"))
    return boot if math.isnan(exact) else max(boot, exact)


@dataclass
class Comparison:
    claim: str
    source: str
    comparison: str
    scope: str
    metric: str
    better: str  # "higher" or "lower": the side the claim predicts
    row: dict | None  # the difference row (None: not run)
    in_verdict: bool = True
    loto: list[tuple[str, dict]] = field(default_factory=list)  # (left-out task, row)
    verdict: str = "not run"
    adjusted: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    loto_text: str = ""

    def raw(self, row=None) -> tuple[float, float, float]:
        """(p support, p refute, p equivalence) before the correction."""
        r = self.row if row is None else row
        if r is None:
            return math.nan, math.nan, math.nan
        up, down = ("greater", "less") if self.better == "higher" else ("less", "greater")
        return _p(r, up), _p(r, down), _num(r.get("p_equiv"))

    def identical(self, row=None) -> bool:
        r = self.row if row is None else row
        return r is not None and _num(r.get("n_a")) == 0 and _num(r.get("n_b")) == 0

    def as_dict(self) -> dict:
        r = self.row or {}
        return {"claim": self.claim, "source": self.source, "comparison": self.comparison, "scope": self.scope,
                "metric": self.metric, "better": self.better, "estimate": r.get("estimate"), "low": r.get("low"),
                "high": r.get("high"), "p_support": self.adjusted[0], "p_refute": self.adjusted[1],
                "p_equiv": self.adjusted[2], "verdict": self.verdict, "in_verdict": self.in_verdict,
                "leave_one_task_out": self.loto_text}


def _outcome(adjusted: tuple[float, float, float], identical: bool) -> str:
    sup, ref, eq = adjusted
    if identical:
        return "identical"
    if sup < ALPHA:
        return "supported"
    if ref < ALPHA:
        return "refuted"
    if eq < ALPHA:
        return "equivalent"
    return "inconclusive" if not math.isnan(sup) else "not run"


def decide(comps: list[Comparison]) -> None:
    """Set every comparison's outcome: Holm over the family (the claim's comparisons in its verdict), separately
    for the support, refutation and equivalence hypotheses; the others are judged on their own. Then the
    leave-one-task-out outcomes: each left-out task's row replaces the comparison's own in the same family."""
    family = [c for c in comps if c.in_verdict and c.row is not None]
    raws = np.array([c.raw() for c in family]).reshape(-1, 3)
    adj = np.column_stack([holm(raws[:, j]) for j in range(3)]) if len(family) else raws
    for c, a in zip(family, adj):
        c.adjusted = tuple(float(x) for x in a)
        c.verdict = _outcome(c.adjusted, c.identical())
    for c in comps:
        if c.row is not None and not c.in_verdict:
            c.adjusted = c.raw()
            c.verdict = _outcome(c.adjusted, c.identical())
    for i, c in enumerate(family):
        flips = []
        for task, row in c.loto:
            trial = raws.copy()
            trial[i] = c.raw(row)
            a = np.column_stack([holm(trial[:, j]) for j in range(3)])[i]
            v = _outcome(tuple(a), c.identical(row))
            if v != c.verdict:
                flips.append(f"without {task}: {v}")
        c.loto_text = ("; ".join(flips) if flips else "stable") if c.loto else ""


def combine(verdicts: list[str]) -> str:
    """A claim's outcome from its comparisons' (see the module docstring)."""
    ran = [v for v in verdicts if v != "not run"]
    if not ran:
        return NOT_RUN
    if len(set(ran)) == 1:
        return ran[0]
    return "mixed"


def drivers_text(comps: list[Comparison]) -> str:
    """Which comparisons went which way, and which verdicts hang on one task."""
    parts = []
    for outcome in OUTCOMES:
        names = [c.comparison + ("" if c.metric == "accuracy" or c.comparison.endswith(c.metric) else f" {c.metric}")
                 for c in comps if c.in_verdict and c.verdict == outcome]
        if names:
            parts.append(f"{outcome}: {', '.join(names)}")
    fragile = [f"{c.comparison} ({c.loto_text})" for c in comps
               if c.in_verdict and c.loto_text not in ("", "stable")]
    if fragile:
        parts.append("depends on one task: " + "; ".join(fragile))
    return ". ".join(parts)


@dataclass
class Outcome:
    verdict: str
    evidence: str
    comparisons: list[Comparison]
    facts: list[str] = field(default_factory=list)


def _row(df: pd.DataFrame | None, **match) -> dict | None:
    if df is None:
        return None
    sel = df
    for k, v in match.items():
        sel = sel[sel[k] == v]
    return None if sel.empty else sel.iloc[0].to_dict()


def _loto(df: pd.DataFrame, **match) -> list[tuple[str, dict]]:
    sel = df
    for k, v in match.items():
        if k != "task":
            sel = sel[sel[k] == v]
    sel = sel[sel["task"].astype(str).str.startswith(LEAVE_OUT)]
    return [(str(r["task"]).removeprefix(LEAVE_OUT), r.to_dict()) for _, r in sel.iterrows()]


def _mean_accuracy(table: pd.DataFrame | None) -> str:
    r = _row(table, method="recall", task=MEAN)
    return NOT_RUN if r is None else f"RECALL mean accuracy {ci_text(r['estimate'], r['low'], r['high'])}"


def _weights_fact(src: Source) -> list[str]:
    """How far RECALL's multi-model weights are from uniform, and which model holds the most weight where they are
    farthest: far from uniform, RECALL is not averaging; at uniform it is."""
    w = src.get("multi_recall_weights")
    if w is None or w.empty:
        return []
    x = w.to_numpy(dtype=float)
    dev = np.abs(x - 1.0 / w.shape[1]).max(axis=1)  # per layer
    i = int(dev.argmax())
    top = int(x[i].argmax())
    major = int((x.max(axis=1) > 0.5).sum())
    return [f"RECALL's multi-model weights depart from uniform (1/{w.shape[1]}) by up to {float(dev.max()):.3f}: "
            f"at layer {w.index[i]} {w.columns[top]} takes {x[i, top]:.3f}; one model takes more than half "
            f"at {major} of {len(w)} layers"]


def _tally(comps: list[Comparison], what: str) -> str:
    vs = [c.verdict for c in comps if c.in_verdict]
    counts = ", ".join(f"{vs.count(o)} {o}" for o in OUTCOMES if vs.count(o))
    return f"{counts} of {len(vs)} {what}"


# ---------------------------------------------------------------------------------------------- rules


def rule_c1(src: Source) -> Outcome:
    """From ``c1_summary`` (transformer blocks 1..L; intervals resample the probe samples and the experts), for each
    measure: **supported** if the interval of the Spearman correlation between depth and the cross-task
    similarity lies below 0, the interval of the depth ratio D(last third) / D(first third) (D = 1 - similarity)
    lies above ``MIN_DEPTH_RATIO`` = 2, and the interval of the task ratio D_cross / D_same-task-null over the last
    third lies above ``MIN_TASK_RATIO`` = 2 (two seeds of one task are the null); **refuted** if the correlation's
    interval lies above 0, or the interval of either ratio lies below 1; otherwise **inconclusive**. The claim's
    verdict is that of ``rbf`` (the paper's kernel); linear CKA is the robustness check: if it gives the opposite
    verdict, the claim is inconclusive."""
    c1 = src.get("c1_summary")
    if c1 is None:
        return Outcome(NOT_RUN, NOT_RUN, [])
    comps, per_measure = [], {}
    for measure in pd.unique(c1["measure"]):
        get = {s: _row(c1, measure=measure, statistic=s) for s in ("spearman_depth", "depth_ratio", "task_ratio")}
        rows = [(s, "lower" if s == "spearman_depth" else "higher", get[s]) for s in get]
        lo = {s: _num(r["low"]) if r else math.nan for s, _, r in rows}
        hi = {s: _num(r["high"]) if r else math.nan for s, _, r in rows}
        if any(math.isnan(lo[s]) for s in get):
            v = "inconclusive"
        elif hi["spearman_depth"] < 0 and lo["depth_ratio"] > MIN_DEPTH_RATIO and lo["task_ratio"] > MIN_TASK_RATIO:
            v = "supported"
        elif lo["spearman_depth"] > 0 or hi["depth_ratio"] < 1 or hi["task_ratio"] < 1:
            v = "refuted"
        else:
            v = "inconclusive"
        per_measure[measure] = v
        for s, better, r in rows:
            c = Comparison("C1", "c1_summary", f"{measure}: {s}", "blocks 1..L", s, better, r,
                           in_verdict=measure == "rbf")
            c.verdict = v  # a measure's statistics are judged together
            comps.append(c)
    v = per_measure.get("rbf", "inconclusive")
    if {v, per_measure.get("cka_linear")} == {"supported", "refuted"}:
        v = "inconclusive"
    facts = []
    for measure, mv in per_measure.items():
        d, t = _row(c1, measure=measure, statistic="depth_ratio"), _row(c1, measure=measure, statistic="task_ratio")
        if d and t:
            facts.append(f"{measure} ({mv}): deep blocks diverge {ci_text(d['estimate'], d['low'], d['high'], 1, 2)}"
                         f" times as much as shallow ones, experts of different tasks "
                         f"{ci_text(t['estimate'], t['low'], t['high'], 1, 2)} times as much as two seeds of one task")
    rho = _row(c1, measure="rbf", statistic="spearman_depth")
    ev = ("rbf: Spearman(depth, similarity) = " + ci_text(rho["estimate"], rho["low"], rho["high"], 1, 2)
          if rho else "rbf statistics missing")
    return Outcome(v, ev, comps, facts)


def _merge_claim(claim: str, src: Source, scope: str, accuracy: str) -> Outcome:
    md = src.get("multi_diff")
    if md is None:
        return Outcome(NOT_RUN, NOT_RUN, [])
    comps = []
    for other in merge_baselines():  # every registered baseline: one not run is listed, never dropped
        comps.append(Comparison(claim, "multi_diff", f"RECALL - {label(other)}", scope, "accuracy", "higher",
                                _row(md, scope=scope, task=MEAN, other=other), loto=_loto(md, scope=scope,
                                                                                          other=other)))
    for other in merge_controls():  # what RECALL's weights add over its pool, and over an order-free anchor
        r = _row(md, scope=scope, task=MEAN, other=other)
        if r is not None:
            comps.append(Comparison(claim, "multi_diff", f"RECALL - {label(other)}", scope, "accuracy", "higher", r,
                                    in_verdict=False))
    if claim == "C4":
        sd = src.get("single_diff")
        for other in merge_baselines() if sd is not None else ():
            r = _row(sd, scope="unseen tasks", task=MEAN, other=other)
            if r is not None:
                comps.append(Comparison(claim, "single_diff", f"RECALL - {label(other)}", "single-model, unseen",
                                        "accuracy", "higher", r, in_verdict=False))
    decide(comps)
    verdict = combine([c.verdict for c in comps if c.in_verdict])
    return Outcome(verdict, f"{_tally(comps, 'baselines')}; {_mean_accuracy(src.get(accuracy))}", comps,
                   _weights_fact(src))


def rule_c2(src: Source) -> Outcome:
    """From ``multi_diff`` (training tasks, task mean): RECALL minus each registered merging baseline, the claim
    predicting higher; outcomes and their combination as stated above (Holm over the baselines). RECALL minus
    each control (uniform weights over RECALL's own pool: what the weights add; each expert as M_N in turn) is
    shown beside them, uncorrected, and does not enter the verdict."""
    return _merge_claim("C2", src, "training tasks", "multi_train")


def rule_c4(src: Source) -> Outcome:
    """From ``multi_diff`` (unseen tasks, task mean), as for C2. The single-model comparison on unseen tasks
    (``single_diff``) is shown beside it, uncorrected, and does not enter the verdict."""
    return _merge_claim("C4", src, "unseen tasks", "multi_unseen")


def rule_c3(src: Source) -> Outcome:
    """From ``seq_diff_pooled`` (every chain of the profile: task orders and seeds pooled with a nested bootstrap):
    RECALL minus SFT and RECALL minus EWC in AP (higher is better: the paper's performance gain), BWT (higher)
    and forgetting (lower): six comparisons, Holm over all six, combined as stated above. The per-order
    differences (``seq_diff``) and RECALL minus the controls (``uniform``: the fixed-0.5 average chain over the
    same {current, new} pool; ``recall_history``) are shown beside them and do not enter the verdict."""
    pooled = src.get("seq_diff_pooled")
    comps = []
    metrics = (("AP", "higher"), ("BWT", "higher"), ("forgetting", "lower"))
    if pooled is not None and len(pooled):
        n = int(pooled["n_chains"].iloc[0])
        for other in sequential_baselines():
            for metric, better in metrics:
                comps.append(Comparison("C3", "seq_diff_pooled", f"RECALL - {label(other)}", f"{n} chain(s) pooled",
                                        metric, better, _row(pooled, other=other, metric=metric)))
        for other in merge_controls():  # the fixed-0.5 chain over the same pool; the history pool
            for metric, better in metrics:
                r = _row(pooled, other=other, metric=metric)
                if r is not None:
                    comps.append(Comparison("C3", "seq_diff_pooled", f"RECALL - {label(other)}",
                                            f"{n} chain(s) pooled", metric, better, r, in_verdict=False))
    for sd in [None, *src.subdirs("order-")]:
        d = src.get("seq_diff", sd)
        if d is None or not len(d):
            continue
        where = "profile order" if sd is None else sd.removeprefix("order-").replace("-", ">")
        for other in sequential_baselines():
            for metric, better in metrics:
                comps.append(Comparison("C3", "seq_diff" if sd is None else f"{sd}/seq_diff",
                                        f"RECALL - {label(other)}", where, metric, better,
                                        _row(d, other=other, metric=metric), in_verdict=False))
    if not comps:
        return Outcome(NOT_RUN, NOT_RUN, [])
    decide(comps)
    ours = NOT_RUN
    sm = src.get("seq_metrics")
    if sm is not None:
        ap = sm[sm["metric"] == "AP"].set_index("method")["estimate"]
        if "recall" in ap:
            gains = [f"{(ap['recall'] - ap[o]) / ap[o] * 100:+.2f}% vs {label(o)}" for o in sequential_baselines()
                     if o in ap and ap[o] > 0]
            ours = f"RECALL AP {ap['recall'] * 100:.1f}" + (f" ({', '.join(gains)}, relative)" if gains else "")
    verdict = combine([c.verdict for c in comps if c.in_verdict])
    facts = [f"pooled over {int(pooled['n_chains'].iloc[0])} chain(s)"] if pooled is not None and len(pooled) else []
    ran = set(pooled["other"]) if pooled is not None and len(pooled) else set()
    facts += [f"{label(o)} was not run in this profile: that part of the claim is untested" for o in
              sequential_baselines() if ran and o not in ran]
    return Outcome(verdict, f"{_tally(comps, 'comparisons')}; {ours}", comps, facts)


def rule_c5(src: Source) -> Outcome:
    """From ``ablation_diff`` (task mean): random samples minus the default (KMeans), the claim predicting lower;
    one comparison, its outcome as stated above (identical when no prediction differs)."""
    ad = src.get("ablation_diff")
    if ad is None:
        return Outcome(NOT_RUN, NOT_RUN, [])
    r = _row(ad, variant="random_samples", task=MEAN)
    if r is None:
        return Outcome(NOT_RUN, "the profile's ablations do not include `random_samples`", [])
    c = Comparison("C5", "ablation_diff", "random samples - KMeans", "training tasks", "accuracy", "lower", r,
                   loto=_loto(ad, variant="random_samples"))
    decide([c])
    n = int(_num(r.get("n")))
    differ = int(_num(r.get("n_a")) + _num(r.get("n_b"))) if not math.isnan(_num(r.get("n_a"))) else None
    facts = [f"{differ} of {n} test predictions differ between the two selections"] if differ is not None else []
    ev = f"random samples minus KMeans (default), task mean: {ci_text(r['estimate'], r['low'], r['high'])} points"
    return Outcome(c.verdict, ev, [c], facts)


RULES: dict[str, Callable[[Source], Outcome]] = {"C1": rule_c1, "C2": rule_c2, "C3": rule_c3, "C4": rule_c4,
                                                 "C5": rule_c5}


def rule_text(claim: str) -> str:
    """The rule of ``claim``: its rule function's docstring, on one line."""
    return " ".join(RULES[claim].__doc__.split())


def evaluate(folder: str | Path, seq_pooled: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """The ``claims`` and ``claim_comparisons`` tables of the results in ``folder`` (``seq_pooled``: the
    ``seq_diff_pooled`` table when it is not written there yet)."""
    src = Source(folder)
    if seq_pooled is not None:
        src.extra["seq_diff_pooled"] = seq_pooled
    summary, comparisons = [], []
    for claim, rule in RULES.items():
        out = rule(src)
        drivers = "; ".join(out.facts + ([drivers_text(out.comparisons)] if out.comparisons else []))
        summary.append({"claim": claim, "statement": CLAIMS[claim], "verdict": out.verdict, "evidence": out.evidence,
                        "drivers": drivers, "paper": PAPER[claim]})
        comparisons += [c.as_dict() for c in out.comparisons]
    return {"claims": pd.DataFrame(summary, columns=CLAIM_COLUMNS),
            "claim_comparisons": pd.DataFrame(comparisons, columns=COMPARISON_COLUMNS)}


__all__ = ["ALPHA", "EQUIVALENCE_MARGIN", "MIN_DEPTH_RATIO", "MIN_TASK_RATIO", "CLAIMS", "PAPER", "RULES",
           "OUTCOMES", "NOT_RUN", "decide", "combine", "evaluate", "rule_text"]
