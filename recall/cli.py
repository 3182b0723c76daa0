"""Command line: ``recall merge``, ``recall eval``, ``recall assets`` (also ``python -m recall``)."""

from __future__ import annotations

import argparse
import json
import sys
import time


def _parse_value(v: str):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    return v


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recall", description="RECALL model merging and its replication")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("merge", help="merge fine-tuned models (RECALL or a baseline)")
    m.add_argument("--method", default="recall", help="merge method (default: recall); see `recall methods`")
    m.add_argument("--base", help="the shared base (pre-trained) model folder")
    m.add_argument("--models", nargs="+", required=True, help="model folders, oldest first; the last is the newest")
    m.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    src = m.add_mutually_exclusive_group()
    src.add_argument("--samples", help="file of samples of the new task: JSON lines with 'text' (and optional "
                                       "'answer'), or plain text one sample a line")
    src.add_argument("--task", help="take samples from this task's training split (prompts formatted for the model)")
    m.add_argument("--n-samples", type=int, default=256, help="with --task: size of the sample pool (default 256)")
    m.add_argument("--k", type=int, help="RECALL: number of typical samples")
    m.add_argument("--temperature", type=float, help="RECALL: softmax temperature")
    m.add_argument("--similarity", help="RECALL: rbf | cka_rbf | cka_linear | cosine | combo")
    m.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="any other method option, e.g. -o density=0.3 -o lam=0.5")
    m.add_argument("--engine", default="streaming", choices=["streaming", "memory"])
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--batch-size", type=int, default=8)
    m.add_argument("--device", default="cpu")
    m.add_argument("--max-shard-gb", type=float, default=2.0)
    m.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    m.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    m.add_argument("--quiet", action="store_true", help="no progress bars")

    sub.add_parser("methods", help="list merge methods and their options")

    e = sub.add_parser("eval", help="rank-classification accuracy of a model on tasks (zero-shot table)")
    e.add_argument("--model", default="smollm2", help="'smollm2' (default), a local folder, or a hub id when online")
    e.add_argument("--tasks", nargs="+", default=["all"], help="task names, or 'all' (default)")
    e.add_argument("--n-test", type=int, default=100, help="test examples per task (default 100)")
    e.add_argument("--max-text-tokens", type=int, default=64)
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", help="also write the table as CSV here")

    sub.add_parser("assets", help="download and verify every pinned archive and convert the model")
    return p


def _cmd_methods() -> int:
    from .merge import METHODS, get_method_class, method_options

    get_method_class("recall")  # loads all
    for name in sorted(METHODS):
        cls = METHODS[name]
        opts = ", ".join(f"{k}={v!r}" for k, v in method_options(name).items())
        print(f"{name:16s} {'[base] ' if cls.needs_base else ''}{'[samples] ' if cls.needs_samples else ''}{opts}")
    return 0


def _task_samples(task_name: str, model_path: str, n: int, seed: int):
    from transformers import AutoTokenizer

    from .tasks import get_task, load_task

    task = get_task(task_name)
    ds = load_task(task_name, n_train=n, n_val=0, n_test=0, seed=seed)["train"]
    tok = AutoTokenizer.from_pretrained(model_path)
    return task.samples(ds, tok)


def _cmd_merge(a) -> int:
    from .merge import get_method
    from .merge.engine import merge_models, plan_merge
    from .samples import read_samples_file

    opts = {}
    for kv in a.option:
        if "=" not in kv:
            raise ValueError(f"--option {kv!r}: write KEY=VALUE")
        k, v = kv.split("=", 1)
        opts[k.strip()] = _parse_value(v.strip())
    for k in ("k", "temperature", "similarity"):
        if getattr(a, k) is not None:
            opts[k] = getattr(a, k)
    method = get_method(a.method, **opts)
    samples = None
    if a.samples:
        samples = read_samples_file(a.samples)
    elif a.task:
        samples = _task_samples(a.task, a.models[-1], a.n_samples, a.seed)
    plan = plan_merge(method, a.models, base=a.base, samples=samples)
    if a.dry_run:
        print(json.dumps(plan, indent=2, default=str))
        return 0
    t0 = time.time()
    out = merge_models(method, a.models, a.out, base=a.base, samples=samples, engine=a.engine, force=a.force,
                       seed=a.seed, progress=not a.quiet, device=a.device, batch_size=a.batch_size,
                       max_shard_bytes=int(a.max_shard_gb * 1024**3))
    print(f"wrote {out} ({plan['tensors']} tensors, {time.time() - t0:.1f} s)")
    return 0


def _cmd_eval(a) -> int:
    from .assets import load_model
    from .scoring import evaluate_tasks
    from .tasks import TRAIN_TASKS, UNSEEN_TASKS, load_task

    names = list(TRAIN_TASKS + UNSEEN_TASKS) if a.tasks == ["all"] else a.tasks
    t0 = time.time()
    model, tok = load_model(a.model)
    data = {n: load_task(n, n_train=0, n_val=0, n_test=a.n_test, seed=a.seed)["test"] for n in names}
    summary, _ = evaluate_tasks(model, tok, data, max_text_tokens=a.max_text_tokens, batch_size=a.batch_size)
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"mean accuracy {summary['accuracy'].mean():.3f}; wall time {time.time() - t0:.1f} s")
    if a.out:
        from .fsutil import atomic_write_text

        atomic_write_text(a.out, summary.to_csv(index=False))
    return 0


def _cmd_assets() -> int:
    from .assets import ARCHIVES, fetch_archive, smollm2_path

    for name in ARCHIVES:
        print(f"{name}: {fetch_archive(name)}")
    print(f"model: {smollm2_path()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .assets import AssetError
    from .merge import MergeError

    a = _build_parser().parse_args(argv)
    try:
        if a.command == "merge":
            return _cmd_merge(a)
        if a.command == "methods":
            return _cmd_methods()
        if a.command == "eval":
            return _cmd_eval(a)
        if a.command == "assets":
            return _cmd_assets()
    except (MergeError, AssetError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"recall: error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
