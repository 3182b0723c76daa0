"""How long a replicate of a profile takes, per notebook, from rates measured on the machine it runs on.

Every unit a notebook computes is counted the way the code computes it: a training is its examples x epochs x
tokens per example; an evaluation is its examples (scoring reads the prompt after the prefix all prompts share,
so an example costs about the same whatever the model); a merge costs a fixed time by method, plus the
representation pass for RECALL (each pool model reads the typical samples, M_N all candidates); tuning is its
grid's merges and validation evaluations (``recall.tuning``); a sequential chain trains every step and is scored
on the tasks seen so far after each step (the lower triangle of R) and on every task at the end.

``RATES`` were fitted to one cold cpu run on 2 idle CPU cores with SmolLM2-135M (its provenance, December
2026); ``calibrated`` moves them to another machine by a reading of its speed that takes about 7 seconds
(``recall.bench.probe``, three times: a decoder block's forward and backward, its forward in float32 and under
bfloat16 autocast, float32 matmul, memory copy). benchmarks/planner_check.py compares the plan with any run's
measured times.
``python -m recall.planner --profile cpu`` reads this machine and prints the plan; provenance records each
notebook's wall time and phases beside its estimate and the reading.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import pandas as pd

from .profiles import Profile, get_profile


@dataclass(frozen=True)
class Rates:
    # Fitted to the cold cpu run of cddfc6a on the reference machine (``reference`` below: a 2-core AMD EPYC, Zen 4
    # with AVX512-BF16 and no AMX, KVM, 2 idle threads; December 2026; its tables and provenance are in
    # results/replicas/cpu-epyc-zen4/, its training records' rates and the machine's readings in
    # results/benchmarks/planner_reference/): per-token training from its 29 training records
    # (benchmarks/planner_rates.py); every other rate as the rates before it (the run of 4871310 on a Xeon) scaled
    # per group so that the plan of each phase matches that run's phase times (benchmarks/planner_fit.py).
    # a training: per trained token (prompt + answer, the training loop), EWC's penalty costing ewc_factor times
    # that; plus a fixed part (the start model loaded, the adapter merged and saved)
    train_s_per_token: float = 0.0041
    ewc_factor: float = 1.28
    train_fixed_s: float = 1.4
    # trained tokens per example and epoch at max_text_tokens = 40 (chat template, instruction, label options,
    # text and answer); a task not listed: default_tokens; another max_text_tokens shifts each by the difference
    tokens_per_example: tuple[tuple[str, float], ...] = (
        ("bbc", 100.1), ("ng", 104.7), ("rt", 81.5), ("sms", 83.5), ("trec", 75.5))
    default_tokens: float = 100.0
    # rank classification per example at max_text_tokens = 40, batch 32, under bfloat16 autocast, in a notebook
    # (200 test examples per task); a task not listed: default_eval_s. Tasks with many or long label words cost
    # more. Without autocast, times the reference's autocast_speedup; another max_text_tokens scales by
    # (10 + max_text_tokens) / 50
    eval_s_per_example: tuple[tuple[str, float], ...] = (
        ("bbc", 0.0494), ("rt", 0.0297), ("trec", 0.0364), ("sms", 0.0399), ("ng", 0.0595), ("r8", 0.0551),
        ("amazon", 0.0288))
    default_eval_s: float = 0.0494
    # a model folder loaded for scoring; by evaluate_on outside the timed scoring, so it is in the "other" phase
    load_s: float = 0.87
    assets_s: float = 37.3  # an empty cache: the GGUF model converted to safetensors, the data archives read
    # merges (03: 282 s, 04: 60-63 s, 05: 48 s in the run): a streaming merge's fixed part (written, cards, scores
    # cached, weights dropped), per checkpoint read
    merge_s: float = 4.35
    merge_s_per_model: float = 0.16
    reps_s_per_text: float = 0.046  # RECALL's representation pass, per text per model
    fisher_s_per_example: float = 0.85  # EWC's Fisher diagonal (with what else EWC's chains cost over sft's)
    c1_boot_s: float = 23.0  # C1's bootstrap in 01, per 1000 replicates (Gram matrices computed once)
    merge_benchmark_s: float = 45.7  # notebook 06
    # per notebook: tables, bootstrap intervals and figures after the units (the rest of the wall time)
    tables_s: tuple[tuple[str, float], ...] = (
        ("01_representations", 13.3), ("03_multi_model", 6.6), ("04_sequential", 10.0), ("05_ablations", 13.3))
    # the reference machine as recall.bench.probe reads one (medians of 9 readings in the session of the run:
    # before it, at its start, after it), and the factors calibrated() sets
    reference: tuple[tuple[str, float], ...] = (
        ("train_block_ms", 74.59), ("block_ms", 11.66), ("autocast_speedup", 1.733), ("float32_gflops", 187.8),
        ("copy_gbps", 35.08))
    merge_scale: float = 1.0
    eval_scale: float = 1.0  # on scoring under autocast, set by calibrated()
    float32_eval_factor: float = 1.733  # float32 scoring over autocast: the reference's autocast_speedup


RATES = Rates()
# seconds per pool model over a plain merge (TIES' sign election, DARE's masks, LM-Cocktail's losses); TIES and
# DARE as the streaming engine's benchmark measured them (results/benchmarks/merge_speed.csv: 6.7 s and 8.1 s
# against 4.7 s for a linear merge of three checkpoints), times the factor of the merge rates above
EXPENSIVE_MERGES = {"ties": 0.32, "dare": 0.5, "magmax": 0.69, "lm_cocktail": 0.69}


COLUMNS = ["notebook", "unit", "count", "seconds", "phase"]
PHASES = ("training", "evaluation", "merging", "other")  # as provenance times them (recall.experiments.Run.timings)


def _tokens(p: Profile, task: str, r: Rates) -> float:
    return max(dict(r.tokens_per_example).get(task, r.default_tokens) + p.max_text_tokens - 40, 1.0)


def _train_s(p: Profile, tasks, n_per_task: int, r: Rates, ewc: bool = False) -> float:
    """One training on ``n_per_task`` examples of each of ``tasks`` (one task, or a multi-task union)."""
    tokens = sum(n_per_task * p.epochs * _tokens(p, t, r) for t in tasks)
    return tokens * r.train_s_per_token * (r.ewc_factor if ewc else 1.0) + r.train_fixed_s


def _eval_s(p: Profile, tasks, n_per_task: int, r: Rates) -> float:
    """Scoring ``n_per_task`` examples of each of ``tasks`` (one loaded model)."""
    per = dict(r.eval_s_per_example)
    factor = r.eval_scale * (1.0 if p.eval_autocast else r.float32_eval_factor) * (10 + p.max_text_tokens) / 50
    return factor * sum(n_per_task * per.get(t, r.default_eval_s) for t in tasks)


def _reps_s(p: Profile, method: str, pool: int, r: Rates) -> float:
    """RECALL's representation pass within a merge (0 for other methods)."""
    if not method.startswith("recall"):
        return 0.0
    anchors = pool - 1 if method == "recall_symmetric" else 1
    return anchors * (p.n_candidates + p.recall_k * (pool - 1)) * r.reps_s_per_text


