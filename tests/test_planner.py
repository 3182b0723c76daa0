"""The budget planner counts the units the code computes (trainings, evaluations, merges, tuning points)."""

import dataclasses

import pytest

from recall.planner import RATES, _train_s, estimate, per_notebook, report
from recall.profiles import get_profile
from recall.tuning import GRIDS


def _row(est, notebook, unit_start):
    r = est[(est["notebook"] == notebook) & est["unit"].str.startswith(unit_start)]
    assert len(r) == 1, (notebook, unit_start)
    return r.iloc[0]


def test_counts_follow_the_profile():
    p = dataclasses.replace(get_profile("cpu"), multitask=True, chain_length=0, extra_orders=(),
                            sequential_methods=("sft", "ewc", "recall", "uniform"))
    est = estimate(p)
    T = len(p.tasks)
    assert _row(est, "01_representations", "experts")["count"] == T + 1
    # multi-task training reads every task's training split, each epoch
    assert _row(est, "03_multi_model", "multi-task")["seconds"] == pytest.approx(
        _train_s(p, p.tasks, p.n_train, RATES))
    assert _train_s(p, p.tasks, p.n_train, RATES) > _train_s(p, p.tasks[:1], p.n_train, RATES)
    assert _row(est, "03_multi_model", "tuning on validation: merges")["count"] == sum(
        len(GRIDS[m]) for m in ("recall", "task_arithmetic", "ties", "dare", "magmax", "lm_cocktail"))
    # every chain trains steps 2..T (step 1 is the first task's expert); sft's and ewc's step 2 come from tuning
    assert _row(est, "04_sequential", "chain trainings")["count"] == 4 * (T - 1) - 2
    untuned = estimate(dataclasses.replace(p, tune=False, n_val=0))
    assert _row(untuned, "04_sequential", "chain trainings")["count"] == 4 * (T - 1)
    assert _row(untuned, "03_multi_model", "tuning on validation: evaluations")["seconds"] == 0
    two = estimate(dataclasses.replace(p, extra_orders=(tuple(reversed(p.task_order)),)))
    rev = estimate(dataclasses.replace(p, task_order=tuple(reversed(p.task_order))))
    for col in ("count", "seconds"):  # each order on its own chain's tasks
        assert _row(two, "04_sequential", "chain evaluations")[col] == pytest.approx(
            _row(est, "04_sequential", "chain evaluations")[col] + _row(rev, "04_sequential", "chain evaluations")[col])
    short = estimate(dataclasses.replace(p, chain_length=3))
    assert _row(short, "04_sequential", "chain trainings")["count"] == 4 * 2 - 2
    assert (_row(short, "04_sequential", "chain evaluations")["seconds"]
            < _row(est, "04_sequential", "chain evaluations")["seconds"])


def test_scoring_under_autocast_is_planned_at_its_measured_rate():
    p = get_profile("cpu", eval_autocast=None)
    fast = dataclasses.replace(p, eval_autocast="bfloat16")
    unit = "03_multi_model", "evaluations"
    assert _row(estimate(p), *unit)["seconds"] == pytest.approx(
        RATES.float32_eval_factor * _row(estimate(fast), *unit)["seconds"])
    assert RATES.float32_eval_factor == dict(RATES.reference)["autocast_speedup"]


def test_units_cost_what_their_tasks_cost():
    from recall.planner import _eval_s

    p = get_profile("cpu")
    # trec's short questions train on fewer tokens than bbc's articles; 20 Newsgroups' seven labels score slower
    assert _train_s(p, ("trec",), 64, RATES) < _train_s(p, ("bbc",), 64, RATES)
    assert _train_s(p, ("bbc",), 64, RATES, ewc=True) > _train_s(p, ("bbc",), 64, RATES)
    assert _eval_s(p, ("ng",), 100, RATES) > _eval_s(p, ("rt",), 100, RATES)
    assert _eval_s(p, ("rt", "ng"), 100, RATES) == pytest.approx(
        _eval_s(p, ("rt",), 100, RATES) + _eval_s(p, ("ng",), 100, RATES))
    # the reverse order learns other tasks than order 1: each order is planned on its own chain
    rev = dataclasses.replace(p, task_order=tuple(p.extra_orders[0]), extra_orders=())
    one = dataclasses.replace(p, extra_orders=())
    a, b = per_notebook(one)["04_sequential"], per_notebook(rev)["04_sequential"]
    assert a != pytest.approx(b) and per_notebook(p)["04_sequential"] == pytest.approx(a + b)


