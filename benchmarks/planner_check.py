"""The planner's estimates against a run's measured times, per notebook and phase, under several ways of moving
``recall.planner.RATES`` to the machine a reading describes.

A benchmark, not a test: it prints figures. It reads a ``provenance.json`` (a path, or ``REV:PATH`` for a
committed one), takes each notebook's recorded reading of the machine (``recall.bench.probe``) and plans that
notebook at it, as ``recall.notebook.Notebook.provenance`` does, once per calibration of ``CALIBRATIONS``; then
prints measured / planned per notebook (wall time) and per phase (provenance's ``step_timings_s``; ``other`` is
the rest of the wall time). A ratio above 1: the run took longer than planned.

The calibrations were written down before the cold run of December 6 on a 2-core AMD EPYC (Zen 4, AVX512-BF16,
no AMX) started, from what the runs on the reference machine (4871310) and on the faster Xeon (088d615) showed:

- ``current``: ``recall.planner.calibrated`` as it is (each rate by the reading of its own kind of work;
  merges, model loads and the assets by memory copy);
- ``compute_merges``: as ``current``, but merges, model loads, the assets and the merge benchmark follow the
  training block (on the faster Xeon merging sped up 1.26-1.31x, as training and scoring did, while memory
  copy read 1.13x);
- ``fp32_scoring``: as ``compute_merges``, and scoring under autocast follows the float32 block; the autocast
  reading only counts where it is below 1, a CPU without native bfloat16 (on the faster Xeon scoring sped up
  1.28-1.30x, the float32 block read 1.32x, the block under autocast 1.60x);
- ``one_speed``: every rate by the training block alone, but for autocast below 1 (the faster Xeon's phases
  all sped up 1.20-1.31x).

    python benchmarks/planner_check.py results/cpu/provenance.json
    python benchmarks/planner_check.py e138051:results/cpu/provenance.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
from pathlib import Path

from recall import planner
from recall.profiles import get_profile


def _scaled(rates: planner.Rates, machine: dict, train: float, scoring: float, merges: float,
            block: float) -> planner.Rates:
    return dataclasses.replace(
        rates, train_s_per_token=rates.train_s_per_token * train, train_fixed_s=rates.train_fixed_s * merges,
        fisher_s_per_example=rates.fisher_s_per_example * train, eval_scale=rates.eval_scale * scoring,
        reps_s_per_text=rates.reps_s_per_text * block, c1_boot_s=rates.c1_boot_s * block,
        assets_s=rates.assets_s * merges, load_s=rates.load_s * merges,
        merge_benchmark_s=rates.merge_benchmark_s * merges, merge_scale=rates.merge_scale * merges)


def _ratios(rates: planner.Rates, machine: dict) -> dict:
    ref = dict(rates.reference)
    speedup = float(machine["autocast_speedup"])
    return {"train": machine["train_block_ms"] / ref["train_block_ms"], "block": machine["block_ms"] / ref["block_ms"],
            "autocast": machine["block_ms"] / speedup / (ref["block_ms"] / ref["autocast_speedup"]),
            "emulated": ref["autocast_speedup"] / speedup if speedup < 1 else 1.0}


def compute_merges(rates, machine):
    r = planner.calibrated(rates, machine)
    k = _ratios(rates, machine)["train"]
    return dataclasses.replace(r, train_fixed_s=rates.train_fixed_s * k, assets_s=rates.assets_s * k,
                               load_s=rates.load_s * k, merge_benchmark_s=rates.merge_benchmark_s * k,
                               merge_scale=rates.merge_scale * k)


def fp32_scoring(rates, machine):
    r = compute_merges(rates, machine)
    k = _ratios(rates, machine)
    return dataclasses.replace(r, eval_scale=rates.eval_scale * k["block"] * k["emulated"])


def one_speed(rates, machine):
    k = _ratios(rates, machine)
    return _scaled(rates, machine, k["train"], k["train"] * k["emulated"], k["train"], k["train"])


CALIBRATIONS = {"current": planner.calibrated, "compute_merges": compute_merges, "fp32_scoring": fp32_scoring,
                "one_speed": one_speed}


def load(source: str) -> dict:
    if ":" in source and not Path(source).exists():
        rev, path = source.split(":", 1)
        return json.loads(subprocess.check_output(["git", "show", f"{rev}:{path}"]))
    return json.loads(Path(source).read_text())


def check(prov: dict) -> list[dict]:
    rows = []
    for key, nb in prov["notebooks"].items():
        machine = nb.get("machine") or {}
        if not machine.get("train_block_ms") or not nb.get("planned_cold_s"):
            continue
        params = nb["parameters"]
        p = get_profile(params["profile"])
        order = tuple(params.get("task_order") or p.task_order)
        one = dataclasses.replace(p, seeds=(params.get("seed", 0),), task_order=order, extra_orders=())
        measured = dict(nb["step_timings_s"])
        measured["other"] = nb["wall_time_s"] - sum(measured.values())
        for name, cal in CALIBRATIONS.items():
            plan = planner.per_phase(one, key.split("/")[0], cal(planner.RATES, machine))
            row = {"notebook": key, "calibration": name, "planned_s": round(sum(plan.values()), 1),
                   "measured_s": nb["wall_time_s"], "ratio": round(nb["wall_time_s"] / sum(plan.values()), 3)}
            for ph in planner.PHASES:
                if plan[ph] > 1 or measured.get(ph, 0) > 1:
                    row[ph] = f"{measured.get(ph, 0):.0f}/{plan[ph]:.0f}"
            rows.append(row)
    return rows


def main(argv=None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("provenance", nargs="+", help="provenance.json paths, or REV:PATH")
    args = ap.parse_args(argv)
    pd.set_option("display.width", 200)
    for src in args.provenance:
        rows = check(load(src))
        print(f"== {src} (phases: measured/planned seconds)")
        if not rows:
            print("no notebook with a reading of the training block")
            continue
        df = pd.DataFrame(rows).fillna("")
        print(df.to_string(index=False))
        worst = df.assign(miss=(df["ratio"] - 1).abs()).groupby("calibration", sort=False)["miss"].max()
        print("largest miss per calibration (|measured/planned - 1|):", worst.round(3).to_dict())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