def _merge_s(p: Profile, method: str, pool: int, r: Rates) -> float:
    return (r.merge_scale * (r.merge_s + pool * (r.merge_s_per_model + EXPENSIVE_MERGES.get(method, 0.0)))
            + _reps_s(p, method, pool, r))


def calibrated(rates: Rates, machine: dict | None) -> Rates:
    """``rates`` moved to the machine ``machine`` describes (``recall.bench.probe``), each by the reading of the
    work it stands for, this machine's time over the reference's: a decoder block's forward and backward
    (``train_block_ms``) for training and EWC's Fisher; its float32 forward (``block_ms``) for the
    representation pass and float32 scoring, and that over ``autocast_speedup`` for scoring under autocast; the
    geometric mean of the training block's and memory copy's (``copy_gbps``) for what streams checkpoints through
    memory and disk or runs plain Python: merges, model loads, the assets, the merge benchmark, C1's bootstrap,
    tables and figures, a training's fixed part. A speed the reference or the reading lacks counts as equal;
    with none read, ``rates`` as they are.

    Checked across machines by benchmarks/planner_check.py: the copy alone put merges on the wrong side of the
    reference on the Zen 4 machine of the rates (it read 1.4x the Xeon's copy speed, and merged 1.05x slower),
    the training block alone put them at half the time on the faster Xeon; their geometric mean was within 8%
    on both."""
    import math

    ref, machine = dict(rates.reference), dict(machine or {})
    if not any(machine.get(k) for k in ref):
        return rates

    def slower(key: str, time: bool) -> float:  # this machine's time for the work over the reference's
        if not (ref.get(key) and machine.get(key)):
            return 1.0
        return float(machine[key]) / ref[key] if time else ref[key] / float(machine[key])

    train, block, mem = slower("train_block_ms", True), slower("block_ms", True), slower("copy_gbps", False)
    mixed = math.sqrt(train * mem)
    speedup = float(machine.get("autocast_speedup") or 0) or ref.get("autocast_speedup") or rates.float32_eval_factor
    autocast = block * (ref.get("autocast_speedup") or rates.float32_eval_factor) / speedup
    return dataclasses.replace(
        rates, train_s_per_token=rates.train_s_per_token * train, train_fixed_s=rates.train_fixed_s * mixed,
        fisher_s_per_example=rates.fisher_s_per_example * train, eval_scale=rates.eval_scale * autocast,
        float32_eval_factor=speedup, reps_s_per_text=rates.reps_s_per_text * block,
        c1_boot_s=rates.c1_boot_s * mixed, assets_s=rates.assets_s * mixed, load_s=rates.load_s * mixed,
        merge_benchmark_s=rates.merge_benchmark_s * mixed, merge_scale=rates.merge_scale * mixed,
        tables_s=tuple((nb, s * mixed) for nb, s in rates.tables_s))


