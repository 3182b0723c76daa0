"""The two merge engines: in memory, and streaming over safetensors shards.

Both validate the inputs, run the method's ``prepare`` once, then call its ``merge_tensor`` for
every parameter in the same order with the same float32 inputs, so their outputs agree bit for
bit. The streaming engine reads one tensor at a time from each input (for element-wise methods,
one chunk of a large tensor at a time) and streams the result into pre-planned output shards:
peak memory is a few chunks, not a model, so models larger than RAM can be merged. Methods that
need a whole tensor but can read it in chunks (TIES, DARE: a method with ``merge_stream(name,
layer, inputs, chunk)``) get the inputs as chunks read on demand (``_FileInputs``, the streaming
twin of ``recall.merge.ties.MemoryInputs``): their peak memory is the merged tensor plus a few
chunks per model, however many models there are. The in-memory engine loads every input first.
The tensor loop runs on one thread: it is memory-bound, and extra threads only wait on each other
(measured in ``benchmarks/merge_speed.py``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..fsutil import atomic_dir
from .base import MergeContext, MergeError, MergeMethod
from .card import MERGE_JSON, write_outputs
from .layers import layer_of, num_layers_of
from .safetensors_io import LazyCheckpoint, ShardWriter, plan_shards, shard_names, write_index

ENGINES = ("streaming", "memory")
DEFAULT_SHARD_BYTES = 2 * 1024**3
CHUNK_ELEMENTS = 1 << 22  # 16 MiB of float32 per input; a multiple of every SIMD width
STREAM_CHUNK = 1 << 18  # merge_stream methods (TIES, DARE): their chunks of 1 MiB per input stay in the CPU cache
OUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = {v: k for k, v in OUT_DTYPES.items()}


def _is_float(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point


def _all_finite(t: torch.Tensor) -> bool:
    """Exact: a finite float32/float64 sum means every element is finite (inf and NaN propagate through
    a sum); only a non-finite sum (an inf/NaN, or an overflow) needs the element-wise check."""
    if not _is_float(t.dtype) or t.numel() == 0:
        return True
    total = t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
    return math.isfinite(float(total)) or bool(torch.isfinite(t).all())


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not _all_finite(t):
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


def is_merge_output(folder: Path) -> bool:
    """Whether ``folder`` is a folder that ``recall merge`` wrote (it holds our ``merge_config.json``)."""
    f = Path(folder) / MERGE_JSON
    try:
        info = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(info, dict) and "recall_version" in info and "method" in info


def check_output(out, inputs, force: bool = False) -> Path:
    """Refuse an output folder that would destroy an input or anything that is not a previous merge: an input
    (model, base, weights table, samples file) or a folder holding one, ``/``, the home folder, the current
    folder or one above it, an unexpanded ``~``, a symbolic link; an existing path unless ``force``, and with
    ``force`` anything but a folder ``recall merge`` wrote."""
    raw = Path(out)
    if str(out).split("/")[0].startswith("~"):
        raise MergeError(f"--out {out}: '~' is not expanded here; write the path out (e.g. $HOME/merged)")
    if raw.is_symlink():
        raise MergeError(f"--out {out} is a symbolic link; pass the folder it points to, or a new folder")
    target, cwd = raw.resolve(), Path.cwd().resolve()
    special = {Path(target.anchor): "the filesystem root", Path(os.path.expanduser("~")).resolve(): "your home folder",
               cwd: "the current folder"}
    what = special.get(target) or ("a folder above the current one" if target in cwd.parents else None)
    if what:
        raise MergeError(f"--out {out} is {what}; name a new folder for the merge (e.g. --out merged/)")
    for p in inputs:
        if p is None:
            continue
        q = Path(p).resolve()
        if q == target or target in q.parents or (raw.exists() and Path(p).exists() and os.path.samefile(raw, p)):
            raise MergeError(f"--out {out} {'is' if q == target else 'contains'} the input {p}; write the merge "
                             f"to a new folder")
    if raw.exists():
        if not force:
            raise MergeError(f"output folder {out} already exists; choose another path or pass --force to "
                             f"replace it")
        if not (raw.is_dir() and is_merge_output(raw)):
            raise MergeError(f"--force replaces only a folder that recall merge wrote (one with {MERGE_JSON}); "
                             f"{out} is not one and is left alone: choose another --out")
    return target


def check_device(device: str) -> None:
    """A device this torch build has: cpu, cuda[:i] with CUDA, mps with Metal."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise MergeError(f"--device {device!r} is not a device name ({e}); use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index or 0) >= n:
            raise MergeError(f"--device {device}: this torch build ({torch.__version__}) sees {n} CUDA device(s); "
                             f"use --device cpu")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise MergeError(f"--device {device}: this torch build has no MPS device; use --device cpu")
    elif dev.type != "cpu":
        raise MergeError(f"--device {device}: unsupported device type {dev.type!r}; use cpu, cuda, cuda:N or mps")


