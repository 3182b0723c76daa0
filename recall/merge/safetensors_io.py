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
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import MergeError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
CODES = {v: k for k, v in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


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


def _read_header(path: Path) -> dict[str, TensorEntry]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                raise ValueError("header size out of range")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as e:
        raise MergeError(f"{path} is not a readable safetensors file ({e}); re-save or re-download it") from None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = DTYPES[info["dtype"]]
            a, b = info["data_offsets"]
        except KeyError as e:
            raise MergeError(f"{path}: tensor {name} has an unsupported or missing field {e}") from None
        if 8 + n + b > size:
            raise MergeError(f"{path} is truncated: tensor {name} ends past the end of the file; re-save it")
        out[name] = TensorEntry(path, dtype, tuple(info["shape"]), 8 + n + a, 8 + n + b)
    return out


class LazyCheckpoint:
    """Tensor names, dtypes and shapes of a Hugging Face folder; tensors read on demand."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MergeError(f"model folder {self.folder} does not exist")
        index, single = self.folder / INDEX_NAME, self.folder / SINGLE_NAME
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise MergeError(f"{index} is not a valid safetensors index ({e})") from None
            files = sorted(set(weight_map.values()))
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
            if not p.exists():
                raise MergeError(f"{self.folder}: shard {fname} named in the index is missing")
            self.entries.update(_read_header(p))
        cfg = self.folder / "config.json"
        self.config = json.loads(cfg.read_text()) if cfg.exists() else {}

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