READING_ENV = "RECALL_MACHINE_READING"  # a reading (JSON) that recall.replicate took once for all its notebooks


def reading(p: Profile) -> dict:
    """This machine's speed (``recall.bench.probe``) for planning ``p``: the one ``recall.replicate`` took before
    its first notebook (``READING_ENV``), so that every notebook of a replicate is planned at one reading and a
    slow spell while a kernel starts does not move its plan; else a reading now. None for the tiny test model,
    which has no rates of its own (they are SmolLM2-135M's). A reading now is the median of ``PROBES``."""
    import json
    import os

    from .bench import probe

    if p.model == "tiny":
        return {}
    shared = os.environ.get(READING_ENV)
    if shared:
        try:
            got = json.loads(shared)
        except ValueError:
            got = None
        if isinstance(got, dict) and all(isinstance(v, (int, float)) for v in got.values()):
            return got
    return median_reading([probe() for _ in range(PROBES)])


PROBES = 3  # readings per plan: one in nine caught a slow spell of the reference machine (84 ms against 75)


def median_reading(readings: list[dict]) -> dict:
    """Per speed, the median of several readings (``recall.bench.probe``); what is not a number, the first's."""
    import statistics

    out = dict(readings[0])
    for k, v in out.items():
        values = [r[k] for r in readings if isinstance(r.get(k), (int, float))]
        if isinstance(v, (int, float)) and len(values) == len(readings):
            out[k] = statistics.median(values)
    return out


def run_profile(p: Profile, seed: int, task_order) -> Profile:
    """``p`` as one notebook run plans it: one seed and one task order (its chain)."""
    return dataclasses.replace(p, seeds=(seed,), task_order=tuple(task_order or p.task_order), extra_orders=())


def measured(provenance: dict, machine: dict | None = None) -> list[tuple[str, str, Profile, dict, dict]]:
    """What a run's ``provenance.json`` says it took: per planned notebook entry that read the machine, (entry,
    notebook, ``run_profile``, seconds per phase of ``PHASES`` with ``other`` the rest of the wall time, the
    reading, or ``machine`` in its place). Entries carried over from an earlier run that read no machine (the
    pilot, which runs only on request) are left out."""
    out = []
    for key, nb in provenance["notebooks"].items():
        reading_ = machine or nb.get("machine") or {}
        if not nb.get("planned_cold_s") or not nb.get("machine") or not reading_.get("train_block_ms"):
            continue
        params = nb["parameters"]
        phases = {ph: float(nb["step_timings_s"].get(ph, 0.0)) for ph in PHASES if ph != "other"}
        phases["other"] = nb["wall_time_s"] - sum(phases.values())
        one = run_profile(get_profile(params["profile"]), params.get("seed", 0), params.get("task_order"))
        out.append((key, key.split("/")[0], one, phases, reading_))
    return out


