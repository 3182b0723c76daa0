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
    # a training, per planned token (examples x epochs x (template + max_text_tokens)), loading and saving included:
    # the pilot of 1edb3c6 (25 experts, 2 idle threads) spent 0.0030 s in the loop, its cold 01 run 0.0033 in all
    train_s_per_token: float = 0.0033
    template_tokens: int = 60  # chat template, system prompt, instruction and label options of a training example
    # rank classification at max_text_tokens = 40, batch 32, calibrated (the cold cpu run of December 2026:
    # 1869 s for 22,800 examples in 03, 425 s for 6,280 in 04's first order; tasks with many labels cost more)
    # packed continuations of multi-token labels (a 4D mask instead of a copy of the cache per label): 0.91x
    eval_s_per_example: float = 0.0657
    # scoring under autocast (Profile.eval_autocast) relative to float32, on the cpu profile's seven tasks
    # (the base model, 64 test examples each, 2 idle cores: 13.0 s against 33.0 s before packing, 30.1 s after;
    # refitted to the cold run of bc7911c, whose evaluations took 995 s against 1123 planned at 0.43)
    eval_autocast_factor: tuple[tuple[str, float], ...] = (("bfloat16", 0.38),)
    assets_s: float = 150.0  # an empty cache: the GGUF model converted to safetensors, the data archives read
    load_s: float = 1.5  # loading a model folder
    # merges: the cold run of bc7911c spent 298 s merging against 472 planned, so every merge rate below (and
    # EXPENSIVE_MERGES) is the earlier one times 0.63
    merge_s: float = 0.95  # a streaming merge: fixed part ...
    merge_s_per_model: float = 0.38  # ... and per SmolLM2-135M checkpoint read
    reps_s_per_text: float = 0.07  # RECALL's representation pass, per text per model
    fisher_s_per_example: float = 0.12  # EWC's Fisher diagonal
    # C1's bootstrap in 01, per 1000 replicates (Gram matrices computed once): 48 s on 01's shapes on a machine
    # that read 62.8 GFLOP/s in float32, 2.76x slower than the reference
    c1_boot_s: float = 17.0
    merge_benchmark_s: float = 45.0  # notebook 06 (the cold run of bc7911c: 42-47 s)
    # the machine the rates were measured on, as recall.bench.probe reads one: the float32 matmul speed that
    # benchmarks/throughput.py read on it (results/benchmarks/throughput_2threads.json, the session of the cold run
    # of bc7911c; its autocast speedup was not read); its memory speed inferred from the merge benchmark (notebook
    # 06: 41.7 s there, 72.9 s on a 2-core AMD EPYC with AVX2 that read 17.7 GB/s, so 17.7 x 72.9 / 41.7); and the
    # factor on merges that calibrated() sets
    reference: tuple[tuple[str, float], ...] = (("float32_gflops", 173.1), ("copy_gbps", 30.9))
    merge_scale: float = 1.0


RATES = Rates()
# seconds per pool model over a plain merge (TIES' sign election, DARE's masks, LM-Cocktail's losses); TIES and
# DARE as the streaming engine's benchmark measured them (results/benchmarks/merge_speed.csv: 6.7 s and 8.1 s
# against 4.7 s for a linear merge of three checkpoints), times 0.63 as the merge rates above
EXPENSIVE_MERGES = {"ties": 0.44, "dare": 0.69, "magmax": 0.95, "lm_cocktail": 0.95}


COLUMNS = ["notebook", "unit", "count", "seconds", "phase"]
PHASES = ("training", "evaluation", "merging", "other")  # as provenance times them (recall.experiments.Run.timings)


def _train_s(p: Profile, n_examples: int, r: Rates) -> float:
    return n_examples * p.epochs * (r.template_tokens + p.max_text_tokens) * r.train_s_per_token


def _eval_s(p: Profile, n_examples: int, r: Rates) -> float:
    factor = dict(r.eval_autocast_factor).get(p.eval_autocast, 1.0) if p.eval_autocast else 1.0
    return n_examples * r.eval_s_per_example * factor * (10 + p.max_text_tokens) / 50


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
    """``rates`` moved to the machine ``machine`` describes (``recall.bench.probe``): each rate times the
    reference machine's speed over this one's, float32 matmul for training, EWC's Fisher, float32 scoring and the
    representation pass, memory copy for merges, the merge benchmark and the assets. Scoring under bfloat16
    autocast costs float32 scoring times ``eval_autocast_factor`` over the reading's ``autocast_speedup`` relative
    to the reference's (where the reference was not read: the speedup its scoring showed, 1 / the factor). A
    speed the reference or the reading lacks counts as equal; with none, ``rates`` as they are."""
    ref, machine = dict(rates.reference), dict(machine or {})
    if not any(machine.get(k) for k in ("float32_gflops", "autocast_speedup", "copy_gbps")):
        return rates

    def slower(key: str) -> float:
        return ref[key] / float(machine[key]) if ref.get(key) and machine.get(key) else 1.0

    f32, mem = slower("float32_gflops"), slower("copy_gbps")
    factors = []
    for d, f in rates.eval_autocast_factor:
        speedup = float(machine.get("autocast_speedup") or 0) if d == "bfloat16" else 0.0
        factors.append((d, f * (ref.get("autocast_speedup") or 1 / f) / speedup if speedup > 0 else f))
    return dataclasses.replace(
        rates, train_s_per_token=rates.train_s_per_token * f32, eval_s_per_example=rates.eval_s_per_example * f32,
        eval_autocast_factor=tuple(factors), reps_s_per_text=rates.reps_s_per_text * f32,
        fisher_s_per_example=rates.fisher_s_per_example * f32, c1_boot_s=rates.c1_boot_s * f32,
        assets_s=rates.assets_s * mem, load_s=rates.load_s * mem, merge_benchmark_s=rates.merge_benchmark_s * mem,
        merge_scale=rates.merge_scale * mem)


