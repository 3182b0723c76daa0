"""The pilot's rules: the scoring rule and casing, the training recipe by the quality gate, unreachable labels."""

import pandas as pd

from recall.pilot import GATE, balanced_accuracy, choose_recipe, choose_scoring, unreachable


def _scoring(rows):
    return pd.DataFrame([dict(zip(["model", "task", "casing", "scoring", "macro_f1", "predicted"], r)) for r in rows])


def test_choose_scoring_takes_the_best_mean_and_title_case_only_when_it_helps_the_base():
    t = _scoring([("base", "rt", "lower", "sum", 0.4, "negative"), ("base", "rt", "lower", "mean", 0.6, "negative"),
                  ("e", "rt", "lower", "sum", 0.9, "negative positive"), ("e", "rt", "lower", "mean", 0.9, "positive"),
                  ("base", "rt", "title", "sum", 0.9, "Positive"), ("base", "rt", "title", "mean", 0.6, "Positive")])
    assert choose_scoring(t) == ("mean", "lower")  # title ties lower under "mean": lower stays
    t.loc[5, "macro_f1"] = 0.7
    assert choose_scoring(t) == ("mean", "title")
    t.loc[1, "macro_f1"] = 0.4
    assert choose_scoring(t)[0] == "sum"  # a tie goes to the earlier rule
    assert unreachable(t, "mean") == {} and unreachable(t[t["model"] == "base"], "sum") == {"rt": ["positive"]}


def test_choose_recipe_first_that_meets_the_gate_else_largest_smallest_gain():
    rows = [("cheap", "a", GATE - 0.01, False), ("cheap", "b", 0.5, True),
            ("mid", "a", GATE, True), ("mid", "b", GATE + 0.1, True),
            ("dear", "a", 0.9, True), ("dear", "b", 0.9, True)]
    t = pd.DataFrame(rows, columns=["recipe", "task", "gain", "gate_met"])
    assert choose_recipe(t) == "mid"
    t["gate_met"] = False
    assert choose_recipe(t) == "dear"


def test_balanced_accuracy():
    assert balanced_accuracy([0, 0, 0, 0], [0, 0, 0, 1], 2) == 0.5
    assert balanced_accuracy([0, 1, 1, 1], [0, 1, 1, 1], 3) == 1.0
