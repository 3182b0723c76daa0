"""Continual-learning metrics (AP, BWT, FWT, forgetting) and paired bootstrap confidence intervals.

Convention: ``R[t, i]`` is the score on task ``i`` after training step ``t``. Rows are the steps
0..T-1 in training order (row ``t`` is after training on task ``t``); columns are the T tasks of the
sequence, in the same order. ``R`` is a square numpy array or a DataFrame (index: steps, columns:
task names). Unseen tasks (evaluated but never trained on) do not belong in ``R``.

With 0-based indices (the notes write the same formulas 1-based):

- AP (average performance) = (1/T) sum_i R[T-1, i].
- BWT (backward transfer) = 1/(T-1) sum_{i<T-1} (R[T-1, i] - R[i, i]). The denominator is T-1, the
  number of tasks that can be forgotten (some code divides by T; we do not).
- FWT (forward transfer) = 1/(T-1) sum_{i>=1} (R[i-1, i] - b_i), b_i = the base model's score on
  task i. Denominator T-1.
- Forgetting (Chaudhry et al., 2018) = 1/(T-1) sum_{i<T-1} (max_{i<=l<T-1} R[l, i] - R[T-1, i]).
  Denominator T-1. The max runs over the steps from the one that trained task i to the one before
  the last: a score a task had before it was learned is not knowledge that can be forgotten.
  Entries that were not evaluated (NaN) are skipped by the max.

For T = 1 BWT, FWT and forgetting are NaN (quietly, no warning). NaN entries elsewhere propagate.

Bootstrap intervals resample test examples, stratified by task and paired: for each task and each
bootstrap replicate one set of example indices is drawn (uniformly with replacement, as many as the
task has examples) and the SAME indices are applied to every method, step and the base model that
share that task's test set. Intervals of differences between methods are therefore paired, and the
task-mean intervals treat tasks as independent strata. Intervals are percentile intervals
``(alpha/2, 1 - alpha/2)`` over ``n_boot`` replicates. The indices for a task depend only on
``(seed, str(task), number of examples)``, so every function here draws the same replicates for the
same task and seed (``method_table_ci``, ``paired_difference_ci`` and ``cl_metrics_ci`` agree).

Long DataFrames use the columns ``method``, ``task``, ``example``, ``correct`` (0/1, bool, or any
finite per-example score whose mean is the metric) and, for sequential runs, ``step``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

__all__ = [
    "CI",
    "average_performance",
    "backward_transfer",
    "forward_transfer",
    "forgetting",
    "cl_summary",
    "bootstrap_ci",
    "accuracy_ci",
    "method_table_ci",
    "paired_difference_ci",
    "r_matrices",
    "cl_metrics_ci",
    "cl_difference_ci",
    "pooled_cl_difference_ci",
]

METRICS = ("AP", "BWT", "FWT", "forgetting")
_CHUNK_ELEMS = 1 << 22  # resampled indices held at once (n_boot chunk x n_examples), ~32 MiB of int64


class CI(NamedTuple):
    """A point estimate and its percentile interval (floats, or arrays for array-valued statistics)."""

    estimate: Any
    low: Any
    high: Any


# --------------------------------------------------------------------------------------------------
# Point metrics on an R matrix
# --------------------------------------------------------------------------------------------------

def _as_R(R) -> tuple[np.ndarray, list | None]:
    """R as a float64 (T, T) array, plus the task names when R is a DataFrame."""
    names = None
    if isinstance(R, pd.DataFrame):
        names = list(R.columns)
        R = R.to_numpy()
    try:
        arr = np.asarray(R, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"R must be a numeric 2-D matrix (steps x tasks): {e}") from None
    if arr.ndim != 2:
        raise ValueError(f"R must be a 2-D matrix (steps x tasks), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"R is empty (shape {arr.shape}); need at least one step and one task")
    if arr.shape[0] != arr.shape[1]:
        raise ValueError(
            f"R must be square, one row per training step and one column per task of the sequence: got "
            f"{arr.shape[0]} steps x {arr.shape[1]} tasks (leave unseen tasks' columns out of R)")
    if np.isinf(arr).any():
        raise ValueError("R contains infinite values")
    return arr, names


def _as_base(base_scores, T: int, names: list | None) -> np.ndarray:
    """Base-model scores as a float64 (T,) array, aligned to R's task names when both have names."""
    if base_scores is None:
        raise ValueError("base_scores is required (the base model's score on every task of the sequence)")
    if isinstance(base_scores, (Mapping, pd.Series)) and names is not None:
        lookup = base_scores if isinstance(base_scores, Mapping) else base_scores.to_dict()
        missing = [n for n in names if n not in lookup]
        if missing:
            raise ValueError(f"base_scores has no score for task(s) {missing}; R's tasks are {names}")
        vals = [lookup[n] for n in names]
    elif isinstance(base_scores, Mapping):
        vals = list(base_scores.values())
    else:
        vals = base_scores
    try:
        b = np.asarray(vals, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"base_scores must be numeric: {e}") from None
    if b.ndim != 1 or b.shape[0] != T:
        raise ValueError(f"base_scores must hold one score per task: R has {T} tasks, got shape {b.shape}")
    if np.isinf(b).any():
        raise ValueError("base_scores contains infinite values")
    return b


