"""Training and scoring throughput on SmolLM2-135M, beside the FLOP floor of the model's shapes.

A benchmark, not a test: it prints figures (and writes them with ``--out``). In one process, repeated
``--repeats`` times (medians reported), it measures

- the machine: GFLOP/s of a 1024 x 1024 x 1024 fp32 ``torch.mm`` (and bf16, for autocast), timed in the
  same run before every repeat;
- training: ``recall.training.finetune`` on ``--steps`` optimizer updates of a real task (``--task``,
  the cpu profile's prompt length), LoRA and full fine-tuning, ms per token read (prompt + answer, no
  padding), for every ``--variant`` (TrainConfig fields, e.g. ``bf16:autocast=bf16``);
- scoring: ``recall.scoring.score_task`` on ``--n-test`` test examples, ms per evaluated token (prompt tokens
  after the shared prefix, the prefix once, and the continuation tokens of multi-token labels), in float32 and
  under bfloat16 autocast (the cpu profile's ``eval_autocast``; its floor at the bf16 matmul rate, and the share
  of predictions equal to float32's).

The floor is the matmul FLOPs those tokens need divided by the measured fp32 GFLOP/s: per token 2 x the
decoder's linear parameters forward (6 x for full training: forward, activation and weight gradients; 4 x
plus 6 x the adapters' for LoRA), causal attention over each token's context (x 3 when training), and the
tied lm_head (vocab x hidden) only where it is needed: at answer positions in training (x 6 full, x 4
LoRA, whose head is frozen), at scored positions in scoring (x 1). The ratio measured / floor says how
close the code gets to the machine.

    python benchmarks/throughput.py [--repeats 3] [--threads 2] [--steps 8] [--variant NAME:FIELD=VALUE,...]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def matmul_gflops(dtype_name: str = "float32", n: int = 1024, runs: int = 15) -> float:
    """Median GFLOP/s of an n x n x n ``torch.mm`` (after 3 warm-up runs)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        torch.mm(a, b)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


