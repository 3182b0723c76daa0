"""How long a replicate of a profile takes, per notebook, from rates measured on the machine it runs on.

Every unit a notebook computes is counted the way the code computes it: a training is its examples x epochs x
tokens per example; an evaluation is its examples (scoring reads the prompt after the prefix all prompts share,
so an example costs about the same whatever the model); a merge costs a fixed time by method, plus the
representation pass for RECALL (each pool model reads the typical samples, M_N all candidates); tuning is its
grid's merges and validation evaluations (``recall.tuning``); a sequential chain trains every step and is scored
on the tasks seen so far after each step (the lower triangle of R) and on every task at the end.

``RATES`` were measured on 2 idle CPU cores with SmolLM2-135M (the cpu profile's provenance, December 2026) of
one machine; ``calibrated`` moves them to another by a reading of its speed that takes a few seconds
(``recall.bench.probe``: float32 matmul, a decoder block under bfloat16 autocast against float32, memory copy).
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
    # Measured on the reference machine (``reference`` below: a 2-core Xeon with AMX, KVM, 2 idle threads) by
    # benchmarks/planner_rates.py on the cache of the cold cpu run of 4871310 (December 2026), and by that run's
    # phase times (provenance: training, evaluation, merging, the rest of the wall time).
    # a training: per trained token (prompt + answer, the training loop: 29 trainings, median), EWC's penalty
    # costing ewc_factor times that; plus a fixed part (the start model loaded, the adapter merged and saved)
    train_s_per_token: float = 0.00284
    ewc_factor: float = 1.32
    train_fixed_s: float = 3.4
    # trained tokens per example and epoch at max_text_tokens = 40 (chat template, instruction, label options,
    # text and answer); a task not listed: default_tokens; another max_text_tokens shifts each by the difference
    tokens_per_example: tuple[tuple[str, float], ...] = (
        ("bbc", 100.1), ("ng", 104.7), ("rt", 81.5), ("sms", 83.5), ("trec", 75.5))
    default_tokens: float = 100.0
    # rank classification per example at max_text_tokens = 40, batch 32, under bfloat16 autocast (the base
    # model, 200 test examples per task); a task not listed: default_eval_s. Tasks with many or long label words
    # cost more. Without autocast, times the reference's autocast_speedup; another max_text_tokens scales by
    # (10 + max_text_tokens) / 50
    eval_s_per_example: tuple[tuple[str, float], ...] = (
        ("bbc", 0.0280), ("rt", 0.0168), ("trec", 0.0206), ("sms", 0.0226), ("ng", 0.0337), ("r8", 0.0312),
        ("amazon", 0.0163))
    default_eval_s: float = 0.028
    # a model folder loaded for scoring; by evaluate_on outside the timed scoring, so it is in the "other" phase
    load_s: float = 0.8
    assets_s: float = 30.0  # an empty cache: the GGUF model converted to safetensors, the data archives read
    # merges (03: 258 s, 04: 45 s, 05: 37 s in the run): a streaming merge's fixed part, per checkpoint read
    merge_s: float = 0.95
    merge_s_per_model: float = 0.38
    reps_s_per_text: float = 0.042  # RECALL's representation pass, per text per model (05's four merges)
    fisher_s_per_example: float = 0.12  # EWC's Fisher diagonal
    c1_boot_s: float = 9.0  # C1's bootstrap in 01, per 1000 replicates (Gram matrices computed once)
    merge_benchmark_s: float = 45.0  # notebook 06
    # per notebook: tables, bootstrap intervals and figures after the units (the rest of the wall time)
    tables_s: tuple[tuple[str, float], ...] = (
        ("01_representations", 8.0), ("03_multi_model", 4.0), ("04_sequential", 6.0), ("05_ablations", 8.0))
    # the reference machine as recall.bench.probe reads one (medians of its readings in the session of the
    # rates), and the factor on merges that calibrated() sets
    reference: tuple[tuple[str, float], ...] = (
        ("train_block_ms", 54.5), ("block_ms", 7.7), ("autocast_speedup", 1.9), ("float32_gflops", 310.0),
        ("copy_gbps", 25.8))
    merge_scale: float = 1.0
    eval_scale: float = 1.0  # on scoring under autocast, set by calibrated()
    float32_eval_factor: float = 1.9  # float32 scoring over autocast: the reference's autocast_speedup


RATES = Rates()
# seconds per pool model over a plain merge (TIES' sign election, DARE's masks, LM-Cocktail's losses); TIES and
# DARE as the streaming engine's benchmark measured them (results/benchmarks/merge_speed.csv: 6.7 s and 8.1 s
# against 4.7 s for a linear merge of three checkpoints), times 0.63 as the merge rates above
EXPENSIVE_MERGES = {"ties": 0.44, "dare": 0.69, "magmax": 0.95, "lm_cocktail": 0.95}


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
    representation pass and float32 scoring, and that over ``autocast_speedup`` for scoring under autocast;
    float32 matmul for C1's bootstrap; memory copy for merges, model loads, the merge benchmark and the assets.
    A speed the reference or the reading lacks counts as equal; with none read, ``rates`` as they are."""
    ref, machine = dict(rates.reference), dict(machine or {})
    if not any(machine.get(k) for k in ref):
        return rates

    def slower(key: str, time: bool) -> float:  # this machine's time for the work over the reference's
        if not (ref.get(key) and machine.get(key)):
            return 1.0
        return float(machine[key]) / ref[key] if time else ref[key] / float(machine[key])

    train, block, mem = slower("train_block_ms", True), slower("block_ms", True), slower("copy_gbps", False)
    speedup = float(machine.get("autocast_speedup") or 0) or ref.get("autocast_speedup") or rates.float32_eval_factor
    autocast = block * (ref.get("autocast_speedup") or rates.float32_eval_factor) / speedup
    return dataclasses.replace(
        rates, train_s_per_token=rates.train_s_per_token * train, train_fixed_s=rates.train_fixed_s * mem,
        fisher_s_per_example=rates.fisher_s_per_example * train, eval_scale=rates.eval_scale * autocast,
        float32_eval_factor=speedup, reps_s_per_text=rates.reps_s_per_text * block,
        c1_boot_s=rates.c1_boot_s * slower("float32_gflops", False), assets_s=rates.assets_s * mem,
        load_s=rates.load_s * mem, merge_benchmark_s=rates.merge_benchmark_s * mem,
        merge_scale=rates.merge_scale * mem)


READING_ENV = "RECALL_MACHINE_READING"  # a reading (JSON) that recall.replicate took once for all its notebooks


def reading(p: Profile) -> dict:
    """This machine's speed (``recall.bench.probe``) for planning ``p``: the one ``recall.replicate`` took before
    its first notebook (``READING_ENV``), so that every notebook of a replicate is planned at one reading and a
    slow spell while a kernel starts does not move its plan; else a reading now. None for the tiny test model,
    which has no rates of its own (they are SmolLM2-135M's)."""
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
    return probe()


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