def _cl_core(R: np.ndarray, b: np.ndarray | None) -> dict[str, np.ndarray]:
    """The four metrics, vectorized over leading axes: R (..., T, T), b (..., T) or None -> arrays (...)."""
    T = R.shape[-1]
    shape = R.shape[:-2]
    last = R[..., T - 1, :]
    out = {"AP": last.sum(-1) / T}
    if T == 1:
        nan = np.full(shape, np.nan)
        out.update(BWT=nan, FWT=nan.copy(), forgetting=nan.copy())
        return out
    diag = np.diagonal(R, axis1=-2, axis2=-1)[..., : T - 1]
    out["BWT"] = (last[..., : T - 1] - diag).sum(-1) / (T - 1)
    if b is None:
        out["FWT"] = np.full(shape, np.nan)
    else:
        sup = np.diagonal(R, offset=1, axis1=-2, axis2=-1)  # R[i-1, i] for i = 1..T-1
        out["FWT"] = (sup - b[..., 1:]).sum(-1) / (T - 1)
    learned = np.tril(np.ones((T - 1, T - 1), dtype=bool))  # [l, i] with l >= i: step l is at or after task i
    best = np.fmax.reduce(np.where(learned, R[..., : T - 1, : T - 1], np.nan), axis=-2)  # i <= l < T-1, NaN skipped
    out["forgetting"] = (best - last[..., : T - 1]).sum(-1) / (T - 1)
    return out


def average_performance(R) -> float:
    """AP = (1/T) sum_i R[T-1, i]: mean score over the T tasks after the last step."""
    arr, _ = _as_R(R)
    return float(_cl_core(arr, None)["AP"])


def backward_transfer(R) -> float:
    """BWT = 1/(T-1) sum_{i<T-1} (R[T-1, i] - R[i, i]); denominator T-1. NaN for T = 1.

    Negative means forgetting: the final model scores lower on old tasks than right after learning them.
    """
    arr, _ = _as_R(R)
    return float(_cl_core(arr, None)["BWT"])


def forward_transfer(R, base_scores) -> float:
    """FWT = 1/(T-1) sum_{i>=1} (R[i-1, i] - b_i); denominator T-1. NaN for T = 1.

    ``b_i`` is the base model's score on task i (sequence, array of length T, or a mapping/Series
    keyed by task name when R is a DataFrame; ``b_0`` is not used but must be given).
    """
    arr, names = _as_R(R)
    b = _as_base(base_scores, arr.shape[0], names)
    return float(_cl_core(arr, b)["FWT"])


def forgetting(R) -> float:
    """Forgetting = 1/(T-1) sum_{i<T-1} (max_{i<=l<T-1} R[l, i] - R[T-1, i]); denominator T-1. NaN for T = 1.

    The max runs from the step that learned task i (the diagonal R[i, i]) to the step before the last,
    skipping NaN (not evaluated) entries (Chaudhry et al., 2018).
    """
    arr, _ = _as_R(R)
    return float(_cl_core(arr, None)["forgetting"])


def cl_summary(R, base_scores=None) -> dict[str, float]:
    """``{"AP", "BWT", "FWT", "forgetting"}`` for one R matrix; FWT is NaN when ``base_scores`` is None."""
    arr, names = _as_R(R)
    b = None if base_scores is None else _as_base(base_scores, arr.shape[0], names)
    return {k: float(v) for k, v in _cl_core(arr, b).items()}


# --------------------------------------------------------------------------------------------------
# Bootstrap engine
# --------------------------------------------------------------------------------------------------

def _check_boot_args(n_boot, seed, alpha) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _task_rng(seed: int, task: Hashable) -> np.random.Generator:
    """One generator per (seed, task): independent of the other tasks and of the call."""
    return np.random.default_rng([int(seed), zlib.crc32(str(task).encode("utf-8"))])


