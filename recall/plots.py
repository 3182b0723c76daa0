"""Seaborn figures of the notebooks (and so of the book).

Every function takes the tables the notebooks write (the outputs of ``recall.experiments`` and
``recall.cl_metrics``), returns a ``matplotlib.figure.Figure`` and never touches pyplot's global state:
figures are built on ``Figure`` objects directly, so they work under the Agg backend, are not shown
twice in a notebook and are freed when dropped. Save them with ``recall.results.Results.figure``.

Sized for the page: one idea per figure, at most ``WIDTH`` inches wide (the book's content column at
96 px per inch) and no text under ``MIN_FONT`` points, so a figure shown at its natural size in the
book reads like the text around it; the PNG is saved at ``DPI`` dots per inch, and the book links each
figure to that full-resolution file.

One style for all: seaborn's whitegrid theme (applied inside each call, the global rcParams stay as
they are), one colour per method across all figures (RECALL always red), readable method and task
names (``method_label``, ``task_label``), and titles that name the profile and the model
(``where(profile)``). Intervals drawn as error bars are the 95% paired bootstrap intervals of the
tables (columns ``estimate, low, high``); accuracies are plotted in percent. Labels and colours come
from ``recall.catalog``.

``figures(notebook, tables, ...)`` makes every figure of one notebook from its tables (``FIGURES``
names them; ``SOURCES`` names the tables each figure is drawn from): the notebooks call it and
nothing else.
"""

from __future__ import annotations

import functools
import math
import re
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
    "WIDTH",
    "MIN_FONT",
    "DPI",
    "method_label",
    "task_label",
    "model_label",
    "where",
    "method_colors",
    "layer_similarity",
    "adjacent_similarity",
    "similarity_to_base",
    "interexpert_curve",
    "interexpert_heatmaps",
    "method_accuracy",
    "difference_forest",
    "ablation_means",
    "ablation_tasks",
    "weights_heatmap",
    "r_matrix_heatmap",
    "forgetting_curves",
    "efficiency_plot",
    "FIGURES",
    "SOURCES",
    "sources",
    "figures",
]

WIDTH = 7.0  # inches: the book's content column (about 690 px at 1280 px) at 96 px per inch
MIN_FONT = 9.0  # points: the smallest text of any figure at that size
DPI = 200  # of the saved PNG (the full-resolution file the book links to)

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
    rc.update(sns.plotting_context("notebook"))
    rc.update({"figure.dpi": 100, "savefig.dpi": DPI, "font.size": 10, "axes.titlesize": 10,
               "axes.titleweight": "bold", "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
               "legend.fontsize": 9, "legend.title_fontsize": 9, "figure.titlesize": 11,
               "legend.frameon": False, "svg.fonttype": "none"})
    return rc


def _styled(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(_rc()):
            return fn(*args, **kwargs)

    return wrapper


def _figure(height: float, width: float = WIDTH) -> Figure:
    return Figure(figsize=(min(width, WIDTH), height), layout="constrained")


def _suptitle(fig: Figure, title: str, subtitle: str | None) -> None:
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""))


def _legend_below(fig: Figure, ax, ncols: int = 4, title: str | None = None) -> None:
    """The legend of ``ax``'s artists under the axes, across the figure."""
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(ncols, len(handles)), title=title)


def _grid(fig: Figure, n: int, ncols: int, sharey: bool = False, sharex: bool = False):
    nrows = math.ceil(n / ncols)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=sharey, sharex=sharex, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


def _pct(df: pd.DataFrame, cols=("estimate", "low", "high"), scale: float = 100.0) -> pd.DataFrame:
    out = df.copy()
    for c in cols:
        if c in out:
            out[c] = out[c].astype(float) * scale
    return out


