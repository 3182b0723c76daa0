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
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Allowed:
    """The allowed values of an option: ``text`` says which (in errors and ``recall methods``), ``test`` checks."""

    text: str
    test: Callable[[Any], bool]


def interval(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
             hi_open: bool = False) -> Allowed:
    """Numbers in [lo, hi] (an open end excludes its bound; ``None`` is no bound)."""
    if lo is not None and hi is not None:
        text = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        text = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        text = f"{'<' if hi_open else '<='} {hi:g}"

    def test(v) -> bool:
        return ((lo is None or (v > lo if lo_open else v >= lo)) and
                (hi is None or (v < hi if hi_open else v <= hi)))

    return Allowed(text, test)


def one_of(*choices) -> Allowed:
    return Allowed("one of " + ", ".join(map(str, choices)), lambda v: v in choices)


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class OptionSpec:
    """Type, allowed values and meaning of one option (declared with :func:`opt`)."""

    type: type
    allowed: Allowed | None = None
    doc: str = ""
    optional: bool = False  # ``None`` is allowed (the option's default is None)

    def describe(self) -> str:
        """``"a number in (0, 1]"``, ``"one of kmeans, random"``, ``"an integer >= 1, or none"``."""
        if self.type is str and self.allowed is not None:
            text = self.allowed.text
        else:
            text = _TYPE_WORDS[self.type] + (f" {self.allowed.text}" if self.allowed is not None else "")
        return text + (", or none" if self.optional else "")

    def parse(self, value):
        """``value`` as the option's type (strings, as from the command line, are converted); ``ValueError``
        when it is not of the type or not allowed."""
        if value is None or (self.optional and isinstance(value, str) and value.strip().lower() in ("none", "null")):
            if self.optional:
                return None
            raise ValueError
        v = _convert(self.type, value)
        if self.allowed is not None and not self.allowed.test(v):
            raise ValueError
        return v


def _convert(typ: type, value):
    if typ is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
    elif typ is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
    elif typ is float:
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
            v = float(value)
        elif isinstance(value, str):
            v = float(value)  # ValueError for text that is no number
        else:
            raise ValueError
        if math.isfinite(v):
            return v
    elif typ is str and isinstance(value, str):
        return value
    raise ValueError


def opt(default, type_: type, allowed: Allowed | None = None, doc: str = ""):
    """A method option: a dataclass field with its type, allowed values and meaning (``None`` as the default
    makes ``None`` an allowed value). Checked when the method is made, before any work."""
    spec = OptionSpec(type_, allowed, doc, optional=default is None)
    return field(default=default, metadata={"option": spec})


def option_specs(cls) -> dict[str, tuple[Any, OptionSpec]]:
    """name -> (default, spec) for every option a method class declares, in declaration order."""
    return {f.name: (f.default, f.metadata["option"]) for f in dataclasses.fields(cls) if "option" in f.metadata}


@dataclass
class MergeMethod(ABC):
    """Base class. Subclasses are dataclasses whose options are fields declared with :func:`opt` (type,
    allowed values, meaning; the defaults of its paper), registered with ``@register("name")`` from
    ``recall.merge.registry``. Each option is converted and checked when the method is made; ``check``
    adds rules between options and ``validate`` rules against the inputs, both before any work starts."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # the name in tables and figures (default: the registered name)
    # "baseline": a merging baseline that RECALL is compared with in every verdict; "method": RECALL itself;
    # "tool": a building block, not a method of the comparison (layer_linear); "control": a variant that
    # isolates one part of RECALL (uniform weights over its pool, each model as M_N), reported beside it
    role: ClassVar[str] = "baseline"
    # what the sequential scenario merges after step t: "pair" {current model, new model} or "history"
    # {base, M_1..M_t} (every step's fine-tuned model)
    sequential_pool: ClassVar[str] = "pair"
    needs_base: ClassVar[bool] = False
    needs_samples: ClassVar[bool] = False
    reference: ClassVar[str] = ""
    # True when merge_tensor acts element by element (no dependence on the tensor's shape or on other
    # elements): the streaming engine then merges large tensors in chunks.
    elementwise: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for key, (_, spec) in option_specs(type(self)).items():
            value = getattr(self, key)
            try:
                setattr(self, key, spec.parse(value))
            except (TypeError, ValueError, OverflowError):
                raise MergeError(f"method {self.name or type(self).__name__}: {key} must be {spec.describe()}, "
                                 f"got {value!r}" + (f" ({key}: {spec.doc})" if spec.doc else "")) from None
        self.check()

    def check(self) -> None:  # noqa: B027 - optional hook
        """Rules between options (each option's own type and range are checked already). Default: none."""

    def validate(self, ctx: MergeContext) -> None:  # noqa: B027 - optional hook
        """Rules against the inputs (samples, number of layers, files), checked before any work and by
        ``--dry-run``; ``ctx`` has no loaded models. Default: none."""

    def input_files(self) -> list[str]:
        """Files the method reads besides the models (a weights table): never an output. Default: none."""
        return []

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


def task_vectors(base: torch.Tensor | None, tensors: list[torch.Tensor], method: str) -> list[torch.Tensor]:
    """tensors[i] - base, with a clear error when the base is missing."""
    if base is None:
        raise MergeError(f"method {method!r} works on task vectors and needs the base model: pass --base DIR")
    return [t - base for t in tensors]


__all__ = ["MergeError", "Sample", "MergeContext", "MergeMethod", "Table", "Allowed", "OptionSpec", "interval",
           "one_of", "opt", "option_specs", "task_vectors"]