def _boot_means(mat: np.ndarray, task: Hashable, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Column means of ``mat`` (n, K) and their bootstrap replicates (n_boot, K).

    Each replicate draws n example indices with replacement (one draw shared by all K columns);
    the mean of the resampled rows is computed as (counts @ mat) / n, counts = how often each row
    was drawn. Sums of 0/1 scores are exact in float64, so identical columns give identical replicates.
    """
    n, k = mat.shape
    rng = _task_rng(seed, task)
    point = mat.sum(0) / n
    boot = np.empty((n_boot, k))
    chunk = max(1, _CHUNK_ELEMS // n)
    for start in range(0, n_boot, chunk):
        c = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(c, n))
        flat = (idx + (np.arange(c) * n)[:, None]).ravel()
        counts = np.bincount(flat, minlength=c * n).reshape(c, n).astype(np.float64)
        boot[start:start + c] = counts @ mat
    boot /= n
    return point, boot


def _interval(boot: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    if np.isnan(boot).any():  # e.g. FWT without a base model: keep NaN, without warnings
        nan = np.full(boot.shape[1:], np.nan)
        ok = ~np.isnan(boot).any(axis=0)
        lo, hi = nan, nan.copy()
        if ok.any():
            q = np.quantile(boot[:, ok], [alpha / 2, 1 - alpha / 2], axis=0)
            lo[ok], hi[ok] = q[0], q[1]
        return lo, hi
    q = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)
    return q[0], q[1]


def _summarize(est, boot, alpha: float, n_boot: int):
    if isinstance(est, Mapping):
        if not isinstance(boot, Mapping) or set(boot) != set(est):
            raise ValueError("stat_fn returned different keys for the point estimate and the replicates")
        return {k: _summarize(est[k], boot[k], alpha, n_boot) for k in est}
    e = np.asarray(est, dtype=np.float64)
    bt = np.asarray(boot, dtype=np.float64)
    if bt.shape != (n_boot,) + e.shape:
        raise ValueError(
            f"stat_fn must be vectorized: given per-key accuracies of shape (n_boot,) = ({n_boot},) it must "
            f"return shape {(n_boot,) + e.shape} (the point estimate's shape {e.shape} with n_boot in front), "
            f"got {bt.shape}; use numpy operations (np.maximum, not max)")
    lo, hi = _interval(bt, alpha)
    if e.ndim == 0:
        return CI(float(e), float(lo), float(hi))
    return CI(e, lo, hi)


def _as_scores(v, what) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: per-example scores must be numeric 0/1 (or bool): {e}") from None
    if a.ndim != 1:
        raise ValueError(f"{what}: per-example scores must be a 1-D vector, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{what}: no examples (empty vector)")
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: per-example scores contain NaN or infinite values")
    return a


def _default_task_of(key):
    return key[-1] if isinstance(key, tuple) else key


def bootstrap_ci(correct: Mapping[Hashable, Any], stat_fn: Callable, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05, task_of: Callable[[Hashable], Hashable] | None = None):
    """Paired, task-stratified percentile bootstrap of any statistic of per-key accuracies.

    ``correct`` maps a key (e.g. ``(method, task)`` or ``(method, step, task)``) to the per-example
    0/1 vector of that model on that task's test set. Keys are grouped by task with ``task_of``
    (default: the last element of a tuple key, else the key itself); all vectors of one task must be
    aligned (same length, element j = the same test example). For each task and replicate one set of
    example indices is drawn and applied to every vector of that task.

    ``stat_fn`` receives a dict key -> accuracy (mean of the vector) and returns a number, an array, or
    a dict of those. It is called once with floats (the point estimate) and once with arrays of shape
    (n_boot,) (the replicates), so it must be written with numpy broadcasting.

    Returns ``CI(estimate, low, high)`` (or a dict of them when ``stat_fn`` returns a dict).
    """
    _check_boot_args(n_boot, seed, alpha)
    if not isinstance(correct, Mapping) or len(correct) == 0:
        raise ValueError("correct must be a non-empty mapping key -> per-example 0/1 vector")
    task_of = task_of or _default_task_of
    groups: dict[Hashable, list] = {}
    for key in correct:
        groups.setdefault(task_of(key), []).append(key)
    point_acc: dict = {}
    boot_acc: dict = {}
    for task, keys in groups.items():
        vecs = [_as_scores(correct[k], f"correct[{k!r}]") for k in keys]
        lens = {len(v) for v in vecs}
        if len(lens) > 1:
            sizes = {k: len(v) for k, v in zip(keys, vecs, strict=True)}
            raise ValueError(f"task {task!r}: paired resampling needs vectors over the same test examples, "
                             f"got different lengths {sizes}")
        point, boot = _boot_means(np.column_stack(vecs), task, n_boot, seed)
        for j, k in enumerate(keys):
            point_acc[k] = float(point[j])
            boot_acc[k] = boot[:, j]
    return _summarize(stat_fn(point_acc), stat_fn(boot_acc), alpha, n_boot)


def accuracy_ci(correct_vector, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> CI:
    """Accuracy of one 0/1 vector with its percentile bootstrap interval: ``CI(estimate, low, high)``."""
    return bootstrap_ci({"accuracy": correct_vector}, lambda a: a["accuracy"], n_boot=n_boot, seed=seed,
                        alpha=alpha)


# --------------------------------------------------------------------------------------------------
# Long DataFrames
# --------------------------------------------------------------------------------------------------

def _check_long(df, key_cols: list[str], name: str = "df") -> pd.DataFrame:
    """Validated copy with ``correct`` as float64; (key_cols..., example) must be unique."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    required = [*key_cols, "example", "correct"]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; needs {required}")
    if len(df) == 0:
        raise ValueError(f"{name} is empty")
    df = df[required].copy()
    try:
        df["correct"] = df["correct"].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}['correct'] must be numeric 0/1 (or bool): {e}") from None
    if not np.isfinite(df["correct"].to_numpy()).all():
        raise ValueError(f"{name}['correct'] contains NaN or infinite values")
    dup = df.duplicated([*key_cols, "example"])
    if dup.any():
        row = df.loc[dup].iloc[0]
        where = ", ".join(f"{c}={row[c]!r}" for c in [*key_cols, "example"])
        raise ValueError(f"{name} has {int(dup.sum())} duplicate row(s), e.g. {where}")
    return df