def _xerr(row) -> list:
    return [[max(0, row["estimate"] - row["low"])], [max(0, row["high"] - row["estimate"])]]


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
def layer_similarity(table: pd.DataFrame, subtitle: str | None = None, title: str = "Similarity per layer",
                     xlabel: str = "layer") -> Figure:
    """Lines of similarity against layer, one per model; one panel per measure, stacked (columns ``model,
    layer, measure, similarity``)."""
    measures = list(pd.unique(table["measure"]))
    fig = _figure(1.5 + 2.2 * len(measures))
    axes = _grid(fig, len(measures), 1, sharex=True)
    models = list(pd.unique(table["model"]))
    others = [m for m in models if m != "base"]
    pal = dict(zip(others, sns.color_palette("colorblind", len(others)), strict=False))
    if "base" in models:
        pal["base"] = "#222222"
    for ax, meas in zip(axes, measures, strict=False):
        sub = table[table["measure"] == meas].assign(model=lambda d: d["model"].map(method_label))
        sns.lineplot(data=sub, x="layer", y="similarity", hue="model", marker="o", markersize=4, ax=ax,
                     palette={method_label(k): v for k, v in pal.items()})
        ax.set_title(meas)
        ax.set_xlabel(xlabel if ax is axes[-1] else "")
        ax.set_ylabel("similarity")
        ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
        if ax is not axes[0] and ax.get_legend() is not None:
            ax.get_legend().remove()
    _legend_below(fig, axes[0], ncols=4)
    _suptitle(fig, title, subtitle)
    return fig


def _pick_layers(layers: Sequence[int], n: int = 3) -> list[int]:
    layers = sorted(set(int(x) for x in layers))
    if len(layers) <= n:
        return layers
    idx = np.unique(np.round(np.linspace(0, len(layers) - 1, n)).astype(int))
    return [layers[i] for i in idx]


@_styled
def interexpert_curve(curve: pd.DataFrame, subtitle: str | None = None) -> Figure:
    """The mean similarity between task experts against depth, one line per measure, with its interval
    where ``curve`` has ``low``/``high`` (``recall.tables.interexpert_curve``: columns ``measure, layer,
    similarity``)."""
    fig = _figure(3.6)
    ax = fig.subplots()
    measures = list(pd.unique(curve["measure"]))
    pal = dict(zip(measures, sns.color_palette("dark", len(measures)), strict=False))
    for meas in measures:
        sub = curve[curve["measure"] == meas].sort_values("layer")
        ax.plot(sub["layer"], sub["similarity"], marker="o", ms=4, color=pal[meas], label=meas)
        if {"low", "high"} <= set(sub.columns) and sub["low"].notna().any():
            ax.fill_between(sub["layer"], sub["low"], sub["high"], color=pal[meas], alpha=0.2, lw=0)
    ax.set_xlabel("layer (0 = embedding output)")
    ax.set_ylabel("mean similarity between experts")
    ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    ax.legend(title="measure", loc="best")
    _suptitle(fig, "Do experts agree in shallow layers and diverge in deep ones?", subtitle)
    return fig


@_styled
def interexpert_heatmaps(pairwise: pd.DataFrame, subtitle: str | None = None, measure: str = "rbf",
                         layers: Sequence[int] | None = None) -> Figure:
    """Heatmaps of the similarity between every pair of task experts (``measure``) at a few layers (first,
    middle and last block by default), on one colour scale. ``pairwise``: columns ``layer, model_a, model_b,
    measure, similarity``."""
    pw = pairwise[pairwise["measure"] == measure]
    all_layers = pw["layer"].unique()
    show = list(layers) if layers is not None else _pick_layers(all_layers[1:] if len(all_layers) > 3
                                                                 else all_layers)
    fig = _figure(3.3)
    axes = np.atleast_1d(fig.subplots(1, len(show), sharey=True))
    vmin = float(pw["similarity"].min()) if len(pw) else 0.0
    for i, (ax, layer) in enumerate(zip(axes, show, strict=False)):
        sub = pw[pw["layer"] == layer]
        order = list(pd.unique(sub["model_a"]))
        mat = sub.pivot(index="model_a", columns="model_b", values="similarity").reindex(index=order, columns=order)
        labels = [method_label(m).removeprefix("Expert ") for m in order]
        sns.heatmap(mat, ax=ax, vmin=vmin, vmax=1.0, cmap="rocket", square=True, cbar=i == len(show) - 1,
                    cbar_kws={"label": f"{measure} similarity", "shrink": 0.8},
                    annot=len(order) <= 5, fmt=".2f", annot_kws={"size": MIN_FONT},
                    xticklabels=labels, yticklabels=labels)
        ax.grid(False)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("")
        ax.set_ylabel("expert" if i == 0 else "")
        ax.tick_params(axis="x", rotation=90)
        ax.tick_params(axis="y", rotation=0)
    _suptitle(fig, f"Similarity between task experts ({measure})", subtitle)
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
        ax.errorbar(xs, est, yerr=yerr, fmt="D" if strong else "o", ms=5.5 if strong else 4, capsize=2,
                    lw=1.6 if strong else 1.0, color=colors[h], label=(labels or {}).get(h, method_label(h)),
                    zorder=3 if strong else 2)
    ax.set_xticks(np.arange(len(x_order)))
    ax.set_xticklabels([task_label(t) for t in x_order])
    ax.grid(False, axis="x")
    for i in range(len(x_order) - 1):
        ax.axvline(i + 0.5, color="#cccccc", lw=0.8, zorder=0)


