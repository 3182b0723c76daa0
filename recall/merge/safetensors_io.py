"""Minimal, pickle-free safetensors reading and writing, one tensor at a time.

The reader parses the header and reads each tensor with a plain seek + read (no mmap), so
reading a model tensor by tensor keeps only that tensor in memory. The writer computes the
header of a shard up front (names, dtypes and shapes are known before merging) and then streams
tensor bytes straight to disk, so a merge never holds the output model in memory.
Format: https://github.com/huggingface/safetensors (8-byte little-endian header size, JSON
header with dtype/shape/data_offsets, raw little-endian data).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch

from ..assets import AssetError, read_config
from .base import MergeError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
CODES = {v: k for k, v in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's bound


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def _no_duplicates(pairs: list) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors of one safetensors file, after checking its header against the format: a JSON object
    of at most ``MAX_HEADER_BYTES``; each tensor a known dtype, a shape of non-negative integers and
    ``data_offsets`` whose span is prod(shape) x the dtype's size; spans sorted without gaps or overlaps,
    covering the data exactly. Anything else is one ``MergeError`` naming the file (and the tensor)."""
    def bad(what: str) -> MergeError:
        return MergeError(f"{path} is not a valid safetensors file: {what}; re-save or re-download it")

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise bad(f"{len(head)} bytes, shorter than the 8-byte header size")
            (n,) = struct.unpack("<Q", head)
            if not 2 <= n <= MAX_HEADER_BYTES:
                raise bad(f"header size {n} out of range (2 to {MAX_HEADER_BYTES} bytes)")
            if 8 + n > size:
                raise MergeError(f"{path} is truncated: its header needs {n} bytes but the file holds {size - 8} "
                                 f"after the size field; re-save or re-download it")
            raw = f.read(n)
    except OSError as e:
        raise MergeError(f"{path} cannot be read ({e.strerror or e})") from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad(f"header is a JSON {type(header).__name__}, not an object")
    meta = {} if header.get("__metadata__") is None else header["__metadata__"]
    if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise bad("__metadata__ must map names to strings")
    data_start, data_size = 8 + n, size - 8 - n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise bad(f"tensor {name}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPES:
            raise bad(f"tensor {name}: dtype {dtype!r} is missing or not supported ({', '.join(DTYPES)})")
        if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
            raise bad(f"tensor {name}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
                and offsets[0] <= offsets[1]):
            raise bad(f"tensor {name}: data_offsets {offsets!r} is not [begin, end] with 0 <= begin <= end")
        need = math.prod(shape) * torch.empty((), dtype=DTYPES[dtype]).element_size()
        if offsets[1] - offsets[0] != need:
            raise bad(f"tensor {name}: shape {shape} of {dtype} needs {need} bytes but data_offsets {offsets} "
                      f"span {offsets[1] - offsets[0]}")
        out[name] = TensorEntry(path, DTYPES[dtype], tuple(shape), data_start + offsets[0], data_start + offsets[1])
    pos = 0
    for name, e in sorted(out.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if e.start - data_start != pos:
            raise bad(f"tensor {name} starts at data byte {e.start - data_start}, but the tensors before it end at "
                      f"{pos} (offsets must be sorted, without gaps or overlaps)")
        pos = e.end - data_start
    if pos > data_size:
        last = max(out, key=lambda k: out[k].end)
        raise MergeError(f"{path} is truncated: tensor {last} ends at data byte {pos} but the file holds "
                         f"{data_size}; re-save or re-download it")
    if pos != data_size:
        raise bad(f"the tensors cover {pos} bytes of data but the file holds {data_size}")
    return out


def _shard_file(folder: Path, index: Path, tensor, fname) -> str:
    """A shard named by the index, refused unless it is a relative path inside ``folder`` (no ``..``)."""
    p = PurePosixPath(fname) if isinstance(fname, str) else None
    if (not isinstance(tensor, str) or p is None or not fname or p.is_absolute() or ".." in p.parts
            or "\\" in fname or "\0" in fname or PureWindowsPath(fname).drive):
        raise MergeError(f"{index}: weight_map entry {tensor!r} -> {fname!r} is not a file name inside {folder}; "
                         f"shards must be files of the model folder")
    return fname


class LazyCheckpoint:
    """Tensor names, dtypes and shapes of a Hugging Face folder; tensors read on demand."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MergeError(f"model folder {self.folder} does not exist")
        index, single = self.folder / INDEX_NAME, self.folder / SINGLE_NAME
        weight_map = None
        if index.exists():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise MergeError(f"{index} is not a valid safetensors index ({e})") from None
            if not isinstance(weight_map, dict):
                raise MergeError(f"{index}: weight_map is not an object of tensor name -> shard file")
            files = sorted({_shard_file(self.folder, index, t, f) for t, f in weight_map.items()})
        elif single.exists():
            files = [SINGLE_NAME]
        else:
            pickled = [p.name for p in self.folder.glob("*.bin")] + [p.name for p in self.folder.glob("*.pt")]
            hint = (f" It holds {', '.join(pickled)}: pickled weights are never loaded; convert them with "
                    f"`AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir)`." if pickled else "")
            raise MergeError(f"{self.folder} has no model.safetensors or {INDEX_NAME}.{hint}")
        self.entries: dict[str, TensorEntry] = {}
        for fname in files:
            p = self.folder / fname
            if not p.is_file():
                raise MergeError(f"{self.folder}: shard {fname} named in the index is missing")
            for name, e in _read_header(p).items():
                if name in self.entries:
                    raise MergeError(f"{self.folder}: tensor {name} is in two shards, {self.entries[name].file.name} "
                                     f"and {fname}")
                if weight_map is None or weight_map.get(name) == fname:
                    self.entries[name] = e
        if weight_map is not None:
            lost = [t for t in weight_map if t not in self.entries]
            if lost:
                raise MergeError(f"{index}: tensor {lost[0]} is mapped to shard {weight_map[lost[0]]}, which does "
                                 f"not hold it")
        try:
            self.config = read_config(self.folder)
        except AssetError as e:
            raise MergeError(str(e)) from None

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> torch.Tensor:
        e = self.entries[name]
        buf = bytearray(e.nbytes)
        with open(e.file, "rb") as f:
            f.seek(e.start)
            if f.readinto(buf) != e.nbytes:
                raise MergeError(f"{e.file}: short read for tensor {name}; the file is damaged")
        if e.nbytes == 0:
            return torch.empty(e.shape, dtype=e.dtype)
        return torch.frombuffer(buf, dtype=e.dtype).reshape(e.shape)

    def get_flat(self, name: str, start: int, count: int) -> torch.Tensor:
        """Elements ``start .. start+count`` of the flattened tensor ``name`` (one read of just those bytes)."""
        e = self.entries[name]
        size = torch.empty((), dtype=e.dtype).element_size()
        buf = bytearray(count * size)
        with open(e.file, "rb") as f:
            f.seek(e.start + start * size)
            if f.readinto(buf) != len(buf):
                raise MergeError(f"{e.file}: short read for tensor {name}; the file is damaged")
        return torch.frombuffer(buf, dtype=e.dtype) if count else torch.empty(0, dtype=e.dtype)

    def numel(self, name: str) -> int:
        return torch.Size(self.entries[name].shape).numel()

    def load_all(self) -> dict[str, torch.Tensor]:
        return {n: self.get(n) for n in self.names()}


def plan_shards(specs: list[tuple[str, torch.dtype, tuple[int, ...]]], max_shard_bytes: int) -> list[list[int]]:
    """Group tensor specs (in order) into shards of at most ``max_shard_bytes`` (a larger tensor gets its own)."""
    shards: list[list[int]] = [[]]
    size = 0
    for i, (_, dtype, shape) in enumerate(specs):
        n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += n
    return shards


class ShardWriter:
    """Writes one safetensors file whose header is fixed up front; tensors are appended in order."""

    def __init__(self, path: Path, specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        header: dict = {"__metadata__": {"format": "pt", **(metadata or {})}}
        offset = 0
        self.expected: list[tuple[str, torch.dtype, tuple[int, ...], int]] = []
        for name, dtype, shape in specs:
            n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
            self.expected.append((name, dtype, tuple(shape), n))
            offset += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(raw)) + raw)
        self.i = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        exp_name, dtype, shape, n = self.expected[self.i]
        if name != exp_name or tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise RuntimeError(f"shard writer expected {exp_name} {dtype} {shape}, got {name} "
                               f"{tensor.dtype} {tuple(tensor.shape)}")
        self.write_part(name, tensor.reshape(-1))
        self.end_tensor(name)

    def write_part(self, name: str, flat: torch.Tensor) -> None:
        """Append the next elements of the current tensor (chunked writes); finish with ``end_tensor``."""
        exp_name, dtype, _, n = self.expected[self.i]
        if name != exp_name or flat.dtype != dtype:
            raise RuntimeError(f"shard writer expected {exp_name} {dtype}, got {name} {flat.dtype}")
        if flat.numel():
            t = flat.detach().cpu().contiguous().view(torch.uint8)
            self.f.write(memoryview(t.numpy()))
        self._written = getattr(self, "_written", 0) + flat.numel() * flat.element_size()

    def end_tensor(self, name: str) -> None:
        exp_name, _, _, n = self.expected[self.i]
        if getattr(self, "_written", 0) != n:
            raise RuntimeError(f"shard writer: tensor {exp_name} got {getattr(self, '_written', 0)} of {n} bytes")
        self._written = 0
        self.i += 1

    def abort(self) -> None:
        """Close the file after a failure (the caller removes it)."""
        self.f.close()

    def close(self) -> None:
        if self.i != len(self.expected):
            raise RuntimeError(f"shard closed after {self.i} of {len(self.expected)} tensors")
        self.f.close()


def shard_names(n: int) -> list[str]:
    if n == 1:
        return [SINGLE_NAME]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def write_index(folder: Path, specs, shards: list[list[int]], total_bytes: int) -> None:
    names = shard_names(len(shards))
    if len(shards) == 1:
        return
    weight_map = {specs[i][0]: names[s] for s, idx in enumerate(shards) for i in idx}
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total_bytes},
                                                 "weight_map": weight_map}, indent=2) + "\n")