def reading(p: Profile) -> dict:
    """This machine's speed (``recall.bench.probe``) for planning ``p``; none for the tiny test model, which has no
    rates of its own (they are SmolLM2-135M's)."""
    from .bench import probe

    return {} if p.model == "tiny" else probe()


def estimate(p: Profile, rates: Rates = RATES, include_skipped: bool = False) -> pd.DataFrame:
    """One row per unit: notebook, unit, count, seconds (for every seed and task order of the profile) and phase
    (``PHASES``); the notebooks the profile skips (``Profile.skip``) only with ``include_skipped``."""
    from .tuning import GRIDS, knob_of

    r = rates
    T, U = len(p.tasks), len(p.unseen)
    seeds, orders = len(p.seeds), 1 + len(p.extra_orders)
    rows = []

    def add(nb, unit, count, seconds, phase):
        rows.append((nb, unit, count, seconds, phase))

    expert = _train_s(p, p.n_train, r)
    _pilot(p, r, add)
    add("01_representations", "experts and the null expert (trainings)", (T + 1) * seeds, (T + 1) * expert * seeds,
        "training")
    add("01_representations", "representation pass", seeds, seeds * (T + 2) * (32 * r.reps_s_per_text + r.load_s),
        "other")
    add("01_representations", "C1's bootstrap (Gram matrices once, then indexed)", seeds,
        seeds * r.c1_boot_s * p.n_boot / 1000, "other")
    add("01_representations", "model conversion and data (an empty cache only)", 1, r.assets_s, "other")
    n_single = T * (2 + len(p.single_methods)) * seeds
    add("02_single_model", "merges", T * len(p.single_methods) * seeds,
        sum(_merge_s(p, m, 2, r) for m in p.single_methods) * T * seeds, "merging")
    add("02_single_model", "evaluations", n_single, n_single * (_eval_s(p, (1 + U) * p.n_test, r) + r.load_s),
        "evaluation")
    tunable = [m for m in dict.fromkeys(knob_of(m) for m in p.multi_methods) if m and m != "ewc"] if p.tune else []
    grid = sum(len(GRIDS[m]) for m in tunable)
    # RECALL's representations are memoized per process: its grid reads the models once
    reps_once = sum((len(GRIDS[m]) - 1) * _reps_s(p, m, T + 1, r) for m in tunable)
    add("03_multi_model", "tuning on validation: merges", grid * seeds,
        seeds * (sum(len(GRIDS[m]) * _merge_s(p, m, T + 1, r) for m in tunable) - reps_once), "merging")
    add("03_multi_model", "tuning on validation: evaluations", grid * seeds,
        seeds * sum(len(GRIDS[m]) * (_eval_s(p, T * p.n_val, r) + r.load_s) for m in tunable), "evaluation")
    add("03_multi_model", "multi-task training", seeds if p.multitask else 0,
        seeds * _train_s(p, T * p.n_train, r) if p.multitask else 0.0, "training")
    # a tuned method's merge is its chosen grid point, merged again for the test scores (validation released its
    # weights; RECALL's representations are memoized); a control that follows a tuned method is a merge of its own
    gridded = [m for m in p.multi_methods if m in tunable]
    again = [] if p.keep_merged else gridded
    merged = [m for m in p.multi_methods if m not in gridded]
    add("03_multi_model", "merges", (len(merged) + len(again)) * seeds,
        seeds * (sum(_merge_s(p, m, T + 1, r) for m in merged)
                 + sum(_merge_s(p, m, T + 1, r) - _reps_s(p, m, T + 1, r) for m in again)), "merging")
    n_models = 1 + len(p.multi_methods) + (1 if p.multitask else 0)
    add("03_multi_model", "evaluations", (n_models + T) * seeds,
        seeds * (n_models * (_eval_s(p, (T + U) * p.n_test, r) + r.load_s)
                 + T * (_eval_s(p, (1 + U) * p.n_test, r) + r.load_s)), "evaluation")
    chains = seeds * orders
    L = len(p.chain())  # the tasks a chain learns
    merging = [m for m in p.sequential_methods if m not in ("sft", "ewc")]
    seq_tune = [m for m in dict.fromkeys(knob_of(m) for m in p.sequential_methods) if m] if p.tune else []
    seq_tune_merges = [m for m in seq_tune if m != "ewc"]
    # step 1 is the expert of the chain's first task (trained by 01, or by the first chain); step 2 learned from the
    # expert of task 1 (it is also the sft chain's step 2)
    tune = {"training": expert if seq_tune_merges else 0.0, "merging": 0.0, "evaluation": 0.0, "other": 0.0}
    for m in seq_tune:
        tune["evaluation"] += len(GRIDS[m]) * (_eval_s(p, 2 * p.n_val, r) + r.load_s)
        if m == "ewc":
            tune["training"] += len(GRIDS[m]) * expert
            tune["other"] += (p.ewc_samples or p.n_train) * r.fisher_s_per_example
        else:  # memoized: the grid reads the two models once
            tune["merging"] += len(GRIDS[m]) * _merge_s(p, m, 2, r) - (len(GRIDS[m]) - 1) * _reps_s(p, m, 2, r)
    for phase, s in tune.items():
        add("04_sequential", f"tuning on the first two steps (validation): {phase}", chains, chains * s, phase)
    # steps 2..L of every chain, but for the step-2 checkpoints the tuning already trained (found by fingerprint)
    shared = {"sft": bool(seq_tune_merges), "ewc": "ewc" in seq_tune}
    per_chain = sum(L - 1 - (L > 1 and shared.get(m, False)) for m in p.sequential_methods)
    fisher = (p.ewc_samples or p.n_train) * (L - 1) * r.fisher_s_per_example * ("ewc" in p.sequential_methods)
    add("04_sequential", "chain trainings", chains * per_chain, chains * (per_chain * expert + fisher), "training")
    add("04_sequential", "chain merges", chains * len(merging) * L,
        chains * L * sum(_merge_s(p, m, (L if m == "recall_history" else 2) + (m == "recall_history"), r)
                         for m in merging), "merging")
    scored = sum(min(i + 1, L) for i in range(1, L + 1)) + U  # tasks 1..t+1 after step t; the unseen at the end
    add("04_sequential", "chain evaluations", chains * len(p.sequential_methods) * L,
        chains * len(p.sequential_methods) * (_eval_s(p, scored * p.n_test, r) + L * r.load_s), "evaluation")
    n_abl = (1 + len(p.ablations)) * seeds
    add("05_ablations", "merges", n_abl, n_abl * _merge_s(p, "recall", T + 1, r), "merging")
    add("05_ablations", "evaluations", n_abl, n_abl * (_eval_s(p, T * p.n_test, r) + r.load_s), "evaluation")
    add("06_efficiency", "merge benchmark", 1, r.merge_benchmark_s, "other")
    out = pd.DataFrame(rows, columns=COLUMNS)
    left_out = set(p.skip) | {"00_pilot"}  # the pilot runs only on request (recall.replicate.ON_REQUEST)
    return out if include_skipped else out[~out["notebook"].isin(left_out)].reset_index(drop=True)


