"""Measuring a command as a whole process: wall time and peak RSS of its process tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Runs the command in argv[2:], its output to the file argv[1]; prints wall time and the peak RSS of the
# command's whole process tree (the largest ru_maxrss among the reaped descendants) as JSON.
_WRAPPER = r"""
import json, resource, subprocess, sys, time
with open(sys.argv[1], "wb") as log:
    t0 = time.perf_counter()
    rc = subprocess.run(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall_s": wall, "peak_rss_mib": ru.ru_maxrss / 1024, "cpu_s": ru.ru_utime + ru.ru_stime}))
"""


def measure(cmd: list, logfile: str | os.PathLike, env: dict | None = None) -> dict:
    """Run ``cmd`` in a fresh wrapper process; returns rc, wall_s, peak_rss_mib and cpu_s of its process tree.
    A non-zero exit raises with the tail of the command's output (kept in ``logfile``)."""
    p = subprocess.run([sys.executable, "-c", _WRAPPER, str(logfile), *map(str, cmd)], capture_output=True,
                       text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"wrapper failed: {p.stderr[-2000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        tail = Path(logfile).read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited with {res['rc']}:\n{tail}")
    return res


def probe(n: int = 1024, runs: int = 7, copy_mib: int = 256) -> dict:
    """A reading of this machine's speed in a few seconds, recorded in provenance beside each notebook's wall
    time (``recall.planner.calibrated`` moves its rates by it), with the process's torch threads. Each speed is
    read on the shape of the work it stands for:

    - ``train_block_ms``: one SmolLM2-135M decoder block (random weights), forward and backward in float32, on a
      LoRA batch (8 sequences of 100 tokens; the weights frozen, the gradient flows to the input): training and
      EWC's Fisher;
    - ``block_ms``: the block's forward in float32 (4 sequences of 64 tokens): float32
      scoring and RECALL's representation pass;
    - ``autocast_speedup``: how many times faster that forward runs under bfloat16 autocast (scoring under
      ``eval_autocast``; below 1 on a CPU without native bfloat16, where oneDNN emulates it);
    - ``float32_gflops``: an n x n x n ``torch.mm`` in float32 (C1's bootstrap: Gram matrices);
    - ``copy_gbps``: a ``copy_mib`` MiB tensor copy, read and write (merges stream checkpoints through memory).

    The fastest of ``runs`` after warm-up runs: noise from other work only slows a run down."""
    import time

    import torch

    def seconds(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def best_s(fn, warmup: int = 3, times: int = runs) -> float:
        for _ in range(warmup):  # the thread pool wakes up
            fn()
        return min(seconds(fn) for _ in range(times))

    a = torch.randn(n, n)
    out = {"threads": torch.get_num_threads(),
           "float32_gflops": round(2 * n**3 / best_s(lambda: torch.mm(a, a)) / 1e9, 1)}
    train = _smollm2_block(batch=8, tokens=100, grad=True)
    # twice the runs: a slow spell of the machine lasts about as long as seven of these (seen: 49 and 55 ms in
    # one reading in five, 42 in the others)
    out["train_block_ms"] = round(1e3 * best_s(train, times=2 * runs), 2)
    block = _smollm2_block()

    def autocast_block():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            block()

    with torch.inference_mode():  # interleaved, so that a slow spell of the machine hits both alike
        for _ in range(2):
            block(), autocast_block()
        pairs = [(seconds(block), seconds(autocast_block)) for _ in range(runs)]
        f32, bf16 = min(p[0] for p in pairs), min(p[1] for p in pairs)
        out["block_ms"], out["autocast_speedup"] = round(1e3 * f32, 2), round(f32 / bf16, 3)
    src = torch.empty(copy_mib * 2**20 // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    out["copy_gbps"] = round(2 * src.numel() * 4 / best_s(lambda: dst.copy_(src)) / 1e9, 2)
    return out


def _smollm2_block(batch: int = 4, tokens: int = 64, grad: bool = False):
    """A forward pass of one decoder block with SmolLM2-135M's shapes (hidden 576, MLP 1536, 9 query and 3
    key-value heads), random weights, for ``probe``; with ``grad``, forward and backward to the input (the weights
    frozen, as LoRA leaves them)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    h, inter, heads, kv = 576, 1536, 9, 3
    shapes = {"q": (h, h), "k": (h // heads * kv, h), "v": (h // heads * kv, h), "o": (h, h), "gate": (inter, h),
              "up": (inter, h), "down": (h, inter)}
    w = {k: torch.randn(o, i, generator=g) * i ** -0.5 for k, (o, i) in shapes.items()}
    x = torch.randn(batch, tokens, h, generator=g, requires_grad=grad)

    def heads_of(t, n):
        return t.view(batch, tokens, n, -1).transpose(1, 2).repeat_interleave(heads // n, 1)

    def forward():
        a = F.rms_norm(x, (h,))
        att = F.scaled_dot_product_attention(heads_of(F.linear(a, w["q"]), heads), heads_of(F.linear(a, w["k"]), kv),
                                             heads_of(F.linear(a, w["v"]), kv), is_causal=True)
        y = x + F.linear(att.transpose(1, 2).reshape(batch, tokens, h), w["o"])
        a = F.rms_norm(y, (h,))
        return y + F.linear(F.silu(F.linear(a, w["gate"])) * F.linear(a, w["up"]), w["down"])

    def forward_backward():
        forward().square().mean().backward()

    return forward_backward if grad else forward
