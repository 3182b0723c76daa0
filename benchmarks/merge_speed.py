"""Merge speed and memory against mergekit (linear, TIES, DARE + TIES), and the RECALL representation pass.

A benchmark, not a test: it prints figures and writes them to ``--out`` (default
``results/benchmarks/merge_speed.csv``, which the book renders). On three SmolLM2-135M fp32 checkpoints (the
cached base from ``recall.assets.smollm2_path()`` and two seeded perturbed copies), each run is a whole
separate process measured for wall time and peak RSS (``recall.bench.measure``: ``getrusage(RUSAGE_CHILDREN)``
in a fresh wrapper process, so a run's figure covers the command and everything it starts). Repeats are
interleaved (repeat 1 of every run, then repeat 2, ...) and medians reported, so ours and mergekit's see the
same machine load. For each method of ``--methods``:

1. ``python -m recall merge --method M ... --out OUT`` with the streaming engine (and, for ``linear``, the
   memory engine too);
2. ``mergekit-yaml mergekit.yml OUT`` (mergekit 0.1.5 in its own virtual environment) on the ``mergekit.yml``
   our merge wrote (``recall.merge.card``), then mergekit's output compared with ours tensor by tensor; the
   tensors that differ are explained (TIES: magnitudes tied at a trim threshold, zero-mass entries; DARE: the
   random masks, whose density and scale are compared instead). For ``linear`` it also checks that mergekit's
   filter semantics give every tensor the weights of its layer in our layer map (also on GPT-2, Qwen2 and
   Gemma-3 tensor names).

3. the RECALL representation pass: ``layer_representations`` of 64 texts of about 100 tokens by 5 models
   (the base and 4 perturbed copies), model loading and imports included (``--skip-reps`` skips it).

Same parameters on both sides: ``ties`` density 0.2, lambda 1; ``dare_ties`` keeps 20% at random (our p = 0.8,
mergekit's density 0.2), no magnitude trim (our density 1, as mergekit's dare_ties), disjoint mean
(mergekit's ``normalize: true``), lambda 1. Goals: linear <= 0.4x mergekit's wall time; TIES <= 0.2x; every
merge <= 0.5x its peak RSS; the representation pass <= 60 s.

    python benchmarks/merge_speed.py [--repeats 3] [--threads 1] [--methods linear ties dare_ties]

The first run builds the perturbed checkpoints (2 GB under ``--workdir``) and mergekit's virtual environment
(about 1 minute; ``--mergekit-venv`` points at an existing one). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from recall.bench import measure

N_PERTURBED = 4  # the representation pass reads base + 4; the merges use base + the first 2
MERGEKIT_PINS = ["mergekit==0.1.5", "torch==2.13.0", "transformers==5.24.0", "accelerate==1.15.0",
                 "peft==0.21.2", "numpy==2.4.6"]
GOALS = {"wall": {"linear": 0.4, "ties": 0.2}, "rss": 0.5, "reps_s": 60.0}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONHASHSEED": "0"}
COLUMNS = ["run", "method", "tool", "engine", "n_models", "repeats", "wall_s", "peak_rss_mib", "wall_vs_mergekit",
           "rss_vs_mergekit", "tensors_equal", "tensors_total", "machine", "date"]
# benchmark name -> our `recall merge` options (mergekit runs from the mergekit.yml they write)
METHODS = {
    "linear": ["--method", "layer_linear", "-o", "weights={weights}"],
    "task_arithmetic": ["--method", "task_arithmetic", "-o", "lam=1.0"],
    "ties": ["--method", "ties", "-o", "density=0.2", "-o", "lam=1.0"],
    "dare_linear": ["--method", "dare", "-o", "p=0.8", "-o", "lam=1.0", "-o", "seed=0"],
    "dare_ties": ["--method", "dare", "-o", "p=0.8", "-o", "combine=ties", "-o", "density=1.0", "-o", "lam=1.0",
                  "-o", "seed=0"],
}
DEFAULT_METHODS = ["linear", "ties", "dare_ties"]
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "results" / "benchmarks" / "merge_speed.csv"


# ----------------------------------------------------------------------------------------------- setup


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_perturbed(base: Path, dest: Path, seed: int, noise: float) -> Path:
    """``dest``: every float tensor of ``base`` plus ``noise * std(tensor) * N(0, 1)`` (seeded); reused if
    it already exists with the same recipe."""
    import torch
    from safetensors.torch import load_file, save_file

    from recall.assets import copy_tokenizer
    from recall.fsutil import atomic_dir

    src = base / "model.safetensors"
    recipe = {"base": str(base), "base_bytes": src.stat().st_size, "seed": seed, "noise": noise}
    marker = dest / "bench_recipe.json"
    if marker.exists() and json.loads(marker.read_text()) == recipe:
        return dest
    log(f"writing perturbed checkpoint {dest} (seed {seed})")
    sd = load_file(src)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(sd):
        t = sd[name]
        if t.is_floating_point():
            t32 = t.float()
            scale = float(t32.std()) if t32.numel() > 1 else 1.0
            t = (t32 + noise * scale * torch.randn(t.shape, generator=g)).to(t.dtype)
        out[name] = t.contiguous()
    del sd
    with atomic_dir(dest, force=True) as tmp:
        save_file(out, tmp / "model.safetensors", metadata={"format": "pt"})
        for n in ("config.json", "generation_config.json"):
            if (base / n).exists():
                shutil.copy2(base / n, tmp / n)
        copy_tokenizer(base, tmp)
        (tmp / "bench_recipe.json").write_text(json.dumps(recipe) + "\n")
    return dest


def weights_table(num_layers: int, pool: int, seed: int):
    """A layer-wise weights table (rows: layers 0..L, columns: base, model 0, model 1) whose rows differ
    from each other, so any layer mix-up in a merge shows in its output."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.full(pool, 2.0), size=num_layers + 1)
    cols = ["base"] + [f"model {i}" for i in range(pool - 1)]
    return pd.DataFrame(w, columns=cols, index=pd.RangeIndex(num_layers + 1, name="layer"))


