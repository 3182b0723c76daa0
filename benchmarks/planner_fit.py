"""The factors by which each group of ``recall.planner.RATES`` would have to change for the plan of one run to match
its measured phase times: how ``RATES`` were fitted, and a check of them.

A benchmark, not a test: it prints figures. Each notebook of the run (``provenance.json``) is planned at
``RATES`` calibrated to its recorded reading (or ``--reading``), and per phase the part each group of rates
contributes is found by setting that group to zero; non-negative least squares over the notebooks then gives one
factor per group (the training records' per-token rate is taken as measured, ``--train-s-per-token``). The
groups:

- training: per-token rate, a training's fixed part, EWC's Fisher (04 only: it takes up what EWC's chains cost
  beyond their tokens);
- evaluation: scoring (one factor for every task's rate);
- merging: a merge's fixed part, its part per checkpoint, RECALL's representation pass;
- other: model loads, 01's one-off work (the assets and C1's bootstrap), the merge benchmark (06), tables and
  figures.

On the run the rates were fitted to, every factor is about 1. Then it prints the plan per notebook with the
fitted rates and the fitted values of the fields at the reading.

    python benchmarks/planner_fit.py results/replicas/cpu-epyc-zen4/provenance.json \\
        [--reading '{"train_block_ms": ...}'] [--train-s-per-token 0.004042]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from recall import planner

GROUPS = {
    "training": [("train_s_per_token",), ("train_fixed_s",), ("fisher_s_per_example",)],
    "evaluation": [("eval_scale",)],
    "merging": [("merge_s",), ("merge_s_per_model",), ("reps_s_per_text",)],
    "other": [("load_s",), ("assets_s", "c1_boot_s"), ("merge_benchmark_s",), ("tables_s",)],
}


def _scaled(r: planner.Rates, fields, k: float) -> planner.Rates:
    return dataclasses.replace(r, **{f: tuple((n, v * k) for n, v in getattr(r, f)) if f == "tables_s"
                                     else getattr(r, f) * k for f in fields})


def fit(prov: dict, reading: dict, train_s_per_token: float | None = None):
    base = planner.calibrated(planner.RATES, reading)
    if train_s_per_token:
        base = dataclasses.replace(base, train_s_per_token=train_s_per_token)
    nbs = [(key, name, one, phases) for key, name, one, phases, _ in planner.measured(prov, reading)]
    factors, fitted = {}, base
    for phase, groups in GROUPS.items():
        A, rest, y = [], [], []
        for _, name, one, measured in nbs:
            full = planner.per_phase(one, name, base)[phase]
            row = [full - planner.per_phase(one, name, _scaled(base, g, 0.0))[phase] for g in groups]
            A.append(row)
            rest.append(full - sum(row))
            y.append(measured[phase])
        k, _ = nnls(np.array(A), np.array(y) - np.array(rest))
        for g, kg in zip(groups, k):
            factors["+".join(g)] = round(float(kg), 3)
            fitted = _scaled(fitted, g, float(kg)) if kg > 0 else fitted
    return factors, fitted, nbs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("provenance", type=Path)
    ap.add_argument("--reading", help="JSON: the reading to plan every notebook at (default: each one's own)")
    ap.add_argument("--train-s-per-token", type=float, help="the training records' median (planner_rates.py)")
    args = ap.parse_args(argv)
    prov = json.loads(args.provenance.read_text())
    reading = json.loads(args.reading) if args.reading else None
    if reading is None:  # the first recorded reading: one replicate plans every notebook at one
        reading = next(nb["machine"] for nb in prov["notebooks"].values() if (nb.get("machine") or {}).get(
            "train_block_ms"))
    factors, fitted, nbs = fit(prov, reading, args.train_s_per_token)
    print("factor per group of rates:", json.dumps(factors))
    for key, name, one, measured in nbs:
        plan = sum(planner.per_phase(one, name, fitted).values())
        print(f"  {key:40s} measured {sum(measured.values()):7.1f} s, fitted plan {plan:7.1f} s, "
              f"ratio {sum(measured.values()) / plan:.3f}")
    print("fitted rates at the reading:")
    for f in dataclasses.fields(fitted):
        v = getattr(fitted, f.name)
        per_name = f.name in ("tables_s", "eval_s_per_example")
        print(f"  {f.name} = {tuple((n, round(x, 4)) for n, x in v) if per_name else v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
