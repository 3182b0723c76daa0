"""The rates of ``recall.planner.Rates`` as this machine gives them, for a profile (default ``cpu``).

A benchmark, not a test: it prints figures (and writes them as JSON with ``--out``).

- training, from the records of a cold run's cache (``--cache``: each ``training.json`` holds its wall time,
  trained tokens and EWC strength): seconds per trained token without and with EWC's penalty, and the trained
  tokens per example and epoch of each task;
- scoring: ``recall.scoring.score_task`` of the base model on each task's first ``--n`` test examples with
  the profile's scoring settings (``eval_autocast`` included), timed per task after a warm-up on one
  task, and the time a model folder takes to load;
- the machine: ``recall.bench.probe``, read before and after (the planner's reference is such a reading).

    RECALL_CACHE=DIR python benchmarks/planner_rates.py --cache DIR/runs/cpu/seed0 [--profile cpu] [--n 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def training_rates(cache: Path) -> dict:
    plain, ewc, tokens = [], [], {}
    for f in sorted(cache.glob("**/training.json")):
        rec = json.loads(f.read_text())
        res, cfg = rec["result"], rec["fingerprint"]["config"]
        (ewc if cfg.get("ewc_lambda") else plain).append(res["wall_s"] / res["tokens"])
        name = f.parent.name
        if name.startswith("expert-") and "-seed" not in name:  # one task, the profile's n_train
            tokens[name.split("-")[1]] = round(res["tokens"] / (rec["fingerprint"]["n_samples"] * cfg["epochs"]), 1)
    out = {"trainings": len(plain) + len(ewc), "train_s_per_token": round(statistics.median(plain), 6),
           "tokens_per_example": tokens}
    if ewc:
        out["ewc_factor"] = round(statistics.median(ewc) / statistics.median(plain), 3)
    return out


def scoring_rates(profile, n: int) -> dict:
    from recall.assets import load_model, resolve_model
    from recall.scoring import score_task
    from recall.tasks import get_task, load_task

    path = Path(resolve_model(profile.model))
    t0 = time.perf_counter()
    model, tok = load_model(path)
    load_s = time.perf_counter() - t0
    out = {}
    tasks = list(profile.tasks) + list(profile.unseen)
    for i, name in enumerate([tasks[0]] + tasks):  # the first: a warm-up
        task = get_task(name, casing=profile.label_casing)
        data = load_task(name, n_train=0, n_val=0, n_test=n, seed=0)["test"]
        t0 = time.perf_counter()
        score_task(model, tok, task, data, max_text_tokens=profile.max_text_tokens,
                   batch_size=profile.eval_batch_size, progress=False, scoring=profile.scoring,
                   autocast=profile.eval_autocast)
        if i:
            out[name] = round((time.perf_counter() - t0) / len(data), 5)
    return {"load_s": round(load_s, 2), "eval_s_per_example": out}


def main(argv=None) -> int:
    from recall.bench import probe
    from recall.profiles import get_profile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--cache", type=Path, help="a cold run's cache folder of one seed (runs/<profile>/seed0)")
    ap.add_argument("--n", type=int, default=200, help="test examples scored per task")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    p = get_profile(args.profile)
    out = {"profile": p.name, "probe_before": probe()}
    if args.cache:
        out["training"] = training_rates(args.cache)
    out["scoring"] = scoring_rates(p, args.n)
    out["probe_after"] = probe()
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
