"""What every merge method is: options, an optional preparation pass, and a per-tensor rule.

A method sees one parameter at a time (its name, its RECALL layer index, the base model's
tensor and each model's tensor, all float32), so the same method runs in memory or streaming
over safetensors shards without ever holding a whole model. Methods that need the models
themselves (RECALL's representation pass, LM-Cocktail's losses) do that in ``prepare``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

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
        """Extra facts for the model card (e.g. a weights table as a pandas DataFrame under
        ``"weights"``, losses, selected samples). Default: none."""
        return {}


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


__all__ = ["MergeError", "Sample", "MergeContext", "MergeMethod", "check_unit_interval", "check_positive",
           "task_vectors"]
