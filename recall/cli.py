"""Command line: ``recall merge``, ``recall eval``, ``recall assets`` (also ``python -m recall``)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``recall merge: error: ...``), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="recall", description="RECALL model merging and its replication")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    m = sub.add_parser("merge", help="merge fine-tuned models (RECALL or a baseline)")
    m.add_argument("--method", default="recall", help="merge method (default: recall); see `recall methods`")
    m.add_argument("--base", help="the shared base (pre-trained) model folder")
    m.add_argument("--models", nargs="+", required=True, help="model folders, oldest first; the last is the newest")
    m.add_argument("--out", required=True, help="output folder: a new folder, or with --force a previous merge "
                                                "output (never an input or a folder holding one)")
    src = m.add_mutually_exclusive_group()
    src.add_argument("--samples", help="file of samples of the new task: JSON lines with 'text' (and optional "
                                       "'answer'), or plain text one sample a line")
    src.add_argument("--task", help="take samples from this task's training split (prompts formatted for the model)")
    m.add_argument("--n-samples", type=int, default=64,
                   help="with --task: candidate pool, the first N training examples; RECALL reads all of them with "
                        "the newest model to pick its typical samples (default 64)")
    m.add_argument("--max-text-tokens", type=int, default=64,
                   help="with --task: tokens of each example's text kept in its prompt (default 64). The defaults "
                        "keep the candidate pass of a merge of two SmolLM2-135M experts near a minute on 2 CPU "
                        "cores; 256 candidates at 128 tokens took 7 minutes")
    m.add_argument("--k", type=int, help="RECALL: number of typical samples")
    m.add_argument("--temperature", type=float, help="RECALL: softmax temperature")
    m.add_argument("--similarity", help="RECALL: rbf | cka_rbf | cka_linear | cosine | combo")
    m.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="any other method option, e.g. -o density=0.3 -o lam=0.5 (types and ranges: recall methods)")
    m.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the merged weights (default: the newest model's); not RECALL's compute dtype, "
                        "which is -o dtype=...")
    m.add_argument("--engine", default="streaming", choices=["streaming", "memory"])
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--batch-size", type=int, default=8)
    m.add_argument("--device", default="cpu")
    m.add_argument("--max-shard-gb", type=float, default=2.0)
    m.add_argument("--force", action="store_true", help="replace the output folder if it is a previous merge output")
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
    from .merge import METHODS, get_method_class
    from .merge.base import option_specs

    get_method_class("recall")  # loads all
    for name in sorted(METHODS):
        cls = METHODS[name]
        tags = f"{' [base]' if cls.needs_base else ''}{' [samples]' if cls.needs_samples else ''}"
        print(f"{name}{tags}: {cls.reference}")
        for k, (default, spec) in option_specs(cls).items():  # defaults as they are typed after -o
            shown = "none" if default is None else str(default).lower() if isinstance(default, bool) else default
            print(f"  -o {k}={shown}: {spec.describe()}" + (f"; {spec.doc}" if spec.doc else ""))
    return 0


def _task_samples(task_name: str, model_path: str, n: int, seed: int, max_text_tokens: int = 64):
    from .assets import load_tokenizer
    from .tasks import get_task, load_task

    task = get_task(task_name)
    ds = load_task(task_name, n_train=n, n_val=0, n_test=0, seed=seed)["train"]
    tok = load_tokenizer(model_path)
    return task.samples(ds, tok, max_text_tokens=max_text_tokens)


def _cmd_merge(a) -> int:
    from .merge import MergeError, get_method
    from .merge.engine import check_device, check_output, merge_models, plan_merge
    from .samples import read_samples_file

    opts = {}
    for kv in a.option:
        if "=" not in kv:
            raise MergeError(f"--option {kv!r}: write KEY=VALUE")
        k, v = (x.strip() for x in kv.split("=", 1))
        if k in opts:
            raise MergeError(f"option {k} given twice (-o {k}={opts[k]} and -o {k}={v})")
        opts[k] = v  # a string: the method's option schema converts and checks it
    for k in ("k", "temperature", "similarity"):
        if getattr(a, k) is not None:
            if k in opts:
                raise MergeError(f"option {k} given twice (--{k} and -o {k}=...)")
            opts[k] = getattr(a, k)
    for flag, v in (("--n-samples", a.n_samples), ("--batch-size", a.batch_size),
                    ("--max-text-tokens", a.max_text_tokens)):
        if v < 1:
            raise MergeError(f"{flag} must be an integer >= 1, got {v}")
    if not (math.isfinite(a.max_shard_gb) and a.max_shard_gb > 0):
        raise MergeError(f"--max-shard-gb must be a finite number > 0, got {a.max_shard_gb}")
    max_shard_bytes = max(1, int(a.max_shard_gb * 1024**3))
    method = get_method(a.method, **opts)  # every option checked before any work
    check_device(a.device)
    check_output(a.out, [a.base, *a.models, *method.input_files(), a.samples], a.force)
    samples = None
    if a.samples:
        samples = read_samples_file(a.samples)
    elif a.task:
        samples = _task_samples(a.task, a.models[-1], a.n_samples, a.seed, a.max_text_tokens)
    kw = dict(engine=a.engine, device=a.device, batch_size=a.batch_size, max_shard_bytes=max_shard_bytes,
              dtype=a.dtype)
    plan = plan_merge(method, a.models, base=a.base, samples=samples, out=a.out, force=a.force, **kw)
    if a.dry_run:
        print(json.dumps(plan, indent=2, default=str))
        return 0
    t0 = time.time()
    out = merge_models(method, a.models, a.out, base=a.base, samples=samples, force=a.force, seed=a.seed,
                       progress=not a.quiet, **kw)
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
    except (MergeError, AssetError, ValueError, OSError) as e:  # OSError: unreadable input, read-only output
        print(f"recall: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recall: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