def test_skipped_notebooks_are_not_planned_unless_named():
    p = get_profile("cpu")
    assert "02_single_model" in p.skip and "02_single_model" not in set(estimate(p)["notebook"])
    assert list(per_notebook(p, ["02_single_model"]).index) == ["02_single_model"]


def test_more_test_examples_cost_more_and_reports_select_notebooks():
    p = get_profile("cpu")
    small, big = per_notebook(dataclasses.replace(p, n_test=80)), per_notebook(p)
    assert (big[["03_multi_model", "04_sequential"]] > small[["03_multi_model", "04_sequential"]]).all()
    assert list(per_notebook(p, ["04_sequential"]).index) == ["04_sequential"]
    text = report(p, ["03_multi_model"])
    assert "03_multi_model" in text and "04_sequential" not in text and "total" in text


def test_the_pilot_is_planned_only_when_named_and_trains_each_recipe_once_up_to_the_profiles():
    from recall.pilot import RECIPES, profile_recipe

    p = get_profile("cpu")
    assert "00_pilot" not in set(estimate(p)["notebook"])
    est = estimate(p, include_skipped=True)
    T, i = len(p.tasks), RECIPES.index(profile_recipe(p))  # a pilot recipe: the scoring pilot trains it once
    assert _row(est, "00_pilot", "recipes: expert trainings")["count"] == T * i  # it stops at the profile's
    other = dataclasses.replace(p, lr=5e-4)  # no pilot recipe: every recipe is counted
    assert _row(estimate(other, include_skipped=True), "00_pilot", "recipes: expert trainings")["count"] == \
        T * len(RECIPES)
    assert list(per_notebook(p, ["00_pilot"]).index) == ["00_pilot"]


def test_phases_sum_to_the_notebooks_and_name_what_provenance_times():
    from recall.planner import PHASES, per_phase

    p = get_profile("cpu")
    est = estimate(p, include_skipped=True)
    assert set(est["phase"]) <= set(PHASES)
    for nb, seconds in per_notebook(p).items():
        assert sum(per_phase(p, nb).values()) == pytest.approx(seconds)
    assert per_phase(p, "03_multi_model")["merging"] > 0 and per_phase(p, "06_efficiency")["training"] == 0