def output_dtype(dtype) -> torch.dtype | None:
    """``None`` (keep each tensor's dtype) or the float dtype named ``dtype``."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in OUT_DTYPES.values():
        return dtype
    if dtype not in OUT_DTYPES:
        raise MergeError(f"--dtype must be one of {', '.join(OUT_DTYPES)}, got {dtype!r}")
    return OUT_DTYPES[dtype]


@dataclass
class _Inputs:
    """The checked inputs of a merge (``_setup``)."""

    models: list[Path]
    base: Path | None
    base_ck: LazyCheckpoint | None
    cks: list[LazyCheckpoint]
    names: list[str]  # the tensors to write, in order
    layer: dict[str, int]
    ctx: MergeContext
    specs: list[tuple[str, torch.dtype, tuple[int, ...]]]  # (name, output dtype, shape) per tensor
    out_dtype: torch.dtype | None


def _setup(method: MergeMethod, models, out, base, samples, engine, force, device, batch_size, max_shard_bytes,
           seed=0, progress=True, dtype=None, check_out=True) -> _Inputs:
    """Every check of a merge, before any work (shared by ``plan_merge`` and ``merge_models``)."""
    if engine not in ENGINES:
        raise MergeError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    for key, v in (("batch_size", batch_size), ("max_shard_bytes", max_shard_bytes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise MergeError(f"{key} must be an integer >= 1, got {v!r}")
    check_device(device)
    out_dtype = output_dtype(dtype)
    models = [Path(m) for m in models]
    base = Path(base) if base is not None else None
    if check_out:
        check_output(out, [base, *models, *method.input_files()], force)
    base_ck, cks, refs = _open_inputs(base, models)
    names = check_compatible(refs)
    _check_method_inputs(method, base, samples)
    L = num_layers_of(cks[-1].config)
    layer = {n: layer_of(n, L) for n in names}
    ctx = MergeContext(base=str(base) if base else None, models=[str(m) for m in models], samples=samples,
                       num_layers=L, device=device, batch_size=batch_size, seed=seed, progress=progress)
    method.validate(ctx)
    ref = cks[-1]
    specs = [(n, _out_dtype(ref.entries[n].dtype, out_dtype), ref.entries[n].shape) for n in names]
    return _Inputs(models, base, base_ck, cks, names, layer, ctx, specs, out_dtype)


def _out_dtype(dtype: torch.dtype, out_dtype: torch.dtype | None) -> torch.dtype:
    return out_dtype if out_dtype is not None and _is_float(dtype) else dtype


def plan_merge(method: MergeMethod, models: list, base=None, samples=None, out=None, force: bool = False,
               engine: str = "streaming", device: str = "cpu", batch_size: int = 8,
               max_shard_bytes: int = DEFAULT_SHARD_BYTES, dtype=None) -> dict:
    """What a merge would do, without doing it (the CLI's --dry-run): every check ``merge_models`` makes
    before any work (with ``out``, the output folder's too)."""
    x = _setup(method, models, out, base, samples, engine, force, device, batch_size, max_shard_bytes, dtype=dtype,
               check_out=out is not None)
    plan = {"method": method.name, "options": method.options(), "base": str(x.base) if x.base else None,
            "models": [str(m) for m in x.models], "newest_model": str(x.models[-1]),
            "architecture": x.cks[-1].config.get("architectures"), "blocks": x.ctx.num_layers,
            "layers": len(set(x.layer.values())), "tensors": len(x.names), "samples": len(samples) if samples else 0,
            "bytes": _nbytes(x.specs)}
    if x.out_dtype is not None:
        plan["dtype"] = DTYPE_NAMES[x.out_dtype]
    return plan


def _nbytes(specs) -> int:
    return sum(torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size() for _, dt, shape in specs)


def _check_method_inputs(method: MergeMethod, base, samples) -> None:
    if method.needs_base and base is None:
        raise MergeError(f"method {method.name!r} needs the base model: pass --base DIR")
    if method.needs_samples and not samples:
        raise MergeError(f"method {method.name!r} needs samples of the new task: pass --samples FILE or --task NAME")


def merge_models(method: MergeMethod, models: list, out, base=None, samples=None, engine: str = "streaming",
                 force: bool = False, seed: int = 0, progress: bool = True, device: str = "cpu",
                 batch_size: int = 8, max_shard_bytes: int = DEFAULT_SHARD_BYTES, dtype=None) -> Path:
    """Merge ``models`` (oldest first; the last is the newest, M_N) with ``method`` into folder ``out``.

    Everything is checked before any work (``check_output``: ``out`` is never an input, and ``force`` only
    replaces a previous merge). ``dtype`` (float32, bfloat16, float16) is the dtype of the merged float
    tensors; default: the newest model's. ``out`` is written atomically: on any error nothing is left
    behind. Returns ``out``.
    """
    out = Path(out)
    x = _setup(method, models, out, base, samples, engine, force, device, batch_size, max_shard_bytes, seed,
               progress, dtype)
    models, base, base_ck, cks, names, layer, specs, out_dtype = (x.models, x.base, x.base_ck, x.cks, x.names,
                                                                  x.layer, x.specs, x.out_dtype)
    L = x.ctx.num_layers
    method.prepare(x.ctx)

    if engine == "memory":
        base_sd = base_ck.load_all() if base_ck is not None else None
        sds = [ck.load_all() for ck in cks]
        get_base = (lambda n: base_sd[n]) if base_sd is not None else None
        getters = [(lambda n, sd=sd: sd[n]) for sd in sds]
    else:
        get_base = base_ck.get if base_ck is not None else None
        getters = [ck.get for ck in cks]

    ref = cks[-1]
    shards = plan_shards(specs, max_shard_bytes)
    chunked = engine == "streaming" and method.elementwise
    streamed = engine == "streaming" and hasattr(method, "merge_stream")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with atomic_dir(out, force=force) as tmp:
            bar = tqdm(total=len(names), desc=f"merge ({method.name}, {engine})", unit="tensor",
                       disable=not progress)
            for fname, idx in zip(shard_names(len(shards)), shards):
                writer = ShardWriter(tmp / fname, [specs[i] for i in idx])
                try:
                    for i in idx:
                        name = names[i]
                        is_float = _is_float(ref.entries[name].dtype)
                        if chunked and ref.numel(name) > CHUNK_ELEMENTS and is_float:
                            _merge_chunked(method, name, layer[name], base_ck, cks, models, base, writer,
                                           out_dtype)
                        elif streamed and is_float:
                            shape = ref.entries[name].shape
                            merged = method.merge_stream(name, layer[name], _FileInputs(name, base_ck, cks, models,
                                                                                        base), STREAM_CHUNK)
                            merged = merged.reshape(shape) if merged.numel() == math.prod(shape) else merged
                            writer.write(name, _finish(method, name, merged, shape,
                                                       out_dtype or ref.entries[name].dtype))
                        else:
                            writer.write(name, _merge_one(method, name, layer[name], get_base, getters, models,
                                                          base, out_dtype))
                        bar.update()
                except BaseException:
                    writer.abort()
                    raise
                writer.close()
            bar.close()
            write_index(tmp, specs, shards, _nbytes(specs))
            write_outputs(tmp, method, models=models, base=base, ref_folder=models[-1], num_layers=L,
                          samples=samples, engine=engine, names=names,
                          dtype=DTYPE_NAMES[out_dtype] if out_dtype is not None else None)
    finally:
        torch.set_num_threads(threads)
    return out


def _merge_chunked(method: MergeMethod, name: str, layer: int, base_ck: LazyCheckpoint | None,
                   cks: list[LazyCheckpoint], models: list[Path], base: Path | None, writer: ShardWriter,
                   out_dtype: torch.dtype | None = None) -> None:
    """An element-wise method on one large tensor, ``CHUNK_ELEMENTS`` elements at a time."""
    total = cks[-1].numel(name)
    for start in range(0, total, CHUNK_ELEMENTS):
        n = min(CHUNK_ELEMENTS, total - start)
        get_base = (lambda _n, s=start, c=n: base_ck.get_flat(name, s, c)) if base_ck is not None else None
        getters = [(lambda _n, ck=ck, s=start, c=n: ck.get_flat(name, s, c)) for ck in cks]
        writer.write_part(name, _merge_one(method, name, layer, get_base, getters, models, base, out_dtype))
    writer.end_tensor(name)


class _FileInputs:
    """One float parameter of every input, read from the safetensors files as flat float32 chunks on
    demand (for ``merge_stream`` methods); each chunk is checked to be finite the first time it is read."""

    def __init__(self, name: str, base_ck: LazyCheckpoint | None, cks: list[LazyCheckpoint], models: list[Path],
                 base: Path | None):
        self.name, self.n, self.numel = name, len(cks), cks[-1].numel(name)
        self._cks, self._base_ck, self._labels = cks, base_ck, [f"{m}" for m in models]
        self._base_label = f"the base {base}"
        self._checked: set[tuple[int, int, int]] = set()
        self._last_base: tuple[int, int, torch.Tensor] | None = None  # methods read one base chunk per model

    @property
    def has_base(self) -> bool:
        return self._base_ck is not None

    def _read(self, ck: LazyCheckpoint, key: int, label: str, start: int, count: int) -> torch.Tensor:
        t = ck.get_flat(self.name, start, count)
        if (key, start, count) not in self._checked:
            _check_finite(t, f"tensor {self.name} of {label}")
            self._checked.add((key, start, count))
        return t.to(torch.float32)

    def base(self, start: int, count: int) -> torch.Tensor:
        if self._last_base is None or self._last_base[:2] != (start, count):
            self._last_base = (start, count, self._read(self._base_ck, -1, self._base_label, start, count))
        return self._last_base[2]

    def model(self, i: int, start: int, count: int) -> torch.Tensor:
        return self._read(self._cks[i], i, self._labels[i], start, count)


def _merge_one(method: MergeMethod, name: str, layer: int, get_base: Callable | None, getters: list[Callable],
               models: list[Path], base: Path | None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    ts = [g(name) for g in getters]
    if not _is_float(ts[-1].dtype):  # integer / bool buffers: copied from the newest model
        return ts[-1]
    out_dtype = out_dtype or ts[-1].dtype
    b = get_base(name) if get_base is not None else None
    for t, m in zip(ts, models):
        _check_finite(t, f"tensor {name} of {m}")
    if b is not None:
        _check_finite(b, f"tensor {name} of the base {base}")
        b = b.to(torch.float32)
    merged = method.merge_tensor(name, layer, b, [t.to(torch.float32) for t in ts])
    return _finish(method, name, merged, ts[-1].shape, out_dtype)


def _finish(method: MergeMethod, name: str, merged: torch.Tensor, shape, out_dtype: torch.dtype) -> torch.Tensor:
    """The merged float32 tensor checked (shape, finite) and cast to the output dtype."""
    if tuple(merged.shape) != tuple(shape):
        raise MergeError(f"method {method.name} returned shape {list(merged.shape)} for {name}, "
                         f"expected {list(shape)}")
    written = merged.to(out_dtype)
    if not _all_finite(written):  # checked on what is written: a finite float32 result may overflow the cast
        if not _all_finite(merged):
            raise MergeError(f"merged tensor {name} contains NaN or Inf (method {method.name} with its options "
                             f"{method.options()}); check the inputs and the options")
        raise MergeError(f"merged tensor {name} overflows {DTYPE_NAMES.get(out_dtype, out_dtype)} (largest "
                         f"magnitude {float(merged.abs().max()):.4g} > {torch.finfo(out_dtype).max:.4g}); "
                         f"pass --dtype float32 to write the merge in float32")
    return written


__all__ = ["merge_models", "plan_merge", "check_compatible", "check_output", "check_device", "ENGINES"]