def make_texts(base: Path, n: int, text_tokens: int) -> tuple[list[str], str]:
    """``n`` model inputs of about 100 tokens: BBC prompts (chat template, text cut to ``text_tokens``
    tokens) from ``recall.tasks`` when it works, else synthetic sentences."""
    try:
        from transformers import AutoTokenizer

        from recall.tasks import get_task, load_task

        tok = AutoTokenizer.from_pretrained(base)
        task = get_task("bbc")
        ds = load_task("bbc", n_train=n, n_val=0, n_test=0, seed=0)["train"]
        return [task.prompt(t, tok, max_text_tokens=text_tokens) for t in ds["text"]], "recall.tasks bbc prompts"
    except Exception as e:  # noqa: BLE001 - tasks module absent or its archives unavailable
        log(f"recall.tasks unavailable ({type(e).__name__}: {e}); using synthetic sentences")
        rng = np.random.default_rng(0)
        words = ("the model merges layers of experts while keeping knowledge of earlier tasks and learning new "
                 "ones from a few typical samples whose representations guide the weights").split()
        return [" ".join(rng.choice(words, size=80)) + "." for _ in range(n)], "synthetic sentences"


def mergekit_python(venv: Path, create: bool) -> Path:
    py = venv / "bin" / "python"
    if (venv / "bin" / "mergekit-yaml").exists():
        return py
    if not create:
        raise SystemExit(f"no mergekit in {venv}; run without --no-install or pass --skip-mergekit")
    log(f"creating mergekit's virtual environment {venv} ({' '.join(MERGEKIT_PINS)})")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", *MERGEKIT_PINS], check=True)
    return py


def mergekit_versions(py: Path) -> dict:
    code = ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
            "['mergekit', 'torch', 'transformers', 'safetensors', 'pydantic']}))")
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


# ----------------------------------------------------------------------------------------------- runs


