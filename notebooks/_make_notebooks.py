"""Generate the result notebooks ``notebooks/0*.ipynb`` (outputs cleared, stable cell ids).

    python notebooks/_make_notebooks.py          # rewrite the notebooks
    python notebooks/_make_notebooks.py --check  # exit 1 if a notebook differs from what this script writes

The notebooks are thin: a ``parameters`` cell (papermill), a setup cell, then calls of ``recall.experiments``,
``recall.cl_metrics`` and ``recall.plots``. Every table and figure is written by ``recall.results.Results``
under ``results/<profile>/`` (or ``$RECALL_RESULTS/<profile>/``), and the last cell records provenance.
Run them with ``python -m recall.replicate`` (papermill), not by hand, so that the executed copies land
in ``results/<profile>/notebooks/``. Edit this script, not the notebooks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''\
import json
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning, module="peft")

import numpy as np
import pandas as pd
import transformers
from IPython.display import Image, Markdown, display

from recall import plots
from recall.cl_metrics import bootstrap_ci, cl_metrics_ci, format_ci, method_table_ci, paired_difference_ci, r_matrices
from recall.experiments import (Run, ablations, efficiency, experts_row, mean_offdiag, merge_weights, multi_model,
                                representation_analysis, sequential, single_model, spearman_depth)
from recall.profiles import ABLATIONS, get_profile
from recall.results import Results

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
{subdir}
P = get_profile(profile)
run = Run(P, seed=seed, progress=False)
res = Results(profile, NOTEBOOK, subdir=SUBDIR)
sub = plots.where(P)
n_boot = P.n_boot


def show(name, fig):
    """Save the figure under the results folder and show the saved PNG."""
    display(Image(filename=str(res.figure(name, fig))))


def ci_view(table, index="method", columns="task"):
    """A compact view of a CI table: 'estimate [low, high]' in percent, rows in their original order."""
    t = table.assign(ci=[format_ci(e, lo, hi) for e, lo, hi in zip(table["estimate"], table["low"], table["high"])])
    rows = list(pd.unique(t[index]))
    cols = list(pd.unique(t[columns]))
    return t.pivot(index=index, columns=columns, values="ci").reindex(index=rows, columns=cols)
'''

PROVENANCE = '''\
res.provenance(P, params, run.timings)
display(Markdown(f"Wrote {len(set(res.files))} files to `{res.dir}`; step timings (s): {run.timings}"))
'''


# results of seeds other than 0 go to their own subfolder, so they never overwrite seed 0's
SEED_SUBDIR = 'SUBDIR = f"seed{seed}" if seed else None\n'


def _setup(notebook: str, subdir_code: str | None = None) -> str:
    return f'NOTEBOOK = "{notebook}"\n' + SETUP.replace("{subdir}", subdir_code or SEED_SUBDIR)


NOTEBOOKS: dict[str, dict] = {}

# ------------------------------------------------------------------------------------------------ 01
NOTEBOOKS["01_representations"] = {
    "title": "# 01 Representations: where do task experts agree?\n\n"
             "The paper's observation behind RECALL (claim C1): within one model the similarity of adjacent "
             "layers drops sharply in the first and last layers; across models fine-tuned from one base on "
             "different tasks, shallow layers stay similar and deep layers diverge. We read the same test "
             "prompts (spread evenly over the training tasks) with the base model and every task expert, "
             "mean-pool each layer's hidden states and compare them with the RBF-kernel similarity and linear CKA.\n\n"
             "Intervals: the per-layer similarities come without per-sample detail, so the 95% intervals of the "
             "inter-expert curve and of the C1 statistics resample expert pairs (percentile bootstrap, `n_boot` "
             "from the profile). Pairs share experts, so these intervals are approximate.",
    "parameters": ('profile = "smoke"\nseed = 0\n'
                   'n_samples = 32  # test prompts read by every model, spread over the tasks\n'),
    "params": '{"profile": profile, "seed": seed, "n_samples": n_samples}',
    "cells": [
        '''\
rep = representation_analysis(run, n_samples=n_samples)
adjacent, pairwise, to_base = rep["adjacent"], rep["pairwise"], rep["to_base"]
curve = mean_offdiag(pairwise)

# bootstrap over unordered expert pairs (a < b): replicate r averages the curve over resampled pairs
off = pairwise[pairwise["model_a"] < pairwise["model_b"]]
wide = off.pivot_table(index=["model_a", "model_b"], columns=["measure", "layer"], values="similarity")
rng = np.random.default_rng(seed)
idx = rng.integers(0, len(wide), size=(n_boot, len(wide)))
boot = pd.DataFrame(wide.to_numpy()[idx].mean(axis=1), columns=wide.columns)  # n_boot x (measure, layer)
q = boot.quantile([0.025, 0.975])
curve["low"] = [q.loc[0.025, (m, l)] for m, l in zip(curve["measure"], curve["layer"])]
curve["high"] = [q.loc[0.975, (m, l)] for m, l in zip(curve["measure"], curve["layer"])]
curve["n_pairs"] = len(wide)
res.table("adjacent", adjacent)
res.table("pairwise", pairwise)
res.table("interexpert_curve", curve)
res.table("to_base", to_base)
curve.pivot(index="layer", columns="measure", values="similarity").round(4).T
''',
        '''\
# C1 statistics over the transformer blocks 1..L (hidden state 0, the embedding output, is left out: LoRA does
# not train the embeddings, so it is identical across experts by construction).
def c1_stats(c):
    c = c[c["layer"] >= 1].sort_values("layer")
    L = len(c)
    k = max(1, L // 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant curves give NaN correlations
        rho = spearman_depth(c)
    first, last = c["similarity"].iloc[:k].mean(), c["similarity"].iloc[-k:].mean()
    return {"spearman_depth": rho, "first_third_mean": first, "last_third_mean": last,
            "first_minus_last": first - last}, k, L


rows = []
for measure in pd.unique(curve["measure"]):
    c = curve[curve["measure"] == measure]
    est, k, L = c1_stats(c)
    layers = sorted(c["layer"])
    reps = [c1_stats(pd.DataFrame({"layer": layers, "similarity": boot.loc[r, measure].reindex(layers).to_numpy()}))[0]
            for r in range(n_boot)]
    for stat, value in est.items():
        vals = np.array([r[stat] for r in reps], dtype=float)
        ok = vals[~np.isnan(vals)]
        lo, hi = (np.quantile(ok, [0.025, 0.975]) if len(ok) else (np.nan, np.nan))
        rows.append({"measure": measure, "statistic": stat, "estimate": value, "low": lo, "high": hi,
                     "blocks": L, "third": k, "first_layers": f"1-{k}", "last_layers": f"{L - k + 1}-{L}",
                     "n_pairs": len(wide), "n_samples": int(rep["samples"]["n"].iloc[0])})
c1 = pd.DataFrame(rows)
res.table("c1_summary", c1)
c1.round(3)
''',
        '''\
show("adjacent", plots.adjacent_similarity(adjacent, sub))
show("interexpert", plots.interexpert_similarity(pairwise, curve, sub))
show("to_base", plots.similarity_to_base(to_base, sub))
''',
    ],
}

# ------------------------------------------------------------------------------------------------ 02
NOTEBOOKS["02_single_model"] = {
    "title": "# 02 Single-model merging\n\n"
             "Per training task, its LoRA expert is merged into the base model with each method; the merged "
             "model is scored on the expert's own task (new-task performance) and on the unseen tasks "
             "(general ability kept from the base). References: the base model and the unmerged expert.\n\n"
             "Unseen-task accuracy of a method is averaged over the merged models of all experts (per test "
             "example, so the paired bootstrap still resamples test examples). Intervals: 95% paired "
             "percentile bootstrap over test examples, stratified by task.",
    "parameters": 'profile = "smoke"\nseed = 0\n',
    "params": '{"profile": profile, "seed": seed}',
    "cells": [
        '''\
df = single_model(run)
res.table("single_examples", df[["method", "expert_task", "task", "example", "label", "pred", "correct"]])
own = df[df["task"] == df["expert_task"]]
unseen = (df[df["task"].isin(P.unseen)]
          .groupby(["method", "task", "example"], as_index=False, sort=False)["correct"].mean())
t_own = method_table_ci(own, n_boot=n_boot, seed=seed)
t_unseen = method_table_ci(unseen, n_boot=n_boot, seed=seed)
res.table("single_accuracy", pd.concat([t_own.assign(scope="own task"), t_unseen.assign(scope="unseen tasks")]))
ci_view(t_own)
''',
        '''\
ci_view(t_unseen)
''',
        '''\
diffs = []
for other in [m for m in pd.unique(df["method"]) if m != "recall"]:
    for scope, d in (("own task", own), ("unseen tasks", unseen)):
        d_ci = paired_difference_ci(d, "recall", other, n_boot=n_boot, seed=seed)
        diffs.append(d_ci.assign(scope=scope, other=other))
diffs = pd.DataFrame(pd.concat(diffs, ignore_index=True))
res.table("single_diff", diffs)
ci_view(diffs[diffs["task"] == "mean"], index="other", columns="scope")
''',
        '''\
show("single_accuracy", plots.method_accuracy({"own task (new-task performance)": t_own,
                                               "unseen tasks (general ability)": t_unseen}, sub,
                                              title="Single-model merging: accuracy with 95% intervals"))
mean_d = diffs[diffs["task"] == "mean"].assign(comparison=lambda d: "RECALL - " + d["other"].map(plots.method_label)
                                                + " (" + d["scope"] + ")")
show("single_diff", plots.difference_forest(mean_d, sub, title="Single-model merging: RECALL minus each method "
                                                                "(task mean, paired 95% intervals)"))
''',
    ],
}

# ------------------------------------------------------------------------------------------------ 03
NOTEBOOKS["03_multi_model"] = {
    "title": "# 03 Multi-model merging\n\n"
             "The base model and all task experts are merged into one model with each method and scored on "
             "every training task and the unseen tasks (claims C2 and C4). For RECALL and LM-Cocktail the newest "
             "model M_N is the last expert in the task order and the typical samples come from its task. "
             "References: the base model, each expert on its own task (`experts`) and multi-task training "
             "(not data-free). Normalized score = merged accuracy / the expert's accuracy on that task.\n\n"
             "Intervals: 95% paired percentile bootstrap over test examples, stratified by task.",
    "parameters": 'profile = "smoke"\nseed = 0\n',
    "params": '{"profile": profile, "seed": seed}',
    "cells": [
        '''\
df = multi_model(run)
res.table("multi_examples", df[["method", "task", "example", "label", "pred", "correct"]])
order = list(P.task_order)
merges = [m for m in P.multi_methods]
refs = [m for m in ("base", "multitask") if m in set(df["method"])]
main = df[~df["method"].str.startswith("expert-")]
train = pd.concat([main[main["task"].isin(P.tasks)], experts_row(df)], ignore_index=True)
t_train = method_table_ci(train, n_boot=n_boot, seed=seed)
res.table("multi_train", t_train)
ci_view(t_train)
''',
        '''\
t_unseen = method_table_ci(main[main["task"].isin(P.unseen)], n_boot=n_boot, seed=seed)
res.table("multi_unseen", t_unseen)
ci_view(t_unseen)
''',
        '''\
# normalized score per task = merged / expert (paired: the same resampled examples for both), and its task mean
correct = {(m, t): g.sort_values("example")["correct"].to_numpy()
           for (m, t), g in train.groupby(["method", "task"], sort=False)}


def normalized(acc):
    out = {}
    for m in merges + refs:
        ratios = []
        for t in P.tasks:
            e = np.asarray(acc["experts", t], dtype=float)
            r = np.where(e > 0, np.asarray(acc[m, t], dtype=float) / np.where(e > 0, e, 1.0), np.nan)
            out[f"{m}|{t}"] = r
            ratios.append(r)
        out[f"{m}|mean"] = np.mean(ratios, axis=0)
    return out


with np.errstate(invalid="ignore", divide="ignore"):
    ci = bootstrap_ci(correct, normalized, n_boot=n_boot, seed=seed)
t_norm = pd.DataFrame([{"method": k.split("|")[0], "task": k.split("|")[1], "estimate": v.estimate, "low": v.low,
                        "high": v.high} for k, v in ci.items()])
res.table("multi_normalized", t_norm)
ci_view(t_norm)
''',
        '''\
diffs = []
for other in [m for m in merges + refs if m != "recall"]:
    for scope, d in (("training tasks", train), ("unseen tasks", main[main["task"].isin(P.unseen)])):
        d_ci = paired_difference_ci(d, "recall", other, n_boot=n_boot, seed=seed)
        diffs.append(d_ci.assign(scope=scope, other=other))
diffs = pd.concat(diffs, ignore_index=True)
res.table("multi_diff", diffs)
ci_view(diffs[diffs["task"] == "mean"], index="other", columns="scope")
''',
        '''\
# the RECALL merge's layer weights (the merge is cached: this returns the folder multi_model wrote)
experts = [run.expert(t) for t in order]
path = run.merge("recall", experts, samples_task=order[-1], name="multi-recall")
weights = merge_weights(path)
weights.columns = list(weights.columns[: len(weights.columns) - len(order)]) + [f"expert-{t}" for t in order]
res.table("multi_recall_weights", weights, index=True)
show("multi_recall_weights", plots.weights_heatmap(weights, sub, title="RECALL multi-model merge: weights per layer"))
''',
        '''\
show("multi_accuracy", plots.method_accuracy({"training tasks": t_train, "unseen tasks": t_unseen}, sub,
                                             title="Multi-model merging: accuracy with 95% intervals"))
mean_d = diffs[diffs["task"] == "mean"].assign(comparison=lambda d: "RECALL - " + d["other"].map(plots.method_label)
                                                + " (" + d["scope"] + ")")
show("multi_diff", plots.difference_forest(mean_d, sub, title="Multi-model merging: RECALL minus each method "
                                                               "(task mean, paired 95% intervals)"))
''',
    ],
}

# ------------------------------------------------------------------------------------------------ 04
NOTEBOOKS["04_sequential"] = {
    "title": "# 04 Sequential fine-tuning\n\n"
             "Tasks arrive one at a time. Plain sequential LoRA fine-tuning (`sft`) and EWC fine-tune the current "
             "model on each new task; the merge methods fine-tune the current model on task t and then merge "
             "{current, new} with typical samples of task t. After every step every model is scored on every "
             "task of the sequence (the R matrix, upper triangle included) and, after the last step, on the unseen "
             "tasks (claim C3). AP, BWT, FWT and forgetting are defined in `recall.cl_metrics` (denominators T-1).\n\n"
             "`task_order = None` uses the profile's order; another order (papermill `-y 'task_order: [...]'`) "
             "writes to the subfolder `order-<tasks>` (a seed other than 0 to `seed<n>[-order-<tasks>]`). "
             "Intervals: 95% paired percentile bootstrap over test "
             "examples (the same resampled examples for every method, step and the base model).",
    "parameters": 'profile = "smoke"\nseed = 0\ntask_order = None  # None: the order of the profile\n',
    "params": '{"profile": profile, "seed": seed, "task_order": list(order)}',
    "subdir_code": '''\
order = tuple(task_order) if task_order else tuple(get_profile(profile).task_order)
_parts = ([f"seed{seed}"] if seed else []) + (
    [] if order == tuple(get_profile(profile).task_order) else ["order-" + "-".join(order)])
SUBDIR = "-".join(_parts) or None
''',
    "cells": [
        '''\
df = sequential(run, order)
base_df = run.evaluate_on(run.base, order + tuple(P.unseen))
res.table("seq_examples", df[["method", "step", "task", "example", "label", "pred", "correct"]])
res.table("seq_base_examples", base_df[["task", "example", "label", "pred", "correct"]])
metrics = cl_metrics_ci(df, base_df, n_boot=n_boot, seed=seed, task_order=order)
res.table("seq_metrics", metrics)
ci_view(metrics, columns="metric")
''',
        '''\
R = r_matrices(df, task_order=order)
for m, r in R.items():
    res.table(f"R_{m}", r, index=True)
res.table("base_scores", base_df.groupby("task", sort=False)["correct"].mean().rename("accuracy").reset_index())
R["recall"].round(3) if "recall" in R else None
''',
        '''\
# paired differences RECALL - other for each metric (same resampled examples for both methods)
steps = sorted(df["step"].unique())
unseen_tasks = [t for t in P.unseen if t in set(df["task"])]
correct = {(m, s, t): g.sort_values("example")["correct"].to_numpy()
           for (m, s, t), g in df.groupby(["method", "step", "task"], sort=False)}
correct.update({("base", 0, t): g.sort_values("example")["correct"].to_numpy()
                for t, g in base_df.groupby("task", sort=False)})


def cl_point(acc, m):
    R_ = np.stack([np.stack([np.asarray(acc[m, s, t], dtype=float) for t in order], -1) for s in steps], -2)
    b = np.stack([np.asarray(acc["base", 0, t], dtype=float) for t in order], -1)
    T = len(order)
    last = R_[..., -1, :]
    out = {"AP": last.mean(-1)}
    out["BWT"] = (last[..., :-1] - np.diagonal(R_, axis1=-2, axis2=-1)[..., :-1]).sum(-1) / (T - 1)
    out["FWT"] = (np.diagonal(R_, offset=1, axis1=-2, axis2=-1) - b[..., 1:]).sum(-1) / (T - 1)
    out["forgetting"] = (np.max(R_[..., :-1, :-1], axis=-2) - last[..., :-1]).sum(-1) / (T - 1)
    if unseen_tasks:
        out["AP_unseen"] = np.mean([np.asarray(acc[m, steps[-1], t], dtype=float) for t in unseen_tasks], axis=0)
    return out


rows = []
methods = list(pd.unique(df["method"]))
if "recall" in methods and len(order) > 1:
    for other in [m for m in methods if m != "recall"]:
        def diff(acc, o=other):
            a, b = cl_point(acc, "recall"), cl_point(acc, o)
            return {k: a[k] - b[k] for k in a}

        ci = bootstrap_ci(correct, diff, n_boot=n_boot, seed=seed)
        rows += [{"other": other, "metric": k, "estimate": v.estimate, "low": v.low, "high": v.high}
                 for k, v in ci.items()]
seq_diff = pd.DataFrame(rows, columns=["other", "metric", "estimate", "low", "high"])
res.table("seq_diff", seq_diff)
ci_view(seq_diff, index="other", columns="metric") if len(seq_diff) else None
''',
        '''\
show("seq_r_matrices", plots.r_matrix_heatmaps(R, sub, n_seq=len(order),
                                               title=f"Sequential fine-tuning, order {' > '.join(order)}: R matrix"))
show("seq_forgetting", plots.forgetting_curves(R, order, sub))
show("seq_metrics", plots.method_accuracy(metrics.rename(columns={"metric": "task"}), sub,
                                          title="Sequential fine-tuning: CL metrics with 95% intervals",
                                          ylabel="score (percentage points)"))
''',
    ],
}

# ------------------------------------------------------------------------------------------------ 05
NOTEBOOKS["05_ablations"] = {
    "title": "# 05 Ablations of RECALL\n\n"
             "Variants of RECALL in the multi-model scenario (base + all experts, samples of the last task), "
             "scored on the training tasks. Each variant changes one open choice (see `recall.profiles.ABLATIONS`): "
             "typical samples by KMeans vs random (claim C5), the number k of typical samples, the similarity "
             "measure, the softmax temperature, layer-wise vs one global weight per model, and more on the gpu "
             "profile. Differences are variant minus default, paired over test examples (95% percentile bootstrap).",
    "parameters": 'profile = "smoke"\nseed = 0\n',
    "params": '{"profile": profile, "seed": seed}',
    "cells": [
        '''\
df = ablations(run)
res.table("ablation_examples", df[["variant", "task", "example", "label", "pred", "correct"]])
v = df.assign(method=df["variant"])
t = method_table_ci(v, n_boot=n_boot, seed=seed).rename(columns={"method": "variant"})
t["options"] = t["variant"].map(lambda name: json.dumps(ABLATIONS[name], sort_keys=True))
res.table("ablation_accuracy", t)
ci_view(t, index="variant")
''',
        '''\
diffs = pd.concat([paired_difference_ci(v, name, "default", n_boot=n_boot, seed=seed).assign(variant=name)
                   for name in P.ablations], ignore_index=True)
diffs["difference"] = "variant - default"
res.table("ablation_diff", diffs)
ci_view(diffs, index="variant")
''',
        '''\
show("ablation_accuracy", plots.ablation_plot(t, sub))
show("ablation_diff", plots.difference_forest(diffs[diffs["task"] == "mean"].assign(
    comparison=lambda d: d["variant"] + " - default"), sub,
    title="Ablations: variant minus default (task mean, paired 95% intervals)"))
''',
    ],
}

# ------------------------------------------------------------------------------------------------ 06
NOTEBOOKS["06_efficiency"] = {
    "title": "# 06 Efficiency\n\n"
             "Wall time and peak memory growth of our layer-wise merge (given weights) against the number of "
             "models, with the streaming and the in-memory engine, on copies of the profile's base model. The "
             "comparison with mergekit, each run as a separate process, comes from `benchmarks/merge_speed.py`; "
             "its CSV is included when it exists at `results/<profile>/merge_speed.csv`. Timings are single "
             "measurements on a shared machine: no intervals.",
    "parameters": 'profile = "smoke"\nseed = 0\n',
    "params": '{"profile": profile, "seed": seed}',
    "cells": [
        '''\
eff = efficiency(run)
res.table("efficiency", eff)
bench_csv = res.profile_dir / "merge_speed.csv"
bench = pd.read_csv(bench_csv) if bench_csv.exists() else None
if bench is None:
    display(Markdown(f"No merge-speed benchmark for this profile (`{bench_csv.name}` not found); run "
                     f"`python benchmarks/merge_speed.py --out results/{profile}/merge_speed.csv` to add it."))
else:
    res.files.append(str(bench_csv.relative_to(res.profile_dir)))
    display(bench)
eff
''',
        '''\
show("efficiency", plots.efficiency_plot(eff, sub, bench=bench))
''',
    ],
}


def build(name: str, spec: dict) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    cells = [new_markdown_cell(spec["title"])]
    params = new_code_cell(spec["parameters"])
    params.metadata["tags"] = ["parameters"]
    cells.append(params)
    setup = _setup(name, spec.get("subdir_code"))
    cells.append(new_code_cell(setup + f"params = {spec['params']}\n"))
    cells += [new_code_cell(src) for src in spec["cells"]]
    cells.append(new_code_cell(PROVENANCE))
    for i, c in enumerate(cells):
        c.id = f"c{i:02d}"
    nb.cells = cells
    nbformat.validate(nb)
    return nb


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that the notebooks are up to date")
    args = ap.parse_args(argv)
    stale = []
    for name, spec in NOTEBOOKS.items():
        text = nbformat.writes(build(name, spec)) + "\n"
        path = HERE / f"{name}.ipynb"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date (run python notebooks/_make_notebooks.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
