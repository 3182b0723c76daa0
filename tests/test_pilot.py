"""The pilot's rules: the casing, the training recipe and scoring rule by the quality gate, unreachable labels."""

import pandas as pd

from recall.pilot import GATE, balanced_accuracy, choice, choose_casing, choose_recipe, rule_means, unreachable


def _scoring(rows):
    return pd.DataFrame([dict(zip(["model", "task", "casing", "scoring", "macro_f1", "predicted"], r)) for r in rows])


def test_title_case_only_when_it_raises_the_base_over_every_rule_and_task():
    t = _scoring([("base", "rt", "lower", "sum", 0.4, "negative"), ("base", "rt", "lower", "mean", 0.6, "negative"),
                  ("e", "rt", "lower", "sum", 0.9, "negative positive"), ("e", "rt", "lower", "mean", 0.9, "positive"),
                  ("base", "rt", "title", "sum", 0.3, "Positive"), ("base", "rt", "title", "mean", 0.7, "Positive")])
    assert choose_casing(t) == "lower"  # title ties lower over both rules (the expert does not count)
    t.loc[4, "macro_f1"] = 0.31
    assert choose_casing(t) == "title"
    assert rule_means(t, "lower").to_dict() == {"mean": 0.75, "sum": 0.65}
    assert unreachable(t, "mean") == {} and unreachable(t[t["model"] == "base"], "sum") == {"rt": ["positive"]}


def _training(rows):
    cols = ["recipe", "task", "scoring", "gain"]
    t = pd.DataFrame(rows, columns=cols)
    t["casing"], t["gate_met"] = "lower", t["gain"] >= GATE
    return t


def test_choose_recipe_first_that_meets_the_gate_under_some_rule_then_the_best_ranked_such_rule():
    ranks = _scoring([("base", "rt", "lower", "sum", 0.5, ""), ("base", "rt", "lower", "first", 0.6, ""),
                      ("base", "rt", "lower", "calibrated", 0.7, "")])
    rows = [("cheap", "a", "sum", GATE - 0.01), ("cheap", "b", "sum", 0.5),  # no rule passes on both tasks
            ("cheap", "a", "calibrated", 0.9), ("cheap", "b", "calibrated", 0.1),
            ("mid", "a", "sum", GATE), ("mid", "b", "sum", GATE + 0.1),  # sum and first pass; first ranks higher
            ("mid", "a", "first", 0.2), ("mid", "b", "first", 0.2),
            ("mid", "a", "calibrated", 0.0), ("mid", "b", "calibrated", 0.9),
            ("dear", "a", "sum", 0.9), ("dear", "b", "sum", 0.9)]
    t = _training(rows)
    assert choose_recipe(t, ranks) == ("mid", "first")
    assert choose_recipe(t[t["scoring"] != "first"], ranks) == ("mid", "sum")
    assert choose_recipe(t) == ("mid", "sum")  # without a ranking, the first rule in SCORINGS
    t["gate_met"] = False
    assert choose_recipe(t, ranks) == ("dear", "sum")  # none passes: the largest smallest gain


def test_choice_names_the_chosen_recipe_rule_and_the_labels_no_model_predicts():
    scoring = _scoring([("base", "rt", "lower", "sum", 0.4, "negative"),
                        ("base", "trec", "lower", "sum", 0.1, "human")])
    training = _training([("r", "rt", "sum", 0.3), ("r", "trec", "sum", 0.5)])
    training["predicted"], training["chosen"] = ["positive", "human location"], True
    row = choice(scoring, training).iloc[0]
    assert (row["recipe"], row["scoring"], row["casing"], bool(row["gate_met"])) == ("r", "sum", "lower", True)
    assert row["smallest_gain"] == 0.3
    assert row["unreachable"] == "trec: abbreviation; trec: description; trec: entity; trec: number"


def test_balanced_accuracy():
    assert balanced_accuracy([0, 0, 0, 0], [0, 0, 0, 1], 2) == 0.5
    assert balanced_accuracy([0, 1, 1, 1], [0, 1, 1, 1], 3) == 1.0