def _task_matrices(df: pd.DataFrame, key_cols: list[str]) -> dict[Hashable, tuple[list, np.ndarray, pd.Index]]:
    """Per task: (keys, matrix (n_examples, n_keys), examples). Every key must cover the same examples."""
    out = {}
    for task, sub in df.groupby("task", sort=False):
        wide = sub.set_index([*key_cols, "example"])["correct"].unstack("example")  # keys x examples
        counts = wide.notna().sum(axis=1)
        if (counts < wide.shape[1]).any():
            bad = counts[counts < wide.shape[1]]
            key = bad.index[0]
            raise ValueError(
                f"task {task!r}: {dict(zip(key_cols, key if isinstance(key, tuple) else (key,), strict=True))} "
                f"has {int(bad.iloc[0])} of the task's {wide.shape[1]} examples ({len(bad)} such); the paired "
                f"bootstrap needs every method/step evaluated on the same test examples")
        keys = [k if isinstance(k, tuple) else (k,) for k in wide.index]
        out[task] = (keys, np.ascontiguousarray(wide.to_numpy(dtype=np.float64).T), wide.columns)
    return out


def method_table_ci(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                    mean_label: str = "mean") -> pd.DataFrame:
    """Accuracy per method per task with paired bootstrap intervals, plus the mean over tasks.

    ``df``: long, columns ``method, task, example, correct``; within a task every method must cover
    the same examples. Returns a long DataFrame with columns ``method, task, estimate, low, high, n``;
    the row ``task == mean_label`` is the unweighted mean over tasks (NaN when the method lacks a task;
    ``n`` = total examples there).
    """
    _check_boot_args(n_boot, seed, alpha)
    df = _check_long(df, ["method", "task"])
    mats = _task_matrices(df, ["method"])
    tasks = list(mats)
    if mean_label in tasks:
        raise ValueError(f"a task is named {mean_label!r}, the label of the mean row; pass another mean_label")
    acc: dict[tuple, tuple[float, np.ndarray, int]] = {}
    for task, (keys, mat, _) in mats.items():
        point, boot = _boot_means(mat, task, n_boot, seed)
        for j, (m,) in enumerate(keys):
            acc[m, task] = (point[j], boot[:, j], mat.shape[0])
    return _method_rows(acc, pd.unique(df["method"]), tasks, alpha, mean_label)


def _method_rows(acc: dict, methods, tasks: list, alpha: float, mean_label: str) -> pd.DataFrame:
    """The ``method, task, estimate, low, high, n`` table from ``acc[method, task] = (point, replicates, n)``, with
    the unweighted task mean per method (NaN when the method lacks a task)."""
    rows = []
    for m in methods:
        for task in tasks:
            if (m, task) in acc:
                p, b, n = acc[m, task]
                lo, hi = _interval(b[:, None], alpha)
                rows.append((m, task, float(p), float(lo[0]), float(hi[0]), n))
        if all((m, t) in acc for t in tasks):
            p = np.mean([acc[m, t][0] for t in tasks])
            b = np.mean([acc[m, t][1] for t in tasks], axis=0)
            lo, hi = _interval(b[:, None], alpha)
            rows.append((m, mean_label, float(p), float(lo[0]), float(hi[0]), sum(acc[m, t][2] for t in tasks)))
        else:
            rows.append((m, mean_label, np.nan, np.nan, np.nan, sum(acc[m, t][2] for t in tasks if (m, t) in acc)))
    return pd.DataFrame(rows, columns=["method", "task", "estimate", "low", "high", "n"])


