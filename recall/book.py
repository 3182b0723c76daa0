"""Write the results chapters of the book from ``results/<profile>/`` and build it.

    python -m recall.book --profile cpu                  # write book/results/*.md, build book/_build/html
    python -m recall.book --profile cpu --no-build       # only write the pages
    python -m recall.book --profile smoke --results-root /tmp/r --book-dir /tmp/book   # a copy elsewhere

Step (a) writes ``book/results/*.md``: one page per notebook plus ``claims.md``. Tables are the CSV
files the notebooks wrote, rendered as Markdown (accuracies in percent, "estimate [low, high]" with
the 95% paired bootstrap interval); figures are copied into ``book/results/figures/`` and referenced
by relative path. Every page names the profile, git commit, device and wall time of its notebook run
(``provenance.json``). A missing results file gives "not run in this profile" on its page instead
of an error. Nothing is computed here beyond formatting and the claim rules (``CLAIM_RULES``), so
every number on a results page comes from a results file; the paper's reported numbers (``PAPER``)
are shown beside ours, labelled as coming from a different model and task set.

Step (b) builds with ``jupyter-book build <book> -W -n --keep-going`` (offline; warnings are errors)
and returns its exit status.

``--book-dir DIR`` copies the static pages of ``book/`` into DIR first and writes the results pages
there, so the repository's ``book/`` stays untouched (the tests use this).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from .results import repo_root

PAGES = {  # page -> (title, notebook)
    "representations": ("Representations: where do experts agree?", "01_representations"),
    "single_model": ("Single-model merging", "02_single_model"),
    "multi_model": ("Multi-model merging", "03_multi_model"),
    "sequential": ("Sequential fine-tuning", "04_sequential"),
    "ablations": ("Ablations", "05_ablations"),
    "efficiency": ("Efficiency", "06_efficiency"),
}
NOT_RUN = "Not run in this profile."
MERGE_BASELINES = ("average", "task_arithmetic", "ties", "dare", "lm_cocktail", "magmax")
SEQ_BASELINES = ("sft", "ewc")

# The paper's reported numbers (notes section 1; arXiv 2510.20479 as summarised): other models, other tasks.
PAPER_CONTEXT = ("the paper's numbers: Qwen2-7B-Instruct and Llama-2-7B-chat on the paper's five tasks; a different "
                 "model and task set, shown for orientation only, not comparable")
PAPER = {
    "single": "45.00 (single-model merging, Llama-2-7B-chat, average)",
    "unseen": "38.92 (+7.86%) (generalization to unseen tasks)",
    "multi": "56.93 and 62.83 (multi-model merging, averages on the two backbones)",
    "sequential": "+6.28% and +7.86% (average gains over baselines in sequential fine-tuning)",
}

CLAIMS = {
    "C1": "Across models fine-tuned from one base on different tasks, shallow layers stay similar and deep layers "
          "diverge.",
    "C2": "In multi-model merging, RECALL beats the merging baselines on the training tasks.",
    "C3": "In sequential fine-tuning, RECALL forgets less than sequential LoRA fine-tuning (SFT) and EWC.",
    "C4": "RECALL generalizes better: it beats the merging baselines on unseen tasks.",
    "C5": "Typical samples chosen by clustering (KMeans) work better than random samples.",
}
CLAIM_RULES = {
    "C1": "From `c1_summary.csv`, measure `rbf` (the paper's kernel), transformer blocks 1..L: **supported** if the "
          "Spearman correlation between depth and the mean similarity between experts is below 0 and the interval "
          "of (mean similarity over the first third of the blocks minus the last third) lies entirely above 0; "
          "**refuted** if the correlation is above 0 and that interval lies entirely below 0; otherwise "
          "**inconclusive**. (Intervals resample expert pairs.)",
    "C2": "From `multi_diff.csv` (training tasks, task mean): for each merging baseline, the paired difference "
          "RECALL minus baseline is **supported** if its 95% interval lies entirely above 0, **refuted** if entirely "
          "below 0, else **inconclusive**. The claim is supported if it is supported against every baseline, refuted "
          "if refuted against at least one, otherwise inconclusive.",
    "C3": "From `seq_diff.csv` (the profile's task order and any other order run): RECALL minus SFT and RECALL "
          "minus EWC in forgetting (lower is better: supported if the interval lies entirely below 0) and in BWT "
          "(higher is better: supported if entirely above 0); the opposite side is refuted, an interval containing 0 "
          "inconclusive. Combined over all comparisons as for C2.",
    "C4": "From `multi_diff.csv` (unseen tasks, task mean), as for C2: RECALL minus each merging baseline. The "
          "single-model comparison on unseen tasks (`single_diff.csv`) is shown beside it but does not enter the "
          "verdict.",
    "C5": "From `ablation_diff.csv` (task mean): the paired difference random samples minus default (KMeans) is "
          "**supported** if its interval lies entirely below 0, **refuted** if entirely above 0, else inconclusive.",
}


# ------------------------------------------------------------------------------------------ helpers


def _fmt(x, scale: float = 100.0, digits: int = 1) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "n/a"
    return f"{v * scale:.{digits}f}"


def ci_text(est, low, high, scale: float = 100.0, digits: int = 1) -> str:
    """``"71.3 [68.2, 74.1]"``; "n/a" parts for missing values."""
    if _fmt(est, scale, digits) == "n/a":
        return "n/a"
    if _fmt(low, scale, digits) == "n/a" or _fmt(high, scale, digits) == "n/a":
        return f"{_fmt(est, scale, digits)} [n/a]"
    return f"{_fmt(est, scale, digits)} [{_fmt(low, scale, digits)}, {_fmt(high, scale, digits)}]"


def _cell(v) -> str:
    s = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
    return s.replace("|", "\\|").replace("\n", " ")


def md_table(df: pd.DataFrame, index: bool = True, index_name: str | None = None) -> str:
    """A Markdown pipe table."""
    if index:
        df = df.reset_index()
        if index_name:
            df = df.rename(columns={df.columns[0]: index_name})
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _labels():
    from .plots import method_label, task_label

    return method_label, task_label


def ci_pivot(t: pd.DataFrame, index: str = "method", columns: str = "task", scale: float = 100.0,
             label_index: Callable | None = None, label_columns: Callable | None = None) -> pd.DataFrame:
    """A CI table (columns estimate, low, high) as index x columns of "estimate [low, high]" strings."""
    method_label, task_label = _labels()
    label_index = label_index or method_label
    label_columns = label_columns or task_label
    t = t.assign(_ci=[ci_text(e, lo, hi, scale) for e, lo, hi in zip(t["estimate"], t["low"], t["high"], strict=False)])
    rows = list(pd.unique(t[index]))
    cols = list(pd.unique(t[columns]))
    p = t.pivot(index=index, columns=columns, values="_ci").reindex(index=rows, columns=cols)
    p.index = [label_index(i) for i in p.index]
    p.columns = [label_columns(c) for c in p.columns]
    return p


def verdict(low, high, better: str = "higher") -> str:
    """supported / refuted / inconclusive from an interval of (RECALL minus other), or "not available"."""
    try:
        lo, hi = float(low), float(high)
    except (TypeError, ValueError):
        return "not available"
    if math.isnan(lo) or math.isnan(hi):
        return "not available"
    if better == "higher":
        return "supported" if lo > 0 else "refuted" if hi < 0 else "inconclusive"
    return "supported" if hi < 0 else "refuted" if lo > 0 else "inconclusive"


def combine(verdicts: Sequence[str]) -> str:
    """The overall verdict: supported if supported in every comparison, refuted if refuted in at least one,
    otherwise inconclusive; "not run in this profile" without comparisons."""
    v = [x for x in verdicts if x != "not available"]
    if not v:
        return "not run in this profile" if not verdicts else "inconclusive"
    if "refuted" in v:
        return "refuted"
    if all(x == "supported" for x in v):
        return "supported"
    return "inconclusive"


class ResultsDir:
    """The result files of one profile, read lazily; missing files are ``None``."""

    def __init__(self, root: Path, profile: str):
        self.root = Path(root)
        self.profile = profile
        self.dir = self.root / profile
        prov = self.dir / "provenance.json"
        self.provenance = json.loads(prov.read_text()).get("notebooks", {}) if prov.exists() else {}

    def csv(self, name: str, subdir: str | None = None, **kw) -> pd.DataFrame | None:
        p = (self.dir / subdir if subdir else self.dir) / f"{name}.csv"
        if not p.exists():
            return None
        try:
            return pd.read_csv(p, **kw)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()

    def png(self, name: str, subdir: str | None = None) -> Path | None:
        p = (self.dir / subdir if subdir else self.dir) / f"{name}.png"
        return p if p.exists() else None

    def subdirs(self, prefix: str) -> list[str]:
        if not self.dir.exists():
            return []
        return sorted(p.name for p in self.dir.iterdir() if p.is_dir() and p.name.startswith(prefix))


class Page:
    """Markdown of one generated page, with figure copying."""

    def __init__(self, res: ResultsDir, out_dir: Path, name: str):
        self.res, self.out_dir, self.name = res, out_dir, name
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        self.parts.append(text.rstrip() + "\n")

    def table(self, df: pd.DataFrame | None, caption: str | None = None, **kw) -> None:
        if df is None:
            self.add(f"_{caption + ': ' if caption else ''}{NOT_RUN}_")
            return
        if caption:
            self.add(f"**{caption}**")
        self.add(md_table(df, **kw) if len(df) else "_(empty table)_")

    def figure(self, name: str, alt: str, subdir: str | None = None) -> None:
        src = self.res.png(name, subdir)
        if src is None:
            self.add(f"_Figure `{name}.png`: {NOT_RUN}_")
            return
        fig_dir = self.out_dir / "figures"
        fig_dir.mkdir(parents=True, exist_ok=True)
        target = f"{subdir}-{name}.png" if subdir else f"{name}.png"
        shutil.copyfile(src, fig_dir / target)
        self.add(f"![{alt}](figures/{target})")

    def write(self) -> Path:
        path = self.out_dir / f"{self.name}.md"
        path.write_text("\n".join(self.parts))
        return path


def provenance_text(res: ResultsDir, notebook: str) -> str | None:
    e = res.provenance.get(notebook)
    if not e:
        return None
    prof = e.get("profile") or {}
    wall = e.get("wall_time_s")
    wall_s = f"{wall / 60:.1f} min" if isinstance(wall, (int, float)) and wall >= 120 else f"{wall} s"
    params = ", ".join(f"{k}={v}" for k, v in (e.get("parameters") or {}).items())
    lines = [f"- profile: `{res.profile}`" + (f" ({prof.get('notes')})" if prof.get("notes") else ""),
             f"- model: `{prof.get('model', '?')}`; test examples per task: {prof.get('n_test', '?')}; "
             f"bootstrap replicates: {prof.get('n_boot', '?')}",
             f"- git commit: `{e.get('git_commit', 'unknown')}`",
             f"- device: {e.get('device', 'unknown')}",
             f"- wall time of the notebook: {wall_s}; finished {e.get('finished', '?')}",
             f"- parameters: {params or 'defaults'}"]
    return "\n".join(lines)


def _header(page: Page, title: str, notebook: str, intro: str, key: str | None = None) -> bool:
    """Title, intro and provenance; returns False (and says so) when the notebook has no results."""
    page.add(f"# {title}")
    page.add(intro)
    prov = provenance_text(page.res, key or notebook)
    if prov is None:
        page.add(f"**{NOT_RUN}** (no entry for `{key or notebook}` in `results/{page.res.profile}/provenance.json`; "
                 f"run `python -m recall.replicate --profile {page.res.profile} --notebooks {notebook[:2]}`.)")
        return False
    page.add("**Run.**\n\n" + prov)
    if page.res.profile == "smoke":
        page.add("```{warning}\nThe smoke profile uses a tiny random model: these numbers check the pipeline and "
                 "mean nothing.\n```")
    return True


def _mean_rows(df: pd.DataFrame | None) -> pd.DataFrame | None:
    return None if df is None else df[df["task"] == "mean"]


# ---------------------------------------------------------------------------------------------- pages


def page_representations(res: ResultsDir, out: Path) -> Path:
    p = Page(res, out, "representations")
    ok = _header(p, PAGES["representations"][0], "01_representations",
                 "Claim C1 and the observation behind RECALL. The base model and every task expert read the same test "
                 "prompts (spread over the training tasks); each layer's hidden states are mean-pooled per prompt and "
                 "compared with the RBF-kernel similarity (`rbf`) and linear CKA (`cka_linear`). Layer 0 is the "
                 "embedding output. Intervals resample pairs of experts (approximate: pairs share experts).")
    if ok:
        c1 = res.csv("c1_summary")
        p.add("## Summary (claim C1)")
        if c1 is not None:
            first = c1.iloc[0]
            p.add(f"Statistics over the transformer blocks 1..{int(first['blocks'])} (the embedding output is left "
                  f"out: "
                  f"LoRA does not change the embeddings). First third: blocks {first['first_layers']}; last third: "
                  f"blocks {first['last_layers']}; {int(first['n_pairs'])} expert pairs, {int(first['n_samples'])} "
                  f"prompts.")
            t = c1.assign(value=[ci_text(e, lo, hi, scale=1, digits=3)
                                 for e, lo, hi in zip(c1["estimate"], c1["low"], c1["high"], strict=False)])
            t = t.pivot(index="statistic", columns="measure", values="value").reindex(
                [s for s in pd.unique(c1["statistic"])])
            p.table(t, index_name="statistic")
        else:
            p.table(None, "C1 summary")
        p.add("## Similarity between experts per layer")
        curve = res.csv("interexpert_curve")
        if curve is not None:
            t = curve.assign(value=[ci_text(e, lo, hi, scale=1, digits=3) for e, lo, hi in
                                    zip(curve["similarity"], curve.get("low", curve["similarity"]),
                                        curve.get("high", curve["similarity"]), strict=False)])
            p.table(t.pivot(index="layer", columns="measure", values="value"), index_name="layer")
        else:
            p.table(None, "inter-expert curve")
        p.figure("interexpert", "heatmaps of the similarity between experts and the mean similarity per layer")
        p.add("## Adjacent layers within each model")
        p.add("Similarity of hidden states l-1 and l within one model (`rbf`); the paper reports sharp drops in the "
              "first and last layers.")
        adj = res.csv("adjacent")
        if adj is not None:
            method_label, _ = _labels()
            t = adj[adj["measure"] == "rbf"].pivot(index="layer", columns="model", values="similarity")
            t = t[[c for c in pd.unique(adj["model"])]].round(3)
            t.columns = [method_label(c) for c in t.columns]
            p.table(t, index_name="layer")
        else:
            p.table(None, "adjacent-layer similarity")
        p.figure("adjacent", "adjacent-layer similarity per model")
        p.add("## Similarity of each expert to the base model")
        p.figure("to_base", "similarity of each expert to the base model per layer")
    return p.write()


def page_single(res: ResultsDir, out: Path) -> Path:
    p = Page(res, out, "single_model")
    ok = _header(p, PAGES["single_model"][0], "02_single_model",
                 "Per training task, its expert is merged into the base model with each method. Accuracy (%) on the "
                 "expert's own task and, averaged over the merged models of all experts, on the unseen tasks; 95% "
                 "paired bootstrap intervals over test examples.")
    if ok:
        acc = res.csv("single_accuracy")
        for scope in ("own task", "unseen tasks"):
            p.add(f"## Accuracy on the {scope}")
            p.table(None if acc is None else ci_pivot(acc[acc["scope"] == scope]), index_name="method")
        p.add(f"For orientation, {PAPER_CONTEXT}: {PAPER['single']}.")
        p.add("## RECALL minus each method (paired, task mean, percentage points)")
        d = res.csv("single_diff")
        p.table(None if d is None else ci_pivot(d[d["task"] == "mean"], index="other", columns="scope",
                                                label_columns=str), index_name="RECALL minus")
        p.figure("single_accuracy", "accuracy per method with intervals")
        p.figure("single_diff", "paired differences RECALL minus each method")
    return p.write()


def page_multi(res: ResultsDir, out: Path) -> Path:
    p = Page(res, out, "multi_model")
    ok = _header(p, PAGES["multi_model"][0], "03_multi_model",
                 "The base model and all task experts are merged into one model with each method (claims C2 and C4). "
                 "M_N for RECALL and LM-Cocktail is the last expert in the task order. References: the base model, "
                 "each expert on its own task (`Experts (own task)`), multi-task training (not data-free). "
                 "Accuracy (%) with 95% paired bootstrap intervals.")
    if ok:
        p.add("## Training tasks")
        t = res.csv("multi_train")
        p.table(None if t is None else ci_pivot(t), index_name="method")
        p.add(f"For orientation, {PAPER_CONTEXT}: {PAPER['multi']}.")
        p.add("## Unseen tasks")
        t = res.csv("multi_unseen")
        p.table(None if t is None else ci_pivot(t), index_name="method")
        p.add(f"For orientation, {PAPER_CONTEXT}: {PAPER['unseen']}.")
        p.add("## Normalized score (merged accuracy / the expert's accuracy on that task, %)")
        t = res.csv("multi_normalized")
        p.table(None if t is None else ci_pivot(t), index_name="method")
        p.add("## RECALL minus each method (paired, task mean, percentage points)")
        d = res.csv("multi_diff")
        p.table(None if d is None else ci_pivot(d[d["task"] == "mean"], index="other", columns="scope",
                                                label_columns=str), index_name="RECALL minus")
        p.figure("multi_accuracy", "accuracy per method with intervals")
        p.figure("multi_diff", "paired differences RECALL minus each method")
        p.add("## RECALL's weights per layer")
        p.add("Rows: hidden-state index (0 = embeddings; block l follows row l+1); columns: the pool, oldest first, "
              "the "
              "last is M_N.")
        w = res.csv("multi_recall_weights", index_col=0)
        p.table(None if w is None else w.round(3), index_name="layer")
        p.figure("multi_recall_weights", "heatmap of RECALL's merge weights")
    return p.write()


def _seq_section(p: Page, res: ResultsDir, subdir: str | None, level: str = "##") -> None:
    method_label, task_label = _labels()
    m = res.csv("seq_metrics", subdir)
    p.add(f"{level} Metrics (percentage points)")
    p.table(None if m is None else ci_pivot(m, columns="metric", label_columns=str), index_name="method")
    d = res.csv("seq_diff", subdir)
    p.add(f"{level} RECALL minus each method (paired)")
    p.add("Forgetting: lower is better; AP, BWT, FWT, AP_unseen: higher is better.")
    p.table(None if d is None or not len(d) else ci_pivot(d, index="other", columns="metric", label_columns=str),
            index_name="RECALL minus")
    p.add(f"{level} R matrices (accuracy %, rows: after step, columns: tasks in training order, then unseen)")
    methods = [] if m is None else list(pd.unique(m["method"]))
    for meth in methods:
        R = res.csv(f"R_{meth}", subdir, index_col=0)
        if R is not None:
            R = (R * 100).round(1)
            R.columns = [task_label(c) for c in R.columns]
            p.table(R, caption=method_label(meth), index_name="step")
    p.figure("seq_r_matrices", "R matrices per method", subdir)
    p.figure("seq_forgetting", "accuracy on each task across the steps", subdir)
    p.figure("seq_metrics", "CL metrics per method", subdir)


def page_sequential(res: ResultsDir, out: Path) -> Path:
    p = Page(res, out, "sequential")
    ok = _header(p, PAGES["sequential"][0], "04_sequential",
                 "Tasks arrive one at a time (claim C3). `LoRA SFT` and `EWC` fine-tune the current model on each "
                 "task; the merge methods fine-tune it and then merge {current, new} with typical samples of the new "
                 "task. AP "
                 "(mean accuracy after the last step), BWT, FWT and forgetting divide by T-1; AP_unseen is the mean "
                 "accuracy on the unseen tasks after the last step. 95% paired bootstrap intervals.")
    if ok:
        prov = res.provenance.get("04_sequential", {})
        order = (prov.get("parameters") or {}).get("task_order")
        p.add(f"## Task order {' > '.join(order) if order else '(the profile order)'}")
        _seq_section(p, res, None, "###")
        p.add(f"For orientation, {PAPER_CONTEXT}: {PAPER['sequential']}.")
    for sd in res.subdirs("order-"):
        key = f"04_sequential/{sd}"
        p.add(f"## Task order {sd.removeprefix('order-').replace('-', ' > ')}")
        prov = provenance_text(res, key)
        if prov is None:
            p.add(f"_{NOT_RUN}_")
            continue
        p.add("**Run.**\n\n" + prov)
        _seq_section(p, res, sd, "###")
    return p.write()


def page_ablations(res: ResultsDir, out: Path) -> Path:
    p = Page(res, out, "ablations")
    ok = _header(p, PAGES["ablations"][0], "05_ablations",
                 "RECALL variants in the multi-model scenario, scored on the training tasks; each changes one open "
                 "choice (see [What the paper leaves open](../open_choices.md)). Accuracy (%) with 95% paired "
                 "bootstrap "
                 "intervals; differences are variant minus default.")
    if ok:
        t = res.csv("ablation_accuracy")
        p.add("## Accuracy per variant")
        if t is not None:
            view = ci_pivot(t, index="variant", label_index=str)
            if "options" in t:
                opts = t.drop_duplicates("variant").set_index("variant")["options"]
                view.insert(0, "options", [f"`{opts[v]}`" for v in view.index])
            p.table(view, index_name="variant")
        else:
            p.table(None)
        p.add("## Variant minus default (paired, percentage points)")
        d = res.csv("ablation_diff")
        p.table(None if d is None else ci_pivot(d, index="variant", label_index=str), index_name="variant")
        p.figure("ablation_accuracy", "accuracy per ablation variant")
        p.figure("ablation_diff", "paired differences variant minus default")
    return p.write()


def page_efficiency(res: ResultsDir, out: Path) -> Path:
    p = Page(res, out, "efficiency")
    ok = _header(p, PAGES["efficiency"][0], "06_efficiency",
                 "Cost of our layer-wise merge step given the weights (`recall merge --method layer_linear`, each run "
                 "a separate process) against the number of models, with the streaming and the in-memory engine. "
                 "Single measurements on a shared machine: no intervals.")
    if ok:
        e = res.csv("efficiency")
        p.table(e, index=False)
        p.add("## Benchmark against mergekit")
        b = res.csv("merge_speed")
        if b is None:
            p.add(f"No merge-speed benchmark for this profile: `results/{res.profile}/merge_speed.csv` does not exist "
                  f"(run `python benchmarks/merge_speed.py --out results/{res.profile}/merge_speed.csv`).")
        else:
            keep = [c for c in ("run", "repeats", "wall_s", "peak_rss_mib", "cpu_s", "wall_ratio_vs_mergekit",
                                "rss_ratio_vs_mergekit", "goal_met") if c in b.columns]
            p.table(b[keep].round(3), index=False)
        p.figure("efficiency", "merge wall time and memory")
    return p.write()


# ---------------------------------------------------------------------------------------------- claims


def _diff_row(d: pd.DataFrame, better: str = "higher", scale: float = 100.0) -> tuple[str, str]:
    r = d.iloc[0]
    return ci_text(r["estimate"], r["low"], r["high"], scale), verdict(r["low"], r["high"], better)


def claims_page(res: ResultsDir, out: Path) -> Path:
    method_label, _ = _labels()
    p = Page(res, out, "claims")
    p.add("# Claims: verdicts")
    p.add("Each claim of the paper gets a verdict computed from our result files by the rule stated with it: "
          "**supported** or **refuted** when a 95% paired bootstrap interval excludes 0, **inconclusive** when it does "
          "not, **not run in this profile** when the files are missing. A refuted claim is reported as refuted. The "
          "paper's numbers are shown beside ours; they come from other models (Qwen2-7B-Instruct, Llama-2-7B-chat) and "
          "other tasks, so they are for orientation only.")
    if res.profile == "smoke":
        p.add("```{warning}\nThe smoke profile uses a tiny random model: these verdicts check the pipeline and mean "
              "nothing.\n```")
    summary = []
    details = []

    # C1
    c1 = res.csv("c1_summary")
    rows = []
    if c1 is None:
        v1 = "not run in this profile"
        ev1 = NOT_RUN
    else:
        def stat(measure, name):
            r = c1[(c1["measure"] == measure) & (c1["statistic"] == name)]
            return None if r.empty else r.iloc[0]

        rho, dfl = stat("rbf", "spearman_depth"), stat("rbf", "first_minus_last")
        if rho is None or dfl is None:
            v1, ev1 = "not available", "rbf statistics missing"
        else:
            r, lo, hi = float(rho["estimate"]), float(dfl["low"]), float(dfl["high"])
            if math.isnan(r) or math.isnan(lo) or math.isnan(hi):
                v1 = "inconclusive"
            elif r < 0 and lo > 0:
                v1 = "supported"
            elif r > 0 and hi < 0:
                v1 = "refuted"
            else:
                v1 = "inconclusive"
            ev1 = (f"rbf: Spearman(depth, similarity) = {ci_text(rho['estimate'], rho['low'], rho['high'], 1, 2)}; "
                   f"first third minus last third = {ci_text(dfl['estimate'], dfl['low'], dfl['high'], 1, 3)}")
        for measure in pd.unique(c1["measure"]):
            for name in ("spearman_depth", "first_third_mean", "last_third_mean", "first_minus_last"):
                s = stat(measure, name)
                if s is not None:
                    rows.append({"measure": measure, "statistic": name,
                                 "estimate [95% interval]": ci_text(s["estimate"], s["low"], s["high"], 1, 3)})
    summary.append(("C1", v1, ev1, "qualitative (no number)"))
    details.append(("C1", pd.DataFrame(rows) if rows else None))

    # C2 / C4 from multi_diff
    md = res.csv("multi_diff")
    for claim, scope, paper in (("C2", "training tasks", PAPER["multi"]), ("C4", "unseen tasks", PAPER["unseen"])):
        rows, vs = [], []
        if md is not None:
            sub = md[(md["scope"] == scope) & (md["task"] == "mean")]
            for other in [o for o in pd.unique(sub["other"]) if o in MERGE_BASELINES]:
                text, v = _diff_row(sub[sub["other"] == other])
                vs.append(v)
                rows.append({"comparison": f"RECALL - {method_label(other)}", "scope": scope,
                             "difference, points [95% interval]": text, "verdict": v})
        if claim == "C4":
            sd = res.csv("single_diff")
            if sd is not None:
                sub = sd[(sd["scope"] == "unseen tasks") & (sd["task"] == "mean")]
                for other in [o for o in pd.unique(sub["other"]) if o in MERGE_BASELINES]:
                    text, v = _diff_row(sub[sub["other"] == other])
                    rows.append({"comparison": f"RECALL - {method_label(other)}",
                                 "scope": "single-model, unseen (not in verdict)",
                                 "difference, points [95% interval]": text, "verdict": v})
        overall = combine(vs)
        acc = res.csv("multi_train" if claim == "C2" else "multi_unseen")
        ours = NOT_RUN
        if acc is not None:
            r = acc[(acc["method"] == "recall") & (acc["task"] == "mean")]
            if not r.empty:
                ours = f"RECALL mean accuracy {ci_text(r.iloc[0]['estimate'], r.iloc[0]['low'], r.iloc[0]['high'])}"
        ev = (f"{sum(v == 'supported' for v in vs)} supported, {sum(v == 'refuted' for v in vs)} refuted, "
              f"{sum(v == 'inconclusive' for v in vs)} inconclusive of {len(vs)} baselines; {ours}") if vs else NOT_RUN
        summary.append((claim, overall, ev, paper))
        details.append((claim, pd.DataFrame(rows) if rows else None))

    # C3 from seq_diff (main order and other orders)
    rows, vs = [], []
    for sd in [None] + res.subdirs("order-"):
        d = res.csv("seq_diff", sd)
        if d is None or not len(d):
            continue
        label = "profile order" if sd is None else sd.removeprefix("order-").replace("-", ">")
        for other in [o for o in pd.unique(d["other"]) if o in SEQ_BASELINES]:
            for metric, better in (("forgetting", "lower"), ("BWT", "higher"), ("AP", "higher")):
                r = d[(d["other"] == other) & (d["metric"] == metric)]
                if r.empty:
                    continue
                text, v = _diff_row(r, better)
                if metric != "AP":
                    vs.append(v)
                rows.append({"order": label, "comparison": f"RECALL - {method_label(other)}", "metric": metric,
                             "better": better, "difference, points [95% interval]": text,
                             "verdict": v if metric != "AP" else f"({v}; not in verdict)"})
    ours = NOT_RUN
    sm = res.csv("seq_metrics")
    if sm is not None:
        ap = sm[sm["metric"] == "AP"].set_index("method")["estimate"]
        if "recall" in ap:
            gains = [f"{(ap['recall'] - ap[o]) / ap[o] * 100:+.2f}% vs {method_label(o)}" for o in SEQ_BASELINES
                     if o in ap and ap[o] > 0]
            ours = f"RECALL AP {_fmt(ap['recall'])}" + (f" ({', '.join(gains)}, relative)" if gains else "")
    ev = (f"{sum(v == 'supported' for v in vs)} supported, {sum(v == 'refuted' for v in vs)} refuted, "
          f"{sum(v == 'inconclusive' for v in vs)} inconclusive of {len(vs)} comparisons; {ours}") if vs else NOT_RUN
    summary.append(("C3", combine(vs), ev, PAPER["sequential"]))
    details.append(("C3", pd.DataFrame(rows) if rows else None))

    # C5 from ablation_diff
    ad = res.csv("ablation_diff")
    rows, v5, ev5 = [], "not run in this profile", NOT_RUN
    if ad is not None:
        r = ad[(ad["variant"] == "random_samples") & (ad["task"] == "mean")]
        if not r.empty:
            text, v5 = _diff_row(r, "lower")
            ev5 = f"random samples minus KMeans (default), task mean: {text} points"
            rows.append({"comparison": "random samples - KMeans", "difference, points [95% interval]": text,
                         "verdict": v5})
        else:
            ev5 = "the profile's ablations do not include `random_samples`"
    summary.append(("C5", v5, ev5, "qualitative (no number)"))
    details.append(("C5", pd.DataFrame(rows) if rows else None))

    summary.sort(key=lambda s: s[0])
    details.sort(key=lambda s: s[0])
    p.add("## Summary")
    p.table(pd.DataFrame([{"claim": c, "statement": CLAIMS[c], "verdict": f"**{v}**", "our evidence": e,
                           "paper (other model and tasks)": pn} for c, v, e, pn in summary]), index=False)
    p.add("## Rules and details")
    for claim, df in details:
        p.add(f"### {claim}")
        p.add(CLAIMS[claim])
        p.add("Rule: " + CLAIM_RULES[claim])
        p.table(df, index=False)

    p.add("## Reported numbers beside ours")
    p.add(f"The left column is {PAPER_CONTEXT}. The right column is our RECALL result in this profile.")
    ours_rows = []

    def mean_of(name, method="recall", scope=None):
        t = res.csv(name)
        if t is None:
            return NOT_RUN
        if scope is not None:
            t = t[t["scope"] == scope]
        r = t[(t["method"] == method) & (t["task"] == "mean")]
        return NOT_RUN if r.empty else ci_text(r.iloc[0]["estimate"], r.iloc[0]["low"], r.iloc[0]["high"])

    ours_rows.append({"result": "single-model merging, average", "paper": PAPER["single"],
                      "ours (accuracy %, 95% interval)": mean_of("single_accuracy", scope="own task")})
    ours_rows.append({"result": "unseen tasks", "paper": PAPER["unseen"],
                      "ours (accuracy %, 95% interval)": f"multi-model {mean_of('multi_unseen')}; single-model "
                                                          f"{mean_of('single_accuracy', scope='unseen tasks')}"})
    ours_rows.append({"result": "multi-model merging, average", "paper": PAPER["multi"],
                      "ours (accuracy %, 95% interval)": mean_of("multi_train")})
    ours_rows.append({"result": "sequential fine-tuning", "paper": PAPER["sequential"],
                      "ours (accuracy %, 95% interval)": ours})
    p.table(pd.DataFrame(ours_rows), index=False)

    p.add("## Runs")
    for nb in ("01_representations", "03_multi_model", "04_sequential", "05_ablations", "02_single_model"):
        prov = provenance_text(res, nb)
        p.add(f"**{nb}**" + ("\n\n" + prov if prov else f": {NOT_RUN}"))
    return p.write()


# --------------------------------------------------------------------------------------- static parts


def profiles_fragment() -> str:
    from .profiles import PROFILES

    fields = [("model", "model"), ("tasks", "training tasks"), ("unseen", "unseen tasks"), ("n_train", "train / task"),
              ("n_test", "test / task"), ("max_text_tokens", "text tokens"), ("epochs", "epochs"),
              ("recall_k", "k"), ("sample_pool", "sample pool"), ("single_methods", "single-model methods"),
              ("multi_methods", "multi-model methods"), ("sequential_methods", "sequential methods"),
              ("ablations", "ablations"), ("seeds", "seeds"), ("task_order", "task order"),
              ("n_boot", "bootstrap"), ("device", "device"), ("notes", "notes")]
    rows = {}
    for name, prof in PROFILES.items():
        d = prof.to_dict()
        rows[name] = {label: (", ".join(map(str, d[f])) if isinstance(d[f], (list, tuple)) else str(d[f]))
                      for f, label in fields}
    return md_table(pd.DataFrame(rows), index_name="field") + "\n"


def ablations_fragment() -> str:
    from .profiles import ABLATIONS, PROFILES

    rows = []
    for name, opts in ABLATIONS.items():
        options = ", ".join(f"`{k}={v}`" for k, v in opts.items()) or "(defaults)"
        used = ", ".join(p for p, prof in PROFILES.items() if name in prof.ablations or name == "default")
        rows.append({"variant": name, "RECALL options": options, "profiles": used})
    return md_table(pd.DataFrame(rows), index=False) + "\n"


def assemble(book_dir: Path | None) -> Path:
    """The book source folder: ``book/`` itself, or a fresh copy of its static pages at ``book_dir``."""
    src = repo_root() / "book"
    if book_dir is None or Path(book_dir).resolve() == src.resolve():
        return src
    dest = Path(book_dir)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("_build", "results"))
    return dest


def write_pages(profile: str, results_root: Path, book: Path) -> list[Path]:
    """Step (a): the results pages (and the generated fragments of the static pages) under ``book/results``."""
    out = book / "results"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    res = ResultsDir(results_root, profile)
    (out / "_profiles.md").write_text(profiles_fragment())
    (out / "_ablations.md").write_text(ablations_fragment())
    written = [claims_page(res, out)]
    for fn in (page_representations, page_single, page_multi, page_sequential, page_ablations, page_efficiency):
        written.append(fn(res, out))
    return written


def jupyter_book_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "jupyter-book"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if found:
        return [found]
    return [sys.executable, "-m", "jupyter_book.cli.main"]


def build(book: Path, build_dir: Path | None = None, strict: bool = True, quiet: bool = False) -> int:
    """Step (b): ``jupyter-book build BOOK -W -n --keep-going``; returns the exit status."""
    cmd = jupyter_book_cmd() + ["build", str(book), "--all"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    if build_dir is not None:
        cmd += ["--path-output", str(build_dir)]
    if quiet:
        cmd += ["-q"]
    env = dict(os.environ)
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, env=env).returncode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recall.book", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", help="profile whose results to report (default cpu)")
    ap.add_argument("--results-root", type=Path, help="results root (default $RECALL_RESULTS or results/)")
    ap.add_argument("--book-dir", type=Path, help="assemble the book in this folder instead of book/")
    ap.add_argument("--build-dir", type=Path, help="jupyter-book --path-output (default: <book>/_build)")
    ap.add_argument("--no-build", action="store_true", help="only write the results pages")
    ap.add_argument("--no-strict", action="store_true", help="build without -W -n (warnings are not errors)")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)

    from .profiles import PROFILES

    if args.profile not in PROFILES:
        ap.error(f"unknown profile {args.profile!r}; choose one of {', '.join(PROFILES)}")
    root = args.results_root or Path(os.environ.get("RECALL_RESULTS", repo_root() / "results"))
    if not (root / args.profile).exists():
        print(f"note: {root / args.profile} does not exist; every results page will say '{NOT_RUN}'", file=sys.stderr)
    book = assemble(args.book_dir)
    pages = write_pages(args.profile, root, book)
    print(f"wrote {len(pages)} results pages for profile {args.profile} from {root / args.profile} "
          f"to {book / 'results'}")
    if args.no_build:
        return 0
    rc = build(book, args.build_dir, strict=not args.no_strict, quiet=args.quiet)
    html = (args.build_dir / "_build" / "html") if args.build_dir else book / "_build" / "html"
    print(f"jupyter-book exited with {rc}; HTML: {html / 'index.html'}" if rc == 0 else
          f"jupyter-book build failed (exit {rc}); see the warnings above", file=sys.stderr if rc else sys.stdout)
    return rc


if __name__ == "__main__":
    sys.exit(main())
