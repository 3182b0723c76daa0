"""Every table of ``results/<profile>/``: its declared columns and the one function that makes it.

Two kinds of table:

- **measured** tables come from the experiments (``recall.experiments``): per-example predictions,
  representation similarities, timings. A notebook writes them first.
- **derived** tables are computed here from the measured ones, by :func:`derive`, which reads the
  measured CSV files back from disk. The notebooks and the rebuild test call the same function on
  the same bytes, so a derived table is always reproducible from the committed measured files.

``SPECS`` declares every table: its columns (``None`` where they depend on the run, as the task
columns of an R matrix), whether its CSV has an index column, the notebook that writes it and
what it holds. :func:`to_csv` is the one way a table becomes a file; writing a frame whose columns
differ from its spec is an error.

Intervals are 95% paired percentile bootstrap intervals over test examples (``recall.cl_metrics``).
The row ``task == "mean"`` (``MEAN``) of an accuracy or difference table is the unweighted mean over
its tasks.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .cl_metrics import (
    DIFF_TESTS,
    bootstrap_ci,
    cl_difference_ci,
    cl_metrics_ci,
    macro_f1_table_ci,
    majority_rows,
    method_table_ci,
    paired_difference_ci,
    pooled_cl_difference_ci,
    r_matrices,
)

MEAN = "mean"  # the task label of the task-mean row
CI = ("estimate", "low", "high")
# The equivalence margin of every difference (accuracy or CL metric, as a fraction): fixed here before any run,
# never tuned. Two methods whose difference lies within +-2 points by the two one-sided tests are "equivalent".
EQUIVALENCE_MARGIN = 0.02
BOOT_TESTS = ("p_greater", "p_less", "p_equiv")
FLOAT_FORMAT = "%.6g"


@dataclass(frozen=True)
class Spec:
    """A results table: ``columns`` (``None``: set by the run), ``index`` (the CSV's first column is an
    index named ``index``), the ``notebook`` that writes it, ``kind`` (measured / derived) and ``doc``."""

    name: str
    notebook: str
    kind: str
    columns: tuple[str, ...] | None
    doc: str
    index: str | None = None


_N1, _N2, _N3, _N4, _N5, _N6 = ("01_representations", "02_single_model", "03_multi_model", "04_sequential",
                                "05_ablations", "06_efficiency")
_ACC = ("method", "task", *CI, "n")
_DIFF = ("task", *CI, "n", *DIFF_TESTS)

SPECS: dict[str, Spec] = {s.name: s for s in (
    # 00 pilot (run once to fix the testbed; recall.pilot)
    Spec("pilot_scoring", "00_pilot", "measured", ("model", "task", "casing", "scoring", "n", "accuracy", "macro_f1",
                                                   "balanced_accuracy", "labels_predicted", "labels", "predicted"),
         "every scoring rule and label casing on the validation split: base on every task, experts on theirs"),
    Spec("pilot_training", "00_pilot", "measured", ("recipe", "task", "casing", "scoring", "n_train", "epochs", "lr",
                                                    "lora_r", "steps", "train_tokens", "train_s", "last_loss",
                                                    "base_macro_f1", "expert_macro_f1", "gain", "gate_met",
                                                    "predicted", "chosen"),
         "each training recipe tried (cheapest first), per scoring rule: expert vs base macro-F1 on validation, the "
         "quality gate and the labels the expert predicts"),
    Spec("pilot_losses", "00_pilot", "measured", ("recipe", "task", "step", "loss"),
         "training loss of every pilot expert per optimizer step"),
    Spec("pilot_choice", "00_pilot", "derived", ("recipe", "scoring", "casing", "gate_met", "smallest_gain",
                                                 "unreachable"),
         "what the pilot chose, whether the gate is met, and the labels no model predicts on validation"),
    # 01 representations
    Spec("adjacent", _N1, "measured", ("model", "layer", "measure", "similarity"),
         "similarity of hidden states l-1 and l within each model, per measure"),
    Spec("pairwise", _N1, "measured", ("layer", "model_a", "model_b", "measure", "similarity"),
         "similarity between every pair of task experts per layer (hidden-state index, 0 = embeddings)"),
    Spec("to_base", _N1, "measured", ("layer", "model", "measure", "similarity"),
         "similarity of each expert to the base model per layer"),
    Spec("c1_replicates", _N1, "measured", ("replicate", "measure", "statistic", "value"),
         "C1's statistics (recall.tables.c1_statistics) in bootstrap replicates over probe samples and experts"),
    Spec("interexpert_curve", _N1, "derived", ("measure", "layer", "similarity", "low", "high", "n_pairs"),
         "mean similarity between distinct experts per layer; intervals resample expert pairs"),
    Spec("c1_summary", _N1, "derived", ("measure", "statistic", *CI, "blocks", "third", "first_layers",
                                        "last_layers", "n_pairs", "n_samples"),
         "claim C1 statistics over blocks 1..L (recall.tables.c1_statistics) with intervals from c1_replicates"),
    # 02 single-model merging
    Spec("single_examples", _N2, "measured", ("method", "expert_task", "task", "example", "label", "pred",
                                              "correct"),
         "per-example predictions of every single-model merge (and base, expert) on its task and the unseen tasks"),
    Spec("single_accuracy", _N2, "derived", (*_ACC, "scope"),
         "accuracy per method on the expert's own task and (averaged over the merges of all experts) unseen tasks"),
    Spec("single_diff", _N2, "derived", (*_DIFF, "scope", "other"),
         "paired difference RECALL minus each other method, per task, task mean and leave-one-task-out means, with "
         "the tests of the verdicts (bootstrap p-values, TOST within the margin, exact McNemar)"),
    # 03 multi-model merging
    Spec("multi_examples", _N3, "measured", ("method", "task", "example", "label", "pred", "correct"),
         "per-example predictions of every multi-model merge and reference on every task"),
    Spec("multi_recall_weights", _N3, "measured", None,
         "RECALL's merge weights (rows: hidden-state index; columns: the pool, oldest first)", index="layer"),
    Spec("multi_tuning", _N3, "measured", ("scenario", "method", "point", "options", "macro_f1", "accuracy",
                                           "chosen"),
         "every grid point of every method's main knob, scored on the validation split (recall.tuning)"),
    Spec("multi_train", _N3, "derived", _ACC, "accuracy per method on the training tasks (experts: own task)"),
    Spec("multi_unseen", _N3, "derived", _ACC, "accuracy per method on the unseen tasks"),
    Spec("multi_f1", _N3, "derived", (*_ACC, "scope"),
         "macro-F1 per method on the training tasks (experts: own task) and the unseen tasks, with the "
         "majority-class baseline (paired bootstrap intervals)"),
    Spec("multi_normalized", _N3, "derived", ("method", "task", *CI),
         "merged accuracy / the expert's accuracy on that task, and its task mean"),
    Spec("multi_diff", _N3, "derived", (*_DIFF, "scope", "other"),
         "paired difference RECALL minus each other method, per task, task mean and leave-one-task-out means, with "
         "the tests of the verdicts"),
    # 04 sequential fine-tuning
    Spec("seq_examples", _N4, "measured", ("method", "step", "task", "example", "label", "pred", "correct"),
         "per-example predictions after every step of every chain"),
    Spec("seq_base_examples", _N4, "measured", ("task", "example", "label", "pred", "correct"),
         "per-example predictions of the base model (for FWT)"),
    Spec("seq_tuning", _N4, "measured", ("scenario", "method", "point", "options", "macro_f1", "accuracy",
                                         "chosen"),
         "every grid point of the sequential methods' knobs on the first two steps of the order (validation)"),
    Spec("seq_metrics", _N4, "derived", ("method", "metric", *CI), "AP, BWT, FWT, forgetting, AP_unseen per method"),
    Spec("R_{method}", _N4, "derived", None, "accuracy after each step (rows) on each task (columns)", index="step"),
    Spec("base_scores", _N4, "derived", ("task", "accuracy"), "the base model's accuracy per task"),
    Spec("seq_diff", _N4, "derived", ("other", "metric", *CI, *BOOT_TESTS),
         "paired difference RECALL minus each method per metric, with bootstrap p-values and TOST"),
    # 05 ablations
    Spec("ablation_examples", _N5, "measured", ("variant", "task", "example", "label", "pred", "correct"),
         "per-example predictions of every RECALL variant (multi-model scenario, training tasks)"),
    Spec("ablation_accuracy", _N5, "derived", ("variant", "task", *CI, "n", "options"),
         "accuracy per variant and its options (a diff over RECALL's defaults)"),
    Spec("ablation_diff", _N5, "derived", (*_DIFF, "variant", "difference"),
         "paired difference variant minus default, per task, task mean and leave-one-task-out means, with tests"),
    Spec("recall_diagnostics", _N5, "measured", ("variant", "layer", "anchor", "model", "D", "S", "delta",
                                                 "similarity", "weight"),
         "per layer and pool model of the multi-model RECALL merge of each reading (variant): D (mean paired squared "
         "distance to M_N), S (M_N's median squared distance between samples), delta = D/S, similarity, weight"),
    # 06 efficiency
    Spec("efficiency", _N6, "measured", ("models", "engine", "model_mib", "wall_s", "peak_rss_mib", "cpu_s"),
         "wall time and peak RSS of the layer-wise merge (whole process) by number of models and engine"),
    # 07 claims
    Spec("seq_diff_pooled", "07_claims", "derived", ("other", "metric", *CI, *BOOT_TESTS, "n_chains"),
         "RECALL minus each sequential baseline per metric, pooled over every chain (task orders, seeds) with a "
         "nested bootstrap: chains resampled, test examples inside each"),
    Spec("claims", "07_claims", "derived", ("claim", "statement", "verdict", "evidence", "drivers", "paper"),
         "one row per claim of the paper: its verdict under recall.claims' rules and the evidence"),
    Spec("claim_comparisons", "07_claims", "derived", ("claim", "source", "comparison", "scope", "metric", "better",
                                                       *CI, "p_support", "p_refute", "p_equiv", "verdict",
                                                       "in_verdict", "leave_one_task_out"),
         "every comparison a verdict rests on (or shown beside it), with its interval"),
    Spec("merge_speed", "benchmarks/merge_speed.py", "measured", None,
         "our merges against mergekit, whole processes (written by the benchmark, read by 06)"),
)}


def spec_of(name: str) -> Spec:
    """The spec of table ``name`` (``R_sft`` matches ``R_{method}``)."""
    if name in SPECS:
        return SPECS[name]
    for s in SPECS.values():
        if "{" in s.name and re.fullmatch(re.sub(r"\{\w+\}", r"[A-Za-z0-9_.-]+", s.name), name):
            return s
    raise KeyError(f"no table named {name!r} is declared in recall.tables.SPECS")


def check_columns(name: str, df: pd.DataFrame) -> None:
    """Raise when ``df``'s columns are not the declared ones (in order)."""
    spec = spec_of(name)
    if spec.columns is not None and tuple(df.columns) != spec.columns:
        raise ValueError(f"table {name}: columns {list(df.columns)} differ from the declared "
                         f"{list(spec.columns)} (recall.tables.SPECS)")
    if spec.index is not None and df.index.name not in (spec.index, None):
        raise ValueError(f"table {name}: index {df.index.name!r}, declared {spec.index!r}")


