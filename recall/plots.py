"""Seaborn figures of the notebooks (and so of the book).

Every function takes the tables the notebooks write (the outputs of ``recall.experiments`` and
``recall.cl_metrics``), returns a ``matplotlib.figure.Figure`` and never touches pyplot's global state:
figures are built on ``Figure`` objects directly, so they work under the Agg backend, are not shown
twice in a notebook and are freed when dropped. Save them with ``recall.results.Results.figure``.

One style for all: seaborn's whitegrid theme (applied inside each call, the global rcParams stay as
they are), one colour per method across all figures (RECALL always red), readable method and task
names (``method_label``, ``task_label``), and titles that name the profile and the model
(``where(profile)``). Intervals drawn as error bars are the 95% paired bootstrap intervals of the
tables (columns ``estimate, low, high``); accuracies are plotted in percent. Labels and colours come
from ``recall.catalog``.

``figures(notebook, tables, ...)`` makes every figure of one notebook from its tables (``FIGURES``
names them): the notebooks call it and nothing else.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from .catalog import RECALL_RED as _RECALL_RED
from .catalog import colors as method_colors
from .catalog import label as method_label
from .catalog import task_label

__all__ = [
    "method_label",
    "task_label",
    "model_label",
    "where",
    "method_colors",
    "layer_similarity",
    "adjacent_similarity",
    "similarity_to_base",
    "interexpert_similarity",
    "method_accuracy",
    "difference_forest",
    "weights_heatmap",
    "r_matrix_heatmaps",
    "forgetting_curves",
    "ablation_plot",
    "efficiency_plot",
    "FIGURES",
    "figures",
]

MODEL_LABELS = {"tiny": "tiny random Llama", "smollm2": "SmolLM2-135M-Instruct"}


def model_label(model: str) -> str:
    from pathlib import PurePath

    if model in MODEL_LABELS:
        return MODEL_LABELS[model]
    return PurePath(str(model)).name or str(model)


def where(profile, model: str | None = None) -> str:
    """``"profile cpu, SmolLM2-135M-Instruct"``: the subtitle of every figure. ``profile`` is a
    ``recall.profiles.Profile`` or a profile name (then give ``model``)."""
    name = getattr(profile, "name", profile)
    model = model if model is not None else getattr(profile, "model", None)
    return f"profile {name}" + (f", {model_label(model)}" if model else "")


# ------------------------------------------------------------------------------------------------ style


def _rc() -> dict:
    rc = dict(sns.axes_style("whitegrid"))
    rc.update(sns.plotting_context("notebook", font_scale=0.85))
    rc.update({"figure.dpi": 100, "axes.titleweight": "bold", "axes.titlesize": 11, "figure.titlesize": 12,
               "legend.frameon": False, "svg.fonttype": "none"})
    return rc


def _styled(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(_rc()):
            return fn(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _suptitle(fig: Figure, title: str, subtitle: str | None) -> None:
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""))


def _grid(fig: Figure, n: int, ncols: int, sharey: bool = False):
    nrows = math.ceil(n / ncols)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=sharey, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


def _pct(df: pd.DataFrame, cols=("estimate", "low", "high"), scale: float = 100.0) -> pd.DataFrame:
    out = df.copy()
    for c in cols:
        if c in out:
            out[c] = out[c].astype(float) * scale
    return out


# ---------------------------------------------------------------------------------- representations


def adjacent_similarity(adjacent: pd.DataFrame, subtitle: str | None = None) -> Figure:
    """Within-model similarity of adjacent layers (hidden state l-1 vs l), one line per model, one panel
    per measure. ``adjacent``: columns ``model, layer, measure, similarity``."""
    return layer_similarity(adjacent, subtitle, title="Adjacent-layer similarity within each model",
                            xlabel="layer l (similarity of hidden states l-1 and l)")


def similarity_to_base(to_base: pd.DataFrame, subtitle: str | None = None) -> Figure:
    """Similarity of each expert's representations to the base model's, per layer and measure
    (``to_base``: columns ``layer, model, measure, similarity``)."""
    return layer_similarity(to_base, subtitle, title="Similarity of each expert to the base model",
                            xlabel="layer (0 = embedding output)")


@_styled
def layer_similarity(adjacent: pd.DataFrame, subtitle: str | None = None, title: str = "Similarity per layer",
                     xlabel: str = "layer") -> Figure:
    """Lines of similarity against layer, one per model, one panel per measure (columns ``model, layer,
    measure, similarity``)."""
    measures = list(pd.unique(adjacent["measure"]))
    fig = _figure(5.2 * len(measures), 3.8)
    axes = _grid(fig, len(measures), len(measures))
    models = list(pd.unique(adjacent["model"]))
    others = [m for m in models if m != "base"]
    pal = dict(zip(others, sns.color_palette("colorblind", len(others)), strict=False))
    if "base" in models:
        pal["base"] = "#222222"
    for ax, meas in zip(axes, measures, strict=False):
        sub = adjacent[adjacent["measure"] == meas].assign(model=lambda d: d["model"].map(method_label))
        sns.lineplot(data=sub, x="layer", y="similarity", hue="model", marker="o", markersize=4, ax=ax,
                     palette={method_label(k): v for k, v in pal.items()}, legend=ax is axes[-1])
        ax.set_title(f"{meas}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("similarity")
        ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    if axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1), title="model")
    _suptitle(fig, title, subtitle)
    return fig


def _pick_layers(layers: Sequence[int], n: int = 3) -> list[int]:
    layers = sorted(set(int(x) for x in layers))
    if len(layers) <= n:
        return layers
    idx = np.unique(np.round(np.linspace(0, len(layers) - 1, n)).astype(int))
    return [layers[i] for i in idx]


@_styled
def interexpert_similarity(pairwise: pd.DataFrame, curve: pd.DataFrame, subtitle: str | None = None,
                           measure: str = "rbf", layers: Sequence[int] | None = None) -> Figure:
    """Heatmaps of the similarity between task experts at a few layers (``measure``), and the mean
    off-diagonal similarity against depth for every measure (with its interval where ``curve`` has
    ``low``/``high``).

    ``pairwise``: columns ``layer, model_a, model_b, measure, similarity``; ``curve``: columns
    ``measure, layer, similarity`` (``recall.tables.interexpert_curve``), optionally ``low, high``.
    """
    pw = pairwise[pairwise["measure"] == measure]
    show = list(layers) if layers is not None else _pick_layers(pw["layer"].unique()[1:] if pw["layer"].nunique() > 3
                                                                 else pw["layer"].unique())
    n = len(show) + 1
    fig = _figure(3.6 * n, 3.7)
    fig.get_layout_engine().set(w_pad=0.12)
    axes = fig.subplots(1, n, gridspec_kw={"width_ratios": [1] * len(show) + [1.4]})
    axes = np.atleast_1d(axes)
    vmin = float(pw["similarity"].min()) if len(pw) else 0.0
    for i, (ax, layer) in enumerate(zip(axes[:-1], show, strict=False)):
        sub = pw[pw["layer"] == layer]
        order = list(pd.unique(sub["model_a"]))
        mat = sub.pivot(index="model_a", columns="model_b", values="similarity").reindex(index=order, columns=order)
        labels = [method_label(m).removeprefix("Expert ") for m in order]
        sns.heatmap(mat, ax=ax, vmin=vmin, vmax=1.0, cmap="rocket", square=True, cbar=i == len(show) - 1,
                    annot=len(order) <= 6, fmt=".2f", annot_kws={"size": 7}, xticklabels=labels, yticklabels=labels)
        ax.grid(False)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("")
        ax.set_ylabel("expert" if i == 0 else "")
    ax = axes[-1]
    measures = list(pd.unique(curve["measure"]))
    pal = dict(zip(measures, sns.color_palette("dark", len(measures)), strict=False))
    for meas in measures:
        sub = curve[curve["measure"] == meas].sort_values("layer")
        ax.plot(sub["layer"], sub["similarity"], marker="o", ms=4, color=pal[meas], label=meas)
        if {"low", "high"} <= set(sub.columns) and sub["low"].notna().any():
            ax.fill_between(sub["layer"], sub["low"], sub["high"], color=pal[meas], alpha=0.2, lw=0)
    ax.set_xlabel("layer (0 = embedding output)")
    ax.set_ylabel("mean similarity between experts")
    ax.set_title("shallow agree, deep diverge?")
    ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    ax.legend(title="measure", loc="best")
    _suptitle(fig, f"Similarity between task experts ({measure} heatmaps)", subtitle)
    return fig


# ----------------------------------------------------------------------------------------- accuracy


def _dodged_points(ax, table: pd.DataFrame, hue: str, x: str, x_order: list, hue_order: list, colors: Mapping,
                   scale: float = 100.0, labels: Mapping | None = None):
    width = 0.8
    k = max(1, len(hue_order))
    step = width / k
    for j, h in enumerate(hue_order):
        sub = table[table[hue] == h].set_index(x).reindex(x_order)
        xs = np.arange(len(x_order)) - width / 2 + step * (j + 0.5)
        est = sub["estimate"].to_numpy(dtype=float) * scale
        lo = sub["low"].to_numpy(dtype=float) * scale
        hi = sub["high"].to_numpy(dtype=float) * scale
        yerr = np.vstack([np.clip(est - lo, 0, None), np.clip(hi - est, 0, None)])
        strong = str(h) in ("recall", "default")
        ax.errorbar(xs, est, yerr=yerr, fmt="D" if strong else "o", ms=6 if strong else 4.5, capsize=2.5,
                    lw=1.6 if strong else 1.0, color=colors[h], label=(labels or {}).get(h, method_label(h)),
                    zorder=3 if strong else 2)
    ax.set_xticks(np.arange(len(x_order)))
    ax.set_xticklabels([task_label(t) for t in x_order])
    for i in range(len(x_order) - 1):
        ax.axvline(i + 0.5, color="#dddddd", lw=0.8, zorder=0)


@_styled
def method_accuracy(tables: pd.DataFrame | Mapping[str, pd.DataFrame], subtitle: str | None = None,
                    title: str = "Accuracy per method", methods: Sequence | None = None,
                    hue: str = "method", ylabel: str = "accuracy (%)", chance: Mapping | None = None) -> Figure:
    """Accuracy per task (and the task mean) per method with 95% intervals: the output of
    ``recall.cl_metrics.method_table_ci`` (columns ``method, task, estimate, low, high``). Several
    tables (a mapping panel title -> table) give one panel each, stacked."""
    panels = tables if isinstance(tables, Mapping) else {"": tables}
    all_methods = list(methods) if methods is not None else list(
        pd.unique(pd.concat([t[hue] for t in panels.values()], ignore_index=True)))
    colors = method_colors(all_methods)
    widths = [t["task"].nunique() for t in panels.values()]
    fig = _figure(max(6.5, 1.0 + 0.35 * len(all_methods) * max(widths) * 0.55 + 1.5), 3.3 * len(panels) + 0.6)
    axes = _grid(fig, len(panels), 1)
    for ax, (name, table) in zip(axes, panels.items(), strict=False):
        tasks = [t for t in pd.unique(table["task"]) if t != "mean"] + (["mean"] if (table["task"] == "mean").any()
                                                                         else [])
        present = [m for m in all_methods if m in set(table[hue])]
        _dodged_points(ax, table, hue, "task", tasks, present, colors)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("")
        ax.set_title(name)
        if chance:
            for i, t in enumerate(tasks):
                if t in chance:
                    ax.hlines(100 * chance[t], i - 0.45, i + 0.45, color="#999999", ls=":", lw=1)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    _suptitle(fig, title, subtitle)
    return fig


@_styled
def difference_forest(diffs: pd.DataFrame, subtitle: str | None = None,
                      title: str = "Paired differences (95% bootstrap intervals)", label: str = "comparison",
                      xlabel: str = "difference (percentage points)", scale: float = 100.0) -> Figure:
    """Forest plot of paired differences: one row per ``label`` value (columns ``estimate, low, high``);
    an interval left or right of the zero line is a significant difference."""
    d = _pct(diffs.reset_index(drop=True), scale=scale)
    fig = _figure(6.5, 0.9 + 0.32 * len(d))
    ax = fig.subplots()
    y = np.arange(len(d))[::-1]
    sig_pos = (d["low"] > 0).to_numpy()
    sig_neg = (d["high"] < 0).to_numpy()
    colors = np.where(sig_pos, "#1a7f37", np.where(sig_neg, _RECALL_RED, "#555555"))
    for yi, (_, row), c in zip(y, d.iterrows(), colors, strict=False):
        ax.errorbar(row["estimate"], yi, xerr=[[max(0, row["estimate"] - row["low"])],
                                               [max(0, row["high"] - row["estimate"])]],
                    fmt="o", color=c, capsize=2.5, ms=4.5)
    ax.axvline(0, color="#333333", lw=0.9)
    ax.set_yticks(y)
    ax.set_yticklabels([str(v) for v in d[label]])
    ax.set_xlabel(xlabel)
    _suptitle(fig, title, subtitle)
    return fig


@_styled
def ablation_plot(table: pd.DataFrame, subtitle: str | None = None, hue: str = "variant",
                  title: str = "RECALL ablations: mean accuracy over the training tasks") -> Figure:
    """Mean accuracy per ablation variant with 95% intervals (rows ``task == "mean"`` of a
    ``method_table_ci`` table whose method column is ``hue``), the default first and its estimate as
    a dashed line, and per-task points beside it."""
    mean = table[table["task"] == "mean"].reset_index(drop=True)
    variants = list(mean[hue])
    if "default" in variants:
        variants = ["default"] + [v for v in variants if v != "default"]
    mean = mean.set_index(hue).reindex(variants).reset_index()
    fig = _figure(9.5, 1.2 + 0.42 * len(variants))
    ax_mean, ax_task = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1, 1.4]})
    y = np.arange(len(variants))[::-1]
    m = _pct(mean)
    for yi, (_, row) in zip(y, m.iterrows(), strict=False):
        c = _RECALL_RED if row[hue] == "default" else "#333333"
        ax_mean.errorbar(row["estimate"], yi, xerr=[[max(0, row["estimate"] - row["low"])],
                                                    [max(0, row["high"] - row["estimate"])]],
                         fmt="D" if row[hue] == "default" else "o", color=c, capsize=2.5, ms=5)
    if "default" in variants:
        ax_mean.axvline(float(m.loc[m[hue] == "default", "estimate"].iloc[0]), color=_RECALL_RED, ls="--", lw=0.9)
    ax_mean.set_yticks(y)
    ax_mean.set_yticklabels(variants)
    ax_mean.set_xlabel("mean accuracy (%)")
    ax_mean.set_title("task mean")
    per = _pct(table[table["task"] != "mean"])
    tasks = list(pd.unique(per["task"]))
    pal = dict(zip(tasks, sns.color_palette("colorblind", len(tasks)), strict=False))
    ypos = dict(zip(variants, y, strict=False))
    for j, t in enumerate(tasks):
        sub = per[per["task"] == t]
        off = (j - (len(tasks) - 1) / 2) * 0.1
        ax_task.scatter(sub["estimate"], [ypos[v] + off for v in sub[hue]], color=pal[t], s=18,
                        label=task_label(t))
    ax_task.set_xlabel("accuracy (%)")
    ax_task.set_title("per task")
    ax_task.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", title="task")
    _suptitle(fig, title, subtitle)
    return fig


# ------------------------------------------------------------------------------------------ weights


@_styled
def weights_heatmap(weights: pd.DataFrame, subtitle: str | None = None,
                    title: str = "RECALL merge weights per layer") -> Figure:
    """Heatmap of a layer-wise weights table (rows: layers, columns: models; ``recall_weights.csv``)."""
    w = weights.copy()
    w.columns = [method_label(c) for c in w.columns]
    n_layers, n_models = w.shape
    fig = _figure(2.2 + 0.9 * n_models, 1.4 + min(0.26 * n_layers, 9))
    ax = fig.subplots()
    uniform = 1.0 / n_models
    span = max(float(np.nanmax(np.abs(w.to_numpy() - uniform))), 1e-6)
    sns.heatmap(w, ax=ax, cmap="vlag", center=uniform, vmin=max(0.0, uniform - span), vmax=min(1.0, uniform + span),
                annot=n_layers <= 12 and n_models <= 8, fmt=".2f", annot_kws={"size": 7},
                cbar_kws={"label": f"weight (white = uniform {uniform:.2f})"})
    ax.grid(False)
    ax.set_xlabel("model (oldest first; the last is M_N)")
    ax.set_ylabel("layer (0 = embeddings)")
    ax.tick_params(axis="x", rotation=30)
    _suptitle(fig, title, subtitle)
    return fig


# --------------------------------------------------------------------------------------- sequential


@_styled
def r_matrix_heatmaps(rmats: Mapping[str, pd.DataFrame], subtitle: str | None = None,
                      title: str = "Accuracy after each step (R matrix)", ncols: int = 3,
                      n_seq: int | None = None) -> Figure:
    """One heatmap per method: rows = steps (after training on the task of that row), columns = tasks
    in training order, then unseen tasks (evaluated after the last step only; a white line after the
    first ``n_seq`` columns separates them). Shared colour scale."""
    n = len(rmats)
    ncols = min(ncols, n)
    first = next(iter(rmats.values()))
    fig = _figure(ncols * (1.4 + 0.55 * first.shape[1]), math.ceil(n / ncols) * (1.2 + 0.45 * first.shape[0]) + 0.6)
    axes = _grid(fig, n, ncols)
    for i, (ax, (m, R)) in enumerate(zip(axes, rmats.items(), strict=False)):
        data = R.astype(float) * 100
        sns.heatmap(data, ax=ax, vmin=0, vmax=100, cmap="viridis", annot=True, fmt=".0f",
                    annot_kws={"size": 7}, cbar=i == n - 1 or (i + 1) % ncols == 0,
                    xticklabels=[task_label(t) for t in R.columns], yticklabels=[str(s) for s in R.index],
                    mask=data.isna())
        ax.grid(False)
        if n_seq is not None and 0 < n_seq < R.shape[1]:
            ax.axvline(n_seq, color="white", lw=3)
        ax.set_title(method_label(m))
        ax.set_xlabel("evaluated on")
        ax.set_ylabel("after step" if i % ncols == 0 else "")
        ax.tick_params(axis="y", rotation=0)
    _suptitle(fig, title + " (%)", subtitle)
    return fig


@_styled
def forgetting_curves(rmats: Mapping[str, pd.DataFrame], task_order: Sequence[str], subtitle: str | None = None,
                      title: str = "Accuracy on each task across the sequence", ncols: int | None = None) -> Figure:
    """One panel per task of the sequence: accuracy after each step, one line per method; the dotted
    line marks the step that trained the task (drops after it are forgetting)."""
    tasks = list(task_order)
    ncols = ncols or min(len(tasks), 5)
    methods = list(rmats)
    colors = method_colors(methods)
    fig = _figure(2.9 * ncols + 1.6, 2.9 * math.ceil(len(tasks) / ncols) + 0.6)
    axes = _grid(fig, len(tasks), ncols, sharey=True)
    for i, (ax, t) in enumerate(zip(axes, tasks, strict=False)):
        for m in methods:
            R = rmats[m]
            xs = np.arange(1, len(R) + 1)
            strong = m == "recall"
            ax.plot(xs, R[t].to_numpy(dtype=float) * 100, marker="D" if strong else "o", ms=5 if strong else 3.5,
                    lw=2 if strong else 1.2, color=colors[m], label=method_label(m))
        ax.axvline(i + 1, color="#999999", ls=":", lw=1)
        ax.set_title(task_label(t))
        ax.set_xticks(np.arange(1, len(tasks) + 1))
        ax.set_xlabel("after step")
        if i % ncols == 0:
            ax.set_ylabel("accuracy (%)")
    axes[min(ncols, len(tasks)) - 1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
    _suptitle(fig, title, subtitle)
    return fig


# ---------------------------------------------------------------------------------------- efficiency


def _first_col(df: pd.DataFrame, *names: str) -> str:
    for n in names:
        if n in df.columns:
            return n
    raise ValueError(f"table has none of the columns {names}; columns are {list(df.columns)}")


@_styled
def efficiency_plot(eff: pd.DataFrame, subtitle: str | None = None, bench: pd.DataFrame | None = None,
                    title: str = "Merge cost") -> Figure:
    """Wall time and peak memory of the layer-wise merge against the number of models per engine
    (``recall.experiments.efficiency``: columns ``models, engine, wall_s, peak_rss_mib``), and, if given,
    the merge-speed benchmark against mergekit (``benchmarks/merge_speed.py`` CSV: columns ``run, wall_s,
    peak_rss_mib``)."""
    n = 2 + (bench is not None)
    fig = _figure(4.2 * n + 0.6, 3.6)
    axes = fig.subplots(1, n)
    engines = list(pd.unique(eff["engine"]))
    pal = dict(zip(engines, sns.color_palette("colorblind", len(engines)), strict=False))
    t_col = _first_col(eff, "wall_s", "seconds")
    m_col = _first_col(eff, "peak_rss_mib", "peak_rss_growth_mib")
    for ax, col, lab in ((axes[0], t_col, "wall time (s)"),
                         (axes[1], m_col, "peak RSS (MiB)" if m_col == "peak_rss_mib" else "peak RSS growth (MiB)")):
        sns.lineplot(data=eff, x="models", y=col, hue="engine", marker="o", palette=pal, ax=ax,
                     legend=ax is axes[1], errorbar=None)
        ax.set_xlabel("models merged")
        ax.set_ylabel(lab)
        ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    size = f", {eff['model_mib'].iloc[0]:,.1f} MiB per model" if "model_mib" in eff and len(eff) else ""
    axes[0].set_title("time (whole process)")
    axes[1].set_title("memory (whole process)")
    if axes[1].get_legend() is not None:
        sns.move_legend(axes[1], "best", title="engine")
    if bench is not None:
        ax = axes[2]
        b = bench.reset_index(drop=True)
        y = np.arange(len(b))[::-1]
        ax.barh(y, b["wall_s"], color=[_RECALL_RED if str(r).startswith("ours") else "#777777" for r in b["run"]])
        ax.set_yticks(y)
        ax.set_yticklabels(b["run"])
        ax.set_xlabel("wall time (s)")
        if "peak_rss_mib" in b:
            for yi, (w, r) in zip(y, zip(b["wall_s"], b["peak_rss_mib"], strict=False), strict=False):
                ax.annotate(f" {r:,.0f} MiB", (w, yi), va="center", fontsize=7)
        ax.set_title("benchmark vs mergekit")
    _suptitle(fig, title + size, subtitle)
    return fig


# ------------------------------------------------------------------------------------- per notebook


def _comparisons(diffs: pd.DataFrame, by: str = "other", scope: bool = True) -> pd.DataFrame:
    """Task-mean rows of a difference table, labelled "RECALL - <method> (<scope>)"."""
    d = diffs[diffs["task"] == "mean"]
    text = "RECALL - " + d[by].map(method_label) + ((" (" + d["scope"] + ")") if scope else "")
    return d.assign(comparison=text)


def _scope(table: pd.DataFrame, scope: str) -> pd.DataFrame:
    return table[table["scope"] == scope].drop(columns="scope")


def _representation_figures(t, sub, order):
    return {"adjacent": adjacent_similarity(t["adjacent"], sub),
            "interexpert": interexpert_similarity(t["pairwise"], t["interexpert_curve"], sub),
            "to_base": similarity_to_base(t["to_base"], sub)}


def _single_figures(t, sub, order):
    acc = t["single_accuracy"]
    return {"single_accuracy": method_accuracy({"own task (new-task performance)": _scope(acc, "own task"),
                                                "unseen tasks (general ability)": _scope(acc, "unseen tasks")}, sub,
                                               title="Single-model merging: accuracy with 95% intervals"),
            "single_diff": difference_forest(_comparisons(t["single_diff"]), sub,
                                             title="Single-model merging: RECALL minus each method "
                                                   "(task mean, paired 95% intervals)")}


def _multi_figures(t, sub, order):
    return {"multi_recall_weights": weights_heatmap(t["multi_recall_weights"], sub,
                                                    title="RECALL multi-model merge: weights per layer"),
            "multi_accuracy": method_accuracy({"training tasks": t["multi_train"], "unseen tasks": t["multi_unseen"]},
                                              sub, title="Multi-model merging: accuracy with 95% intervals"),
            "multi_diff": difference_forest(_comparisons(t["multi_diff"]), sub,
                                            title="Multi-model merging: RECALL minus each method "
                                                  "(task mean, paired 95% intervals)")}


def _sequential_figures(t, sub, order):
    R = {k.removeprefix("R_"): v for k, v in t.items() if k.startswith("R_")}
    return {"seq_r_matrices": r_matrix_heatmaps(R, sub, n_seq=len(order),
                                                title=f"Sequential fine-tuning, order {' > '.join(order)}: R matrix"),
            "seq_forgetting": forgetting_curves(R, order, sub),
            "seq_metrics": method_accuracy(t["seq_metrics"].rename(columns={"metric": "task"}), sub,
                                           title="Sequential fine-tuning: CL metrics with 95% intervals",
                                           ylabel="score (percentage points)")}


def _ablation_figures(t, sub, order):
    d = t["ablation_diff"]
    d = d[d["task"] == "mean"].assign(comparison=lambda x: x["variant"] + " - default")
    return {"ablation_accuracy": ablation_plot(t["ablation_accuracy"], sub),
            "ablation_diff": difference_forest(d, sub, title="Ablations: variant minus default (task mean, paired "
                                                             "95% intervals)")}


def _efficiency_figures(t, sub, order):
    return {"efficiency": efficiency_plot(t["efficiency"], sub, bench=t.get("merge_speed"))}


# notebook -> function(tables, subtitle, task order) -> {figure name: Figure}
FIGURES = {"01_representations": _representation_figures, "02_single_model": _single_figures,
           "03_multi_model": _multi_figures, "04_sequential": _sequential_figures, "05_ablations": _ablation_figures,
           "06_efficiency": _efficiency_figures}


def figures(notebook: str, tables: Mapping[str, pd.DataFrame], subtitle: str | None = None,
            task_order: Sequence[str] = ()) -> dict[str, Figure]:
    """Every figure of ``notebook`` (``FIGURES``) from its tables (measured and derived, by name)."""
    fn = FIGURES.get(notebook)
    return {} if fn is None else fn(tables, subtitle, list(task_order))
