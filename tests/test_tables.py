"""Results tables: declared columns, the derivations on small hand-checked inputs, the views, and the
committed ``results/cpu`` tables rebuilt byte for byte from the committed measured tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recall import tables
from recall.tables import MEAN, Params

ROOT = Path(__file__).resolve().parents[1]
CPU = ROOT / "results" / "cpu"
PARAMS = Params(tasks=("a", "b"), unseen=("u",), task_order=("a", "b"), n_boot=200, seed=0, n_samples=4,
                ablation_options={"default": {}, "random_samples": {"selection": "random"}})


def _examples(rows):
    """Long per-example frame from (method, task, [0/1 per example]) rows."""
    out = []
    for method, task, correct in rows:
        out += [{"method": method, "task": task, "example": i, "label": 0, "pred": 1 - c, "correct": c}
                for i, c in enumerate(correct)]
    return pd.DataFrame(out)


# ------------------------------------------------------------------------------------ committed results


# the committed run, and the same code's run on another CPU (results/replicas/cpu-epyc-zen4: its tables differ,
# its derived tables still follow from its measured ones; its pilot was not rerun and its files are not there)
FOLDERS = {"cpu": (CPU, ()), "zen4": (ROOT / "results" / "replicas" / "cpu-epyc-zen4", ("00_pilot",))}


def _committed():
    out = []
    for label, (folder, skip) in FOLDERS.items():
        prov = json.loads((folder / "provenance.json").read_text())["notebooks"]
        out += [(label, nb, prov[nb]) for nb in tables.DERIVATIONS if nb in prov and nb not in skip]
    return out


@pytest.mark.parametrize("label,notebook,entry", _committed(), ids=[f"{lb}-{nb}" for lb, nb, _ in _committed()])
def test_committed_tables_rebuild_byte_identical(label, notebook, entry):
    """Every derived table of results/cpu (and of the replica on another CPU), recomputed from the committed
    measured tables with the parameters in provenance.json, is the committed file byte for byte."""
    folder = FOLDERS[label][0]
    out = tables.derive(notebook, folder, Params.from_provenance(entry))
    assert out
    for name, df in out.items():
        assert tables.to_csv(name, df) == (folder / f"{name}.csv").read_text(), f"{notebook}: {name}.csv differs"


def test_every_committed_file_is_declared():
    for path in CPU.glob("*.csv"):
        spec = tables.spec_of(path.stem)
        df = tables.read(path)
        tables.check_columns(path.stem, df)
        assert spec.kind in ("measured", "derived")


# ------------------------------------------------------------------------------------ specs and writing


def test_columns_are_checked_and_measured_tables_keep_every_digit():
    df = pd.DataFrame({"task": ["a"], "accuracy": [1 / 3]})
    assert tables.to_csv("base_scores", df) == "task,accuracy\na,0.333333\n"
    with pytest.raises(ValueError, match="declared"):
        tables.to_csv("base_scores", df[["accuracy", "task"]])
    pw = pd.DataFrame({"layer": [0], "model_a": ["x"], "model_b": ["y"], "measure": ["rbf"], "similarity": [0.9999996]})
    assert "0.9999996" in tables.to_csv("pairwise", pw)  # %.6g would give 1
    with pytest.raises(KeyError, match="no table"):
        tables.spec_of("nonsense")
    assert tables.spec_of("R_magmax").name == "R_{method}"


def test_every_derived_table_has_a_derivation():
    made = {s.notebook for s in tables.SPECS.values() if s.kind == "derived"}
    assert made <= set(tables.DERIVATIONS)


# ------------------------------------------------------------------------------------------ derivations


def test_single_model_tables_by_hand():
    rows = [("base", "a", [0, 0, 1, 1]), ("recall", "a", [1, 1, 1, 1]), ("average", "a", [1, 0, 1, 1]),
            ("base", "u", [0, 1, 0, 1]), ("recall", "u", [1, 1, 0, 1]), ("average", "u", [0, 1, 0, 1])]
    ex = _examples(rows).assign(expert_task="a")
    ex2 = _examples([(m, t, c[::-1]) for m, t, c in rows]).assign(expert_task="b")
    ex2 = ex2[ex2["task"] == "u"]
    df = pd.concat([ex, ex2], ignore_index=True)
    out = tables.single_model_tables(df, PARAMS)
    acc = out["single_accuracy"].set_index(["scope", "method", "task"])["estimate"]
    assert acc["own task", "recall", "a"] == 1.0 and acc["own task", "average", "a"] == 0.75
    # unseen: averaged over the merges of both experts, per example: recall's [1,1,0,1] and reversed [1,0,1,1]
    assert acc["unseen tasks", "recall", "u"] == pytest.approx(0.75)
    diff = out["single_diff"].set_index(["other", "scope", "task"])
    assert diff.loc[("average", "own task", "a"), "estimate"] == pytest.approx(0.25)
    assert list(out["single_diff"].columns) == list(tables.SPECS["single_diff"].columns)


def test_multi_model_tables_by_hand():
    df = _examples([("base", "a", [0, 0, 1, 1]), ("base", "b", [0, 1, 0, 0]), ("base", "u", [1, 0, 0, 0]),
                    ("expert-a", "a", [1, 1, 0, 1]), ("expert-b", "b", [1, 1, 1, 0]),
                    ("expert-a", "u", [0, 0, 0, 0]), ("expert-b", "u", [0, 0, 0, 0]),
                    ("recall", "a", [1, 1, 0, 0]), ("recall", "b", [1, 1, 1, 0]), ("recall", "u", [1, 1, 0, 0]),
                    ("average", "a", [1, 0, 0, 0]), ("average", "b", [1, 1, 0, 0]), ("average", "u", [1, 0, 0, 0])])
    out = tables.multi_model_tables(df, PARAMS)
    train = out["multi_train"].set_index(["method", "task"])["estimate"]
    assert train["experts", "a"] == 0.75 and train["experts", "b"] == 0.75
    assert train["recall", MEAN] == pytest.approx(0.625)
    norm = out["multi_normalized"].set_index(["method", "task"])["estimate"]
    assert norm["recall", "a"] == pytest.approx(0.5 / 0.75) and norm["recall", "b"] == pytest.approx(1.0)
    assert set(out["multi_unseen"]["method"]) == {"base", "recall", "average", "majority"}
    # the majority class of each task's examples, predicted for all of them
    lab = df.drop_duplicates(["task", "example"]).groupby("task")["label"].agg(lambda x: (x == x.mode()[0]).mean())
    assert train["majority", "a"] == pytest.approx(lab["a"]) and "majority" not in set(out["multi_diff"]["other"])
    f1 = out["multi_f1"].set_index(["scope", "method", "task"])["estimate"]
    assert ("training", "recall", MEAN) in f1.index and ("unseen", "majority", "u") in f1.index
    d = out["multi_diff"].set_index(["other", "scope", "task"])["estimate"]
    assert d["average", "training tasks", MEAN] == pytest.approx(0.25)
    assert d["average", "unseen tasks", "u"] == pytest.approx(0.25)
    assert set(out["multi_diff"]["other"]) == {"average", "base"}


def test_sequential_tables_by_hand():
    # two tasks, two steps; recall keeps task a, sft forgets it
    rows = []
    for m, R in (("sft", {1: {"a": [1, 1], "b": [0, 0]}, 2: {"a": [0, 0], "b": [1, 1], "u": [1, 0]}}),
                 ("recall", {1: {"a": [1, 1], "b": [0, 0]}, 2: {"a": [1, 0], "b": [1, 1], "u": [1, 1]}})):
        for step, per_task in R.items():
            for task, c in per_task.items():
                rows += [{"method": m, "step": step, "task": task, "example": i, "label": 0, "pred": 0,
                          "correct": v} for i, v in enumerate(c)]
    df = pd.DataFrame(rows)
    base = pd.DataFrame([{"task": t, "example": i, "label": 0, "pred": 0, "correct": 0} for t in ("a", "b", "u")
                         for i in range(2)])
    out = tables.sequential_tables(df, base, PARAMS)
    m = out["seq_metrics"].set_index(["method", "metric"])["estimate"]
    assert m["sft", "BWT"] == -1.0 and m["recall", "BWT"] == -0.5 and m["recall", "AP_unseen"] == 1.0
    d = out["seq_diff"].set_index("metric")["estimate"]
    assert d["BWT"] == 0.5 and d["forgetting"] == -0.5 and d["AP"] == pytest.approx(0.25)
    assert list(out["R_recall"].columns) == ["a", "b", "u"] and out["R_recall"].loc[2, "a"] == 0.5
    assert out["base_scores"]["accuracy"].tolist() == [0, 0, 0]


def test_ablation_tables_by_hand():
    df = _examples([("x", "a", [1, 0, 1, 0]), ("x", "b", [1, 1, 1, 1])]).drop(columns="method")
    df = pd.concat([df.assign(variant="default"),
                    df.assign(variant="random_samples", correct=[0, 0, 1, 0, 1, 1, 1, 1])], ignore_index=True)
    out = tables.ablation_tables(df, PARAMS)
    assert out["ablation_accuracy"]["options"].iloc[-1] == '{"selection": "random"}'
    d = out["ablation_diff"].set_index("task")["estimate"]
    assert d["a"] == -0.25 and d[MEAN] == -0.125 and out["ablation_diff"]["difference"].iloc[0] == "variant - default"


def test_representation_tables_by_hand():
    rows = []
    for layer in range(4):
        sims = {("e1", "e2"): 1 - 0.1 * layer, ("e1", "e3"): 1 - 0.2 * layer, ("e2", "e3"): 1 - 0.1 * layer,
                ("e1", "e1-seed1"): 1 - 0.01 * layer}
        for (a, b), s in sims.items():
            rows += [{"layer": layer, "model_a": a, "model_b": b, "measure": "rbf", "similarity": s},
                     {"layer": layer, "model_a": b, "model_b": a, "measure": "rbf", "similarity": s}]
        rows += [{"layer": layer, "model_a": e, "model_b": e, "measure": "rbf", "similarity": 1.0}
                 for e in ("e1", "e2", "e3", "e1-seed1")]
    pw = pd.DataFrame(rows)
    curve = tables.interexpert_curve(pw, n_boot=50, seed=0)  # the same-task null expert is left out
    assert curve["similarity"].tolist() == pytest.approx([1 - 0.4 / 3 * layer for layer in range(4)])
    assert (curve["low"] <= curve["similarity"] + 1e-12).all() and curve["n_pairs"].iloc[0] == 3
    assert tables.null_curve(pw)["similarity"].tolist() == pytest.approx([1 - 0.01 * layer for layer in range(4)])
    # over blocks 1..3 (k = 1): first 1 - 0.4/3, last 1 - 1.2/3; D_last / D_first = 3; D_cross / D_null = 0.4 / 0.03
    stats = tables.c1_statistics(curve["similarity"], tables.null_curve(pw)["similarity"])
    assert stats["spearman_depth"] == pytest.approx(-1.0)
    assert stats["first_minus_last"] == pytest.approx(0.8 / 3)
    assert stats["depth_ratio"] == pytest.approx(3.0) and stats["task_ratio"] == pytest.approx(0.4 / 0.03)
    reps = pd.DataFrame([{"replicate": r, "measure": "rbf", "statistic": k, "value": v * (1 + 0.01 * r)}
                         for r in range(20) for k, v in stats.items()])
    c1 = tables.c1_summary(pw, reps, n_samples=4).set_index("statistic")
    assert c1.loc["depth_ratio", "estimate"] == pytest.approx(3.0)
    assert c1.loc["depth_ratio", "low"] > 3.0 and c1.loc["depth_ratio", "high"] < 3.0 * 1.2
    assert c1["blocks"].iloc[0] == 3 and c1["first_layers"].iloc[0] == "1-1" and c1["n_pairs"].iloc[0] == 3


def test_difference_tests_and_leave_one_task_out():
    from recall.cl_metrics import paired_difference_ci

    df = _examples([("recall", "a", [1, 1, 1, 1, 0, 0]), ("sft", "a", [0, 0, 0, 0, 0, 0]),
                    ("recall", "b", [1, 0, 1, 0, 1, 0]), ("sft", "b", [1, 0, 1, 0, 1, 0])])
    d = paired_difference_ci(df, "recall", "sft", n_boot=200, margin=0.02).set_index("task")
    assert list(d.index) == ["a", "b", MEAN, "mean without a", "mean without b"]
    assert (d.loc["a", "n_a"], d.loc["a", "n_b"]) == (4, 0)
    assert d.loc["a", "p_exact_greater"] == pytest.approx(1 / 16)  # exact McNemar: 4 discordant, all one way
    assert d.loc["b", "n_a"] == d.loc["b", "n_b"] == 0 and d.loc["b", "p_equiv"] < 0.01
    assert d.loc["mean without a", "estimate"] == 0.0 and d.loc["mean without b", "estimate"] == pytest.approx(2 / 3)
    assert d.loc[MEAN, "p_exact_greater"] == pytest.approx(1 / 16)  # the tasks' discordant examples pooled


def test_derive_reads_files_and_names_missing_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="single_examples"):
        tables.derive("02_single_model", tmp_path, PARAMS)
    assert tables.derive("06_efficiency", tmp_path, PARAMS) == {}


# ------------------------------------------------------------------------------------------------ views


def test_ci_text_and_views():
    assert tables.ci_text(0.5, 0.4, 0.6) == "50.0 [40.0, 60.0]"
    assert tables.ci_text(np.nan, 0, 1) == "n/a" and tables.ci_text(0.5, None, 1) == "50.0 [n/a]"
    t = pd.DataFrame({"method": ["recall", "recall", "sft", "sft"], "task": ["trec", MEAN] * 2,
                      "estimate": [0.5, 0.5, 0.25, 0.25], "low": [0.4] * 4, "high": [0.6] * 4, "n": [4] * 4})
    v = tables.view("multi_train", t)
    assert list(v.index) == ["RECALL", "LoRA SFT"] and list(v.columns) == ["TREC", "mean"]
    assert v.loc["LoRA SFT", "TREC"] == "25.0 [40.0, 60.0]"
    raw = tables.view("multi_train", t, labels=False, query="method == 'sft'")
    assert list(raw.index) == ["sft"]
    R = pd.DataFrame({"a": [0.5, 0.25]}, index=pd.Index([1, 2], name="step"))
    assert tables.view("R_sft", R).loc[2, "a"] == "25.0"