REPS_VARIANTS = {
    "as-is": "layer_representations(model, ...) as RECALL calls it (fp32; the decoder alone, no logits)",
    "no-lm-head": "layer_representations(model.model, ...): the decoder alone, no logits (same hidden states)",
    "bf16-no-lm-head": "prototype: the decoder alone, in bfloat16 (pooling still accumulates in float32)",
}


def reps_child(args) -> int:
    """The representation pass, run as its own process: load each model, ``layer_representations``."""
    t0 = time.perf_counter()
    import torch

    from recall.assets import load_model
    from recall.representations import layer_representations

    t_import = time.perf_counter() - t0
    texts = json.loads(Path(args.reps_child).read_text())
    per_model, reps = [], []
    for path in args.models:
        t1 = time.perf_counter()
        model, tok = load_model(path, device=args.device,
                                dtype=torch.bfloat16 if args.reps_variant.startswith("bf16") else None)
        t2 = time.perf_counter()
        net = model if args.reps_variant == "as-is" else model.model
        r = layer_representations(net, tok, texts, batch_size=args.batch_size, progress=False, device=args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t3 = time.perf_counter()
        assert r.shape[1] == len(texts) and torch.isfinite(r).all()
        per_model.append({"load_s": t2 - t1, "reps_s": t3 - t2})
        reps.append(r)
        del model, net
    if args.reps_save:
        torch.save(torch.stack(reps), args.reps_save)
    n_tok = sum(len(x) for x in tok(texts)["input_ids"])
    print(json.dumps({"import_s": t_import, "models": per_model, "tokens_per_model": n_tok,
                      "threads": torch.get_num_threads(), "total_s": time.perf_counter() - t0}))
    return 0


# ----------------------------------------------------------------------------------------------- checks


def compare_outputs(a: Path, b: Path) -> dict:
    """Per-tensor max abs difference between two model folders (single-file or sharded safetensors)."""
    import torch

    from recall.merge.safetensors_io import LazyCheckpoint

    ca, cb = LazyCheckpoint(a), LazyCheckpoint(b)
    only_a, only_b = sorted(set(ca.entries) - set(cb.entries)), sorted(set(cb.entries) - set(ca.entries))
    diffs, bad_meta = {}, []
    for name in ca.names():
        if name not in cb.entries:
            continue
        ta, tb = ca.get(name), cb.get(name)
        if ta.dtype != tb.dtype or ta.shape != tb.shape:
            bad_meta.append(f"{name}: {ta.dtype} {tuple(ta.shape)} vs {tb.dtype} {tuple(tb.shape)}")
            continue
        diffs[name] = float((ta.double() - tb.double()).abs().max()) if ta.numel() else 0.0
        if ta.is_floating_point():
            diffs[name + "#bitwise"] = bool(torch.equal(ta, tb))
    vals = {k: v for k, v in diffs.items() if not k.endswith("#bitwise")}
    worst = max(vals, key=vals.get) if vals else None
    return {"tensors": len(vals), "only_in_first": only_a, "only_in_second": only_b, "dtype_shape_mismatch": bad_meta,
            "max_abs_diff": vals[worst] if worst else 0.0, "worst_tensor": worst,
            "bitwise_equal": sum(1 for k, v in diffs.items() if k.endswith("#bitwise") and v),
            "per_tensor": vals}


_MK_WEIGHTS = r"""
import json, sys, yaml
from mergekit.config import MergeConfiguration, evaluate_setting
cfg = MergeConfiguration.model_validate(yaml.safe_load(open(sys.argv[1])))
names = json.load(open(sys.argv[2]))
out = {n: [evaluate_setting(n, m.parameters["weight"], 0, validate=float) for m in cfg.models] for n in names}
print(json.dumps(out))
"""


def check_filters(mk_py: Path, yml: Path, names: list[str], table, num_layers: int, workdir: Path) -> dict:
    """Evaluate the YAML's conditional ``weight`` lists with mergekit's own ``evaluate_setting`` for every
    tensor name, and compare with the table row of the tensor's layer in our layer map."""
    from recall.merge.layers import layer_of

    nf = workdir / "tensor_names.json"
    nf.write_text(json.dumps(names))
    p = subprocess.run([str(mk_py), "-c", _MK_WEIGHTS, str(yml), str(nf)], capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": p.stderr[-2000:]}
    got = json.loads(p.stdout)
    tab = table.to_numpy()
    wrong = []
    for n in names:
        want = tab[layer_of(n, num_layers)]
        have = np.array(got[n], dtype=float)
        if not np.allclose(have, want, rtol=0, atol=1e-12):
            rows = [r for r in range(len(tab)) if np.allclose(tab[r], have, rtol=0, atol=1e-12)]
            wrong.append({"tensor": n, "our_layer": layer_of(n, num_layers), "mergekit_row": rows})
    return {"tensors": len(names), "mismatched": wrong}


# Tensor names of other families the layer map supports (recall.merge.layers), 2 blocks each.
FAMILY_NAMES = {
    "gpt2": ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
             "transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.weight", "transformer.ln_f.weight"],
    "qwen2 (untied lm_head)": ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.bias",
                               "model.layers.1.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight"],
    "gemma3 multimodal (text part)": ["model.language_model.embed_tokens.weight",
                                      "model.language_model.layers.0.self_attn.q_proj.weight",
                                      "model.language_model.layers.1.mlp.up_proj.weight",
                                      "model.language_model.norm.weight"],
}


