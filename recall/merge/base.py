"""What every merge method is: options, an optional preparation pass, and a per-tensor rule.

A method sees one parameter at a time (its name, its RECALL layer index, the base model's
tensor and each model's tensor, all float32), so the same method runs in memory or streaming
over safetensors shards without ever holding a whole model. Methods that need the models
themselves (RECALL's representation pass, LM-Cocktail's losses) do that in ``prepare``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..samples import Sample


class MergeError(ValueError):
    """Bad input to a merge: the message names the problem and the fix."""


@dataclass
class MergeContext:
    """Everything a method's ``prepare`` may look at.

    ``models`` are the models to merge, oldest first: the last one is the newly fine-tuned model
    M_N. ``base`` is the shared pre-trained model (required by task-vector methods). ``samples``
    are candidate samples of the new task (``None`` for data-free methods). ``num_layers`` is the
    number of transformer blocks L; layer indices run over 0..L (0 = embeddings).
    """

    base: str | None
    models: list[str]
    samples: list[Sample] | None = None
    num_layers: int = 0
    device: str = "cpu"
    batch_size: int = 8
    seed: int = 0
    progress: bool = True


@dataclass
class MergeMethod(ABC):
    """Base class. Subclasses are dataclasses whose fields are the method's options (with the
    defaults of its paper), validated in ``__post_init__``, and registered with
    ``@register("name")`` from ``recall.merge.registry``."""

    name: ClassVar[str] = ""
    needs_base: ClassVar[bool] = False
    needs_samples: ClassVar[bool] = False
    reference: ClassVar[str] = ""
    # True when merge_tensor acts element by element (no dependence on the tensor's shape or on other
    # elements): the streaming engine then merges large tensors in chunks.
    elementwise: ClassVar[bool] = False

    def prepare(self, ctx: MergeContext) -> None:  # noqa: B027 - optional hook
        """Compute whatever the per-tensor rule needs (weights, losses). Default: nothing."""

    @abstractmethod
    def merge_tensor(self, name: str, layer: int, base: torch.Tensor | None,
                     tensors: list[torch.Tensor]) -> torch.Tensor:
        """Merged float32 tensor for parameter ``name`` of layer ``layer`` (0..L).

        ``tensors[i]`` is model i's float32 tensor (same order as ``MergeContext.models``), ``base``
        the base model's or ``None`` when no base was given. Must not modify its inputs.
        """

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}

    def report(self) -> dict[str, Any]:
        """Extra facts for the model card: the merge weights as a ``Table`` under ``"weights"``, other
        tables (``Table`` or pandas DataFrame), losses, selected samples. Default: none."""
        return {}


@dataclass(frozen=True)
class Table:
    """A small labelled table (``rows[i]`` belongs to ``index[i]``) that needs no pandas.

    Merges write their weights table with it: importing pandas alone takes about 0.2 s, a tenth of a
    whole layer-wise merge of a 135M model. ``to_frame()`` gives the pandas DataFrame; the
    CSV is the one ``DataFrame.to_csv`` writes (index column first, floats in shortest round-trip form).
    """

    columns: tuple[str, ...]
    rows: np.ndarray
    index: tuple = ()
    index_name: str = "layer"

    def __post_init__(self):
        rows = np.asarray(self.rows)
        if rows.ndim != 2 or rows.shape[1] != len(self.columns):
            raise ValueError(f"table rows of shape {rows.shape} do not match {len(self.columns)} columns")
        object.__setattr__(self, "columns", tuple(str(c) for c in self.columns))
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "index", tuple(self.index) or tuple(range(len(rows))))
        if len(self.index) != len(rows):
            raise ValueError(f"table has {len(rows)} rows but {len(self.index)} index values")

    @classmethod
    def from_frame(cls, frame) -> Table:
        """From a pandas DataFrame (duck-typed, so pandas is never imported here)."""
        return cls(tuple(frame.columns), frame.to_numpy(dtype=object), tuple(frame.index), frame.index.name or "")

    @classmethod
    def read_csv(cls, text: str, what: str = "table") -> Table:
        """The inverse of ``to_csv`` for a numeric table (index column first, then one column per name)."""
        lines = [r for r in csv.reader(io.StringIO(text)) if r]
        if len(lines) < 2 or len(lines[0]) < 2:
            raise ValueError(f"{what} needs a header row (index name, column names) and at least one row")
        header, body = lines[0], lines[1:]
        bad = [i + 2 for i, r in enumerate(body) if len(r) != len(header)]
        if bad:
            raise ValueError(f"{what}: row {bad[0]} has a different number of fields than the header")
        try:
            rows = np.array([[float(v) for v in r[1:]] for r in body], dtype=np.float64)
        except ValueError as e:
            raise ValueError(f"{what} holds a value that is not a number ({e})") from None
        index = tuple(int(r[0]) if r[0].lstrip("-").isdigit() else r[0] for r in body)
        return cls(tuple(header[1:]), rows, index, header[0])

    def __len__(self) -> int:
        return len(self.rows)

    def to_numpy(self) -> np.ndarray:
        return self.rows

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(self.columns), index=pd.Index(list(self.index),
                                                                                   name=self.index_name or None))

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([self.index_name, *self.columns])
        for idx, row in zip(self.index, self.rows):
            w.writerow([_cell(idx), *(_cell(v) for v in row)])
        return buf.getvalue()

    def markdown(self) -> str:
        lines = ["| " + " | ".join([self.index_name, *self.columns]) + " |", "|" + "---|" * (len(self.columns) + 1)]
        for idx, row in zip(self.index, self.rows):
            cells = [str(_cell(idx))] + [f"{float(v):.4f}" if _is_real(v) else str(v) for v in row]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _is_real(v) -> bool:
    return isinstance(v, (float, np.floating))


def _cell(v):
    """A CSV cell as pandas writes it: shortest round-trip floats, empty for NaN."""
    if _is_real(v):
        return "" if v != v else repr(float(v))
    if isinstance(v, np.integer):
        return int(v)
    return v


def _number(name: str, value) -> float:
    if isinstance(value, bool):
        raise MergeError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise MergeError(f"{name} must be a number, got {value!r}") from None


def check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= _number(name, value) <= 1.0:
        raise MergeError(f"{name} must be in [0, 1], got {value}")


def check_positive(name: str, value: float) -> None:
    if not _number(name, value) > 0.0:
        raise MergeError(f"{name} must be > 0, got {value}")


def task_vectors(base: torch.Tensor | None, tensors: list[torch.Tensor], method: str) -> list[torch.Tensor]:
    """tensors[i] - base, with a clear error when the base is missing."""
    if base is None:
        raise MergeError(f"method {method!r} works on task vectors and needs the base model: pass --base DIR")
    return [t - base for t in tensors]


__all__ = ["MergeError", "Sample", "MergeContext", "MergeMethod", "Table", "check_unit_interval",
           "check_positive", "task_vectors"]
