"""TIES-merging: TrIm, Elect Sign & merge.

Reference: Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023
(arXiv 2306.01708); official code prateeksr/ties-merging.

For task vectors tau_i = theta_i - theta_base:

1. Trim: keep the top-``density`` fraction of each tau_i's entries by magnitude, zero the rest.
2. Elect: per entry, the sign of the total mass ``sum_i trimmed_tau_i`` (an entry whose mass is
   exactly 0 takes the tensor's majority sign, as in the official code).
3. Disjoint mean: per entry, the mean of the trimmed values that agree with the elected sign
   (zeros and disagreeing values excluded; 0 where none agree).
4. merged = theta_base + lam * disjoint mean.

Options (paper defaults, Sec. 5 / official code: "top-k = 20%, lambda = 1" when no validation
set is used to tune them):
- ``density`` (default ``0.2``): fraction of each task vector kept, in (0, 1] (0 would keep nothing and
  return the base).
- ``lam`` (default ``1.0``): scaling of the merged task vector, > 0.

Deviation: trimming is per tensor (each parameter's top 20%), not over the whole flattened model as
in the official code. mergekit's ``ties`` does the same; it is what lets the merge stream one tensor
at a time, and it keeps 20% of every matrix instead of letting a few large-delta tensors take the
whole budget.

Streaming (:func:`ties_stream`, used by both engines): two passes over one tensor, read in chunks.
Pass 1 takes one task vector at a time and finds its trim threshold, the exact ``keep``-th largest
magnitude of one buffer of magnitudes (:func:`kth_largest`: a sample brackets it, only the entries
inside the bracket are partially sorted). Pass 2 goes chunk by
chunk over all task vectors and writes the merged values into that same buffer; the tensor-wide
majority sign is counted exactly on the way, and the rare entries whose mass is exactly 0 but not
all-zero are patched at the end when the majority is negative. Peak memory: one float32 copy of the
tensor plus a few chunks per model, whatever the number of models. Sums over models run in model
order (``((tau_0 + tau_1) + tau_2) ...``), so the result does not depend on the chunk size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .base import MergeMethod, interval, opt, task_vectors
from .registry import register

DEFAULT_DENSITY = 0.2
DEFAULT_LAM = 1.0
DENSITY = interval(0, 1, lo_open=True)  # density 0 trims every entry: the merge would be the base


class MemoryInputs:
    """One parameter of every model, in memory, read as flat float32 chunks (the interface
    ``merge_stream`` methods read; the streaming engine's reads the safetensors files instead)."""

    def __init__(self, base: torch.Tensor | None, tensors: list[torch.Tensor]):
        self.n = len(tensors)
        self.numel = tensors[0].numel()
        self._base = base.reshape(-1) if base is not None else None
        self._flat = [t.reshape(-1) for t in tensors]

    @property
    def has_base(self) -> bool:
        return self._base is not None

    def base(self, start: int, count: int) -> torch.Tensor:
        return self._base[start:start + count]

    def model(self, i: int, start: int, count: int) -> torch.Tensor:
        return self._flat[i][start:start + count]


class TaskVectors:
    """Chunks of the task vectors ``tau_i = theta_i - theta_base`` of one parameter (new tensors)."""

    def __init__(self, inputs, method: str):
        if not inputs.has_base:
            task_vectors(None, [], method)  # the one error for a missing base
        self.inputs, self.n, self.numel = inputs, inputs.n, inputs.numel

    def base(self, start: int, count: int) -> torch.Tensor:
        return self.inputs.base(start, count)

    def get(self, i: int, start: int, count: int) -> torch.Tensor:
        return self.inputs.model(i, start, count) - self.inputs.base(start, count)


def chunks(numel: int, chunk: int):
    """(start, count) of consecutive chunks covering ``numel`` elements."""
    return [(s, min(chunk, numel - s)) for s in range(0, numel, chunk)]


SAMPLE = 1 << 16  # at most this many entries (and at most 1/64 of them) bracket a threshold (kth_largest)


def kth_largest(values: torch.Tensor, k: int) -> float:
    """The ``k``-th largest entry (1 <= k <= numel) of a flat contiguous CPU float tensor, exactly.

    Large tensors: the order statistics of a strided sample (1/64 of the entries, at most ``SAMPLE``)
    bracket the answer (8 standard deviations on either side), a few comparison passes count the entries
    above, at and inside the bracket, and only the entries strictly inside it (3-7%) are partially sorted
    (numpy's introselect). Repeated values (the zeros DARE leaves) are counted, never sorted. When the
    bracket misses (practically never), or for small tensors, ``torch.kthvalue`` of the whole tensor."""
    n = values.numel()
    if n >= 64 * 1024:
        a = values.numpy()  # numpy's comparisons and counts run several times faster than torch's here
        sample = np.sort(a[:: n // min(SAMPLE, n // 64)])[::-1]
        m, r = len(sample), (k - 1) * len(sample) // n
        margin = 4 * int(m ** 0.5)  # the rank's standard deviation is at most sqrt(m) / 2
        hi = sample[r - margin] if r >= margin else np.float32(np.inf)
        lo = sample[r + margin] if r + margin < m else np.float32(-np.inf)
        above = np.count_nonzero(a > hi)
        at_hi = np.count_nonzero(a == hi)
        if above < k <= above + at_hi:
            return float(hi)
        if above + at_hi < k and lo < hi:
            inside = a[(a > lo) & (a < hi)]
            j = k - above - at_hi  # the j-th largest inside the bracket, or lo itself
            if j <= inside.size:
                i = inside.size - j
                inside.partition(i)
                return float(inside[i])
            if j <= inside.size + np.count_nonzero(a == lo):
                return float(lo)
    return float(values.kthvalue(n - k + 1).values)


def keep_count(density: float, numel: int) -> int:
    """How many entries trimming keeps: ``int(density * numel)`` (more only when magnitudes tie)."""
    return int(density * numel)


def trim(tv: torch.Tensor, density: float) -> torch.Tensor:
    """``tv`` with all but its top-``density`` fraction of entries (by magnitude) set to 0; a new tensor.

    Keeps every entry whose magnitude is at least the ``int(density * numel)``-th largest (more than
    that many only when magnitudes tie at the threshold)."""
    n, keep = tv.numel(), keep_count(density, tv.numel())
    if keep >= n:
        return tv.clone()
    if keep <= 0:
        return torch.zeros_like(tv)
    return _trim_(tv.clone(), kth_largest(tv.abs().reshape(-1).cpu(), keep))


def _trim_(tv: torch.Tensor, threshold: float) -> torch.Tensor:
    """``tv`` with its entries of magnitude below ``threshold`` zeroed, in place: a multiply by a 0/1 mask,
    so a zeroed entry may be -0.0 (signed zeros vanish in every sum below; ``torch.where`` and
    ``masked_fill`` with such random masks cost about 20x more)."""
    return tv.mul_(tv.abs().ge_(threshold))


def _sum_rows(rows) -> torch.Tensor:
    """``rows[0] + rows[1] + ...`` in that order (a new tensor)."""
    total = rows[0].clone()
    for r in rows[1:]:
        total.add_(r)
    return total


def elect_sign(tvs: torch.Tensor) -> torch.Tensor:
    """Elected sign (+1 / -1) per entry of stacked task vectors ``tvs`` [n_models, ...]: the sign of the
    summed mass; entries with zero mass take the majority sign of the whole tensor (+1 on a tie)."""
    sign = torch.sign(_sum_rows(tvs))
    majority = 1.0 if float(sign.sum(dtype=torch.float64)) >= 0 else -1.0
    return sign.masked_fill(sign == 0, majority)


def _agreeing(tvs, sign: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum (in model order) of the magnitudes of the entries of ``tvs`` whose sign is ``sign`` (+1 / -1 per
    entry), and their count (float32). ``u = x * sign`` is ``|x|`` exactly where x agrees; the 0/1 masks are
    arithmetic, and the signed zeros they leave vanish in a sum that starts at +0."""
    total = torch.zeros_like(tvs[0])
    count = torch.zeros_like(tvs[0])
    for tv in tvs:
        u = tv * sign
        count.add_(torch.sign(u).clamp_(min=0))
        total.add_(u.clamp_(min=0))
    return total, count


def disjoint_mean(tvs, sign: torch.Tensor) -> torch.Tensor:
    """Mean over models of the entries of ``tvs`` ([n_models, ...] or a list) whose sign agrees with
    ``sign`` (> 0: positive, else negative; zeros never count); 0 where no model agrees."""
    elected = torch.where(sign > 0, 1.0, -1.0)
    total, count = _agreeing(tvs, elected)
    return total.div_(count.clamp_(min=1)).mul_(elected).add_(0.0)  # + 0.0: no -0.0


def ties_stream(vectors, density: float, lam: float, chunk: int) -> torch.Tensor:
    """TIES on one parameter, from ``vectors`` (``n``, ``numel``, ``get(i, start, count)``: chunks of each
    task vector, ``base(start, count)``), ``chunk`` elements at a time; the flat merged float32 tensor.

    Bit for bit the same as trimming, electing and averaging whole stacked tensors, for any ``chunk``."""
    n, numel = vectors.n, vectors.numel
    keep = keep_count(density, numel)
    parts = chunks(numel, chunk)
    buf = torch.empty(numel, dtype=torch.float32)
    thresholds: list[float | None] = [None] * n  # None: keep every entry
    for i in range(n if 0 < keep < numel else 0):  # pass 1: the trim threshold of each task vector
        for s, c in parts:
            torch.abs(vectors.get(i, s, c), out=buf[s:s + c])
        thresholds[i] = kth_largest(buf, keep)
    votes = 0  # sum over the tensor of sign(mass): the majority sign is + when >= 0
    patches: list[tuple[torch.Tensor, torch.Tensor]] = []  # zero-mass entries: (index, value if majority < 0)
    for s, c in parts:  # pass 2: elect (majority + for now), disjoint mean, base + lam * mean
        trimmed = []
        for i, thr in enumerate(thresholds):
            tv = vectors.get(i, s, c)
            if keep <= 0:
                tv.zero_()
            elif thr is not None:
                _trim_(tv, thr)
            trimmed.append(tv)
        sign = torch.sign(_sum_rows(trimmed))
        votes += int(sign.sum(dtype=torch.float64))
        zero = sign.abs().neg_().add_(1.0)  # 1 where the mass is exactly 0
        elected = sign.add_(zero)  # + where the mass is 0
        total, count = _agreeing(trimmed, elected)
        mean = total.div_(count.clamp(min=1)).mul_(elected).add_(0.0).mul_(lam)  # + 0.0: no -0.0
        base = vectors.base(s, c)
        torch.add(base, mean, out=buf[s:s + c])
        # mass exactly 0 with a positive entry (so a negative one too): the majority decides
        cancel = zero.mul_(count)
        if c and float(cancel.max()) > 0:
            idx = cancel.nonzero().reshape(-1)
            alt = disjoint_mean([t[idx] for t in trimmed], torch.full((len(idx),), -1.0))
            patches.append((idx + s, base[idx] + lam * alt))
    if votes < 0:
        for idx, value in patches:
            buf[idx] = value
    return buf


@register("ties")
@dataclass
class Ties(MergeMethod):
    """TIES-merging with per-tensor trimming."""

    label = "TIES"

    density: float = opt(DEFAULT_DENSITY, float, DENSITY, "fraction of each task vector kept (0 would keep none)")
    lam: float = opt(DEFAULT_LAM, float, interval(0, lo_open=True), "scaling of the merged task vector")

    needs_base: ClassVar[bool] = True
    reference: ClassVar[str] = ("Yadav et al., TIES-Merging: Resolving Interference When Merging Models, "
                                "NeurIPS 2023 (arXiv 2306.01708)")

    def merge_stream(self, name, layer, inputs, chunk: int) -> torch.Tensor:
        """The flat merged tensor from chunked ``inputs`` (``MemoryInputs`` or the streaming engine's)."""
        return ties_stream(TaskVectors(inputs, self.name), self.density, self.lam, chunk)

    def merge_tensor(self, name, layer, base, tensors):
        inputs = MemoryInputs(base, tensors)
        return self.merge_stream(name, layer, inputs, max(1, inputs.numel)).reshape(tensors[0].shape)
