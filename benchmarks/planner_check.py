"""The planner's estimates against runs' measured times, per notebook and phase.

A benchmark, not a test: it prints figures. It reads ``provenance.json`` files (a path, or ``REV:PATH`` for a
committed one); each notebook entry holds its measured wall time and phases (``step_timings_s``; ``other`` is the
rest of the wall time) and the reading of the machine its plan was calibrated to (``recall.bench.probe``).

- plan: each notebook planned at its recorded reading by today's ``recall.planner`` (``RATES`` moved by
  ``calibrated``), as ``recall.notebook.Notebook.provenance`` does, against what it took;
- ``--transfer``: with two or more runs, each run's measured phases moved to every other run's reading by
  ``calibrated``'s factors (training by the training rate's, evaluation by scoring's, merging by the merges',
  other by the model loads'), against what that run took. This checks the calibration without the rates: how
  well a reading of a machine moves real phase times to another machine.

A ratio above 1: the run took longer than planned. A run's reading lacking a speed (runs before 088d615 read no
decoder block) can be replaced with ``--reading NAME=JSON``.

    python benchmarks/planner_check.py results/replicas/cpu-epyc-zen4/provenance.json \\
        e138051:results/cpu/provenance.json --transfer
"""

from __future__ import annotations

import argparse
import json
import subprocess
from itertools import permutations
from pathlib import Path

from recall import planner

NOTEBOOK_PHASES = {"training": "train_s_per_token", "evaluation": "eval_scale", "merging": "merge_scale",
                   "other": "load_s"}  # the rate whose calibration factor moves a measured phase


def load(source: str) -> dict:
    if ":" in source and not Path(source).exists():
        rev, path = source.split(":", 1)
        return json.loads(subprocess.check_output(["git", "show", f"{rev}:{path}"]))
    return json.loads(Path(source).read_text())


def measured(prov: dict, reading: dict | None = None) -> dict:
    """entry -> (notebook, its run's profile, measured seconds per phase, the reading): ``planner.measured``."""
    return {key: rest for key, *rest in planner.measured(prov, reading)}


def plan_rows(run: dict) -> list[dict]:
    rows = []
    for key, (name, one, phases, machine) in run.items():
        plan = planner.per_phase(one, name, planner.calibrated(planner.RATES, machine))
        row = {"notebook": key, "planned_s": round(sum(plan.values()), 1), "measured_s": round(sum(phases.values()), 1),
               "ratio": round(sum(phases.values()) / sum(plan.values()), 3)}
        row.update({ph: f"{phases[ph]:.0f}/{plan[ph]:.0f}" for ph in planner.PHASES if max(plan[ph], phases[ph]) > 1})
        rows.append(row)
    return rows


def transfer_rows(runs: dict[str, dict]) -> list[dict]:
    rows = []
    for x, y in permutations(runs, 2):
        for key in runs[x]:
            if key not in runs[y]:
                continue
            (_, _, px, rx), (_, _, py, ry) = runs[x][key], runs[y][key]
            cx, cy = planner.calibrated(planner.RATES, rx), planner.calibrated(planner.RATES, ry)
            pred = sum(t * getattr(cy, NOTEBOOK_PHASES[ph]) / getattr(cx, NOTEBOOK_PHASES[ph]) for ph, t in px.items())
            rows.append({"from": x, "to": y, "notebook": key, "moved_s": round(pred, 1),
                         "measured_s": round(sum(py.values()), 1), "ratio": round(sum(py.values()) / pred, 3)})
    return rows


def main(argv=None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("provenance", nargs="+", help="provenance.json paths, or REV:PATH")
    ap.add_argument("--transfer", action="store_true", help="move each run's phases to the other runs' readings")
    ap.add_argument("--reading", action="append", default=[], metavar="SOURCE=JSON",
                    help="the reading to use for every notebook of one run (e.g. one taken in another session)")
    args = ap.parse_args(argv)
    pd.set_option("display.width", 200)
    readings = dict(r.split("=", 1) for r in args.reading)
    runs = {src: measured(load(src), json.loads(readings[src]) if src in readings else None) for src in args.provenance}
    for src, run in runs.items():
        print(f"== {src}: measured/planned seconds per phase")
        rows = plan_rows(run)
        print(pd.DataFrame(rows).fillna("").to_string(index=False) if rows else "no notebook with a plan and a reading")
        if rows:
            print("largest miss (|measured/planned - 1|):", round(max(abs(r["ratio"] - 1) for r in rows), 3))
    if args.transfer and len(runs) > 1:
        rows = transfer_rows(runs)
        print("== each run's phases moved to another run's reading")
        print(pd.DataFrame(rows).to_string(index=False))
        print("largest miss:", round(max(abs(r["ratio"] - 1) for r in rows), 3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
