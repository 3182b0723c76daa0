"""The two merge engines: in memory, and streaming over safetensors shards.

Both validate the inputs, run the method's ``prepare`` once, then call its ``merge_tensor`` for
every parameter in the same order with the same float32 inputs, so their outputs agree bit for
bit. The streaming engine reads one tensor at a time from each input (for element-wise methods,
one chunk of a large tensor at a time) and streams the result into pre-planned output shards:
peak memory is a few chunks, not a model, so models larger than RAM can be merged. The in-memory
engine loads every input first. The tensor loop runs on one thread: it is memory-bound, and extra threads only
wait on each other (measured in ``benchmarks/merge_speed.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..fsutil import atomic_dir
from .base import MergeContext, MergeError, MergeMethod
from .card import write_outputs
from .layers import layer_of, num_layers_of
from .safetensors_io import LazyCheckpoint, ShardWriter, plan_shards, shard_names, write_index

ENGINES = ("streaming", "memory")
DEFAULT_SHARD_BYTES = 2 * 1024**3
CHUNK_ELEMENTS = 1 << 22  # 16 MiB of float32 per input; a multiple of every SIMD width


def _is_float(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point


def _check_finite(t: torch.Tensor, what: str) -> None:
    """Exact: a finite float32/float64 sum means every element is finite (inf and NaN propagate through
    a sum); only a non-finite sum (an inf/NaN, or an overflow) needs the element-wise check."""
    if not _is_float(t.dtype) or t.numel() == 0:
        return
    total = t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
    if math.isfinite(float(total)):
        return
    if not bool(torch.isfinite(t).all()):
        raise MergeError(f"{what} contains NaN or Inf; fix or re-train that model before merging")


def check_compatible(refs: dict[str, LazyCheckpoint]) -> list[str]:
    """Same architecture, tensor names and shapes across all inputs; returns the tensor names to write."""
    items = list(refs.items())
    label0, ck0 = items[-1]
    arch0 = (ck0.config.get("model_type"), tuple(ck0.config.get("architectures") or ()))
    for label, ck in items:
        arch = (ck.config.get("model_type"), tuple(ck.config.get("architectures") or ()))
        if arch != arch0:
            raise MergeError(f"different architectures: {label} is {arch[0]} {list(arch[1])}, {label0} is "
                             f"{arch0[0]} {list(arch0[1])}; only models fine-tuned from one base can be merged")
        missing = set(ck0.entries) ^ set(ck.entries)
        if missing:
            raise MergeError(f"{label} and {label0} hold different tensors (e.g. {sorted(missing)[:3]}); "
                             f"merge full checkpoints of one architecture (merge LoRA adapters into the weights first)")
        for name, e in ck.entries.items():
            e0 = ck0.entries[name]
            if e.shape != e0.shape:
                vocab_tensor = "embed" in name or "wte" in name or "lm_head" in name
                if vocab_tensor and e.shape[1:] == e0.shape[1:]:
                    raise MergeError(f"vocabulary mismatch: {name} is {list(e.shape)} in {label} but "
                                     f"{list(e0.shape)} in {label0}; use models with the same tokenizer "
                                     f"(or resize their embeddings to one vocabulary first)")
                raise MergeError(f"shape mismatch for {name}: {list(e.shape)} in {label} vs {list(e0.shape)} in "
                                 f"{label0}; the models do not come from one base")
    names = ck0.names()
    tied = ck0.config.get("tie_word_embeddings", False) or ck0.config.get("text_config", {}).get(
        "tie_word_embeddings", False)
    if tied and "lm_head.weight" in names and any(n.endswith("embed_tokens.weight") for n in names):
        names = [n for n in names if n != "lm_head.weight"]  # tied: merged once, as the embedding
    return names


def _open_inputs(base, models) -> tuple[LazyCheckpoint | None, list[LazyCheckpoint], dict[str, LazyCheckpoint]]:
    if not models:
        raise MergeError("no models to merge: pass --models DIR [DIR ...]")
    base_ck = LazyCheckpoint(base) if base is not None else None
    cks = [LazyCheckpoint(m) for m in models]
    refs = {}
    if base_ck is not None:
        refs[f"base ({base})"] = base_ck
    for m, ck in zip(models, cks):
        refs[f"model {m}"] = ck
    return base_ck, cks, refs


def plan_merge(method: MergeMethod, models: list, base=None, samples=None) -> dict:
    """What a merge would do, without doing it (the CLI's --dry-run)."""
    base_ck, cks, refs = _open_inputs(base, models)
    names = check_compatible(refs)
    _check_method_inputs(method, base, samples)
    L = num_layers_of(cks[-1].config)
    layers = sorted({layer_of(n, L) for n in names})
    return {"method": method.name, "options": method.options(), "base": str(base) if base else None,
            "models": [str(m) for m in models], "newest_model": str(models[-1]),
            "architecture": cks[-1].config.get("architectures"), "blocks": L, "layers": len(layers),
            "tensors": len(names), "samples": len(samples) if samples else 0,
            "bytes": sum(cks[-1].entries[n].nbytes for n in names)}


def _check_method_inputs(method: MergeMethod, base, samples) -> None:
    if method.needs_base and base is None:
        raise MergeError(f"method {method.name!r} needs the base model: pass --base DIR")
    if method.needs_samples and not samples:
        raise MergeError(f"method {method.name!r} needs samples of the new task: pass --samples FILE or --task NAME")


def merge_models(method: MergeMethod, models: list, out, base=None, samples=None, engine: str = "streaming",
                 force: bool = False, seed: int = 0, progress: bool = True, device: str = "cpu",
                 batch_size: int = 8, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Merge ``models`` (oldest first; the last is the newest, M_N) with ``method`` into folder ``out``.

    ``out`` is written atomically: on any error nothing is left behind. Returns ``out``.
    """
    if engine not in ENGINES:
        raise MergeError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    out = Path(out)
    if out.exists() and not force:
        raise MergeError(f"output folder {out} already exists; choose another path or pass --force to replace it")
    models = [Path(m) for m in models]
    base = Path(base) if base is not None else None
    base_ck, cks, refs = _open_inputs(base, models)
    names = check_compatible(refs)
    _check_method_inputs(method, base, samples)
    L = num_layers_of(cks[-1].config)
    layer = {n: layer_of(n, L) for n in names}
    ctx = MergeContext(base=str(base) if base else None, models=[str(m) for m in models], samples=samples,
                       num_layers=L, device=device, batch_size=batch_size, seed=seed, progress=progress)
    method.prepare(ctx)

    if engine == "memory":
        base_sd = base_ck.load_all() if base_ck is not None else None
        sds = [ck.load_all() for ck in cks]
        get_base = (lambda n: base_sd[n]) if base_sd is not None else None
        getters = [(lambda n, sd=sd: sd[n]) for sd in sds]
    else:
        get_base = base_ck.get if base_ck is not None else None
        getters = [ck.get for ck in cks]

    ref = cks[-1]
    specs = [(n, ref.entries[n].dtype, ref.entries[n].shape) for n in names]
    shards = plan_shards(specs, max_shard_bytes)
    chunked = engine == "streaming" and method.elementwise
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with atomic_dir(out, force=force) as tmp:
            bar = tqdm(total=len(names), desc=f"merge ({method.name}, {engine})", unit="tensor",
                       disable=not progress)
            for fname, idx in zip(shard_names(len(shards)), shards):
                writer = ShardWriter(tmp / fname, [specs[i] for i in idx])
                for i in idx:
                    name = names[i]
                    if chunked and ref.numel(name) > CHUNK_ELEMENTS and _is_float(ref.entries[name].dtype):
                        _merge_chunked(method, name, layer[name], base_ck, cks, models, base, writer)
                    else:
                        writer.write(name, _merge_one(method, name, layer[name], get_base, getters, models, base))
                    bar.update()
                writer.close()
            bar.close()
            write_index(tmp, specs, shards, sum(ref.entries[n].nbytes for n in names))
            write_outputs(tmp, method, models=models, base=base, ref_folder=models[-1], num_layers=L,
                          samples=samples, engine=engine, names=names)
    finally:
        torch.set_num_threads(threads)
    return out


def _merge_chunked(method: MergeMethod, name: str, layer: int, base_ck: LazyCheckpoint | None,
                   cks: list[LazyCheckpoint], models: list[Path], base: Path | None, writer: ShardWriter) -> None:
    """An element-wise method on one large tensor, ``CHUNK_ELEMENTS`` elements at a time."""
    total = cks[-1].numel(name)
    for start in range(0, total, CHUNK_ELEMENTS):
        n = min(CHUNK_ELEMENTS, total - start)
        get_base = (lambda _n, s=start, c=n: base_ck.get_flat(name, s, c)) if base_ck is not None else None
        getters = [(lambda _n, ck=ck, s=start, c=n: ck.get_flat(name, s, c)) for ck in cks]
        writer.write_part(name, _merge_one(method, name, layer, get_base, getters, models, base))
    writer.end_tensor(name)


def _merge_one(method: MergeMethod, name: str, layer: int, get_base: Callable | None, getters: list[Callable],
               models: list[Path], base: Path | None) -> torch.Tensor:
    ts = [g(name) for g in getters]
    out_dtype = ts[-1].dtype
    if not _is_float(out_dtype):  # integer / bool buffers: copied from the newest model
        return ts[-1]
    b = get_base(name) if get_base is not None else None
    for t, m in zip(ts, models):
        _check_finite(t, f"tensor {name} of {m}")
    if b is not None:
        _check_finite(b, f"tensor {name} of the base {base}")
        b = b.to(torch.float32)
    merged = method.merge_tensor(name, layer, b, [t.to(torch.float32) for t in ts])
    if tuple(merged.shape) != tuple(ts[-1].shape):
        raise MergeError(f"method {method.name} returned shape {list(merged.shape)} for {name}, "
                         f"expected {list(ts[-1].shape)}")
    _check_finite(merged, f"merged tensor {name}")
    return merged.to(out_dtype)


__all__ = ["merge_models", "plan_merge", "check_compatible", "ENGINES"]