def majority_rows(df: pd.DataFrame, name: str = "majority") -> pd.DataFrame:
    """Rows of a pseudo-method ``name`` that always predicts each task's most frequent label (ties: the smallest),
    on the examples of ``df`` (columns task, example, label, ...): the majority-class baseline. Stratified splits
    share the training split's class proportions, so this is the training majority too."""
    first = df.drop_duplicates(["task", "example"])
    out = []
    for _, g in first.groupby("task", sort=False):
        top = g["label"].value_counts().sort_index(kind="stable").idxmax()
        out.append(g.assign(method=name, pred=top, correct=(g["label"] == top).astype(int)))
    return pd.concat(out, ignore_index=True)[[c for c in df.columns]]


def macro_f1_table_ci(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                      mean_label: str = "mean") -> pd.DataFrame:
    """Macro-F1 per method per task (over the task's labels present in its examples' gold labels or predictions)
    with paired bootstrap intervals (the same example draws as :func:`method_table_ci`), plus the task mean.

    ``df``: long, columns ``method, task, example, label, pred``. Same output columns as ``method_table_ci``.
    """
    _check_boot_args(n_boot, seed, alpha)
    per = {}
    for task, sub in df.groupby("task", sort=False):
        if task == mean_label:
            raise ValueError(f"a task is named {mean_label!r}, the label of the mean row; pass another mean_label")
        label = sub.pivot(index="example", columns="method", values="label").iloc[:, 0].to_numpy()
        pred = sub.pivot(index="example", columns="method", values="pred")
        methods, pred = list(pred.columns), pred.to_numpy()
        if np.isnan(pred.astype(float)).any():
            raise ValueError(f"task {task!r}: every method needs a prediction on every example")
        classes = np.unique(np.concatenate([label, pred.ravel()]))
        n = len(label)
        ind = [np.stack([(pred[:, k] == c) & (label == c), (pred[:, k] == c) & (label != c),
                         (pred[:, k] != c) & (label == c)], axis=1) for k in range(len(methods)) for c in classes]
        mat = np.concatenate(ind, axis=1).astype(np.float64)  # (n, K*C*3): TP, FP, FN indicators
        rng = _task_rng(seed, task)
        counts = np.stack([np.bincount(rng.integers(0, n, size=n), minlength=n) for _ in range(n_boot)])
        sums = np.vstack([mat.sum(0), counts @ mat]).reshape(n_boot + 1, len(methods), len(classes), 3)
        tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
        denom = 2 * tp + fp + fn
        f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0).mean(axis=2)  # (1+B, K)
        for k, m in enumerate(methods):
            per[m, task] = (f1[0, k], f1[1:, k], n)
    return _method_rows(per, pd.unique(df["method"]), list(dict.fromkeys(df["task"])), alpha, mean_label)


DIFF_TESTS = ("p_greater", "p_less", "p_equiv", "n_a", "n_b", "p_exact_greater", "p_exact_less")
LEAVE_OUT = "mean without "  # task label prefix of the leave-one-task-out rows