@_styled
def method_accuracy(table: pd.DataFrame, subtitle: str | None = None, title: str = "Accuracy per method",
                    methods: Sequence | None = None, hue: str = "method", ylabel: str = "accuracy (%)",
                    chance: Mapping | None = None) -> Figure:
    """Accuracy per task (and the task mean, last) per method with 95% intervals: the output of
    ``recall.cl_metrics.method_table_ci`` (columns ``method, task, estimate, low, high``); the legend
    under the axes."""
    order = list(methods) if methods is not None else list(pd.unique(table[hue]))
    colors = method_colors(order)
    fig = _figure(4.4)
    ax = fig.subplots()
    tasks = [t for t in pd.unique(table["task"]) if t != "mean"] + (["mean"] if (table["task"] == "mean").any()
                                                                     else [])
    present = [m for m in order if m in set(table[hue])]
    _dodged_points(ax, table, hue, "task", tasks, present, colors)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("")
    if chance:
        for i, t in enumerate(tasks):
            if t in chance:
                ax.hlines(100 * chance[t], i - 0.45, i + 0.45, color="#999999", ls=":", lw=1)
    _legend_below(fig, ax, ncols=4)
    _suptitle(fig, title, subtitle)
    return fig


@_styled
def difference_forest(diffs: pd.DataFrame, subtitle: str | None = None,
                      title: str = "Paired differences (95% bootstrap intervals)", label: str = "comparison",
                      xlabel: str = "difference (percentage points)", scale: float = 100.0) -> Figure:
    """Forest plot of paired differences: one row per ``label`` value (columns ``estimate, low, high``);
    an interval left or right of the zero line is a significant difference (green: above zero, red:
    below)."""
    d = _pct(diffs.reset_index(drop=True), scale=scale)
    fig = _figure(1.3 + 0.3 * len(d))
    ax = fig.subplots()
    y = np.arange(len(d))[::-1]
    sig_pos = (d["low"] > 0).to_numpy()
    sig_neg = (d["high"] < 0).to_numpy()
    colors = np.where(sig_pos, "#1a7f37", np.where(sig_neg, _RECALL_RED, "#555555"))
    for yi, (_, row), c in zip(y, d.iterrows(), colors, strict=False):
        ax.errorbar(row["estimate"], yi, xerr=_xerr(row), fmt="o", color=c, capsize=2.5, ms=4.5)
    ax.axvline(0, color="#333333", lw=0.9)
    ax.set_yticks(y)
    ax.set_yticklabels([str(v) for v in d[label]])
    ax.set_xlabel(xlabel)
    _suptitle(fig, title, subtitle)
    return fig


def _variants(table: pd.DataFrame, hue: str) -> list:
    variants = list(pd.unique(table[hue]))
    return ["default"] + [v for v in variants if v != "default"] if "default" in variants else variants


@_styled
def ablation_means(table: pd.DataFrame, subtitle: str | None = None, hue: str = "variant",
                   title: str = "RECALL ablations: mean accuracy over the training tasks") -> Figure:
    """Mean accuracy per ablation variant with 95% intervals (rows ``task == "mean"`` of a
    ``method_table_ci`` table whose method column is ``hue``), the default first, red, and its estimate
    as a dashed line."""
    mean = table[table["task"] == "mean"].reset_index(drop=True)
    variants = _variants(mean, hue)
    m = _pct(mean.set_index(hue).reindex(variants).reset_index())
    fig = _figure(1.3 + 0.32 * len(variants))
    ax = fig.subplots()
    y = np.arange(len(variants))[::-1]
    for yi, (_, row) in zip(y, m.iterrows(), strict=False):
        c = _RECALL_RED if row[hue] == "default" else "#333333"
        ax.errorbar(row["estimate"], yi, xerr=_xerr(row), fmt="D" if row[hue] == "default" else "o", color=c,
                    capsize=2.5, ms=5)
    if "default" in variants:
        ax.axvline(float(m.loc[m[hue] == "default", "estimate"].iloc[0]), color=_RECALL_RED, ls="--", lw=0.9)
    ax.set_yticks(y)
    ax.set_yticklabels(variants)
    ax.set_xlabel("mean accuracy (%)")
    _suptitle(fig, title, subtitle)
    return fig