def to_csv(name: str, df: pd.DataFrame) -> str:
    """The CSV text of table ``name``, checked against its spec: what every results file holds. Derived
    tables round floats to ``%.6g``; measured tables keep every digit (shortest round-trip form), so that
    the tables derived from them are the same whether computed in memory or from the files."""
    check_columns(name, df)
    spec = spec_of(name)
    return df.to_csv(index=spec.index is not None, float_format=FLOAT_FORMAT if spec.kind == "derived" else None)


def read(path: str | Path, name: str | None = None) -> pd.DataFrame:
    """A results table back from its CSV (index column restored where the spec has one)."""
    path = Path(path)
    spec = spec_of(name or path.stem)
    return pd.read_csv(path, index_col=0 if spec.index else None)


# ------------------------------------------------------------------------------------------- params


@dataclass(frozen=True)
class Params:
    """What the derived tables depend on besides the measured tables."""

    tasks: tuple[str, ...]
    unseen: tuple[str, ...]
    task_order: tuple[str, ...]
    n_boot: int
    seed: int = 0
    n_samples: int = 32  # 01: probe prompts requested (spread over the tasks)
    ablation_options: Mapping[str, dict] = field(default_factory=dict)
    chain_length: int = 0  # the sequential chains learn task_order[:chain_length] (0: every task)

    @property
    def chain(self) -> tuple[str, ...]:
        """The tasks the sequential chains learned, in training order."""
        return self.task_order[: self.chain_length or len(self.task_order)]

    @classmethod
    def of(cls, profile, seed: int = 0, **notebook_params) -> Params:
        """From a ``recall.profiles.Profile`` (or its ``to_dict()``, as in provenance) and the notebook's
        parameters (``task_order``, ``n_samples``)."""
        from .profiles import ABLATIONS

        p = profile if isinstance(profile, Mapping) else profile.to_dict()
        order = notebook_params.get("task_order") or p["task_order"]
        return cls(tasks=tuple(p["tasks"]), unseen=tuple(p["unseen"]), task_order=tuple(order),
                   n_boot=int(p["n_boot"]), seed=int(seed), n_samples=int(notebook_params.get("n_samples", 32)),
                   ablation_options=ABLATIONS, chain_length=int(p.get("chain_length", 0)))

    @classmethod
    def from_provenance(cls, entry: Mapping) -> Params:
        """From one notebook's entry of ``provenance.json``."""
        params = {k: v for k, v in (entry.get("parameters") or {}).items() if k != "profile"}
        return cls.of(entry["profile"], seed=int(params.pop("seed", 0)), **params)