def paired_difference_ci(df: pd.DataFrame, method_a, method_b, n_boot: int = 1000, seed: int = 0,
                         alpha: float = 0.05, mean_label: str = "mean", margin: float | None = None) -> pd.DataFrame:
    """Accuracy of ``method_a`` minus ``method_b`` per task, paired over test examples, plus the task mean.

    ``df`` as for :func:`method_table_ci`. Only the tasks both methods have are used (the mean row
    averages those). Returns columns ``task, estimate, low, high, n``; an interval excluding 0 means
    the difference is significant at level ``alpha`` (two-sided, percentile bootstrap).

    With an equivalence ``margin`` the table also holds the tests of the verdicts (``recall.stats``):
    bootstrap one-sided p-values ``p_greater`` / ``p_less`` and the TOST ``p_equiv`` within +-margin, the
    discordant counts ``n_a`` (only a right) / ``n_b`` (only b right) and the exact McNemar one-sided
    p-values (NaN where scores are not 0/1; on the mean rows the discordant examples of the tasks pooled),
    and one row per task left out of the mean (task ``"mean without <task>"``, the leave-one-task-out
    sensitivity of the task mean).
    """
    from .stats import bootstrap_pvalues, mcnemar

    _check_boot_args(n_boot, seed, alpha)
    df = _check_long(df, ["method", "task"])
    present = set(pd.unique(df["method"]))
    for m in (method_a, method_b):
        if m not in present:
            raise ValueError(f"method {m!r} not in df; methods are {sorted(map(str, present))}")
    sub = df[df["method"].isin([method_a, method_b])]
    per_method = sub.groupby("method")["task"].unique()
    common = [t for t in pd.unique(sub["task"])
              if t in set(per_method[method_a]) and t in set(per_method[method_b])]
    if not common:
        raise ValueError(f"methods {method_a!r} and {method_b!r} share no task")
    if mean_label in common:
        raise ValueError(f"a task is named {mean_label!r}, the label of the mean row; pass another mean_label")
    mats = _task_matrices(sub[sub["task"].isin(common)], ["method"])
    rows, boots, points, pairs = [], [], [], []
    for task in common:
        keys, mat, _ = mats[task]
        a, b = mat[:, keys.index((method_a,))], mat[:, keys.index((method_b,))]
        diff = a - b  # exactly 0 when a == b
        point, boot = _boot_means(diff[:, None], task, n_boot, seed)
        lo, hi = _interval(boot, alpha)
        rows.append((task, float(point[0]), float(lo[0]), float(hi[0]), mat.shape[0]))
        points.append(point[0])
        boots.append(boot[:, 0])
        pairs.append((a, b))
    lo, hi = _interval(np.mean(boots, axis=0)[:, None], alpha)
    rows.append((mean_label, float(np.mean(points)), float(lo[0]), float(hi[0]), sum(r[4] for r in rows)))
    out = pd.DataFrame(rows, columns=["task", "estimate", "low", "high", "n"])
    if margin is None:
        return out

    def tests(idx: list[int]) -> dict:
        bt = np.mean([boots[i] for i in idx], axis=0)
        p = {k: float(v) for k, v in bootstrap_pvalues(bt, margin).items()}
        exact = mcnemar(np.concatenate([pairs[i][0] for i in idx]), np.concatenate([pairs[i][1] for i in idx]))
        return {**p, "n_a": exact["n_a"], "n_b": exact["n_b"], "p_exact_greater": exact["p_greater"],
                "p_exact_less": exact["p_less"]}

    all_idx = list(range(len(common)))
    extra = [tests([i]) for i in all_idx] + [tests(all_idx)]
    out = pd.concat([out, pd.DataFrame(extra, columns=list(DIFF_TESTS))], axis=1)
    if len(common) > 1:
        loto = []
        for j, task in enumerate(common):
            keep = [i for i in all_idx if i != j]
            bt = np.mean([boots[i] for i in keep], axis=0)
            lo, hi = _interval(bt[:, None], alpha)
            loto.append({"task": LEAVE_OUT + str(task), "estimate": float(np.mean([points[i] for i in keep])),
                         "low": float(lo[0]), "high": float(hi[0]), "n": sum(rows[i][4] for i in keep),
                         **tests(keep)})
        out = pd.concat([out, pd.DataFrame(loto, columns=list(out.columns))], ignore_index=True)
    return out


def _sequence(df: pd.DataFrame, task_order, step_order) -> tuple[list, list]:
    """(sequence tasks in training order, steps in order); step t is after training on task t."""
    tasks_all = list(pd.unique(df["task"]))
    steps = list(pd.unique(df["step"]))
    if task_order is None:
        if len(tasks_all) != len(steps):
            raise ValueError(
                f"df has {len(tasks_all)} tasks but {len(steps)} steps: pass task_order=[...] (the trained tasks "
                f"in training order; any other task is treated as unseen)")
        task_order = tasks_all
    task_order = list(task_order)
    if len(set(task_order)) != len(task_order):
        raise ValueError(f"task_order has duplicates: {task_order}")
    absent = [t for t in task_order if t not in set(tasks_all)]
    if absent:
        raise ValueError(f"task_order names task(s) {absent} not in df")
    if step_order is not None:
        step_order = list(step_order)
        if set(step_order) != set(steps) or len(step_order) != len(steps):
            raise ValueError(f"step_order {step_order} must list each step of df once; df's steps are {steps}")
    elif set(steps) == set(task_order):  # steps labelled by the task just trained
        step_order = task_order
    else:
        try:
            step_order = sorted(steps)
        except TypeError:
            raise ValueError(f"steps {steps} cannot be sorted; pass step_order") from None
    if len(step_order) != len(task_order):
        raise ValueError(f"{len(step_order)} steps but {len(task_order)} tasks in the sequence; row t of R is the "
                         f"step after training on task t, so they must match")
    return task_order, step_order


