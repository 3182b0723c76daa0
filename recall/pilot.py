"""The pilot that fixes the testbed before any test example is read: the label casing, then the experts'
training recipe together with the scoring rule, each chosen on the validation split by a rule stated here in code.

1. Scoring table and casing (:func:`scoring_pilot`, :func:`choose_casing`): the base model on every task, in
   lower and title case, and each of the profile's experts on its own task and the unseen tasks, in the profile's
   casing, are scored on validation by every rule of ``recall.scoring.SCORINGS`` (one pass per model and task).
   Title case is chosen only if it raises the base model's mean macro-F1 over every rule and task.
2. Training recipe and scoring rule (:func:`training_pilot`, :func:`choose_recipe`): recipes are tried in the
   order given (cheapest first: the CPU budget is the constraint); each recipe's experts are scored on their own
   task's validation split by every rule, and so is the base. The first recipe under which some rule lets every
   expert beat the base by at least ``GATE`` macro-F1 on its own task is chosen, and the later ones are not run.
   Among the rules that meet the gate for it, the one with the highest mean macro-F1 over the scoring table's
   (model, task) pairs in the chosen casing is taken (ties: the first in ``SCORINGS``). If no recipe meets the
   gate under any rule, the (recipe, rule) with the largest smallest gain is chosen and the gate is reported as
   not met.

The first run of the pilot (December 2026, results/cpu/pilot_round1/) chose the rule before the recipe, on the
scoring table alone; calibration won there, and under it no recipe met the gate (the SMS expert, whose training
loss ends near 0.01, loses its learned prior to calibration). Rule 2 was rewritten after that run, from its
validation results only, to choose the rule among those under which the experts can be told from the base.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .metrics import accuracy, macro_f1

GATE = 0.15  # every expert beats the base by at least 15 points of macro-F1 on validation

SCORING_COLUMNS = ["model", "task", "casing", "scoring", "n", "accuracy", "macro_f1", "balanced_accuracy",
                   "labels_predicted", "labels", "predicted"]
TRAINING_COLUMNS = ["recipe", "task", "casing", "scoring", "n_train", "epochs", "lr", "lora_r", "steps",
                    "train_tokens", "train_s", "last_loss", "base_macro_f1", "expert_macro_f1", "gain", "gate_met",
                    "predicted", "chosen"]
CHOICE_COLUMNS = ["recipe", "scoring", "casing", "gate_met", "smallest_gain", "unreachable"]
LOSS_COLUMNS = ["recipe", "task", "step", "loss"]


def balanced_accuracy(pred, label, n_labels: int) -> float:
    """Mean over the classes present in ``label`` of the recall of that class."""
    pred, label = np.asarray(pred), np.asarray(label)
    return float(np.mean([np.mean(pred[label == c] == c) for c in range(n_labels) if (label == c).any()]))


def _row(model: str, task, casing: str, scoring: str, pred, label) -> dict:
    labels = list(range(task.num_labels))
    return {"model": model, "task": task.name, "casing": casing, "scoring": scoring, "n": len(label),
            "accuracy": accuracy(pred, label), "macro_f1": macro_f1(pred, label, labels=labels),
            "balanced_accuracy": balanced_accuracy(pred, label, task.num_labels),
            "labels_predicted": len(set(np.asarray(pred).tolist())), "labels": task.num_labels,
            "predicted": " ".join(task.labels[i] for i in sorted(set(np.asarray(pred).tolist())))}


def validation_rows(run, model_path: Path, name: str, tasks, casings=("lower",)) -> list[dict]:
    """Every scoring rule of ``model_path`` on the validation split of ``tasks``, per label casing."""
    from .assets import load_model
    from .scoring import all_label_scores
    from .tasks import get_task

    model, tok = load_model(model_path, device=run.profile.device, device_map=run.profile.device_map)
    rows = []
    for t in tasks:
        ds = run.data(t)["validation"]
        label = np.asarray(ds["label"])
        for casing in casings:
            task = get_task(t, casing=casing)
            scores = all_label_scores(model, tok, task, ds["text"], run.profile.max_text_tokens,
                                      run.profile.eval_batch_size, progress=run.progress,
                                      autocast=run.profile.eval_autocast)
            rows += [_row(name, task, casing, rule, s.argmax(axis=1), label) for rule, s in scores.items()]
    del model
    return rows


def scoring_pilot(run) -> pd.DataFrame:
    """The ``pilot_scoring`` table: base (both casings, every task) and the profile's experts (own task and unseen
    tasks, in the profile's casing, the one they were trained on)."""
    p = run.profile
    if not p.n_val:
        raise ValueError(f"profile {p.name} has no validation split (n_val = 0); the pilot needs one")
    rows = validation_rows(run, run.base, "base", run.all_tasks, casings=("lower", "title"))
    for t in p.tasks:
        rows += validation_rows(run, run.expert(t), f"expert-{t}", (t, *p.unseen), casings=(p.label_casing,))
    return pd.DataFrame(rows, columns=SCORING_COLUMNS)