def _pilot(p: Profile, r: Rates, add) -> None:
    """The pilot's units (``recall.pilot``). It stops at the first recipe that meets the gate: the recipes up to the
    profile's own are counted when the profile holds one of them (the one a pilot chose), else every recipe."""
    from .pilot import RECIPES, profile_recipe

    mine = profile_recipe(p)
    recipes = RECIPES[:RECIPES.index(mine) + 1] if mine in RECIPES else RECIPES

    T, U = len(p.tasks), len(p.unseen)
    add("00_pilot", "model conversion and data (an empty cache only)", 1, r.assets_s, "other")
    add("00_pilot", "scoring rules: the profile's experts (trainings)", T, T * _train_s(p, p.n_train, r), "training")
    add("00_pilot", "scoring rules: base and experts (validation)", 1 + T,
        _eval_s(p, 2 * (T + U) * p.n_val, r) + T * _eval_s(p, (1 + U) * p.n_val, r) + (1 + T) * r.load_s,
        "evaluation")
    trained = [rc for rc in recipes if rc != mine]  # the profile's recipe reuses its experts
    add("00_pilot", "recipes: expert trainings", T * len(trained),
        T * sum(_train_s(dataclasses.replace(p, epochs=rc["epochs"]), rc["n_train"], r) for rc in trained), "training")
    add("00_pilot", "recipes: base and experts (validation)", T * (1 + len(recipes)),
        T * (1 + len(recipes)) * (_eval_s(p, p.n_val, r) + r.load_s), "evaluation")


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
