"""Task arithmetic (task-vector addition).

Reference: Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023 (arXiv 2212.04089);
the "Task Vector" baseline of the RECALL paper.

    tau_i = theta_i - theta_base,    merged = theta_base + lam * sum_i tau_i

Options:
- ``lam`` (default ``0.3``): the scaling coefficient lambda. The paper picks lambda on held-out
  validation data from {0, 0.05, ..., 1.0}, and the values it selects when adding several task
  vectors lie around 0.3-0.4; FusionBench's ``TaskArithmeticForCausalLM`` default is 0.3
  (``config/method/linear/task_arithmetic_for_causallm.yaml``). With one expert, lam = 1 gives the
  expert back (MergeLM's and mergekit's usual setting for merging two LLMs is 1.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import MergeMethod, interval, opt, task_vectors
from .registry import register

DEFAULT_LAM = 0.3


def add_task_vectors(base: torch.Tensor, tvs: list[torch.Tensor], lam: float) -> torch.Tensor:
    """``base + lam * sum(tvs)``, summed one vector at a time; a new tensor."""
    total = torch.zeros_like(base)
    for tv in tvs:
        total.add_(tv)
    return base + lam * total


@register("task_arithmetic")
@dataclass
class TaskArithmetic(MergeMethod):
    """base + lam * (sum of task vectors)."""

    label = "Task Arithmetic"

    elementwise = True

    lam: float = opt(DEFAULT_LAM, float, interval(0, lo_open=True), "scaling of the summed task vectors")

    needs_base: ClassVar[bool] = True
    reference: ClassVar[str] = "Ilharco et al., Editing Models with Task Arithmetic, ICLR 2023 (arXiv 2212.04089)"

    def merge_tensor(self, name, layer, base, tensors):
        tvs = task_vectors(base, tensors, self.name)
        return add_task_vectors(base, tvs, self.lam)