def test_calibration_scales_each_phase_by_its_reading_of_the_machine():
    from recall.planner import calibrated, per_phase

    p = get_profile("cpu")
    ref = dict(RATES.reference)
    assert calibrated(RATES, None) is RATES and calibrated(RATES, {"threads": 2}) is RATES
    same = calibrated(RATES, ref)
    assert per_notebook(p, rates=same).to_dict() == pytest.approx(per_notebook(p, rates=RATES).to_dict())
    # training twice as slow, the rest unread: taken as equal; merges follow training and memory copy half each
    half = calibrated(RATES, {"train_block_ms": 2 * ref["train_block_ms"]})
    assert half.train_s_per_token == pytest.approx(2 * RATES.train_s_per_token)
    assert half.merge_scale == pytest.approx(2 ** 0.5) and half.eval_scale == 1.0
    # a block forward twice as slow and bfloat16 autocast 4 times slower than float32 (no native bfloat16)
    slow = calibrated(RATES, {**ref, "block_ms": 2 * ref["block_ms"], "autocast_speedup": 0.25})
    a, b = per_phase(p, "04_sequential", RATES), per_phase(p, "04_sequential", slow)
    assert b["training"] == pytest.approx(a["training"])
    # the cpu profile scores under autocast: 2 x (1.9 / 0.25)
    assert b["evaluation"] == pytest.approx(2 * ref["autocast_speedup"] / 0.25 * a["evaluation"])
    fp32 = dataclasses.replace(p, eval_autocast=None)
    assert per_phase(fp32, "04_sequential", slow)["evaluation"] == pytest.approx(
        2 * per_phase(fp32, "04_sequential", RATES)["evaluation"])
    assert per_phase(p, "06_efficiency", slow)["other"] == pytest.approx(per_phase(p, "06_efficiency", RATES)["other"])
    # memory copy half as fast: merges, loads and the merge benchmark by the geometric mean with training (equal)
    mem = calibrated(RATES, {"copy_gbps": ref["copy_gbps"] / 2})
    other = per_phase(p, "06_efficiency")["other"]
    assert per_phase(p, "06_efficiency", mem)["other"] == pytest.approx(2 ** 0.5 * other)
    trained = per_phase(p, "04_sequential")["training"]  # a training's fixed part only
    assert trained < per_phase(p, "04_sequential", mem)["training"] < 1.03 * trained
    both = calibrated(RATES, {"train_block_ms": 2 * ref["train_block_ms"], "copy_gbps": ref["copy_gbps"] / 2,
                              "block_ms": 2 * ref["block_ms"]})  # RECALL's representation pass: the block
    merging = per_phase(p, "03_multi_model")["merging"]
    assert per_phase(p, "03_multi_model", both)["merging"] == pytest.approx(2 * merging)


def test_a_replicate_plans_every_notebook_at_its_one_reading(monkeypatch):
    import json

    from recall import bench
    from recall.planner import READING_ENV, reading

    taken = {"train_block_ms": 60.0, "block_ms": 8.0, "autocast_speedup": 2.0, "copy_gbps": 20.0}
    monkeypatch.setattr(bench, "probe", lambda: {"read": "now"})
    monkeypatch.setenv(READING_ENV, json.dumps(taken))
    assert reading(get_profile("cpu")) == taken
    monkeypatch.setenv(READING_ENV, "not json")  # unreadable: a reading now
    assert reading(get_profile("cpu")) == {"read": "now"}
    # a reading now is the median of several: one slow spell does not move the plan
    spells = iter([{"threads": 2, "train_block_ms": 75.0}, {"threads": 2, "train_block_ms": 84.0},
                   {"threads": 2, "train_block_ms": 74.0}])
    monkeypatch.setattr(bench, "probe", lambda: next(spells))
    monkeypatch.delenv(READING_ENV)
    assert reading(get_profile("cpu")) == {"threads": 2, "train_block_ms": 75.0}
    assert reading(get_profile("smoke")) == {}  # the tiny model has no rates to calibrate


def test_the_probe_reads_the_speeds_the_calibration_uses():
    from recall.bench import probe
    from recall.planner import calibrated

    reading = probe(n=128, runs=1, copy_mib=4)
    assert {"threads", *dict(RATES.reference)} <= set(reading)
    assert all(reading[k] > 0 for k in dict(RATES.reference))
    assert calibrated(RATES, reading).train_s_per_token > 0


def test_tuned_merges_are_merged_again_for_the_test_scores_and_controls_are_merges_of_their_own():
    p = get_profile("cpu")
    tuned = {"recall", "task_arithmetic", "ties", "dare", "magmax", "lm_cocktail"}
    assert tuned < set(p.multi_methods) and "recall_symmetric" in p.multi_methods  # follows RECALL's values
    # validation released the chosen grid point's weights: every method is merged once for the test scores
    assert _row(estimate(p), "03_multi_model", "merges")["count"] == len(p.multi_methods)
    kept = dataclasses.replace(p, keep_merged=True)
    assert _row(estimate(kept), "03_multi_model", "merges")["count"] == len(set(p.multi_methods) - tuned)