@_styled
def ablation_tasks(table: pd.DataFrame, subtitle: str | None = None, hue: str = "variant",
                   title: str = "RECALL ablations: accuracy per training task") -> Figure:
    """Accuracy per task of each ablation variant (rows other than the task mean of a ``method_table_ci``
    table whose method column is ``hue``): one row per variant, one colour per task."""
    per = _pct(table[table["task"] != "mean"])
    variants = _variants(per, hue)
    tasks = list(pd.unique(per["task"]))
    pal = dict(zip(tasks, sns.color_palette("colorblind", len(tasks)), strict=False))
    fig = _figure(1.6 + 0.32 * len(variants))
    ax = fig.subplots()
    ypos = dict(zip(variants, np.arange(len(variants))[::-1], strict=False))
    for j, t in enumerate(tasks):
        sub = per[per["task"] == t]
        off = (j - (len(tasks) - 1) / 2) * 0.1
        ax.scatter(sub["estimate"], [ypos[v] + off for v in sub[hue]], color=pal[t], s=20, label=task_label(t))
    ax.set_yticks(list(ypos.values()))
    ax.set_yticklabels(variants)
    ax.set_xlabel("accuracy (%)")
    _legend_below(fig, ax, ncols=len(tasks), title=None)
    _suptitle(fig, title, subtitle)
    return fig


# ------------------------------------------------------------------------------------------ weights