def estimate(p: Profile, rates: Rates = RATES, include_skipped: bool = False) -> pd.DataFrame:
    """One row per unit: notebook, unit, count, seconds (for every seed and task order of the profile) and phase
    (``PHASES``); the notebooks the profile skips (``Profile.skip``) only with ``include_skipped``."""
    from .tuning import GRIDS, knob_of

    r = rates
    tasks, unseen = tuple(p.tasks), tuple(p.unseen)
    T = len(tasks)
    seeds = len(p.seeds)
    tables = dict(r.tables_s)
    rows = []

    def add(nb, unit, count, seconds, phase):
        rows.append((nb, unit, count, seconds, phase))

    def expert(task, ewc=False):
        return _train_s(p, (task,), p.n_train, r, ewc)

    def scored(models, tasks_, n):  # models each loaded once and scored on tasks_: (evaluation, loads)
        return models * _eval_s(p, tasks_, n, r), models * r.load_s

    _pilot(p, r, add)
    nb = "01_representations"
    add(nb, "experts and the null expert (trainings)", (T + 1) * seeds,
        seeds * (sum(expert(t) for t in tasks) + expert(p.task_order[0])), "training")
    add(nb, "representation pass", seeds, seeds * (T + 2) * (32 * r.reps_s_per_text + r.load_s), "other")
    add(nb, "C1's bootstrap (Gram matrices once, then indexed)", seeds, seeds * r.c1_boot_s * p.n_boot / 1000,
        "other")
    add(nb, "model conversion and data (an empty cache only)", 1, r.assets_s, "other")
    add(nb, "tables and figures", 1, tables.get(nb, 0.0), "other")

    nb = "02_single_model"
    n_single = T * (2 + len(p.single_methods)) * seeds
    add(nb, "merges", T * len(p.single_methods) * seeds,
        sum(_merge_s(p, m, 2, r) for m in p.single_methods) * T * seeds, "merging")
    ev = sum(scored((2 + len(p.single_methods)) * seeds, (t,) + unseen, p.n_test)[0] for t in tasks)
    add(nb, "evaluations", n_single, ev, "evaluation")
    add(nb, "model loads for scoring", n_single, n_single * r.load_s, "other")

    nb = "03_multi_model"
    tunable = [m for m in dict.fromkeys(knob_of(m) for m in p.multi_methods) if m and m != "ewc"] if p.tune else []
    grid = sum(len(GRIDS[m]) for m in tunable)
    # RECALL's representations are memoized per process: its grid reads the models once
    reps_once = sum((len(GRIDS[m]) - 1) * _reps_s(p, m, T + 1, r) for m in tunable)
    add(nb, "tuning on validation: merges", grid * seeds,
        seeds * (sum(len(GRIDS[m]) * _merge_s(p, m, T + 1, r) for m in tunable) - reps_once), "merging")
    ev, loads = scored(grid * seeds, tasks, p.n_val)
    add(nb, "tuning on validation: evaluations", grid * seeds, ev, "evaluation")
    add(nb, "multi-task training", seeds if p.multitask else 0,
        seeds * _train_s(p, tasks, p.n_train, r) if p.multitask else 0.0, "training")
    # a tuned method's merge is its chosen grid point, merged again for the test scores (validation released its
    # weights; RECALL's representations are memoized); a control that follows a tuned method is a merge of its own
    gridded = [m for m in p.multi_methods if m in tunable]
    again = [] if p.keep_merged else gridded
    merged = [m for m in p.multi_methods if m not in gridded]
    add(nb, "merges", (len(merged) + len(again)) * seeds,
        seeds * (sum(_merge_s(p, m, T + 1, r) for m in merged)
                 + sum(_merge_s(p, m, T + 1, r) - _reps_s(p, m, T + 1, r) for m in again)), "merging")
    n_models = 1 + len(p.multi_methods) + (1 if p.multitask else 0)
    ev = scored(n_models * seeds, tasks + unseen, p.n_test)[0] + seeds * sum(
        _eval_s(p, (t,) + unseen, p.n_test, r) for t in tasks)
    add(nb, "evaluations", (n_models + T) * seeds, ev, "evaluation")
    add(nb, "model loads for scoring", (grid + n_models + T) * seeds, loads + (n_models + T) * seeds * r.load_s,
        "other")
    add(nb, "tables and figures", 1, tables.get(nb, 0.0), "other")

    for order in (tuple(p.task_order),) + tuple(tuple(o) for o in p.extra_orders):
        _chains(p, r, order, seeds, add, GRIDS, knob_of, expert, scored)

    nb = "05_ablations"
    n_abl = (1 + len(p.ablations)) * seeds
    add(nb, "merges", n_abl, n_abl * _merge_s(p, "recall", T + 1, r), "merging")
    ev, loads = scored(n_abl, tasks, p.n_test)
    add(nb, "evaluations", n_abl, ev, "evaluation")
    add(nb, "model loads for scoring", n_abl, loads, "other")
    add(nb, "tables and figures", 1, tables.get(nb, 0.0), "other")
    add("06_efficiency", "merge benchmark", 1, r.merge_benchmark_s, "other")
    out = pd.DataFrame(rows, columns=COLUMNS)  # the task orders' rows of one unit summed
    out = out.groupby(["notebook", "unit", "phase"], sort=False, as_index=False)[["count", "seconds"]].sum()[COLUMNS]
    left_out = set(p.skip) | {"00_pilot"}  # the pilot runs only on request (recall.replicate.ON_REQUEST)
    return out if include_skipped else out[~out["notebook"].isin(left_out)].reset_index(drop=True)