def probes_per_task(n_samples: int, n_tasks: int) -> int:
    """Probe prompts per training task in the representation analysis (01): an even split of ``n_samples``."""
    return max(1, n_samples // n_tasks)


# --------------------------------------------------------------------------------------- derivations


NULL_MARK = "-seed"  # the same-task expert of another seed in the representation tables: C1's null


def _cross_task(pairwise: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``pairwise`` between task experts (the null expert left out)."""
    keep = ~pairwise["model_a"].str.contains(NULL_MARK) & ~pairwise["model_b"].str.contains(NULL_MARK)
    return pairwise[keep]


def _pair_bootstrap(pairwise: pd.DataFrame, n_boot: int, seed: int) -> tuple[pd.DataFrame, int]:
    """(bootstrap replicates of the mean over resampled unordered expert pairs, per (measure, layer); number of
    pairs)."""
    off = _cross_task(pairwise)
    off = off[off["model_a"] < off["model_b"]]
    wide = off.pivot_table(index=["model_a", "model_b"], columns=["measure", "layer"], values="similarity")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(wide), size=(n_boot, len(wide)))
    boot = pd.DataFrame(wide.to_numpy()[idx].mean(axis=1), columns=wide.columns)  # n_boot x (measure, layer)
    return boot, len(wide)


def mean_offdiag(pairwise: pd.DataFrame) -> pd.DataFrame:
    """Mean similarity between distinct task experts per layer and measure (the 'shallow agree, deep diverge'
    curve); the same-task null expert is left out."""
    off = _cross_task(pairwise)
    off = off[off["model_a"] != off["model_b"]]
    return off.groupby(["measure", "layer"], as_index=False)["similarity"].mean()


def null_curve(pairwise: pd.DataFrame) -> pd.DataFrame:
    """Similarity per layer and measure between the two experts of one task (two seeds): C1's null."""
    null = pairwise[pairwise["model_b"].str.contains(NULL_MARK) & ~pairwise["model_a"].str.contains(NULL_MARK)]
    task = null["model_b"].str.split(NULL_MARK).str[0]
    return null[null["model_a"] == task].groupby(["measure", "layer"], as_index=False)["similarity"].mean()


def interexpert_curve(pairwise: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """``interexpert_curve``: :func:`mean_offdiag` with a percentile interval over resampled expert pairs."""
    curve = mean_offdiag(pairwise)
    boot, n_pairs = _pair_bootstrap(pairwise, n_boot, seed)
    q = boot.quantile([0.025, 0.975])
    curve["low"] = [q.loc[0.025, (m, lay)] for m, lay in zip(curve["measure"], curve["layer"])]
    curve["high"] = [q.loc[0.975, (m, lay)] for m, lay in zip(curve["measure"], curve["layer"])]
    curve["n_pairs"] = n_pairs
    return curve


def spearman_depth(curve: pd.DataFrame) -> float:
    """Rank correlation between layer depth and mean inter-expert similarity (negative = diverge with depth)."""
    from scipy.stats import spearmanr

    return float(spearmanr(curve["layer"], curve["similarity"]).statistic)


C1_STATISTICS = ("spearman_depth", "first_third_mean", "last_third_mean", "first_minus_last", "depth_ratio",
                 "null_last_third_mean", "task_ratio")


def c1_statistics(cross, null=None) -> dict[str, float]:
    """C1's statistics of a cross-task similarity curve ``cross`` and the same-task null curve ``null`` over the
    hidden states 0..L (arrays), computed on the transformer blocks 1..L (hidden state 0, the embedding output,
    is left out: LoRA does not train the embeddings). With the divergence D = 1 - similarity and k = L // 3:

    - ``spearman_depth``: rank correlation of block index and cross-task similarity (negative: diverge with depth);
    - ``first_third_mean``, ``last_third_mean``, ``first_minus_last``: mean similarity over the first and last
      k blocks, and their difference;
    - ``depth_ratio`` = D(last third) / D(first third): how many times more the experts diverge in deep blocks;
    - ``null_last_third_mean`` and ``task_ratio`` = D_cross(last third) / D_null(last third): how many times more
      experts of different tasks diverge than two seeds of one task (task-driven, not seed noise).
    """
    from scipy.stats import spearmanr

    c = np.asarray(cross, dtype=float)[1:]
    L = len(c)
    k = max(1, L // 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant curves give NaN correlations
        rho = float(spearmanr(np.arange(1, L + 1), c).statistic)
    first, last = float(c[:k].mean()), float(c[-k:].mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {"spearman_depth": rho, "first_third_mean": first, "last_third_mean": last,
               "first_minus_last": first - last, "depth_ratio": float(np.float64(1 - last) / (1 - first))}
        if null is not None:
            n_last = float(np.asarray(null, dtype=float)[1:][-k:].mean())
            out["null_last_third_mean"] = n_last
            out["task_ratio"] = float(np.float64(1 - last) / (1 - n_last))
    return out


def c1_summary(pairwise: pd.DataFrame, replicates: pd.DataFrame, n_samples: int) -> pd.DataFrame:
    """``c1_summary``: per measure, :func:`c1_statistics` of the cross-task curve and the same-task null curve of
    ``pairwise``, with 95% percentile intervals from ``c1_replicates`` (probe samples and experts resampled)."""
    curve, null = mean_offdiag(pairwise), null_curve(pairwise)
    n_pairs = len(_cross_task(pairwise).query("model_a < model_b")[["model_a", "model_b"]].drop_duplicates())
    rows = []
    for measure in pd.unique(curve["measure"]):
        c = curve[curve["measure"] == measure].sort_values("layer")["similarity"].to_numpy()
        nl = null[null["measure"] == measure].sort_values("layer")["similarity"].to_numpy()
        est = c1_statistics(c, nl if len(nl) == len(c) else None)
        L = len(c) - 1
        k = max(1, L // 3)
        reps = replicates[replicates["measure"] == measure]
        for stat, value in est.items():
            vals = reps.loc[reps["statistic"] == stat, "value"].to_numpy(dtype=float)
            ok = vals[np.isfinite(vals)]
            lo, hi = (np.quantile(ok, [0.025, 0.975]) if len(ok) else (np.nan, np.nan))
            rows.append({"measure": measure, "statistic": stat, "estimate": value, "low": lo, "high": hi,
                         "blocks": L, "third": k, "first_layers": f"1-{k}", "last_layers": f"{L - k + 1}-{L}",
                         "n_pairs": n_pairs, "n_samples": n_samples})
    return pd.DataFrame(rows, columns=SPECS["c1_summary"].columns)


def _unseen_mean(df: pd.DataFrame, unseen: Sequence[str]) -> pd.DataFrame:
    """Unseen-task rows with ``correct`` averaged over the merges of all experts (per method, task, example)."""
    return (df[df["task"].isin(unseen)]
            .groupby(["method", "task", "example"], as_index=False, sort=False)["correct"].mean())


def _differences(scopes: Mapping[str, pd.DataFrame], others: Sequence[str], n_boot: int, seed: int,
                 reference: str = "recall") -> pd.DataFrame:
    """``reference`` minus each of ``others`` in every scope: columns task, estimate, low, high, n, scope, other."""
    frames = [paired_difference_ci(d, reference, other, n_boot=n_boot, seed=seed, margin=EQUIVALENCE_MARGIN)
              .assign(scope=scope, other=other) for other in others for scope, d in scopes.items()]
    return pd.DataFrame(pd.concat(frames, ignore_index=True))


def single_model_tables(examples: pd.DataFrame, p: Params) -> dict[str, pd.DataFrame]:
    """``single_accuracy`` and ``single_diff`` from ``single_examples``."""
    own = examples[examples["task"] == examples["expert_task"]]
    unseen = _unseen_mean(examples, p.unseen)
    t_own = method_table_ci(own, n_boot=p.n_boot, seed=p.seed)
    t_unseen = method_table_ci(unseen, n_boot=p.n_boot, seed=p.seed)
    acc = pd.concat([t_own.assign(scope="own task"), t_unseen.assign(scope="unseen tasks")])
    others = [m for m in pd.unique(examples["method"]) if m != "recall"]
    diff = _differences({"own task": own, "unseen tasks": unseen}, others, p.n_boot, p.seed)
    return {"single_accuracy": acc, "single_diff": diff}


EXPERT_PREFIX = "expert-"


def experts_row(df: pd.DataFrame) -> pd.DataFrame:
    """The 'individual experts' reference of a multi-model frame: each expert on its own task."""
    rows = df[df["method"].str.startswith(EXPERT_PREFIX)]
    own = rows[rows["method"].str.removeprefix(EXPERT_PREFIX) == rows["task"]]
    return own.assign(method="experts")


REFERENCES = ("base", "multitask")  # multi-model references that are not merges


def multi_model_tables(examples: pd.DataFrame, p: Params) -> dict[str, pd.DataFrame]:
    """``multi_train``, ``multi_unseen``, ``multi_normalized`` and ``multi_diff`` from ``multi_examples``."""
    main = examples[~examples["method"].str.startswith(EXPERT_PREFIX)]
    train = pd.concat([main[main["task"].isin(p.tasks)], experts_row(examples)], ignore_index=True)
    unseen = main[main["task"].isin(p.unseen)]
    refs = [m for m in REFERENCES if m in set(examples["method"])]
    merges = [m for m in pd.unique(main["method"]) if m not in refs]
    train_m = pd.concat([train, majority_rows(main[main["task"].isin(p.tasks)])], ignore_index=True)
    unseen_m = pd.concat([unseen, majority_rows(unseen)], ignore_index=True)
    out = {"multi_train": method_table_ci(train_m, n_boot=p.n_boot, seed=p.seed),
           "multi_unseen": method_table_ci(unseen_m, n_boot=p.n_boot, seed=p.seed),
           "multi_f1": pd.concat([macro_f1_table_ci(train_m, n_boot=p.n_boot, seed=p.seed).assign(scope="training"),
                                  macro_f1_table_ci(unseen_m, n_boot=p.n_boot, seed=p.seed).assign(scope="unseen")],
                                 ignore_index=True),
           "multi_normalized": normalized_scores(train, merges + refs, p.tasks, p.n_boot, p.seed)}
    others = [m for m in merges + refs if m != "recall"]
    out["multi_diff"] = _differences({"training tasks": train, "unseen tasks": unseen}, others, p.n_boot, p.seed)
    return out


def normalized_scores(train: pd.DataFrame, methods: Sequence[str], tasks: Sequence[str], n_boot: int,
                      seed: int) -> pd.DataFrame:
    """``multi_normalized``: accuracy of each method / the expert's accuracy on that task (the row ``experts`` of
    ``train``), per task and task mean; paired (the same resampled examples for both)."""
    correct = {(m, t): g.sort_values("example")["correct"].to_numpy()
               for (m, t), g in train.groupby(["method", "task"], sort=False)}

    def normalized(acc):
        out = {}
        for m in methods:
            ratios = []
            for t in tasks:
                e = np.asarray(acc["experts", t], dtype=float)
                r = np.where(e > 0, np.asarray(acc[m, t], dtype=float) / np.where(e > 0, e, 1.0), np.nan)
                out[f"{m}|{t}"] = r
                ratios.append(r)
            out[f"{m}|{MEAN}"] = np.mean(ratios, axis=0)
        return out

    with np.errstate(invalid="ignore", divide="ignore"):
        ci = bootstrap_ci(correct, normalized, n_boot=n_boot, seed=seed)
    return pd.DataFrame([{"method": k.split("|")[0], "task": k.split("|")[1], "estimate": v.estimate, "low": v.low,
                          "high": v.high} for k, v in ci.items()], columns=SPECS["multi_normalized"].columns)


def sequential_tables(examples: pd.DataFrame, base_examples: pd.DataFrame, p: Params) -> dict[str, pd.DataFrame]:
    """``seq_metrics``, ``R_<method>``, ``base_scores`` and ``seq_diff`` from ``seq_examples`` and
    ``seq_base_examples``; ``p.chain`` is the tasks the chains learned, in training order."""
    order = list(p.chain)
    out = {"seq_metrics": cl_metrics_ci(examples, base_examples, n_boot=p.n_boot, seed=p.seed, task_order=order)}
    for m, r in r_matrices(examples, task_order=order).items():
        out[f"R_{m}"] = r
    out["base_scores"] = (base_examples.groupby("task", sort=False)["correct"].mean().rename("accuracy")
                          .reset_index())
    methods = list(pd.unique(examples["method"]))
    rows = []
    if "recall" in methods and len(order) > 1:
        for other in [m for m in methods if m != "recall"]:
            d = cl_difference_ci(examples, base_examples, "recall", other, n_boot=p.n_boot, seed=p.seed,
                                 task_order=order, margin=EQUIVALENCE_MARGIN)
            rows.append(d.assign(other=other))
    cols = list(SPECS["seq_diff"].columns)
    out["seq_diff"] = (pd.concat(rows, ignore_index=True)[cols] if rows else pd.DataFrame(columns=cols))
    return out


def ablation_tables(examples: pd.DataFrame, p: Params) -> dict[str, pd.DataFrame]:
    """``ablation_accuracy`` and ``ablation_diff`` (variant minus default) from ``ablation_examples``."""
    v = examples.assign(method=examples["variant"])
    t = method_table_ci(v, n_boot=p.n_boot, seed=p.seed).rename(columns={"method": "variant"})
    t["options"] = t["variant"].map(lambda name: json.dumps(p.ablation_options[name], sort_keys=True))
    variants = [x for x in pd.unique(examples["variant"]) if x != "default"]
    diffs = pd.concat([paired_difference_ci(v, name, "default", n_boot=p.n_boot, seed=p.seed,
                                            margin=EQUIVALENCE_MARGIN).assign(variant=name)
                       for name in variants], ignore_index=True)
    diffs["difference"] = "variant - default"
    return {"ablation_accuracy": t, "ablation_diff": diffs}


class Source:
    """The tables of one results folder (a profile's, or a subfolder's), read from their CSV files on demand."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.extra: dict[str, pd.DataFrame] = {}  # tables computed but not written yet (by name)

    def get(self, name: str, subdir: str | None = None) -> pd.DataFrame | None:
        """Table ``name`` (of ``subdir``), or None when its file does not exist."""
        if subdir is None and name in self.extra:
            return self.extra[name]
        path = (self.folder / subdir if subdir else self.folder) / f"{name}.csv"
        if not path.is_file():
            return None
        try:
            return read(path, name)
        except pd.errors.EmptyDataError:
            return pd.DataFrame(columns=list(spec_of(name).columns or ()))

    def __getitem__(self, name: str) -> pd.DataFrame:
        t = self.get(name)
        if t is None:
            raise FileNotFoundError(f"{self.folder} lacks the table {name}.csv (written by notebook "
                                    f"{spec_of(name).notebook}); run that notebook first")
        return t

    def subdirs(self, prefix: str) -> list[str]:
        """Names of the subfolders starting with ``prefix`` (other task orders: ``order-``), sorted."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if p.is_dir() and p.name.startswith(prefix))


def _representation_tables(t: Source, p: Params) -> dict[str, pd.DataFrame]:
    n = probes_per_task(p.n_samples, len(p.tasks)) * len(p.tasks)
    return {"interexpert_curve": interexpert_curve(t["pairwise"], p.n_boot, p.seed),
            "c1_summary": c1_summary(t["pairwise"], t["c1_replicates"], n)}


def chains(t: Source) -> list[str | None]:
    """Every folder of a sequential chain: the main one (None) and each ``seed*`` / ``order-*`` subfolder that has
    per-example results."""
    subs = [None, *t.subdirs("seed"), *t.subdirs("order-")]
    return [s for s in subs if (t.folder / (s or "") / "seq_examples.csv").is_file()]


def seq_diff_pooled(t: Source, p: Params) -> pd.DataFrame:
    """``seq_diff_pooled``: RECALL minus each sequential method, pooled over every chain of the folder."""
    cols = list(SPECS["seq_diff_pooled"].columns)
    runs = []
    for sub in chains(t):
        ex = t.get("seq_examples", sub)
        order = [x for x in pd.unique(ex["task"]) if x in p.tasks]  # rows of R in training order
        runs.append((ex, t.get("seq_base_examples", sub), order))
    if not runs or "recall" not in set(runs[0][0]["method"]):
        return pd.DataFrame(columns=cols)
    others = [m for m in pd.unique(runs[0][0]["method"]) if m != "recall"]
    frames = [pooled_cl_difference_ci(runs, "recall", o, n_boot=p.n_boot, seed=p.seed, margin=EQUIVALENCE_MARGIN)
              .assign(other=o) for o in others]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def _claims_tables(t: Source, p: Params) -> dict[str, pd.DataFrame]:
    from .claims import evaluate

    pooled = seq_diff_pooled(t, p)
    return {"seq_diff_pooled": pooled, **evaluate(t.folder, seq_pooled=pooled)}


# notebook -> function of its folder's tables (read from the files) and the params -> {name: derived table}
def _pilot_tables(t: Source, p: Params) -> dict[str, pd.DataFrame]:
    from .pilot import choice

    return {"pilot_choice": choice(t["pilot_scoring"], t["pilot_training"])}


DERIVATIONS: dict[str, Callable[[Source, Params], dict[str, pd.DataFrame]]] = {
    "00_pilot": _pilot_tables,
    _N1: _representation_tables,
    _N2: lambda t, p: single_model_tables(t["single_examples"], p),
    _N3: lambda t, p: multi_model_tables(t["multi_examples"], p),
    _N4: lambda t, p: sequential_tables(t["seq_examples"], t["seq_base_examples"], p),
    _N5: lambda t, p: ablation_tables(t["ablation_examples"], p),
    "07_claims": _claims_tables,
}


def derive(notebook: str, folder: str | Path, params: Params) -> dict[str, pd.DataFrame]:
    """Every derived table of ``notebook``, from the measured tables in ``folder`` (read from their CSVs)."""
    fn = DERIVATIONS.get(notebook)
    if fn is None:
        return {}
    out = fn(Source(folder), params)
    for name, df in out.items():
        check_columns(name, df)
    return out


# ---------------------------------------------------------------------------------------------- views


def ci_text(est, low, high, scale: float = 100.0, digits: int = 1) -> str:
    """``"71.3 [68.2, 74.1]"`` (values times ``scale``); "n/a" for missing parts."""
    e, lo, hi = (_num(x, scale, digits) for x in (est, low, high))
    if e is None:
        return "n/a"
    return f"{e} [n/a]" if lo is None or hi is None else f"{e} [{lo}, {hi}]"


def _num(x, scale: float, digits: int) -> str | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else f"{v * scale:.{digits}f}"


def ci_view(table: pd.DataFrame, index: str = "method", columns: str = "task", scale: float = 100.0,
            digits: int = 1, value: str = "estimate") -> pd.DataFrame:
    """A CI table (columns ``value``, low, high) as ``index`` x ``columns`` of "estimate [low, high]" strings,
    rows and columns in their order of first appearance."""
    t = table.assign(_ci=[ci_text(e, lo, hi, scale, digits) for e, lo, hi in
                          zip(table[value], table["low"], table["high"])])
    rows = list(pd.unique(t[index]))
    cols = list(pd.unique(t[columns]))
    return t.pivot(index=index, columns=columns, values="_ci").reindex(index=rows, columns=cols)


@dataclass(frozen=True)
class View:
    """How a table is shown (notebooks and book alike). ``kind``: "ci" (``index`` x ``columns`` of "estimate
    [low, high]" from ``value``, low, high), "pivot" (``index`` x ``columns`` of ``value``), "matrix" (the table
    as it is, numbers formatted) or "plain" (as it is). ``query`` selects rows first (``DataFrame.query``);
    values are multiplied by ``scale`` and shown with ``digits`` decimals; ``labels`` renames methods and tasks
    as in the figures; ``extra`` is a column shown first, one value per row; ``index_name`` heads the index.
    "rows" keeps the rows and shows the columns ``show``, the interval columns as one "estimate [low, high]"."""

    kind: str = "ci"
    index: str | tuple[str, ...] = "method"
    columns: str = "task"
    value: str = "estimate"
    query: str | None = None
    scale: float = 100.0
    digits: int = 1
    labels: bool = True
    extra: str | None = None
    index_name: str | None = None
    show: tuple[str, ...] = ()


_MEAN_ROWS = f'task == "{MEAN}"'
VIEWS: dict[str, View] = {
    # the pilot: macro-F1 (x100) per rule (rows) and task, one (model, casing) per query (the book's replaces the
    # base's, lower case); experts' macro-F1 per recipe, rule and task
    "pilot_scoring": View(kind="pivot", index="scoring", columns="task", value="macro_f1",
                          query='model == "base" and casing == "lower"'),
    "pilot_training": View(kind="pivot", index=("recipe", "scoring"), columns="task", value="expert_macro_f1",
                           index_name="recipe · scoring"),
    "adjacent": View(kind="pivot", index="layer", columns="model", value="similarity", query='measure == "rbf"',
                     scale=1, digits=3),
    "interexpert_curve": View(index="layer", columns="measure", value="similarity", scale=1, digits=3,
                              labels=False),
    "c1_summary": View(index="statistic", columns="measure", scale=1, digits=3, labels=False),
    "single_accuracy": View(),
    "single_diff": View(index="other", columns="scope", query=_MEAN_ROWS, index_name="RECALL minus"),
    "multi_train": View(),
    "multi_unseen": View(),
    "multi_normalized": View(),
    "multi_diff": View(index="other", columns="scope", query=_MEAN_ROWS, index_name="RECALL minus"),
    "multi_recall_weights": View(kind="matrix", index="layer", columns="model", scale=1, digits=3),
    "seq_metrics": View(columns="metric"),
    "R_{method}": View(kind="matrix", index="step", columns="task", digits=1),
    "base_scores": View(kind="plain"),
    "seq_diff": View(index="other", columns="metric", index_name="RECALL minus"),
    "ablation_accuracy": View(index="variant", extra="options"),
    "ablation_diff": View(index="variant"),
    "efficiency": View(kind="plain"),
    "claims": View(kind="rows", show=("claim", "statement", "verdict", "evidence", "paper")),
    "claim_comparisons": View(kind="rows", show=("comparison", "scope", "metric", "better", "estimate", "p_support",
                                                 "p_refute", "p_equiv", "verdict", "in_verdict",
                                                 "leave_one_task_out")),
    "seq_diff_pooled": View(index="other", columns="metric", index_name="RECALL minus"),
}


def view(name: str, df: pd.DataFrame, **overrides) -> pd.DataFrame:
    """Table ``name`` as its ``VIEWS`` entry (with ``overrides``) shows it: a frame of strings."""
    from dataclasses import replace

    from .catalog import label, task_label

    v = replace(VIEWS.get(spec_of(name).name, View(kind="plain")), **overrides)
    if v.query:
        df = df.query(v.query)
    if v.kind == "ci":
        out = ci_view(df, v.index, v.columns, v.scale, v.digits, v.value)
    elif v.kind == "pivot":
        keys = list(v.index) if isinstance(v.index, tuple) else [v.index]
        rows = list(df[keys].drop_duplicates().itertuples(index=False, name=None))
        out = df.pivot(index=keys, columns=v.columns, values=v.value)
        out = out.reindex(index=pd.MultiIndex.from_tuples(rows) if len(keys) > 1 else [r[0] for r in rows],
                          columns=list(pd.unique(df[v.columns])))
        out = out.map(lambda x: _num(x, v.scale, v.digits) or "n/a")
        if len(keys) > 1:  # one index of "a · b" labels
            out.index = [" · ".join(str(x) for x in r) for r in rows]
    elif v.kind == "matrix":
        out = df.map(lambda x: _num(x, v.scale, v.digits) or "")
    elif v.kind == "rows":
        out = df[list(v.show)].copy() if v.show else df.copy()
        if "estimate" in out:
            out["estimate"] = [ci_text(e, lo, hi, v.scale, v.digits) for e, lo, hi in
                               zip(df["estimate"], df["low"], df["high"])]
            out = out.rename(columns={"estimate": "estimate [95% interval]"})
        for c in [c for c in out.columns if str(c).startswith("p_")]:
            out[c] = [f"{float(x):.3f}" if pd.notna(x) else "" for x in out[c]]
        out = out.reset_index(drop=True)
    else:
        out = df.copy()
    if v.extra:
        first = df.drop_duplicates(v.index).set_index(v.index)[v.extra]
        out.insert(0, v.extra, [first[i] for i in out.index])
    if v.labels and v.kind not in ("plain", "rows"):
        def names(axis: str, values):
            fn = label if axis in ("method", "other", "model") else task_label if axis == "task" else str
            return [x if x == v.extra else fn(x) for x in values] if axis not in ("step", "layer") else list(values)

        out.index = names(v.index, out.index)
        out.columns = names(v.columns, out.columns)
    if v.index_name or v.kind not in ("plain", "rows"):
        out.index.name = v.index_name or v.index
    return out


__all__ = ["MEAN", "SPECS", "Spec", "Params", "Source", "spec_of", "check_columns", "to_csv", "read", "derive",
           "DERIVATIONS", "EQUIVALENCE_MARGIN", "interexpert_curve", "c1_summary", "c1_statistics", "mean_offdiag",
           "null_curve", "spearman_depth", "probes_per_task", "single_model_tables", "multi_model_tables",
           "normalized_scores", "sequential_tables", "ablation_tables", "seq_diff_pooled", "chains", "experts_row",
           "ci_text", "ci_view", "View", "VIEWS", "view"]
