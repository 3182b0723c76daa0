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
  (``recall.merge.ties.ties_stream``), as FusionBench's and MergeLM's DARE + TIES.

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
order of the models (model 0's uniforms, then model 1's, ...), so the streaming and in-memory
engines (and any device) produce identical merges for one seed.

Streaming: :class:`DroppedVectors` reads the DARE'd task vectors chunk by chunk. torch's CPU
generator fills a tensor in order, one draw per element, so drawing a mask chunk by chunk gives the
same uniforms as drawing it whole; the generator's state at the start of each model's mask is kept,
so the TIES combiner's second pass (chunk by chunk across models) redraws exactly the same masks.
With task arithmetic, the vectors are summed one model at a time into one float32 buffer.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from . import task_arithmetic as _ta
from . import ties as _ties
from .base import MergeContext, MergeError, MergeMethod, interval, one_of, opt
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
    keep = torch.rand(tv.shape, generator=generator, dtype=torch.float32).ge_(p).to(tv.device)  # 1.0 = kept
    return (tv / (1.0 - p)).mul_(keep)  # a dropped entry may be -0.0: it adds nothing to any sum


class DroppedVectors(_ties.TaskVectors):
    """Chunks of DARE'd task vectors ``drop_and_rescale(tau_i)`` of one parameter, for ``ties_stream``.

    Each model's chunks must be read in order (start 0 restarts it); models may be interleaved. The
    draws are those of ``drop_and_rescale`` on whole tensors, model after model, from
    ``tensor_generator(seed, name)``."""

    def __init__(self, inputs, method: str, p: float, seed: int, name: str):
        super().__init__(inputs, method)
        self.p = p
        self._states = [tensor_generator(seed, name).get_state()]  # the generator at the start of model i
        self._gens: dict[int, tuple[torch.Generator, int]] = {}  # model -> (generator, next start)

    def _state(self, i: int) -> torch.Tensor:
        while len(self._states) <= i:  # a model whose predecessor was never read to the end: skip its draws
            g = torch.Generator().set_state(self._states[-1])
            for _, c in _ties.chunks(self.numel, 1 << 22):
                torch.rand(c, generator=g)
            self._states.append(g.get_state())
        return self._states[i]

    def get(self, i: int, start: int, count: int) -> torch.Tensor:
        tv = super().get(i, start, count)
        if self.p == 0.0:
            return tv
        if start == 0:
            self._gens[i] = (torch.Generator().set_state(self._state(i)), 0)
        g, expected = self._gens.get(i, (None, None))
        if start != expected:
            raise RuntimeError(f"DARE masks are drawn in order: model {i} read at {start}, expected {expected}")
        out = drop_and_rescale(tv, self.p, g)
        self._gens[i] = (g, start + count)
        if start + count == self.numel and len(self._states) == i + 1:
            self._states.append(g.get_state())
        return out


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

    def effective_density(self) -> float:
        return _ties.DEFAULT_DENSITY if self.density is None else float(self.density)

    def merge_stream(self, name, layer, inputs, chunk: int) -> torch.Tensor:
        """The flat merged tensor from chunked ``inputs`` (``MemoryInputs`` or the streaming engine's)."""
        vectors = DroppedVectors(inputs, self.name, float(self.p), self._seed, name)
        if self.combine == "ties":
            return _ties.ties_stream(vectors, self.effective_density(), self.effective_lam(), chunk)
        parts = _ties.chunks(vectors.numel, chunk)
        total = torch.zeros(vectors.numel, dtype=torch.float32)
        for i in range(vectors.n):  # add_task_vectors, one model at a time
            for s, c in parts:
                total[s:s + c].add_(vectors.get(i, s, c))
        for s, c in parts:
            torch.add(vectors.base(s, c), total[s:s + c].mul_(self.effective_lam()), out=total[s:s + c])
        return total

    def merge_tensor(self, name, layer, base, tensors):
        inputs = _ties.MemoryInputs(base, tensors)
        return self.merge_stream(name, layer, inputs, max(1, inputs.numel)).reshape(tensors[0].shape)

    def report(self):
        return {"seed": self._seed, "lam": self.effective_lam()}