def _chains(p: Profile, r: Rates, order: tuple, seeds: int, add, GRIDS, knob_of, expert, scored) -> None:
    """Notebook 04's units for one task order (``recall.experiments.sequential`` and ``sequential_tuning``):
    step 1 of every chain is the expert of its first task (trained by 01); the tuning trains step 2 from it (sft's
    step 2, and EWC's at each grid point, so the chosen one is EWC's step 2); after step t a chain is scored on
    tasks 1..t+1 and, at the end, on the unseen tasks too. The expert's step 1 is scored once (sft and ewc share
    it), on task 2 only: 03 scored it on its own task."""
    nb = "04_sequential"
    chain, unseen = p.chain(order), tuple(p.unseen)
    L = len(chain)
    seq_tune = [m for m in dict.fromkeys(knob_of(m) for m in p.sequential_methods) if m] if p.tune else []
    seq_tune_merges = [m for m in seq_tune if m != "ewc"]
    fisher = (p.ewc_samples or p.n_train) * r.fisher_s_per_example
    second = chain[1] if L > 1 else chain[0]
    tune = {"training": expert(second) if seq_tune_merges else 0.0, "merging": 0.0, "evaluation": 0.0,
            "other": 0.0}
    for m in seq_tune:
        ev, loads = scored(len(GRIDS[m]), chain[:2], p.n_val)
        tune["evaluation"] += ev
        tune["other"] += loads
        if m == "ewc":
            tune["training"] += len(GRIDS[m]) * expert(second, ewc=True) + fisher
        else:  # memoized: the grid reads the two models once
            tune["merging"] += len(GRIDS[m]) * _merge_s(p, m, 2, r) - (len(GRIDS[m]) - 1) * _reps_s(p, m, 2, r)
    for phase, s in tune.items():
        add(nb, f"tuning on the first two steps (validation): {phase}", seeds, seeds * s, phase)
    shared = {"sft": bool(seq_tune_merges), "ewc": "ewc" in seq_tune}  # step 2 trained by the tuning
    trainings, n_trainings = 0.0, 0
    for m in p.sequential_methods:
        for i, t in enumerate(chain[1:], 2):
            if not (i == 2 and shared.get(m, False)):
                trainings += expert(t, ewc=m == "ewc")
                n_trainings += 1
        if m == "ewc":
            trainings += (L - 1) * fisher
    add(nb, "chain trainings", seeds * n_trainings, seeds * trainings, "training")
    merging = [m for m in p.sequential_methods if m not in ("sft", "ewc")]
    add(nb, "chain merges", seeds * len(merging) * L,
        seeds * L * sum(_merge_s(p, m, (L if m == "recall_history" else 2) + (m == "recall_history"), r)
                        for m in merging), "merging")
    ev, loads, n = 0.0, 0.0, 0
    expert_scored = False
    for m in p.sequential_methods:
        for t in range(1, L + 1):
            tasks_ = chain[: t + 1] + (unseen if t == L else ())
            if t == 1 and m in ("sft", "ewc"):  # the expert of task 1
                if expert_scored:
                    continue
                expert_scored, tasks_ = True, tasks_[1:]
            e, lo = scored(1, tasks_, p.n_test)
            ev, loads, n = ev + e, loads + lo, n + 1
    add(nb, "chain evaluations", seeds * n, seeds * ev, "evaluation")
    add(nb, "model loads for scoring", seeds * n, seeds * loads, "other")
    add(nb, "tables and figures", 1, dict(r.tables_s).get(nb, 0.0), "other")