@dataclass(frozen=True)
class Shapes:
    """What the FLOP floor needs from a Llama-style config."""

    hidden: int
    inter: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    @classmethod
    def of(cls, config) -> Shapes:
        return cls(config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                   config.num_attention_heads, config.num_key_value_heads, config.vocab_size)

    def linears(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer of one block."""
        h, kv = self.hidden, self.hidden // self.heads * self.kv_heads
        return [(h, h), (h, kv), (h, kv), (h, h), (h, self.inter), (h, self.inter), (self.inter, h)]

    @property
    def decoder_params(self) -> int:
        return self.layers * sum(i * o for i, o in self.linears())

    def lora_params(self, r: int) -> int:
        return self.layers * sum(r * (i + o) for i, o in self.linears())

    @property
    def head_params(self) -> int:
        return self.vocab * self.hidden

    def attention_flops(self, context: float) -> float:
        """Forward FLOPs of one query token attending to ``context`` keys (QK^T and AV), all layers."""
        return 4 * context * self.hidden * self.layers


def train_floor_flops(s: Shapes, mode: str, tokens: int, answer_tokens: int, mean_context: float, r: int) -> float:
    if mode == "full":
        per_token, head = 6 * s.decoder_params, 6 * s.head_params
    else:
        per_token, head = 4 * s.decoder_params + 6 * s.lora_params(r), 4 * s.head_params
    return tokens * (per_token + 3 * s.attention_flops(mean_context)) + answer_tokens * head


def mean_context(lengths: list[int], start: list[int] | None = None) -> float:
    """Mean number of keys a causal query attends to, over the tokens ``start[i]..lengths[i]`` of each example."""
    start = start or [0] * len(lengths)
    keys = sum((n * (n + 1) - s * (s + 1)) / 2 for n, s in zip(lengths, start))
    return keys / max(1, sum(n - s for n, s in zip(lengths, start)))


def scoring_tokens(tok, task, texts, max_text_tokens: int) -> dict:
    """Evaluated tokens and scored positions of ``score_task`` (the same tokenization as recall.scoring)."""
    from recall.encoding import common_prefix_len, tokenize

    prompts = [tokenize(tok, task.prompt(t, tok, max_text_tokens=max_text_tokens)) for t in texts]
    labels = [tokenize(tok, task.answer(i)) for i in range(len(task.labels))]
    cp = common_prefix_len(prompts)
    extra = sum(len(c) - 1 for c in labels)
    n = len(prompts)
    tokens = cp + sum(len(p) - cp for p in prompts) + n * extra
    ctx = mean_context([len(p) for p in prompts], [cp] * n)
    return {"tokens": tokens, "prompt_tokens_mean": sum(map(len, prompts)) / n, "shared_prefix": cp,
            "scored_positions": n * (1 + extra), "mean_context": ctx}


def score_floor_flops(s: Shapes, st: dict) -> float:
    return st["tokens"] * (2 * s.decoder_params + s.attention_flops(st["mean_context"])) + \
        st["scored_positions"] * 2 * s.head_params


def parse_variant(text: str) -> tuple[str, dict]:
    """``name:field=value,field=value`` -> (name, overrides of TrainConfig); values as JSON when they parse."""
    name, _, rest = text.partition(":")
    over = {}
    for item in filter(None, rest.split(",")):
        k, sep, v = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"variant {text!r}: {item!r} is not FIELD=VALUE")
        try:
            over[k] = json.loads(v)
        except ValueError:
            over[k] = v
    return name, over


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    p.add_argument("--task", default="trec")
    p.add_argument("--n-train", type=int, default=64, help="training examples (the cpu profile's)")
    p.add_argument("--n-test", type=int, default=100, help="scored test examples")
    p.add_argument("--max-text-tokens", type=int, default=40, help="task text per prompt (the cpu profile's)")
    p.add_argument("--steps", type=int, default=8, help="optimizer updates per training run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    p.add_argument("--variant", action="append", type=parse_variant, default=None,
                   help="NAME:FIELD=VALUE,... TrainConfig overrides to time (repeatable; default: 'default:')")
    p.add_argument("--skip-scoring", action="store_true")
    p.add_argument("--scoring", default="calibrated", help="scoring rule (recall.scoring.SCORINGS; the cpu profile's)")
    p.add_argument("--accuracy-epochs", type=int, default=0,
                   help="also train a LoRA expert per variant for this many epochs (not timed) and score it on the "
                        "test split: how much a variant (bf16 autocast) moves the scores")
    p.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = p.parse_args(argv)
    os.environ.update(OFFLINE_ENV)
    import torch

    from recall.assets import load_model
    from recall.encoding import encode
    from recall.scoring import score_task
    from recall.tasks import get_task, load_task
    from recall.training import TrainConfig, finetune

    if args.threads:
        torch.set_num_threads(args.threads)
    variants = args.variant or [("default", {})]
    model0, tok = load_model("smollm2")
    shapes = Shapes.of(model0.config)
    task = get_task(args.task)
    splits = load_task(args.task, n_train=args.n_train, n_val=0, n_test=args.n_test, seed=0)
    samples = task.samples(splits["train"], tok, args.max_text_tokens)
    max_length = args.max_text_tokens + 160
    enc = [encode(tok, s.text, s.answer, eos=True) for s in samples]
    lengths = [len(e["input_ids"]) for e in enc]
    ctx = mean_context(lengths)
    st = scoring_tokens(tok, task, splits["test"]["text"], args.max_text_tokens)

    rows: dict[str, list[dict]] = {}
    gf: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for rep in range(args.repeats):
        for dt in gf:
            gf[dt].append(matmul_gflops(dt))
        log(f"[{rep + 1}] matmul {gf['float32'][-1]:.1f} GFLOP/s fp32, {gf['bfloat16'][-1]:.1f} bf16")
        for mode in args.modes:
            for name, over in variants:
                cfg = TrainConfig(mode=mode, max_steps=args.steps, batch_size=args.batch_size, max_length=max_length,
                                  seed=rep, **over)
                model = copy.deepcopy(model0)
                res = finetune(model, tok, samples, cfg, progress=False)
                ms = 1000 * res.wall_s / res.tokens
                floor = train_floor_flops(shapes, mode, res.tokens, res.answer_tokens, ctx, cfg.lora_r)
                rows.setdefault(f"train {mode} {name}", []).append(
                    {"ms_per_token": ms, "floor_gflop": floor / 1e9, "tokens": res.tokens,
                     "padded_tokens": res.padded_tokens,
                     "floor_ms_per_token": 1000 * floor / (gf["float32"][-1] * 1e9) / res.tokens,
                     "first_loss": res.losses[0], "last_loss": res.losses[-1]})
                log(f"[{rep + 1}] train {mode} {name}: {ms:.2f} ms/token ({res.tokens} tokens, {res.steps} steps, "
                    f"loss {res.losses[0]:.4f} -> {res.losses[-1]:.4f})")
                del model, res
        if not args.skip_scoring:
            preds = {}
            for autocast, dt in ((None, "float32"), ("bfloat16", "bfloat16")):  # Profile.eval_autocast
                t0 = time.perf_counter()
                df = score_task(model0, tok, task, splits["test"], max_text_tokens=args.max_text_tokens,
                                batch_size=args.eval_batch_size, progress=False, scoring=args.scoring,
                                autocast=autocast)
                wall = time.perf_counter() - t0
                preds[dt] = df["pred"].to_numpy()
                floor_ms = 1000 * score_floor_flops(shapes, st) / (gf[dt][-1] * 1e9) / st["tokens"]
                key = "score" if autocast is None else f"score autocast {autocast}"
                rows.setdefault(key, []).append({"ms_per_token": 1000 * wall / st["tokens"], "tokens": st["tokens"],
                                                 "accuracy": float(df["correct"].mean()),
                                                 "same_predictions": float((preds[dt] == preds["float32"]).mean()),
                                                 "floor_ms_per_token": floor_ms})
                log(f"[{rep + 1}] {key}: {1000 * wall / st['tokens']:.2f} ms/evaluated token ({st['tokens']} tokens)")

    accuracy = {}
    for name, over in variants if args.accuracy_epochs else []:
        cfg = TrainConfig(mode="lora", epochs=args.accuracy_epochs, batch_size=args.batch_size, max_length=max_length,
                          **over)
        res = finetune(copy.deepcopy(model0), tok, samples, cfg, progress=False)
        df = score_task(res.model, tok, task, splits["test"], max_text_tokens=args.max_text_tokens,
                        batch_size=args.eval_batch_size, progress=False)
        accuracy[name] = {"accuracy": float(df["correct"].mean()), "pred": df["pred"].tolist(),
                          "last_loss": res.losses[-1], "steps": res.steps}
        log(f"accuracy {name}: {accuracy[name]['accuracy']:.3f} after {res.steps} steps (loss {res.losses[-1]:.4f})")
        del res

    med = statistics.median
    print(f"\nSmolLM2-135M ({shapes.decoder_params / 1e6:.1f}M decoder linear + {shapes.head_params / 1e6:.1f}M tied "
          f"head), task {args.task}, {len(samples)} training prompts of {sum(lengths) / len(lengths):.0f} tokens "
          f"(mean causal context {ctx:.0f}), batch {args.batch_size}, {args.steps} steps; scoring {args.n_test} "
          f"prompts of {st['prompt_tokens_mean']:.0f} tokens ({st['shared_prefix']} shared), batch "
          f"{args.eval_batch_size}; {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}; median of {args.repeats}")
    print(f"matmul 1024^3: {med(gf['float32']):.1f} GFLOP/s fp32, {med(gf['bfloat16']):.1f} GFLOP/s bf16")
    print(f"{'run':28s} {'ms/token':>9s} {'floor ms':>9s} {'ratio':>7s}  notes (ratio: median of each run / its floor)")
    summary = {}
    for key, rs in rows.items():
        ms, fl = med([r["ms_per_token"] for r in rs]), med([r["floor_ms_per_token"] for r in rs])
        ratio = med([r["ms_per_token"] / r["floor_ms_per_token"] for r in rs])  # each run against its repeat's floor
        note = (f"loss {med([r['first_loss'] for r in rs]):.4f} -> {med([r['last_loss'] for r in rs]):.4f}, padding "
                f"{med([r['padded_tokens'] / r['tokens'] - 1 for r in rs]):.1%}"
                if "first_loss" in rs[0] else f"accuracy {med([r['accuracy'] for r in rs]):.3f}, predictions equal to "
                f"float32's {med([r['same_predictions'] for r in rs]):.1%} (floor at this dtype's matmul rate)")
        print(f"{key:28s} {ms:9.2f} {fl:9.2f} {ratio:6.2f}x  {note}")
        summary[key] = {"ms_per_token": ms, "floor_ms_per_token": fl, "ratio": ratio, "runs": rs}
    if accuracy:
        ref = next(iter(accuracy.values()))
        for name, a in accuracy.items():
            same = sum(x == y for x, y in zip(a["pred"], ref["pred"], strict=True)) / len(ref["pred"])
            print(f"LoRA expert, {a['steps']} steps, variant {name}: test accuracy {a['accuracy']:.3f}, final loss "
                  f"{a['last_loss']:.4f}, predictions equal to the first variant's: {same:.1%}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"date": datetime.date.today().isoformat(), "argv": sys.argv[1:],
                                        "gflops": gf, "summary": summary, "accuracy": accuracy}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