@_styled
def weights_heatmap(weights: pd.DataFrame, subtitle: str | None = None,
                    title: str = "RECALL merge weights per layer") -> Figure:
    """Heatmap of a layer-wise weights table (rows: layers, columns: models; ``recall_weights.csv``), drawn
    with the layers across and the models down; white is the uniform weight."""
    w = weights.copy().T
    w.index = [method_label(c) for c in w.index]
    n_models, n_layers = w.shape
    fig = _figure(1.7 + 0.32 * n_models)
    ax = fig.subplots()
    uniform = 1.0 / n_models
    span = max(float(np.nanmax(np.abs(w.to_numpy() - uniform))), 1e-6)
    sns.heatmap(w, ax=ax, cmap="vlag", center=uniform, vmin=max(0.0, uniform - span), vmax=min(1.0, uniform + span),
                annot=n_layers <= 8 and n_models <= 8, fmt=".2f", annot_kws={"size": MIN_FONT},
                cbar_kws={"label": f"weight\n(white: uniform {uniform:.2f})"},
                xticklabels=max(1, n_layers // 10))
    ax.grid(False)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("")
    ax.tick_params(axis="x", rotation=0)
    ax.tick_params(axis="y", rotation=0)
    _suptitle(fig, title, subtitle)
    return fig


# --------------------------------------------------------------------------------------- sequential


@_styled
def r_matrix_heatmap(R: pd.DataFrame, method: str, subtitle: str | None = None, n_seq: int | None = None,
                     title: str = "Accuracy after each step") -> Figure:
    """One method's R matrix: rows = steps (after training on the task of that row), columns = tasks in
    training order, then unseen tasks (evaluated after the last step only; a white line after the first
    ``n_seq`` columns separates them); accuracy in %, on a fixed 0-100 scale."""
    data = R.astype(float) * 100
    fig = _figure(1.5 + 0.4 * R.shape[0], width=1.8 + 0.7 * R.shape[1])
    ax = fig.subplots()
    sns.heatmap(data, ax=ax, vmin=0, vmax=100, cmap="viridis", annot=True, fmt=".0f", annot_kws={"size": MIN_FONT},
                xticklabels=[task_label(t) for t in R.columns], yticklabels=[str(s) for s in R.index],
                mask=data.isna(), cbar_kws={"label": "accuracy (%)"})
    ax.grid(False)
    if n_seq is not None and 0 < n_seq < R.shape[1]:
        ax.axvline(n_seq, color="white", lw=3)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("after step")
    ax.tick_params(axis="y", rotation=0)
    _suptitle(fig, f"{method_label(method)}: {title}", subtitle)
    return fig


@_styled
def forgetting_curves(rmats: Mapping[str, pd.DataFrame], task_order: Sequence[str], subtitle: str | None = None,
                      title: str = "Accuracy on each task across the sequence", ncols: int = 3) -> Figure:
    """One small panel per task of the sequence: accuracy after each step, one line per method; the dotted
    line marks the step that trained the task (drops after it are forgetting)."""
    tasks = list(task_order)
    ncols = min(ncols, len(tasks))
    methods = list(rmats)
    colors = method_colors(methods)
    fig = _figure(1.4 + 2.0 * math.ceil(len(tasks) / ncols))
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
        ax.set_xlabel("after step" if i >= len(tasks) - ncols else "")
        if i % ncols == 0:
            ax.set_ylabel("accuracy (%)")
    _legend_below(fig, axes[0], ncols=len(methods))
    _suptitle(fig, title, subtitle)
    return fig


# ---------------------------------------------------------------------------------------- efficiency


def _first_col(df: pd.DataFrame, *names: str) -> str:
    for n in names:
        if n in df.columns:
            return n
    raise ValueError(f"table has none of the columns {names}; columns are {list(df.columns)}")


EFFICIENCY = {"time": (("wall_s", "seconds"), "wall time (s)", "Merge time by number of models"),
              "memory": (("peak_rss_mib", "peak_rss_growth_mib"), "peak RSS (MiB)",
                         "Merge memory by number of models")}


@_styled
def efficiency_plot(eff: pd.DataFrame, subtitle: str | None = None, measure: str = "memory") -> Figure:
    """Wall time (``measure="time"``) or peak memory (``"memory"``) of the layer-wise merge, a whole
    process, against the number of models, one line per engine (``recall.experiments.efficiency``: columns
    ``models, engine, wall_s, peak_rss_mib``)."""
    if measure not in EFFICIENCY:
        raise ValueError(f"measure must be one of {', '.join(EFFICIENCY)}, got {measure!r}")
    names, ylabel, title = EFFICIENCY[measure]
    col = _first_col(eff, *names)
    fig = _figure(3.4, width=5.0)
    ax = fig.subplots()
    engines = list(pd.unique(eff["engine"]))
    pal = dict(zip(engines, sns.color_palette("colorblind", len(engines)), strict=False))
    sns.lineplot(data=eff, x="models", y=col, hue="engine", marker="o", palette=pal, ax=ax, errorbar=None)
    ax.set_xlabel("models merged")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    if ax.get_legend() is not None:
        sns.move_legend(ax, "best", title="engine")
    size = f", {eff['model_mib'].iloc[0]:,.0f} MiB per model" if "model_mib" in eff and len(eff) else ""
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
    return {"interexpert": interexpert_curve(t["interexpert_curve"], sub),
            "interexpert_layers": interexpert_heatmaps(t["pairwise"], sub),
            "adjacent": adjacent_similarity(t["adjacent"], sub),
            "to_base": similarity_to_base(t["to_base"], sub)}


def _single_figures(t, sub, order):
    acc = t["single_accuracy"]
    return {"single_accuracy": method_accuracy(_scope(acc, "own task"), sub,
                                               title="Single-model merging: accuracy on the expert's own task"),
            "single_accuracy_unseen": method_accuracy(_scope(acc, "unseen tasks"), sub,
                                                      title="Single-model merging: accuracy on the unseen tasks"),
            "single_diff": difference_forest(_comparisons(t["single_diff"]), sub,
                                             title="Single-model merging: RECALL minus each method\n"
                                                   "(task mean, paired 95% intervals)")}


def _multi_figures(t, sub, order):
    return {"multi_recall_weights": weights_heatmap(t["multi_recall_weights"], sub,
                                                    title="RECALL multi-model merge: weights per layer"),
            "multi_accuracy": method_accuracy(t["multi_train"], sub,
                                              title="Multi-model merging: accuracy on the training tasks"),
            "multi_accuracy_unseen": method_accuracy(t["multi_unseen"], sub,
                                                     title="Multi-model merging: accuracy on the unseen tasks"),
            "multi_diff": difference_forest(_comparisons(t["multi_diff"]), sub,
                                            title="Multi-model merging: RECALL minus each method\n"
                                                  "(task mean, paired 95% intervals)")}


def _sequential_figures(t, sub, order):
    R = {k.removeprefix("R_"): v for k, v in t.items() if k.startswith("R_")}
    if R:  # the tasks the chains learned (a profile's chain_length may stop them before the order ends)
        learned = {str(x) for v in R.values() for x in v.columns}
        order = [x for x in order if x in learned]
    out = {f"seq_r_{m}": r_matrix_heatmap(v, m, sub, n_seq=len(order)) for m, v in R.items()}
    return {**out, "seq_forgetting": forgetting_curves(R, order, sub),
            "seq_metrics": method_accuracy(t["seq_metrics"].rename(columns={"metric": "task"}), sub,
                                           title="Sequential fine-tuning: CL metrics with 95% intervals",
                                           ylabel="score (percentage points)")}


READING_LABELS = {"default": "relative (default)", "literal": "literal (negative control)",
                  "sklearn_rbf": "literal, sklearn gamma = 1/H", "prompt_pooling": "relative, whole-prompt pooling"}


@_styled
def reading_weights(diag: pd.DataFrame, subtitle: str | None = None) -> Figure:
    """RECALL's weight of each pool model by layer, one panel per reading (``recall_diagnostics``); uniform
    weights are the dotted line."""
    variants = list(pd.unique(diag["variant"]))
    fig = _figure(1.2 + 2.0 * len(variants))
    axes = _grid(fig, len(variants), 1, sharex=True, sharey=True)
    models = list(pd.unique(diag["model"]))
    pal = {method_label(m): c for m, c in zip(models, sns.color_palette("colorblind", len(models)), strict=False)}
    pal[method_label("base")] = "#222222"
    for ax, v in zip(axes, variants, strict=False):
        sub = diag[diag["variant"] == v].assign(model=lambda d: d["model"].map(method_label))
        sns.lineplot(data=sub, x="layer", y="weight", hue="model", ax=ax, palette=pal, marker="o", markersize=3)
        ax.axhline(1 / len(models), color="#999999", linestyle=":", linewidth=1)
        ax.set_title(READING_LABELS.get(v, v))
        ax.set_ylabel("weight")
        ax.set_xlabel("layer (hidden-state index; 0 = embeddings)" if ax is axes[-1] else "")
        if ax is not axes[0] and ax.get_legend() is not None:
            ax.get_legend().remove()
    _legend_below(fig, axes[0], ncols=3)
    _suptitle(fig, "RECALL's merge weights by layer, per reading (M_N = last expert)", subtitle)
    return fig


@_styled
def reading_divergence(diag: pd.DataFrame, subtitle: str | None = None) -> Figure:
    """delta = D/S of each pool model to M_N by layer (default reading), and S itself: which regime a merge is in."""
    d = diag[(diag["variant"] == "default") & (diag["model"] != diag["anchor"])]
    fig = _figure(5.0)
    ax1, ax2 = _grid(fig, 2, 1, sharex=True)
    sub = d.assign(model=lambda x: x["model"].map(method_label))
    sns.lineplot(data=sub, x="layer", y="delta", hue="model", ax=ax1, marker="o", markersize=3,
                 palette="colorblind")
    ax1.set_ylabel("delta = D / S")
    ax1.set_title("paired divergence from M_N, relative to the spread between samples")
    s = d.drop_duplicates("layer")
    ax2.plot(s["layer"], s["S"], marker="o", markersize=3, color="#222222")
    ax2.set_yscale("log")
    ax2.set_ylabel("S (log scale)")
    ax2.set_title("S: median squared distance between two samples (M_N)")
    ax2.set_xlabel("layer (hidden-state index; 0 = embeddings)")
    _legend_below(fig, ax1, ncols=3)
    _suptitle(fig, "What RECALL's default weights are computed from", subtitle)
    return fig


@_styled
def pilot_losses(losses: pd.DataFrame, subtitle: str | None = None) -> Figure:
    """Training loss per optimizer step of every pilot expert: one panel per recipe, one line per task."""
    recipes = list(pd.unique(losses["recipe"]))
    fig = _figure(1.2 + 1.9 * len(recipes))
    axes = _grid(fig, len(recipes), 1, sharey=True)
    for ax, r in zip(axes, recipes, strict=False):
        sub = losses[losses["recipe"] == r].assign(task=lambda d: d["task"].map(task_label))
        sns.lineplot(data=sub, x="step", y="loss", hue="task", ax=ax, palette="colorblind")
        ax.set_title(r)
        ax.set_ylabel("answer loss")
        if ax is not axes[0] and ax.get_legend() is not None:
            ax.get_legend().remove()
    _legend_below(fig, axes[0], ncols=5)
    _suptitle(fig, "Pilot: training loss of each expert", subtitle)
    return fig


def _pilot_figures(t, sub, order):
    return {"pilot_losses": pilot_losses(t["pilot_losses"], sub)} if len(t.get("pilot_losses", ())) else {}


def _ablation_figures(t, sub, order):
    d = t["ablation_diff"]
    d = d[d["task"] == "mean"].assign(comparison=lambda x: x["variant"] + " - default")
    return {"ablation_accuracy": ablation_means(t["ablation_accuracy"], sub),
            "ablation_tasks": ablation_tasks(t["ablation_accuracy"], sub),
            "ablation_diff": difference_forest(d, sub, title="Ablations: variant minus default\n(task mean, "
                                                             "paired 95% intervals)"),
            **({"recall_readings": reading_weights(t["recall_diagnostics"], sub),
                "recall_divergence": reading_divergence(t["recall_diagnostics"], sub)}
               if len(t.get("recall_diagnostics", ())) else {})}


def _efficiency_figures(t, sub, order):
    return {f"efficiency_{m}": efficiency_plot(t["efficiency"], sub, m) for m in ("memory", "time")}


# notebook -> function(tables, subtitle, task order) -> {figure name: Figure}
FIGURES = {"00_pilot": _pilot_figures, "01_representations": _representation_figures,
           "02_single_model": _single_figures, "03_multi_model": _multi_figures, "04_sequential": _sequential_figures,
           "05_ablations": _ablation_figures, "06_efficiency": _efficiency_figures}

# figure -> the tables it is drawn from ("{method}": the method of the figure's name; "*": every one there is)
SOURCES = {"interexpert": ("interexpert_curve",), "interexpert_layers": ("pairwise",), "adjacent": ("adjacent",),
           "to_base": ("to_base",), "single_accuracy": ("single_accuracy",),
           "single_accuracy_unseen": ("single_accuracy",), "single_diff": ("single_diff",),
           "multi_recall_weights": ("multi_recall_weights",), "multi_accuracy": ("multi_train",),
           "multi_accuracy_unseen": ("multi_unseen",), "multi_diff": ("multi_diff",),
           "seq_r_{method}": ("R_{method}",), "seq_forgetting": ("R_*",), "seq_metrics": ("seq_metrics",),
           "ablation_accuracy": ("ablation_accuracy",), "ablation_tasks": ("ablation_accuracy",),
           "ablation_diff": ("ablation_diff",), "efficiency_memory": ("efficiency",),
           "efficiency_time": ("efficiency",), "recall_readings": ("recall_diagnostics",),
           "recall_divergence": ("recall_diagnostics",), "pilot_losses": ("pilot_losses",)}


def sources(figure: str) -> tuple[str, ...]:
    """The tables figure ``figure`` is drawn from (``SOURCES``; ``seq_r_sft`` -> ``R_sft``); ``R_*`` stands
    for every R matrix of the folder."""
    if figure in SOURCES:
        return SOURCES[figure]
    for pattern, tables in SOURCES.items():
        m = re.fullmatch(re.sub(r"\{(\w+)\}", r"(?P<\1>[A-Za-z0-9_.-]+)", pattern), figure)
        if "{" in pattern and m:
            return tuple(t.format(**m.groupdict()) for t in tables)
    raise KeyError(f"no figure named {figure!r} in recall.plots.SOURCES")


def figures(notebook: str, tables: Mapping[str, pd.DataFrame], subtitle: str | None = None,
            task_order: Sequence[str] = ()) -> dict[str, Figure]:
    """Every figure of ``notebook`` (``FIGURES``) from its tables (measured and derived, by name)."""
    fn = FIGURES.get(notebook)
    return {} if fn is None else fn(tables, subtitle, list(task_order))