def _pilot(p: Profile, r: Rates, add) -> None:
    """The pilot's units (``recall.pilot``). It stops at the first recipe that meets the gate: the recipes up to the
    profile's own are counted when the profile holds one of them (the one a pilot chose), else every recipe."""
    from .pilot import RECIPES, profile_recipe

    mine = profile_recipe(p)
    recipes = RECIPES[:RECIPES.index(mine) + 1] if mine in RECIPES else RECIPES

    tasks, unseen = tuple(p.tasks), tuple(p.unseen)
    T = len(tasks)
    add("00_pilot", "model conversion and data (an empty cache only)", 1, r.assets_s, "other")
    add("00_pilot", "scoring rules: the profile's experts (trainings)", T,
        sum(_train_s(p, (t,), p.n_train, r) for t in tasks), "training")
    add("00_pilot", "scoring rules: base and experts (validation)", 1 + T,
        2 * _eval_s(p, tasks + unseen, p.n_val, r) + sum(_eval_s(p, (t,) + unseen, p.n_val, r) for t in tasks)
        + (1 + T) * r.load_s, "evaluation")
    trained = [rc for rc in recipes if rc != mine]  # the profile's recipe reuses its experts
    add("00_pilot", "recipes: expert trainings", T * len(trained),
        sum(_train_s(dataclasses.replace(p, epochs=rc["epochs"]), (t,), rc["n_train"], r)
            for rc in trained for t in tasks), "training")
    add("00_pilot", "recipes: base and experts (validation)", T * (1 + len(recipes)),
        (1 + len(recipes)) * sum(_eval_s(p, (t,), p.n_val, r) for t in tasks) + T * (1 + len(recipes)) * r.load_s,
        "evaluation")


def per_notebook(p: Profile, notebooks=None, rates: Rates = RATES) -> pd.Series:
    """Estimated seconds per notebook (only ``notebooks`` when given, skipped ones included)."""
    est = estimate(p, rates, include_skipped=notebooks is not None)
    s = est.groupby("notebook", sort=False)["seconds"].sum()
    return s if notebooks is None else s[[n for n in s.index if n in set(notebooks)]]


def per_phase(p: Profile, notebook: str, rates: Rates = RATES) -> dict[str, float]:
    """Estimated seconds of one notebook per phase (``PHASES``: what provenance's ``step_timings_s`` measures;
    ``other`` is the rest of the wall time)."""
    est = estimate(p, rates, include_skipped=True)
    s = est[est["notebook"] == notebook].groupby("phase")["seconds"].sum()
    return {ph: float(s.get(ph, 0.0)) for ph in PHASES}


def report(p: Profile, notebooks=None, rates: Rates = RATES, machine: dict | None = None) -> str:
    """The plan as text; with ``machine`` (``recall.bench.probe``), at rates calibrated to it."""
    r = calibrated(rates, machine)
    est = estimate(p, r, include_skipped=notebooks is not None)
    if notebooks is not None:
        est = est[est["notebook"].isin(set(notebooks))]
    lines = [f"{'notebook':20s} {'unit':58s} {'count':>6s} {'minutes':>8s}"]
    lines += [f"{n:20s} {u:58s} {c:6d} {s / 60:8.1f}" for n, u, c, s, _ in est.itertuples(index=False)]
    lines.append(f"{'total':20s} {'':58s} {'':6s} {est['seconds'].sum() / 60:8.1f}")
    where = ("on this machine (the rates calibrated by its reading: " + ", ".join(f"{k} {v}" for k, v in
             machine.items()) + ")") if r is not rates else "on 2 idle CPU cores like the reference machine"
    lines.append(f"estimated time: {est['seconds'].sum() / 60:.0f} min {where} (recall.planner.RATES, SmolLM2-135M; "
                 f"units already cached cost nothing)")
    speedup = (machine or {}).get("autocast_speedup")
    if p.eval_autocast == "bfloat16" and speedup and speedup < 1:
        lines.append(f"note: this CPU runs bfloat16 autocast {1 / speedup:.1f}x slower than float32 (no native "
                     f"bfloat16); the profile scores under it (eval_autocast) because it is 2.3x faster on CPUs "
                     f"with AVX512-BF16 or AMX")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recall.planner", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--no-probe", action="store_true", help="plan for the reference machine, without reading this one")
    args = ap.parse_args(argv)
    p = get_profile(args.profile)
    print(report(p, machine=None if args.no_probe else reading(p)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
