"""Experiment units: merged models whose weights are released once scored, and merged again only when needed."""

from __future__ import annotations

import dataclasses

import pandas as pd

from recall.experiments import WEIGHTS_DELETED, Run, has_weights
from recall.profiles import get_profile

SMOKE = get_profile("smoke")


def _run(tmp_path, **changes) -> tuple[Run, list]:
    run = Run(dataclasses.replace(SMOKE, **changes), progress=False)
    run.root = tmp_path  # keep the test's units out of the shared cache
    merges = []
    inner = run._merge
    run._merge = lambda out: (merges.append(out), inner(out))
    return run, merges


def test_released_merge_is_merged_again_only_when_its_weights_are_needed(tmp_path):
    run, merges = _run(tmp_path)
    task, unseen = SMOKE.tasks[0], SMOKE.unseen[0]
    merged = run.merge("average", [run.base, run.base], samples_task=None, name="m")
    first = run.evaluate_on(merged, (task,), method="average")
    run.release(merged)
    assert not has_weights(merged) and (merged / WEIGHTS_DELETED).exists()
    assert (merged / "merge_config.json").exists() and (merged / "README.md").exists()
    assert len(merges) == 1
    # cached: the same folder back, the same scores, no new merge
    assert run.merge("average", [run.base, run.base], samples_task=None, name="m") == merged
    pd.testing.assert_frame_equal(run.evaluate_on(merged, (task,), method="average"), first)
    assert len(merges) == 1 and not has_weights(merged)
    # a score not cached yet needs the weights: merged again, identical
    run.evaluate_on(merged, (unseen,), method="average")
    assert len(merges) == 2 and has_weights(merged) and not (merged / WEIGHTS_DELETED).exists()
    # a model that is not a merge of this run is never released
    run.release(run.base)
    assert has_weights(run.base)


def test_keep_merged_keeps_the_weights(tmp_path):
    run, _ = _run(tmp_path, keep_merged=True)
    merged = run.merge("average", [run.base, run.base], samples_task=None, name="m")
    run.evaluate_on(merged, (SMOKE.tasks[0],), method="average")
    run.release(merged)
    assert has_weights(merged) and not (merged / WEIGHTS_DELETED).exists()


def test_training_from_a_released_merge_merges_it_again(tmp_path):
    run, merges = _run(tmp_path)
    merged = run.merge("average", [run.base, run.base], samples_task=None, name="m")
    run.release(merged)
    out = run.train(merged, (SMOKE.tasks[0],), "from-merged")
    assert has_weights(out) and has_weights(merged) and len(merges) == 2


def test_sequential_pools_pair_and_history(tmp_path):
    """After step t, ``recall`` and ``uniform`` merge {current, new}; ``recall_history`` merges {base, M_1..M_t}."""
    import json

    from recall.experiments import sequential

    run, merges = _run(tmp_path)
    df = sequential(run, methods=("uniform", "recall_history"))
    assert set(df["method"]) == {"uniform", "recall_history"} and set(df["step"]) == {1, 2, 3}
    merges = [m for m in merges if m.name.startswith("seq-")]  # not the tuning's merges
    pools = {}
    for out in merges:
        info = json.loads((out / "merge_config.json").read_text())
        pools[out.name.split("-")[1], out.name.split("-step")[1][0]] = info
    assert [len(pools["recall_history", s]["models"]) for s in "123"] == [1, 2, 3]
    assert all(pools["recall_history", s]["options"]["include_base"] for s in "123")
    assert [len(pools["uniform", s]["models"]) for s in "123"] == [2, 2, 2]
    assert not pools["uniform", "3"]["options"]["include_base"]
    # the history is the fine-tuned models of the steps, in order; the pair's first model is the last merge
    assert pools["uniform", "3"]["models"][0] == str(merges[1])


def test_tuning_picks_the_best_validation_point_and_the_scenarios_use_it(tmp_path):
    import json

    from recall.experiments import multi_tuning, sequential_tuning
    from recall.tuning import GRIDS

    run, merges = _run(tmp_path, multi_methods=("recall", "task_arithmetic", "uniform", "recall_symmetric"),
                       sequential_methods=("sft", "ewc", "recall"))
    t = multi_tuning(run)
    assert set(t["method"]) == {"recall", "task_arithmetic"}  # the controls follow RECALL; uniform has no knob
    for m, g in t.groupby("method"):
        assert len(g) == len(GRIDS[m]) and g["chosen"].sum() == 1
        best = g.loc[g["chosen"]].iloc[0]
        assert best["macro_f1"] == g["macro_f1"].max()
        assert (g[g["macro_f1"] == best["macro_f1"]]["point"].min() == best["point"])  # ties: the earlier point
        assert set(json.loads(best["options"]).items()) <= set(run.options("multi", m).items())
    assert run.options("multi", "recall_symmetric")["temperature"] == run.options("multi", "recall")["temperature"]
    assert "temperature" not in run.options("multi", "uniform")
    evals = list((run.root / "evals").glob("*.csv"))
    assert evals and all("-validation-" in f.name for f in evals)  # tuning never scored a test example
    s = sequential_tuning(run)
    assert set(s["method"]) == {"recall", "ewc"} and (s.groupby("method")["chosen"].sum() == 1).all()
    lam = json.loads(s[(s["method"] == "ewc") & s["chosen"]]["options"].iloc[0])["ewc_lambda"]
    assert run.options("sequential", "ewc") == {"ewc_lambda": lam}


def test_chains_stop_at_chain_length_and_share_the_experts_and_tuning(tmp_path):
    """With ``chain_length=2`` a chain learns the first two tasks of the order; step 1 is the first task's expert
    and sft's step 2 is the tuning's step 2 (found by fingerprint); the derived tables and figures read the chain."""
    from recall import plots
    from recall.experiments import base_examples, sequential, sequential_tuning
    from recall.tables import Params, sequential_tables

    run, _ = _run(tmp_path, chain_length=2)
    order = run.profile.chain()
    assert order == SMOKE.task_order[:2]
    sequential_tuning(run, SMOKE.task_order)
    trained = list(run.trained)
    df = sequential(run, SMOKE.task_order, methods=("sft", "recall"))
    assert set(df["step"]) == {1, 2} and set(df["task"]) == set(order) | set(SMOKE.unseen)
    # both sft steps stood in for by the expert and the tuning's checkpoint: nothing trained under the chain
    assert not [s for r in (tmp_path / "sequential").glob("sft-*") for s in r.glob("step*")]
    assert run.expert(order[0]) in trained
    recall_root = next((tmp_path / "sequential").glob("recall-*"))
    assert [p.name for p in sorted(recall_root.glob("step*"))] == ["step2_" + order[1]]
    p = Params.of(run.profile)
    assert p.chain == order
    t = sequential_tables(df, base_examples(run, order + tuple(SMOKE.unseen)), p)
    assert list(t["R_sft"].columns)[:2] == list(order)
    figs = plots._sequential_figures(t, "smoke", SMOKE.task_order)
    assert "seq_forgetting" in figs