def r_matrices(df: pd.DataFrame, task_order: Sequence | None = None,
               step_order: Sequence | None = None) -> dict[Hashable, pd.DataFrame]:
    """Point R matrices per method from long results (columns ``method, step, task, example, correct``).

    Returns method -> DataFrame (index: steps in order; columns: the sequence tasks in training
    order, then any unseen tasks). NaN where a (step, task) was not evaluated. Pass
    ``R[task_order]`` (the square part) to :func:`cl_summary`.
    """
    df = _check_long(df, ["method", "step", "task"])
    seq, steps = _sequence(df, task_order, step_order)
    cols = seq + [t for t in pd.unique(df["task"]) if t not in set(seq)]
    means = df.groupby(["method", "step", "task"], sort=False)["correct"].mean()
    out = {}
    for m in pd.unique(df["method"]):
        R = means.loc[m].unstack("task")
        out[m] = R.reindex(index=steps, columns=cols)
        out[m].index.name, out[m].columns.name = "step", "task"
    return out


def _cl_bootstrap(df: pd.DataFrame, base_df: pd.DataFrame | None, n_boot: int, seed: int,
                  task_order: Sequence | None, step_order: Sequence | None):
    """(methods, metric names, point estimates name -> (M,), replicates name -> (n_boot, M)) of the CL
    metrics of every method of ``df``; see :func:`cl_metrics_ci` for the inputs and the resampling."""
    df = _check_long(df, ["method", "step", "task"])
    seq, steps = _sequence(df, task_order, step_order)
    unseen = [t for t in pd.unique(df["task"]) if t not in set(seq)]
    methods = list(pd.unique(df["method"]))
    T, S, M = len(seq), len(steps), len(methods)

    have = set(map(tuple, df[["method", "step", "task"]].drop_duplicates().to_numpy().tolist()))
    for m in methods:
        # the metrics read R[l, i] for i <= l + 1 only: the lower triangle, the diagonal and the superdiagonal
        miss = [(s, t) for i, s in enumerate(steps) for t in seq[: i + 2] if (m, s, t) not in have]
        miss += [(steps[-1], t) for t in unseen if (m, steps[-1], t) not in have]
        if miss:
            raise ValueError(f"method {m!r} lacks {len(miss)} (step, task) evaluation(s), e.g. {miss[:3]}; "
                             f"evaluate every step on the tasks learned so far and the next one (and the last "
                             f"step on unseen tasks)")

    used = seq + unseen
    mats = _task_matrices(df, ["method", "step"])
    base_mats: dict[Hashable, np.ndarray] = {}
    if base_df is not None:
        base = _check_long(base_df, ["task"], name="base_df")
        base_by_task = {t: g.set_index("example")["correct"] for t, g in base.groupby("task", sort=False)}
        need = seq[1:]
        missing = [t for t in need if t not in base_by_task]
        if missing:
            raise ValueError(f"base_df lacks task(s) {missing} (FWT needs the base score on tasks {need})")
        for t in seq:
            if t not in base_by_task:
                continue
            examples = mats[t][2]
            s = base_by_task[t]
            if len(s) != len(examples) or not s.index.isin(examples).all():
                raise ValueError(f"task {t!r}: base_df has {len(s)} examples, df has {len(examples)}, and they "
                                 f"must be the same test examples for the paired bootstrap")
            base_mats[t] = s.reindex(examples).to_numpy(dtype=np.float64)

    pos_m = {m: i for i, m in enumerate(methods)}
    pos_s = {s: i for i, s in enumerate(steps)}
    Rp = np.full((M, S, len(used)), np.nan)
    Rb = np.full((n_boot, M, S, len(used)), np.nan)
    bp = np.full(T, np.nan)
    bb = np.full((n_boot, T), np.nan)
    for j, t in enumerate(used):
        keys, mat, _ = mats[t]
        with_base = j < T and t in base_mats
        if with_base:
            mat = np.column_stack([mat, base_mats[t]])
        point, boot = _boot_means(mat, t, n_boot, seed)
        for c, (m, s) in enumerate(keys):
            if s in pos_s:
                Rp[pos_m[m], pos_s[s], j] = point[c]
                Rb[:, pos_m[m], pos_s[s], j] = boot[:, c]
        if with_base:
            bp[j], bb[:, j] = point[-1], boot[:, -1]

    est = _cl_core(Rp[..., :T], bp if base_df is not None else None)
    bst = _cl_core(Rb[..., :T], bb[:, None, :] if base_df is not None else None)
    names = list(METRICS)
    if unseen:
        est["AP_unseen"] = Rp[:, -1, T:].mean(-1)
        bst["AP_unseen"] = Rb[:, :, -1, T:].mean(-1)
        names.append("AP_unseen")
    return methods, names, est, bst