def check_filter_families(mk_py: Path, workdir: Path) -> dict:
    """Run ``recall.merge.card.mergekit_config`` on a 2-block table and evaluate its filters with mergekit on
    the tensor names of other supported families."""
    import yaml

    from recall.merge.card import mergekit_config

    table = weights_table(2, 2, 1)
    yml = workdir / "families.yml"
    out = {}
    for fam, names in FAMILY_NAMES.items():
        yml.write_text(yaml.safe_dump(mergekit_config(table, ["/a", "/b"], 2, names), sort_keys=False))
        out[fam] = check_filters(mk_py, yml, names, table, 2, workdir)
    return out


def compare_reps(reps_runs: dict[str, Path]) -> dict:
    """Representation and RECALL-weight differences of each variant against the as-is pass."""
    import torch

    from recall.similarity import similarity_to_reference
    from recall.weights import layer_weights

    def weights(x):  # x: (models, L+1, N, H) -> (L+1, models)
        return layer_weights(similarity_to_reference([m.numpy() for m in x], ref=-1, measure="rbf"), 1.0)

    ref = torch.load(reps_runs["representation pass"])
    w_ref = weights(ref)
    out = {}
    for key, path in reps_runs.items():
        if key == "representation pass":
            continue
        x = torch.load(path)
        rel = ((x - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-12)).max()
        out[key] = {"max_rel_diff": float(rel), "weights_max_abs_diff": float(np.abs(weights(x) - w_ref).max())}
    return out


def explain_ties(base: Path, models: list[Path], ours: Path, theirs: Path, names: list[str], density: float) -> dict:
    """For each tensor where our TIES and mergekit's differ: how many entries differ, how many extra entries we
    keep at each model's trim threshold (mergekit keeps exactly max(1, int(density * n)); we keep every tie),
    and how many entries have a summed mass of exactly 0 with non-zero entries (mergekit elects +, we the
    tensor's majority)."""
    import torch

    from recall.merge.safetensors_io import LazyCheckpoint
    from recall.merge.ties import keep_count, kth_largest

    cb, cms, co, ct = LazyCheckpoint(base), [LazyCheckpoint(m) for m in models], LazyCheckpoint(ours), \
        LazyCheckpoint(theirs)
    out = {}
    for name in names:
        b = cb.get(name).float()
        tvs = [ck.get(name).float() - b for ck in cms]
        n, keep = b.numel(), keep_count(density, b.numel())
        extra, trimmed = [], []
        for tv in tvs:
            thr = kth_largest(tv.abs().reshape(-1).clone(), keep) if 0 < keep < n else 0.0
            t = tv.masked_fill(tv.abs() < thr, 0.0) if keep < n else tv
            extra.append(int((tv.abs() >= thr).sum()) - max(1, keep) if keep < n else 0)
            trimmed.append(t)
        mass = sum(trimmed[1:], trimmed[0].clone())
        cancel = int(((mass == 0) & torch.stack(trimmed).ne(0).any(0)).sum())
        differing = int((co.get(name) != ct.get(name)).sum())
        out[name] = {"entries_differing": differing, "extra_kept_at_threshold": extra,
                     "zero_mass_cancellations": cancel}
    return out


