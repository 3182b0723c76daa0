"""Every method's main knob, tuned on the validation split with the same budget: four grid points each.

The rule, fixed before any test example is read: per scenario and method, the grid point with the highest
mean macro-F1 over the scenario's tasks on their validation split; ties go to the earlier point (the first
point is the registry default where the default is on the grid). Test data is never read here.

- multi-model merging (:func:`tune_multi`): the merge of the base and every expert, scored on the validation
  split of every training task;
- sequential fine-tuning (:func:`tune_sequential`): the first two steps of the task order (the expert of
  task 1, then task 2 learned from it), scored on both tasks' validation splits: the merge of {expert 1, the
  fine-tuned model of step 2} per grid point, and EWC's penalty weight by training step 2 with the Fisher of
  task 1 at each point.

The controls take RECALL's chosen values (``recall_symmetric``, ``recall_history``); methods without a knob
(``average``, ``uniform``, ``sft``) have nothing to tune. The grids are the ``tuning`` table of the book.
"""

from __future__ import annotations

import json

import pandas as pd

from .metrics import macro_f1

GRIDS: dict[str, tuple[dict, ...]] = {
    "recall": ({"temperature": 1.0}, {"temperature": 0.5}, {"temperature": 2.0}, {"reading": "literal"}),
    "task_arithmetic": ({"lam": 0.3}, {"lam": 0.5}, {"lam": 0.7}, {"lam": 1.0}),
    "ties": ({"lam": 1.0}, {"lam": 0.5}, {"lam": 0.7}, {"lam": 1.5}),
    "dare": ({"p": 0.9}, {"p": 0.3}, {"p": 0.5}, {"p": 0.7}),
    "magmax": ({"lam": 0.5}, {"lam": 0.3}, {"lam": 0.7}, {"lam": 1.0}),
    "lm_cocktail": ({"temperature": 5.0}, {"temperature": 1.0}, {"temperature": 2.0}, {"temperature": 10.0}),
    "ewc": ({"ewc_lambda": 5e3}, {"ewc_lambda": 5e4}, {"ewc_lambda": 5e5}, {"ewc_lambda": 5e6}),
}
FOLLOWS = {"recall_symmetric": "recall", "recall_history": "recall"}  # controls that take RECALL's values
COLUMNS = ["scenario", "method", "point", "options", "macro_f1", "accuracy", "chosen"]


def knob_of(method: str) -> str | None:
    """The method whose grid ``method`` is tuned with (itself, RECALL for its controls, None without a knob)."""
    m = FOLLOWS.get(method, method)
    return m if m in GRIDS else None


def _score(examples: pd.DataFrame, n_labels: dict[str, int]) -> tuple[float, float]:
    f1 = [macro_f1(g["pred"], g["label"], labels=list(range(n_labels[t]))) for t, g in examples.groupby("task")]
    return sum(f1) / len(f1), float(examples.groupby("task")["correct"].mean().mean())


def _rows(scenario: str, method: str, results: list[tuple[dict, pd.DataFrame]], n_labels) -> list[dict]:
    rows = []
    for i, (opts, ex) in enumerate(results):
        f1, acc = _score(ex, n_labels)
        rows.append({"scenario": scenario, "method": method, "point": i, "options": json.dumps(opts, sort_keys=True),
                     "macro_f1": f1, "accuracy": acc, "chosen": False})
    best = max(range(len(rows)), key=lambda i: (round(rows[i]["macro_f1"], 12), -i))
    rows[best]["chosen"] = True
    return rows


def tune_multi(run, methods) -> pd.DataFrame:
    """The ``multi_tuning`` table: every grid point of every tunable method in ``methods``."""
    from .experiments import _multi_merge

    p = run.profile
    _need_validation(p)
    n_labels = {t: run.task(t).num_labels for t in p.tasks}
    rows = []
    for m in dict.fromkeys(knob_of(m) for m in methods if knob_of(m) and knob_of(m) != "ewc"):
        results = []
        for opts in GRIDS[m]:
            merged = _multi_merge(run, m, {**p.options_for("multi", m), **opts})
            results.append((opts, run.evaluate_on(merged, p.tasks, split="validation")))
            run.release(merged)
        rows += _rows("multi", m, results, n_labels)
    return pd.DataFrame(rows, columns=COLUMNS)


def tune_sequential(run, order, methods) -> pd.DataFrame:
    """The ``seq_tuning`` table for ``order`` (its first two tasks)."""
    from .training import fisher_diagonal

    p = run.profile
    _need_validation(p)
    t1, t2 = order[:2]
    n_labels = {t: run.task(t).num_labels for t in (t1, t2)}
    first = run.expert(t1)
    rows = []
    tunable = list(dict.fromkeys(knob_of(m) for m in methods if knob_of(m)))
    merges = [m for m in tunable if m != "ewc"]
    if merges:
        second = run.train(first, (t2,), f"seqtune-{t1}-{t2}")
        for m in merges:
            results = []
            for opts in GRIDS[m]:
                merged = run.merge(m, [first, second], samples_task=t2, name=f"seqtune-{m}",
                                   **{**p.options_for("sequential", m), **opts})
                results.append((opts, run.evaluate_on(merged, (t1, t2), split="validation")))
                run.release(merged)
            rows += _rows("sequential", m, results, n_labels)
    if "ewc" in tunable:
        from .assets import load_model

        model, tok = load_model(first)
        cfg = p.train_config(run.seed)
        state = fisher_diagonal(model, tok, run.train_samples(t1), batch_size=cfg.batch_size,
                                max_samples=p.ewc_samples, seed=run.seed, max_length=cfg.max_length, task=t1,
                                progress=False)
        del model
        results = []
        for opts in GRIDS["ewc"]:
            ckpt = run.train(first, (t2,), f"seqtune-ewc-{t1}-{t2}", ewc=state, ewc_samples=p.ewc_samples, **opts)
            results.append((opts, run.evaluate_on(ckpt, (t1, t2), split="validation")))
        rows += _rows("sequential", "ewc", results, n_labels)
    return pd.DataFrame(rows, columns=COLUMNS)


def chosen(table: pd.DataFrame | None, method: str) -> dict:
    """The chosen options of ``method`` (or of the method it follows) in a tuning table; {} when untuned."""
    m = knob_of(method)
    if table is None or m is None or table.empty:
        return {}
    row = table[(table["method"] == m) & table["chosen"].astype(bool)]
    return json.loads(row["options"].iloc[0]) if len(row) else {}


def _need_validation(p) -> None:
    if not p.n_val:
        raise ValueError(f"profile {p.name} has no validation split (n_val = 0): tuning needs one; set n_val, or "
                         f"tune=False to use the registry defaults")