def cl_metrics_ci(df: pd.DataFrame, base_df: pd.DataFrame | None = None, n_boot: int = 1000, seed: int = 0,
                  alpha: float = 0.05, task_order: Sequence | None = None,
                  step_order: Sequence | None = None) -> pd.DataFrame:
    """AP, BWT, FWT and forgetting per method with paired bootstrap intervals.

    ``df``: long per-example results of sequential runs, columns ``method, step, task, example, correct``.
    Row t of R is the step after training on ``task_order[t]`` (default ``task_order``: the tasks in
    order of first appearance in df, which then must number as many as the steps; steps are ordered
    by ``step_order``, else by ``task_order`` when the step labels are the task names, else sorted).
    Every method must have, after each step t, the sequence tasks 1..t+1 evaluated (what the metrics read: the
    lower triangle of R, its diagonal and the superdiagonal of FWT; more is allowed and ignored). Tasks
    not in ``task_order`` are unseen: they need the last step and give the extra metric ``AP_unseen``
    (mean score over the unseen tasks after the last step).

    ``base_df``: the base model's per-example results, columns ``task, example, correct`` (any other
    column is ignored), on the same examples; it needs tasks ``task_order[1:]``. Without it FWT is NaN.

    Resampling: per task one set of example indices per replicate, shared by every method, step
    and the base model. Returns columns ``method, metric, estimate, low, high``.
    """
    _check_boot_args(n_boot, seed, alpha)
    methods, names, est, bst = _cl_bootstrap(df, base_df, n_boot, seed, task_order, step_order)
    ci = {name: _interval(bst[name], alpha) for name in names}
    rows = [(m, name, float(est[name][i]), float(ci[name][0][i]), float(ci[name][1][i]))
            for i, m in enumerate(methods) for name in names]
    return pd.DataFrame(rows, columns=["method", "metric", "estimate", "low", "high"])


def cl_difference_ci(df: pd.DataFrame, base_df: pd.DataFrame | None, method_a, method_b, n_boot: int = 1000,
                     seed: int = 0, alpha: float = 0.05, task_order: Sequence | None = None,
                     step_order: Sequence | None = None, margin: float | None = None) -> pd.DataFrame:
    """Each CL metric of ``method_a`` minus ``method_b``, paired: both metrics are computed on the same
    resampled test examples in every replicate (inputs as for :func:`cl_metrics_ci`). Returns columns
    ``metric, estimate, low, high`` (for forgetting, negative means ``method_a`` forgets less); with an
    equivalence ``margin`` also the bootstrap p-values ``p_greater, p_less, p_equiv`` (``recall.stats``)."""
    return pooled_cl_difference_ci([(df, base_df, task_order, step_order)], method_a, method_b, n_boot=n_boot,
                                   seed=seed, alpha=alpha, margin=margin, n_chains_column=False)


def pooled_cl_difference_ci(chains: Sequence[tuple], method_a, method_b, n_boot: int = 1000, seed: int = 0,
                            alpha: float = 0.05, margin: float | None = None,
                            n_chains_column: bool = True) -> pd.DataFrame:
    """:func:`cl_difference_ci` pooled over several chains (task orders, seeds): the estimate is the mean over
    chains of each chain's difference, and the bootstrap is nested: every replicate resamples the chains (with
    replacement) and, inside each, the test examples (the chain's own paired replicate). ``chains``: tuples
    ``(df, base_df, task_order[, step_order])``. One chain gives exactly :func:`cl_difference_ci`."""
    from .stats import bootstrap_pvalues

    _check_boot_args(n_boot, seed, alpha)
    if not chains:
        raise ValueError("no chains to pool")
    points, boots, names = [], [], None
    for chain in chains:
        df, base_df, order = chain[:3]
        methods, nm, est, bst = _cl_bootstrap(df, base_df, n_boot, seed, order, chain[3] if len(chain) > 3 else None)
        for m in (method_a, method_b):
            if m not in methods:
                raise ValueError(f"method {m!r} not in a chain; its methods are {methods}")
        a, b = methods.index(method_a), methods.index(method_b)
        names = [n for n in nm if names is None or n in names]
        points.append({n: est[n][a] - est[n][b] for n in nm})
        boots.append({n: bst[n][:, a] - bst[n][:, b] for n in nm})
    C = len(chains)
    pick = (np.random.default_rng([int(seed), 7919]).integers(0, C, size=(n_boot, C)) if C > 1
            else np.zeros((n_boot, 1), dtype=int))
    rows = []
    for name in names:
        chain_boot = np.stack([bt[name] for bt in boots], axis=1)  # (n_boot, C)
        d = chain_boot[np.arange(n_boot)[:, None], pick].mean(axis=1) if C > 1 else chain_boot[:, 0]
        lo, hi = _interval(d[:, None], alpha)
        row = {"metric": name, "estimate": float(np.mean([pt[name] for pt in points])), "low": float(lo[0]),
               "high": float(hi[0])}
        if margin is not None:
            row.update({k: float(v) for k, v in bootstrap_pvalues(d, margin).items()})
        if n_chains_column:
            row["n_chains"] = C
        rows.append(row)
    return pd.DataFrame(rows)
