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
    p = get_profile("cpu")
    est = estimate(p)
    T = len(p.tasks)
    assert _row(est, "01_representations", "experts")["count"] == T + 1
    # multi-task training reads every task's training split, each epoch
    assert _row(est, "03_multi_model", "multi-task")["seconds"] == pytest.approx(_train_s(p, T * p.n_train, RATES))
    assert _row(est, "03_multi_model", "tuning")["count"] == sum(
        len(GRIDS[m]) for m in ("recall", "task_arithmetic", "ties", "dare", "magmax", "lm_cocktail"))
    # every chain trains every step (step 1 included) and is scored on the tasks seen so far
    chains = len(p.seeds) * (1 + len(p.extra_orders))
    assert _row(est, "04_sequential", "chain trainings")["count"] == chains * len(p.sequential_methods) * T
    two = estimate(dataclasses.replace(p, extra_orders=(tuple(reversed(p.task_order)),)))
    assert _row(two, "04_sequential", "chain evaluations")["seconds"] == pytest.approx(
        2 * _row(est, "04_sequential", "chain evaluations")["seconds"])
    assert _row(estimate(dataclasses.replace(p, tune=False, n_val=0)), "03_multi_model", "tuning")["seconds"] == 0


def test_more_test_examples_cost_more_and_reports_select_notebooks():
    p = get_profile("cpu")
    small, big = per_notebook(dataclasses.replace(p, n_test=80)), per_notebook(p)
    assert (big[["02_single_model", "03_multi_model", "04_sequential"]] >
            small[["02_single_model", "03_multi_model", "04_sequential"]]).all()
    assert list(per_notebook(p, ["04_sequential"]).index) == ["04_sequential"]
    text = report(p, ["03_multi_model"])
    assert "03_multi_model" in text and "04_sequential" not in text and "total" in text
