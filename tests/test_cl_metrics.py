"""Continual-learning metrics on hand-computed R matrices, and the paired bootstrap intervals."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from recall.cl_metrics import (
    CI,
    _boot_means,
    _task_rng,
    accuracy_ci,
    average_performance,
    backward_transfer,
    bootstrap_ci,
    cl_metrics_ci,
    cl_summary,
    forgetting,
    forward_transfer,
    method_table_ci,
    paired_difference_ci,
    r_matrices,
)

# R[t, i]: score on task i after step t. Hand computation (0-based, T = 3, denominators T - 1 = 2):
#   AP  = (0.50 + 0.70 + 0.95) / 3                          = 0.716666...
#   BWT = ((0.50 - 0.80) + (0.70 - 0.90)) / 2               = -0.25     (dividing by T would give -0.1667)
#   FWT = ((R[0,1] - b1) + (R[1,2] - b2)) / 2
#       = ((0.30 - 0.25) + (0.40 - 0.30)) / 2               = 0.075
#   forgetting: task 0: max(R[0,0], R[1,0]) - 0.50 = max(0.80, 0.85) - 0.50 = 0.35;
#               task 1: max(R[1,1]) - 0.70 = 0.90 - 0.70 = 0.20 (R[0,1] = 0.30 is before task 1 is learned)
#       -> (0.35 + 0.20) / 2                                = 0.275     (differs from -BWT: R[1,0] > R[0,0])
R3 = np.array([[0.80, 0.30, 0.20],
               [0.85, 0.90, 0.40],
               [0.50, 0.70, 0.95]])
B3 = np.array([0.10, 0.25, 0.30])
TASKS3 = ["a", "b", "c"]


def test_hand_computed_T3():
    assert average_performance(R3) == pytest.approx(2.15 / 3)
    assert backward_transfer(R3) == pytest.approx(-0.25)
    assert forward_transfer(R3, B3) == pytest.approx(0.075)
    assert forgetting(R3) == pytest.approx(0.275)
    assert cl_summary(R3, B3) == pytest.approx({"AP": 2.15 / 3, "BWT": -0.25, "FWT": 0.075, "forgetting": 0.275})


def test_hand_computed_T4_denominators():
    # T = 4: sums over 3 terms, divided by T - 1 = 3.
    R = np.array([[0.9, 0.2, 0.1, 0.0],
                  [0.6, 0.8, 0.3, 0.1],
                  [0.5, 0.7, 1.0, 0.4],
                  [0.3, 0.6, 0.7, 0.9]])
    b = [0.5, 0.1, 0.2, 0.3]
    assert average_performance(R) == pytest.approx((0.3 + 0.6 + 0.7 + 0.9) / 4)
    assert backward_transfer(R) == pytest.approx(((0.3 - 0.9) + (0.6 - 0.8) + (0.7 - 1.0)) / 3)
    assert forward_transfer(R, b) == pytest.approx(((0.2 - 0.1) + (0.3 - 0.2) + (0.4 - 0.3)) / 3)
    assert forgetting(R) == pytest.approx(((0.9 - 0.3) + (0.8 - 0.6) + (1.0 - 0.7)) / 3)


def test_forgetting_ignores_scores_before_the_task_was_learned():
    # task 1 scored 0.95 at step 0, before it was trained, and 0.9 after: not forgetting (Chaudhry et al. 2018).
    # Hand computation: task 0: max(0.8, 0.8) - 0.8 = 0; task 1: max(R[1,1]) - R[2,1] = 0.90 - 0.90 = 0.
    R = np.array([[0.8, 0.95, 0.2],
                  [0.8, 0.90, 0.4],
                  [0.8, 0.90, 0.9]])
    assert forgetting(R) == 0.0
    assert backward_transfer(R) == pytest.approx(0.0)
    # the committed run's case: SMS (learned at step 4 of 5) scores .875 at step 2, never again after learning
    R = np.array([[0.7, 0.1, 0.2, 0.875, 0.3],
                  [0.6, 0.8, 0.2, 0.862, 0.3],
                  [0.5, 0.7, 0.5, 0.850, 0.3],
                  [0.5, 0.7, 0.4, 0.850, 0.3],
                  [0.4, 0.7, 0.4, 0.800, 0.4]])
    assert forgetting(R) == pytest.approx(((0.7 - 0.4) + (0.8 - 0.7) + (0.5 - 0.4) + (0.85 - 0.80)) / 4)


def test_forgetting_skips_unevaluated_entries():
    R = R3.copy()
    R[0, 1] = R[0, 2] = R[1, 2] = np.nan  # lower triangle only
    assert forgetting(R) == pytest.approx(0.275)
    assert backward_transfer(R) == pytest.approx(-0.25)
    assert np.isnan(forward_transfer(R, B3))


def test_perfect_retention():
    a = np.array([0.7, 0.8, 0.9, 0.6])
    R = np.tril(np.tile(a, (4, 1))) + np.triu(np.full((4, 4), 0.1), k=1)  # R[t, i] = a_i for t >= i
    assert backward_transfer(R) == 0.0
    assert forgetting(R) == 0.0
    assert average_performance(R) == pytest.approx(a.mean())


def test_T1_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = cl_summary([[0.4]], [0.2])
        assert s["AP"] == pytest.approx(0.4)
        assert np.isnan(s["BWT"]) and np.isnan(s["FWT"]) and np.isnan(s["forgetting"])
        assert np.isnan(backward_transfer(np.array([[0.4]])))


def test_dataframe_input_and_named_base_scores():
    R = pd.DataFrame(R3, index=[0, 1, 2], columns=TASKS3)
    base = pd.Series({"c": 0.30, "a": 0.10, "b": 0.25})  # aligned by name, not position
    assert forward_transfer(R, base) == pytest.approx(0.075)
    assert forward_transfer(R, {"b": 0.25, "c": 0.30, "a": 0.10}) == pytest.approx(0.075)
    assert cl_summary(R) == pytest.approx({"AP": 2.15 / 3, "BWT": -0.25, "FWT": np.nan, "forgetting": 0.275},
                                          nan_ok=True)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 3)), "square"),
    (np.zeros((0, 0)), "empty"),
    (np.zeros(3), "2-D"),
    ([["x", "y"], ["z", "w"]], "numeric"),
    (np.array([[np.inf, 0], [0, 0]]), "infinite"),
])
def test_bad_R(bad, match):
    with pytest.raises(ValueError, match=match):
        cl_summary(bad)


def test_bad_base_scores():
    with pytest.raises(ValueError, match="one score per task"):
        forward_transfer(R3, [0.1, 0.2])
    with pytest.raises(ValueError, match="required"):
        forward_transfer(R3, None)
    with pytest.raises(ValueError, match=r"no score for task\(s\) \['c'\]"):
        forward_transfer(pd.DataFrame(R3, columns=TASKS3), {"a": 0.1, "b": 0.2})


# --- bootstrap --------------------------------------------------------------------------------------------

def _bern(n, p, seed):
    return (np.random.default_rng(seed).random(n) < p).astype(int)


def test_accuracy_ci_basics():
    assert tuple(accuracy_ci(np.ones(50, dtype=int))) == (1.0, 1.0, 1.0)
    assert tuple(accuracy_ci(np.zeros(50, dtype=bool))) == (0.0, 0.0, 0.0)
    v = _bern(300, 0.7, 1)
    ci = accuracy_ci(v, n_boot=1000, seed=0)
    assert isinstance(ci, CI)
    assert ci.estimate == pytest.approx(v.mean())
    assert ci.low < ci.estimate < ci.high
    # roughly the normal-approximation width 2 * 1.96 * sqrt(p (1-p) / n)
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * np.sqrt(0.21 / 300), rel=0.2)


def test_ci_deterministic_and_seed_dependent():
    v = _bern(200, 0.6, 2)
    assert accuracy_ci(v, seed=3) == accuracy_ci(v, seed=3)
    assert accuracy_ci(v, seed=3) != accuracy_ci(v, seed=4)


def test_ci_shrinks_with_more_examples():
    small = accuracy_ci(_bern(100, 0.7, 5))
    large = accuracy_ci(_bern(3000, 0.7, 5))
    assert (large.high - large.low) < 0.4 * (small.high - small.low)


def test_boot_means_equals_index_resampling():
    # the counts @ matrix shortcut gives exactly the mean of the rows at the drawn indices
    mat = np.column_stack([_bern(37, 0.5, 6), _bern(37, 0.8, 7)]).astype(float)
    point, boot = _boot_means(mat, "task", 50, seed=9)
    idx = _task_rng(9, "task").integers(0, 37, size=(50, 37))
    np.testing.assert_allclose(boot, mat[idx].mean(axis=1), rtol=0, atol=1e-15)
    np.testing.assert_allclose(point, mat.mean(0))


def test_bootstrap_ci_pairs_keys_of_a_task():
    a = _bern(300, 0.7, 10)
    correct = {("m1", "t"): a, ("m2", "t"): a.copy(), ("m1", "u"): _bern(100, 0.5, 11)}
    d = bootstrap_ci(correct, lambda acc: acc["m1", "t"] - acc["m2", "t"])
    assert tuple(d) == (0.0, 0.0, 0.0)
    # vector and dict statistics
    both = bootstrap_ci(correct, lambda acc: {"t": acc["m1", "t"], "mean": (acc["m1", "t"] + acc["m1", "u"]) / 2})
    assert both["t"].estimate == pytest.approx(a.mean())
    assert both["mean"].low < both["mean"].estimate < both["mean"].high
    arr = bootstrap_ci(correct, lambda acc: np.stack([acc["m1", "t"], acc["m1", "u"]], axis=-1))
    assert arr.estimate.shape == arr.low.shape == (2,)


def test_bootstrap_ci_bad_input():
    with pytest.raises(ValueError, match="same test examples"):
        bootstrap_ci({("m1", "t"): np.ones(5), ("m2", "t"): np.ones(6)}, lambda a: a["m1", "t"])
    with pytest.raises(ValueError, match="empty"):
        accuracy_ci([])
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci({}, lambda a: 0.0)
    with pytest.raises(ValueError, match="vectorized"):
        bootstrap_ci({"x": np.ones(5)}, lambda a: 1.0)
    with pytest.raises(ValueError, match="n_boot"):
        accuracy_ci(np.ones(5), n_boot=0)


# --- long tables ------------------------------------------------------------------------------------------

def _long(methods, tasks, n, seed=0, p=None):
    rng = np.random.default_rng(seed)
    rows = []
    for mi, m in enumerate(methods):
        for t in tasks:
            pm = 0.5 + 0.05 * mi if p is None else p
            rows.append(pd.DataFrame({"method": m, "task": t, "example": np.arange(n),
                                      "correct": rng.random(n) < pm}))
    return pd.concat(rows, ignore_index=True)


def test_method_table_ci():
    df = _long(["A", "B"], ["t1", "t2", "t3"], 200)
    out = method_table_ci(df, n_boot=500)
    assert list(out.columns) == ["method", "task", "estimate", "low", "high", "n"]
    assert len(out) == 2 * 4
    for (m, t), g in df.groupby(["method", "task"]):
        row = out[(out.method == m) & (out.task == t)].iloc[0]
        assert row.estimate == pytest.approx(g.correct.mean())
        assert row.low <= row.estimate <= row.high and row.n == 200
    mean = out[out.task == "mean"].set_index("method")
    assert mean.loc["A", "estimate"] == pytest.approx(out[(out.method == "A") & (out.task != "mean")].estimate.mean())
    assert (mean.high - mean.low < (out[out.task == "t1"].high - out[out.task == "t1"].low).to_numpy()).all()
    shuffled = df.sample(frac=1.0, random_state=1)  # row order changes the row order of the output only
    key = ["method", "task"]
    pd.testing.assert_frame_equal(method_table_ci(shuffled, n_boot=500).sort_values(key).reset_index(drop=True),
                                  out.sort_values(key).reset_index(drop=True))


def test_method_table_ci_missing_task_gives_nan_mean():
    df = _long(["A", "B"], ["t1", "t2"], 50)
    df = df[~((df.method == "B") & (df.task == "t2"))]
    out = method_table_ci(df, n_boot=100).set_index(["method", "task"])
    assert np.isnan(out.loc[("B", "mean"), "estimate"]) and not np.isnan(out.loc[("A", "mean"), "estimate"])


def test_long_table_bad_input():
    df = _long(["A", "B"], ["t1"], 50)
    with pytest.raises(ValueError, match="same test examples"):
        method_table_ci(df.drop(index=df[(df.method == "B")].index[:3]))
    with pytest.raises(ValueError, match="duplicate"):
        method_table_ci(pd.concat([df, df.iloc[:1]]))
    with pytest.raises(ValueError, match="lacks column"):
        method_table_ci(df.drop(columns="example"))
    with pytest.raises(ValueError, match="empty"):
        method_table_ci(df.iloc[:0])
    with pytest.raises(ValueError, match="mean_label"):
        method_table_ci(df.assign(task="mean"))
    with pytest.raises(ValueError, match="not in df"):
        paired_difference_ci(df, "A", "Z")


def test_paired_difference_ci():
    df = _long(["A", "B"], ["t1", "t2"], 300)
    same = paired_difference_ci(df, "A", "A")
    assert (same[["estimate", "low", "high"]].to_numpy() == 0.0).all()
    assert list(same.task) == ["t1", "t2", "mean"]

    # B = A with 6 answers flipped to wrong: the paired interval is much tighter than either accuracy's
    a = df[df.method == "A"].copy()
    b = a.assign(method="B")
    flip = b.index[b.correct][:6]
    b.loc[flip, "correct"] = False
    pair = pd.concat([a, b])
    d = paired_difference_ci(pair, "A", "B").set_index("task")
    acc = method_table_ci(pair).set_index(["method", "task"])
    assert d.loc["t1", "estimate"] == pytest.approx(6 / 300)
    assert d.loc["t1", "estimate"] == pytest.approx(acc.loc[("A", "t1"), "estimate"] - acc.loc[("B", "t1"), "estimate"])
    assert d.loc["t1", "low"] > 0  # significant, although the accuracy intervals overlap
    assert acc.loc[("B", "t1"), "high"] > acc.loc[("A", "t1"), "estimate"]
    width = d.loc["t1", "high"] - d.loc["t1", "low"]
    assert width < 0.4 * (acc.loc[("A", "t1"), "high"] - acc.loc[("A", "t1"), "low"])


# --- sequential runs --------------------------------------------------------------------------------------

def _sequential(methods, seq, unseen, n, seed=0):
    """Long results: every step on every task; accuracy rises on a task once trained."""
    rng = np.random.default_rng(seed)
    rows = []
    tasks = seq + unseen
    for m in methods:
        for s in range(len(seq)):
            for j, t in enumerate(tasks):
                p = 0.8 if (j < len(seq) and j <= s) else 0.4
                rows.append(pd.DataFrame({"method": m, "step": s, "task": t, "example": np.arange(n),
                                          "correct": rng.random(n) < p}))
    base = pd.concat([pd.DataFrame({"task": t, "example": np.arange(n), "correct": rng.random(n) < 0.35})
                      for t in tasks], ignore_index=True)
    return pd.concat(rows, ignore_index=True), base


def test_cl_metrics_ci_matches_point_metrics():
    seq, unseen = ["a", "b", "c"], ["u"]
    df, base = _sequential(["M1", "M2"], seq, unseen, 120)
    out = cl_metrics_ci(df, base, n_boot=400, task_order=seq)
    assert list(out.columns) == ["method", "metric", "estimate", "low", "high"]
    assert list(out.metric.unique()) == ["AP", "BWT", "FWT", "forgetting", "AP_unseen"]
    Rs = r_matrices(df, task_order=seq)
    assert list(Rs["M1"].columns) == seq + unseen and list(Rs["M1"].index) == [0, 1, 2]
    b = base.groupby("task").correct.mean()
    for m in ["M1", "M2"]:
        want = cl_summary(Rs[m][seq], b)
        want["AP_unseen"] = Rs[m].loc[2, "u"]
        got = out[out.method == m].set_index("metric")
        for k, v in want.items():
            assert got.loc[k, "estimate"] == pytest.approx(v)
            assert got.loc[k, "low"] <= got.loc[k, "estimate"] <= got.loc[k, "high"]
    again = cl_metrics_ci(df.sample(frac=1.0, random_state=0), base, n_boot=400, task_order=seq)
    key = ["method", "metric"]
    pd.testing.assert_frame_equal(out.sort_values(key).reset_index(drop=True),
                                  again.sort_values(key).reset_index(drop=True))
    other = cl_metrics_ci(df, base, n_boot=400, seed=1, task_order=seq)
    assert not np.allclose(other.low, out.low)


def test_cl_metrics_ci_paired_across_methods_and_steps():
    seq = ["a", "b", "c"]
    df, base = _sequential(["M1"], seq, [], 100)
    twin = pd.concat([df, df.assign(method="M2")])
    out = cl_metrics_ci(twin, base, n_boot=300).set_index(["method", "metric"])
    for k in ["AP", "BWT", "FWT", "forgetting"]:
        assert tuple(out.loc[("M1", k)]) == tuple(out.loc[("M2", k)])
    # a model identical at every step: BWT and forgetting are exactly 0 in every replicate
    frozen = pd.concat([df[df.step == 0].assign(step=s) for s in range(3)])
    fz = cl_metrics_ci(frozen, None, n_boot=300).set_index("metric")[["estimate", "low", "high"]]
    assert tuple(fz.loc["BWT"]) == (0.0, 0.0, 0.0)
    assert tuple(fz.loc["forgetting"]) == (0.0, 0.0, 0.0)
    assert fz.loc["FWT"].isna().all()  # no base model


def test_cl_metrics_ci_step_labels_and_errors():
    seq = ["a", "b", "c"]
    df, base = _sequential(["M1"], seq, ["u"], 40)
    by_name = df.assign(step=df.step.map(dict(enumerate(seq))))
    a = cl_metrics_ci(by_name, base, n_boot=100, task_order=seq)
    b = cl_metrics_ci(df, base, n_boot=100, task_order=seq)
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(ValueError, match="task_order"):
        cl_metrics_ci(df, base)  # 4 tasks, 3 steps
    with pytest.raises(ValueError, match="lacks 1"):
        cl_metrics_ci(df[~((df.step == 1) & (df.task == "c"))], base, task_order=seq)
    # above the superdiagonal nothing is read: leaving it out changes no metric
    pd.testing.assert_frame_equal(cl_metrics_ci(df[~((df.step == 0) & (df.task == "c"))], base, n_boot=100,
                                                task_order=seq), b)
    with pytest.raises(ValueError, match="same test examples"):
        cl_metrics_ci(df, base[base.example < 30], task_order=seq)
    with pytest.raises(ValueError, match=r"base_df lacks task\(s\) \['c'\]"):
        cl_metrics_ci(df, base[base.task != "c"], task_order=seq)


def test_full_protocol_shape():
    # 7 methods x 5 steps x 7 tasks (5 trained, 2 unseen) x 300 examples, 1000 replicates
    # (speed is measured in benchmarks, not asserted here)
    tasks = [f"t{i}" for i in range(7)]
    rng = np.random.default_rng(0)
    m, s, t, e = np.meshgrid(np.arange(7), np.arange(5), np.arange(7), np.arange(300), indexing="ij")
    df = pd.DataFrame({"method": np.char.add("m", m.ravel().astype(str)), "step": s.ravel(),
                       "task": np.array(tasks)[t.ravel()], "example": e.ravel(), "correct": rng.random(m.size) < 0.7})
    base = df[(df.method == "m0") & (df.step == 0)].drop(columns=["method", "step"])
    out = cl_metrics_ci(df, base, n_boot=1000, task_order=tasks[:5])
    assert len(out) == 7 * 5
    assert np.all((out["low"] <= out["estimate"]) & (out["estimate"] <= out["high"]))


def test_macro_f1_table_matches_sklearn_and_majority_rows():
    from sklearn.metrics import f1_score

    from recall.cl_metrics import macro_f1_table_ci, majority_rows

    rng = np.random.default_rng(0)
    rows = []
    for task, n_lab in (("a", 3), ("b", 2)):
        label = rng.integers(0, n_lab, 40)
        for m, acc in (("good", 0.9), ("bad", 0.4)):
            pred = np.where(rng.random(40) < acc, label, rng.integers(0, n_lab, 40))
            rows += [(m, task, i, int(y), int(p), int(y == p)) for i, (y, p) in enumerate(zip(label, pred))]
    df = pd.DataFrame(rows, columns=["method", "task", "example", "label", "pred", "correct"])
    maj = majority_rows(df)
    assert set(maj["method"]) == {"majority"} and len(maj) == 80
    for _, g in maj.groupby("task"):
        assert (g["pred"] == g["label"].value_counts().idxmax()).all()
    both = pd.concat([df, maj])
    t = macro_f1_table_ci(both, n_boot=200, seed=1)
    for (m, task), g in both.groupby(["method", "task"]):
        want = f1_score(g["label"], g["pred"], average="macro", labels=sorted(set(g["label"]) | set(g["pred"])))
        got = t[(t["method"] == m) & (t["task"] == task)].iloc[0]
        assert got["estimate"] == pytest.approx(want) and got["low"] <= want <= got["high"]
    mean = t[(t["method"] == "good") & (t["task"] == "mean")].iloc[0]
    assert mean["estimate"] == pytest.approx(t[(t["method"] == "good") & (t["task"] != "mean")]["estimate"].mean())
    for task, n_lab in (("a", 3), ("b", 2)):  # one class predicted: its F1 <= 1, every other class 0
        assert t[(t["method"] == "majority") & (t["task"] == task)]["estimate"].iloc[0] <= 1 / n_lab