def dare_stats(base: Path, ours: Path, theirs: Path) -> dict:
    """Random masks cannot match mergekit's RNG: compare what they should share instead, over the whole model:
    the fraction of entries the merge changes and the norm of the merged task vector, ours / mergekit's."""
    import torch

    from recall.merge.safetensors_io import LazyCheckpoint

    cb, co, ct = LazyCheckpoint(base), LazyCheckpoint(ours), LazyCheckpoint(theirs)
    changed, sq, total = np.zeros(2), np.zeros(2), 0
    for name in co.names():
        b = cb.get(name).double()
        for j, ck in enumerate((co, ct)):
            d = ck.get(name).double() - b
            changed[j] += int(torch.count_nonzero(d))
            sq[j] += float((d * d).sum())
        total += b.numel()
    return {"changed_fraction": {"ours": changed[0] / total, "mergekit": changed[1] / total},
            "task_vector_norm_ratio": float(np.sqrt(sq[0] / sq[1])) if sq[1] else float("nan")}


# ----------------------------------------------------------------------------------------------- main


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPUs ({cpu})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="runs of each command; the median is reported")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS),
                   help=f"merges to time against mergekit (default: {' '.join(DEFAULT_METHODS)})")
    p.add_argument("--workdir", type=Path, help="folder for checkpoints, outputs and logs "
                                                 "(default: recall.fsutil.cache_dir()/bench)")
    p.add_argument("--skip-mergekit", action="store_true", help="time only our merges and the representation pass")
    p.add_argument("--skip-reps", action="store_true", help="skip the representation pass")
    p.add_argument("--skip-memory-engine", action="store_true", help="no memory-engine run of the linear merge")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the CSV to write (default: {DEFAULT_OUT}); "
                                                                  "the checks go beside it (.checks.json)")
    p.add_argument("--mergekit-venv", type=Path, help="virtual environment with mergekit-yaml "
                                                       "(default: WORKDIR/mergekit-venv, created if missing)")
    p.add_argument("--no-install", action="store_true", help="never create mergekit's virtual environment")
    p.add_argument("--noise", type=float, default=0.01, help="perturbation, in units of each tensor's std")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--texts", type=int, default=64, help="texts in the representation pass")
    p.add_argument("--text-tokens", type=int, default=48, help="tokens of task text per prompt (~100 in all)")
    p.add_argument("--batch-size", type=int, default=8, help="representation pass batch size (RECALL's default)")
    p.add_argument("--device", default="cpu", help="representation pass device (cpu, cuda)")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS / MKL_NUM_THREADS for every run (default: unset, "
                                               "torch's default); 1 is steadier on a machine shared with other jobs")
    p.add_argument("--reps-variants", nargs="*", default=[], choices=[v for v in REPS_VARIANTS if v != "as-is"],
                   help="also time these prototype variants of the representation pass and compare their RECALL "
                        "weights with the as-is pass")
    p.add_argument("--reps-repeats", type=int, help="repeats of the representation pass (default: --repeats)")
    p.add_argument("--reps-child", help=argparse.SUPPRESS)
    p.add_argument("--reps-variant", default="as-is", help=argparse.SUPPRESS)
    p.add_argument("--reps-save", help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.reps_child:
        return reps_child(args)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")

    import pandas as pd

    from recall.assets import smollm2_path
    from recall.fsutil import atomic_write_text, cache_dir
    from recall.merge.layers import num_layers_of
    from recall.merge.safetensors_io import LazyCheckpoint

    workdir = (args.workdir or cache_dir() / "bench").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **OFFLINE_ENV}
    if args.threads:
        env.update({"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)})
    os.environ.update(OFFLINE_ENV)

    # ---- setup (not timed)
    base = smollm2_path()
    L = num_layers_of(json.loads((base / "config.json").read_text()))
    perturbed = [make_perturbed(base, workdir / "models" / f"perturbed{i + 1}", args.seed * 100 + i + 1, args.noise)
                 for i in range(2 if args.skip_reps else N_PERTURBED)]
    experts = perturbed[:2]
    table = weights_table(L, 1 + len(experts), args.seed)
    wcsv = workdir / "weights.csv"
    atomic_write_text(wcsv, table.to_csv())
    mk_py = None
    if not args.skip_mergekit:
        mk_py = mergekit_python((args.mergekit_venv or workdir / "mergekit-venv").resolve(), not args.no_install)
        log(f"mergekit environment: {mergekit_versions(mk_py)}")
    outs = workdir / "out"
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)

    # ---- the runs: (method, tool, engine) -> command; mergekit reads the YAML of our streaming merge
    runs: dict[tuple[str, str, str], list[str]] = {}
    out_dir: dict[tuple[str, str, str], Path] = {}
    for m in args.methods:
        opts = [a.format(weights=wcsv) for a in METHODS[m]]
        engines = ["streaming"] + (["memory"] if m == "linear" and not args.skip_memory_engine else [])
        for engine in engines:
            key = (m, "recall", engine)
            out_dir[key] = outs / f"{m}_recall_{engine}"
            runs[key] = [sys.executable, "-m", "recall", "merge", *opts, "--base", str(base), "--models",
                         *map(str, experts), "--engine", engine, "--out", str(out_dir[key]), "--quiet"]
        if mk_py is not None:
            key = (m, "mergekit", "")
            out_dir[key] = outs / f"{m}_mergekit"
            runs[key] = [str(mk_py.parent / "mergekit-yaml"), str(workdir / f"{m}.mergekit.yml"), str(out_dir[key]),
                         "--quiet"]
    reps_runs: dict[tuple[str, str, str], Path] = {}
    if not args.skip_reps:
        texts, text_src = make_texts(base, args.texts, args.text_tokens)
        tfile = workdir / "texts.json"
        atomic_write_text(tfile, json.dumps(texts))
        for v in ["as-is", *args.reps_variants]:
            key = ("representation pass" + ("" if v == "as-is" else f" ({v})"), "recall", "")
            reps_runs[key] = workdir / f"reps_{v}.pt"
            runs[key] = [sys.executable, str(Path(__file__).resolve()), "--reps-child", str(tfile),
                         "--batch-size", str(args.batch_size), "--device", args.device, "--reps-variant", v,
                         "--reps-save", str(reps_runs[key]), "--models", str(base), *map(str, perturbed)]
    reps_repeats = args.reps_repeats or args.repeats
    for f in [base / "model.safetensors", *(m / "model.safetensors" for m in perturbed)]:
        with open(f, "rb") as fh:  # warm the page cache so no run pays for the first read alone
            while fh.read(1 << 24):
                pass

    # ---- interleaved repeats
    results: dict[tuple, list[dict]] = {k: [] for k in runs}
    reps_detail: dict[tuple, list[dict]] = {k: [] for k in reps_runs}
    for r in range(max(args.repeats, reps_repeats)):
        for key, cmd in runs.items():
            if r >= (reps_repeats if key in reps_runs else args.repeats):
                continue
            if key in out_dir:
                shutil.rmtree(out_dir[key], ignore_errors=True)
            lf = logs / f"{'_'.join(''.join(c if c.isalnum() else '_' for c in k) for k in key if k)}_{r}.log"
            res = measure(cmd, lf, env)
            results[key].append(res)
            log(f"[{r + 1}] {' '.join(k for k in key if k)}: {res['wall_s']:.2f} s, {res['peak_rss_mib']:.0f} MiB")
            if key[1:] == ("recall", "streaming"):
                yml = out_dir[key] / "mergekit.yml"
                if not yml.exists():
                    raise RuntimeError(f"our {key[0]} merge wrote no mergekit.yml")
                shutil.copy2(yml, workdir / f"{key[0]}.mergekit.yml")
            if key in reps_runs:
                reps_detail[key].append(json.loads(lf.read_text().strip().splitlines()[-1]))

    # ---- agreement with mergekit, tensor by tensor (outputs of the last repeat)
    checks: dict = {"mergekit": mergekit_versions(mk_py) if mk_py else None, "per_repeat": {
        " ".join(k for k in key if k): rs for key, rs in results.items()}}
    equal: dict[tuple, tuple[int, int]] = {}
    print()
    for key in runs:
        m, tool, engine = key
        mk_key = (m, "mergekit", "")
        if tool != "recall" or key in reps_runs:
            continue
        if engine == "memory":
            c = compare_outputs(out_dir[(m, "recall", "streaming")], out_dir[key])
            checks[f"{m}: streaming vs memory"] = {k: v for k, v in c.items() if k != "per_tensor"}
            print(f"{m}: ours streaming vs memory: {c['bitwise_equal']}/{c['tensors']} tensors bitwise equal, "
                  f"max abs diff {c['max_abs_diff']:.3g}")
        if mk_key not in runs:
            continue
        c = compare_outputs(out_dir[key], out_dir[mk_key])
        equal[key] = (c["bitwise_equal"], c["tensors"])
        differing = sorted(n for n, v in c["per_tensor"].items() if v != 0)
        check = {k: v for k, v in c.items() if k != "per_tensor"}
        check["differing"] = {n: c["per_tensor"][n] for n in differing}
        print(f"{m} ({engine}) vs mergekit: {c['bitwise_equal']}/{c['tensors']} tensors bitwise equal, max abs diff "
              f"{c['max_abs_diff']:.3g} ({c['worst_tensor']}); only ours: {c['only_in_first']}; only mergekit: "
              f"{c['only_in_second']}; dtype/shape mismatches: {c['dtype_shape_mismatch']}")
        if engine == "streaming" and differing and m == "ties":
            why = explain_ties(base, experts, out_dir[key], out_dir[mk_key], differing, 0.2)
            check["why"] = why
            ties_at = sum(1 for w in why.values() if any(x > 0 for x in w["extra_kept_at_threshold"]))
            zero = sum(1 for w in why.values() if w["zero_mass_cancellations"])
            unexplained = [n for n, w in why.items() if not any(x > 0 for x in w["extra_kept_at_threshold"])
                           and not w["zero_mass_cancellations"]]
            print(f"  {len(differing)} differ: {ties_at} have magnitudes tied at a trim threshold (we keep every "
                  f"tie, mergekit exactly int(0.2 n)), {zero} have entries of zero mass with non-zero values "
                  f"(mergekit elects +, we the majority); unexplained: {unexplained}")
            print(f"  entries differing in all: {sum(w['entries_differing'] for w in why.values())} of "
                  f"{sum(LazyCheckpoint(base).numel(n) for n in differing)} in those tensors")
        if engine == "streaming" and m.startswith("dare"):
            st = dare_stats(base, out_dir[key], out_dir[mk_key])
            check["dare"] = st
            print(f"  random masks: mergekit's RNG is not ours, so no tensor is expected equal; entries changed: ours "
                  f"{st['changed_fraction']['ours']:.4f}, mergekit {st['changed_fraction']['mergekit']:.4f}; "
                  f"merged task vector norm, ours / mergekit: {st['task_vector_norm_ratio']:.4f}")
        if engine == "streaming" and m == "linear":
            names = LazyCheckpoint(out_dir[mk_key]).names()
            f = check_filters(mk_py, workdir / "linear.mergekit.yml", names, table, L, workdir)
            check["filters"] = f
            if "error" in f:
                print(f"  filter check failed: {f['error']}")
            else:
                print(f"  mergekit's filter semantics (evaluate_setting on every tensor name): "
                      f"{f['tensors'] - len(f['mismatched'])}/{f['tensors']} tensors get their layer's weights")
            fam = check_filter_families(mk_py, workdir)
            check["filters_other_families"] = fam
            for family, r in fam.items():
                print(f"  mergekit_config on {family} tensor names: {r['tensors'] - len(r['mismatched'])}/"
                      f"{r['tensors']} get their layer's weights; mismatched: {r['mismatched']}")
        checks[f"{m}: {engine} vs mergekit"] = check
    if len(reps_runs) > 1:
        checks["reps_variants"] = compare_reps({k[0]: v for k, v in reps_runs.items()})
        for key, c in checks["reps_variants"].items():
            print(f"{key} vs as-is: representations max rel. diff {c['max_rel_diff']:.2g}; RECALL weights "
                  f"(rbf, T=1, M_N = last) max abs diff {c['weights_max_abs_diff']:.2g}")

    # ---- the table
    date, where = datetime.date.today().isoformat(), machine()
    rows = []
    for key, rs in results.items():
        m, tool, engine = key
        wall, rss = _median([x["wall_s"] for x in rs]), _median([x["peak_rss_mib"] for x in rs])
        mk = results.get((m, "mergekit", ""))
        ratio = tool == "recall" and mk
        eq = equal.get(key)
        rows.append({"run": " ".join(k for k in key if k), "method": m, "tool": tool, "engine": engine,
                     "n_models": 1 + len(experts) if key not in reps_runs else 1 + len(perturbed),
                     "repeats": len(rs), "wall_s": round(wall, 3), "peak_rss_mib": round(rss, 1),
                     "wall_vs_mergekit": round(wall / _median([x["wall_s"] for x in mk]), 4) if ratio else None,
                     "rss_vs_mergekit": round(rss / _median([x["peak_rss_mib"] for x in mk]), 4) if ratio else None,
                     "tensors_equal": eq[0] if eq else None, "tensors_total": eq[1] if eq else None,
                     "machine": where + (f", {args.threads} thread(s)" if args.threads else ""), "date": date})
    df = pd.DataFrame(rows, columns=COLUMNS).astype({"tensors_equal": "Int64", "tensors_total": "Int64"})
    print(f"\nSmolLM2-135M fp32, {L} blocks, base + {len(experts)} perturbed (noise {args.noise} std); median of "
          f"{args.repeats} interleaved whole-process runs; {where} (load average {os.getloadavg()[0]:.1f} now), "
          f"threads: {args.threads or 'torch default'}")
    show = df.drop(columns=["machine", "date"])
    print(show.to_string(index=False, float_format=lambda x: f"{x:.2f}", na_rep=""))
    print(f"goals: linear <= {GOALS['wall']['linear']}x and TIES <= {GOALS['wall']['ties']}x mergekit's wall time, "
          f"<= {GOALS['rss']}x its peak RSS; representation pass <= {GOALS['reps_s']:.0f} s")
    for key, ds in reps_detail.items():
        d = ds[-1]
        loads = " ".join(f"{m['load_s']:.1f}" for m in d["models"])
        forwards = " ".join(f"{m['reps_s']:.1f}" for m in d["models"])
        print(f"{key[0]} (last repeat): {1 + len(perturbed)} models x {args.texts} texts ({text_src}, "
              f"{d['tokens_per_model'] / args.texts:.0f} tokens each), imports {d['import_s']:.1f} s; per model "
              f"load {loads} s; forward {forwards} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, df.to_csv(index=False))
    atomic_write_text(args.out.with_suffix(".checks.json"), json.dumps(checks, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out} and {args.out.with_suffix('.checks.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
