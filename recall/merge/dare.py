"""DARE: Drop And REscale task vectors, then combine them with task arithmetic or TIES.

Reference: Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models as
a Free Lunch", ICML 2024 (arXiv 2311.03099); official code yule-BUAA/MergeLM
(``mask_input_with_mask_rate``).

Each entry of each task vector tau_i = theta_i - theta_base is dropped (set to 0) with probability
``p`` and the survivors are multiplied by 1 / (1 - p), which keeps the expected task vector; the
sparsified vectors are then combined by ``combine``:

- ``"task_arithmetic"`` (default, the combination the paper uses to merge decoder LLMs):
  theta_base + lam * sum_i dare(tau_i)  (``recall.merge.task_arithmetic.add_task_vectors``)
- ``"ties"``: TIES' trim / elect / disjoint mean on the DARE'd vectors
  (``recall.merge.ties.ties_combine``), as FusionBench's and MergeLM's DARE + TIES.

Options:
- ``p`` (default ``0.9``): drop rate, in [0, 1). 0.9 is the paper's headline setting ("DARE can set
  90% or even 99% of the delta parameters to zero"; the MergeLM README examples use 0.9). It tunes it
  per merge from 0.1 ... 0.9 (its LLM merge example uses 0.2; FusionBench's default is 0.5).
  p = 1 is rejected: every entry would be dropped and the rescale 1 / (1 - p) would divide by zero.
- ``combine`` (default ``"task_arithmetic"``).
- ``lam`` (default ``None`` = the combiner's default: 0.3 for task arithmetic, 1.0 for TIES, see
  those modules), > 0.
- ``density`` (default ``None`` = TIES' default 0.2), in (0, 1]: only with ``combine="ties"``.
- ``seed`` (default ``None`` = the merge's seed, ``MergeContext.seed``): seeds the drop masks.

Determinism: the masks never touch global RNG state. Each parameter draws from its own CPU
``torch.Generator`` seeded from zlib.crc32 of (seed, parameter name), one mask per model in the
order of the models, so the streaming and in-memory engines (and any device) produce identical
merges for one seed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from . import task_arithmetic as _ta
from . import ties as _ties
from .base import MergeContext, MergeError, MergeMethod, interval, one_of, opt, task_vectors
from .registry import register

DEFAULT_P = 0.9
COMBINERS = ("task_arithmetic", "ties")


def tensor_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded from (``seed``, parameter ``name``) with a stable hash (not Python's hash()).

    The key is ``zlib.crc32(f"{seed}:{name}")``: 32 bits, because torch's CPU generator (mt19937) only
    uses the low 32 bits of its seed, so packing the seed into high bits would be silently ignored."""
    return torch.Generator(device="cpu").manual_seed(zlib.crc32(f"{int(seed)}:{name}".encode()))


def drop_and_rescale(tv: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """``tv`` with each entry zeroed with probability ``p`` and survivors scaled by 1 / (1 - p); a new tensor.

    The uniform draws are made on the CPU with ``generator`` and then moved to ``tv``'s device."""
    if not 0.0 <= p < 1.0:
        raise MergeError(f"p must be in [0, 1), got {p}")
    if p == 0.0:
        return tv.clone()
    keep = torch.rand(tv.shape, generator=generator, dtype=torch.float32).to(tv.device) >= p
    return torch.where(keep, tv / (1.0 - p), torch.zeros_like(tv))


@register("dare")
@dataclass
class Dare(MergeMethod):
    """DARE sparsification of every task vector, then task arithmetic or TIES."""

    label = "DARE"

    p: float = opt(DEFAULT_P, float, interval(0, 1, hi_open=True),
                   "drop rate (1 would drop every entry, and the rescale 1 / (1 - p) divides by zero)")
    combine: str = opt("task_arithmetic", str, one_of(*COMBINERS), "how the sparsified vectors are combined")
    lam: float | None = opt(None, float, interval(0, lo_open=True), "scaling (none: the combiner's default)")
    density: float | None = opt(None, float, _ties.DENSITY, "TIES' density, with combine=ties (none: 0.2)")
    seed: int | None = opt(None, int, doc="seed of the drop masks (none: the merge's seed)")
    _seed: int = field(default=0, init=False, repr=False, compare=False)

    needs_base: ClassVar[bool] = True
    reference: ClassVar[str] = ("Yu et al., Language Models are Super Mario: Absorbing Abilities from Homologous "
                                "Models as a Free Lunch, ICML 2024 (arXiv 2311.03099)")

    def check(self) -> None:
        if self.density is not None and self.combine != "ties":
            raise MergeError("method dare: density applies only with combine='ties' (task arithmetic does not trim)")
        self._seed = self.seed if self.seed is not None else 0

    def prepare(self, ctx: MergeContext) -> None:
        self._seed = self.seed if self.seed is not None else int(ctx.seed)

    def effective_lam(self) -> float:
        if self.lam is not None:
            return float(self.lam)
        return _ties.DEFAULT_LAM if self.combine == "ties" else _ta.DEFAULT_LAM

    def merge_tensor(self, name, layer, base, tensors):
        tvs = task_vectors(base, tensors, self.name)
        g = tensor_generator(self._seed, name)
        tvs = [drop_and_rescale(tv, float(self.p), g) for tv in tvs]
        if self.combine == "ties":
            density = _ties.DEFAULT_DENSITY if self.density is None else float(self.density)
            return _ties.ties_combine(base, tvs, density, self.effective_lam())
        return _ta.add_task_vectors(base, tvs, self.effective_lam())

    def report(self):
        return {"seed": self._seed, "lam": self.effective_lam()}