def choose_casing(table: pd.DataFrame) -> str:
    """Title case only if it raises the base model's mean macro-F1 over every rule and task."""
    base = table[table["model"] == "base"].groupby("casing")["macro_f1"].mean()
    return "title" if round(base.get("title", -1.0), 12) > round(base.get("lower", -1.0), 12) else "lower"


def rule_means(table: pd.DataFrame, casing: str) -> pd.Series:
    """Mean macro-F1 per scoring rule over the scoring table's (model, task) pairs in ``casing``."""
    return table[table["casing"] == casing].groupby("scoring")["macro_f1"].mean()


def unreachable(table: pd.DataFrame, scoring: str, casing: str = "lower") -> dict[str, list[str]]:
    """Per task, the labels no model predicted even once on validation under ``scoring`` and ``casing``."""
    from .tasks import get_task

    out = {}
    rows = table[(table["scoring"] == scoring) & (table["casing"] == casing)]
    for t, g in rows.groupby("task", sort=False):
        seen = {w for p in g["predicted"] for w in str(p).split()}
        missing = [w for w in get_task(t, casing=casing).labels if w not in seen]
        if missing:
            out[t] = missing
    return out


RECIPE_FIELDS = ("n_train", "epochs", "lr", "lora_r", "lora_alpha")  # the profile fields a recipe sets


def profile_recipe(profile) -> dict:
    """The recipe ``profile`` trains its experts with (``RECIPE_FIELDS``), comparable with ``RECIPES``."""
    return {k: getattr(profile, k) for k in RECIPE_FIELDS}


def recipe_name(recipe: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in recipe.items())


def training_pilot(run, recipes: list[dict], scoring: pd.DataFrame | None = None,
                   gate: float = GATE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``pilot_training`` and ``pilot_losses`` tables. Each recipe overrides profile fields (``n_train``,
    ``epochs``, ``lr``, ``lora_r``, ``lora_alpha``); its experts and the base are scored on each task's validation
    split by every rule, in the profile's casing. Stops after the first recipe that meets the gate under some
    rule; ``scoring`` (the ``pilot_scoring`` table) ranks the rules for :func:`choose_recipe`."""
    p = run.profile
    base = {(r["task"], r["scoring"]): r["macro_f1"]
            for r in validation_rows(run, run.base, "base", p.tasks, casings=(p.label_casing,))}
    rows, losses = [], []
    for recipe in recipes:
        unknown = sorted(set(recipe) - {*RECIPE_FIELDS, "n_candidates"})
        if unknown:
            raise ValueError(f"a pilot recipe may set {', '.join(RECIPE_FIELDS)}; got {unknown}")
        sub = type(run)(dataclasses.replace(p, **recipe), seed=run.seed, progress=run.progress)
        name = recipe_name(recipe)
        for t in p.tasks:
            path = sub.expert(t)
            info = json.loads((Path(path) / "training.json").read_text())["result"]
            cfg = sub.profile
            for r in validation_rows(sub, path, f"expert-{t}", (t,), casings=(p.label_casing,)):
                gain = r["macro_f1"] - base[(t, r["scoring"])]
                rows.append({"recipe": name, "task": t, "casing": p.label_casing, "scoring": r["scoring"],
                             "n_train": cfg.n_train, "epochs": cfg.epochs,
                             "lr": cfg.train_config(run.seed).learning_rate, "lora_r": cfg.lora_r,
                             "steps": info["steps"], "train_tokens": info["tokens"], "train_s": info["wall_s"],
                             "last_loss": info["last_loss"], "base_macro_f1": base[(t, r["scoring"])],
                             "expert_macro_f1": r["macro_f1"], "gain": gain, "gate_met": gain >= gate,
                             "predicted": r["predicted"], "chosen": False})
            losses += [{"recipe": name, "task": t, "step": i + 1, "loss": v} for i, v in enumerate(info["losses"])]
        if _passing(pd.DataFrame(rows, columns=TRAINING_COLUMNS), name):
            break
    df = pd.DataFrame(rows, columns=TRAINING_COLUMNS)
    recipe, rule = choose_recipe(df, scoring)
    df.loc[(df["recipe"] == recipe) & (df["scoring"] == rule), "chosen"] = True
    return df, pd.DataFrame(losses, columns=LOSS_COLUMNS)


def _passing(table: pd.DataFrame, recipe: str) -> list[str]:
    """The rules under which every expert of ``recipe`` meets the gate (in ``SCORINGS`` order)."""
    from .scoring import SCORINGS

    g = table[table["recipe"] == recipe]
    return [r for r in SCORINGS if len(g[g["scoring"] == r]) and g[g["scoring"] == r]["gate_met"].all()]


def choose_recipe(table: pd.DataFrame, scoring: pd.DataFrame | None = None) -> tuple[str, str]:
    """(recipe, scoring rule) by rule 2 of the module docstring: the first recipe (in table order) that meets the
    gate on every task under some rule, with the best-ranked such rule; else the largest smallest gain."""
    from .scoring import SCORINGS

    casing = str(table["casing"].iloc[0]) if len(table) else "lower"
    means = rule_means(scoring, casing) if scoring is not None else pd.Series(dtype=float)
    for name in dict.fromkeys(table["recipe"]):
        rules = _passing(table, name)
        if rules:
            return name, max(rules, key=lambda r: (round(means.get(r, -1.0), 12), -SCORINGS.index(r)))
    worst = table.groupby(["recipe", "scoring"], sort=False)["gain"].min()
    recipe, rule = worst.idxmax()
    return str(recipe), str(rule)


def choice(scoring: pd.DataFrame, training: pd.DataFrame) -> pd.DataFrame:
    """The ``pilot_choice`` table: the chosen recipe, rule and casing, whether the gate is met, the smallest gain
    and the labels that no model predicts on validation under that rule and casing (``task: label``)."""
    chosen = training[training["chosen"]]
    recipe, rule, casing = (str(chosen[c].iloc[0]) for c in ("recipe", "scoring", "casing"))
    missing = unreachable(pd.concat([scoring, training], ignore_index=True), rule, casing)
    return pd.DataFrame([{"recipe": recipe, "scoring": rule, "casing": casing,
                          "gate_met": bool(chosen["gate_met"].all()), "smallest_gain": float(chosen["gain"].min()),
                          "unreachable": "; ".join(f"{t}: {w}" for t, ws in missing.items() for w in ws)}],
                        columns=CHOICE_COLUMNS)


def _macro_f1(examples: pd.DataFrame, n_labels: int) -> float:
    return macro_f1(examples["pred"], examples["label"], labels=list(range(n_labels)))


# the cpu profile's recipes, cheapest first (LoRA on all linear layers; alpha = 2 r). Every field is given, so a
# recipe means the same whatever the profile holds. The last one was added after the December 2026 pilot met
# no gate (SMS +14.7 under recipe 4): it costs what recipe 4 costs (48 optimizer steps over the same number of
# training tokens, so the cpu profile's budget holds), with more distinct examples in place of a third epoch.
RECIPES = [
    {"n_train": 64, "epochs": 2, "lr": 3e-4, "lora_r": 8, "lora_alpha": 16.0},  # the registry default
    {"n_train": 64, "epochs": 2, "lr": 1e-3, "lora_r": 8, "lora_alpha": 16.0},
    {"n_train": 128, "epochs": 2, "lr": 1e-3, "lora_r": 8, "lora_alpha": 16.0},
    {"n_train": 128, "epochs": 3, "lr": 1e-3, "lora_r": 16, "lora_alpha": 32.0},
    {"n_train": 192, "epochs": 2, "lr": 1e-3, "lora_r": 16, "lora_alpha": 32.0},
]


def pilot(run, recipes: list[dict] | None = None) -> dict[str, pd.DataFrame]:
    """The whole pilot on ``run``'s profile: ``pilot_scoring``, then ``pilot_training`` and ``pilot_losses`` in the
    chosen casing (``RECIPES`` unless ``recipes`` is given); ``pilot_choice`` is derived from them (:func:`choice`)."""
    scoring = scoring_pilot(run)
    chosen = type(run)(dataclasses.replace(run.profile, label_casing=choose_casing(scoring)), seed=run.seed,
                       progress=run.progress)
    training, losses = training_pilot(chosen, RECIPES if recipes is None else recipes, scoring)
    return {"pilot_scoring": scoring, "pilot_training": training, "pilot_losses": losses}
