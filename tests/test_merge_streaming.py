"""TIES and DARE read in chunks (``merge_stream``): equal bit for bit to straightforward whole-tensor
references, for any chunk size, with ties in magnitude, zero rows, exact cancellations and both majorities."""

import pytest
import torch

from recall.merge import get_method
from recall.merge.dare import DroppedVectors, drop_and_rescale, tensor_generator
from recall.merge.ties import MemoryInputs, TaskVectors, kth_largest, ties_stream

NAME = "model.layers.0.mlp.up_proj.weight"


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def reference_ties(base, tensors, density, lam):
    """TIES as written in the paper, on whole stacked tensors: the threshold from a full sort."""
    tvs = [t - base for t in tensors]
    n, keep = base.numel(), int(density * base.numel())
    trimmed = []
    for tv in tvs:
        if keep >= n:
            trimmed.append(tv.clone())
        elif keep <= 0:
            trimmed.append(torch.zeros_like(tv))
        else:
            threshold = tv.abs().flatten().sort(descending=True).values[keep - 1]
            trimmed.append(torch.where(tv.abs() >= threshold, tv, torch.zeros_like(tv)))
    stacked = torch.stack(trimmed)
    mass = stacked[0].clone()
    for t in stacked[1:]:  # in model order
        mass = mass + t
    sign = torch.sign(mass)
    majority = 1.0 if (sign > 0).sum() >= (sign < 0).sum() else -1.0
    sign = torch.where(sign == 0, torch.full_like(sign, majority), sign)
    agree = torch.where(sign > 0, stacked > 0, stacked < 0)
    selected = torch.where(agree, stacked, torch.zeros_like(stacked))
    total = selected[0].clone()
    for t in selected[1:]:
        total = total + t
    mean = total / agree.sum(dim=0).clamp(min=1).to(torch.float32)
    return base + lam * mean


def _case(kind, n, shape=(12, 10), seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    if kind == "random":
        deltas = [torch.randn(shape, generator=g) for _ in range(n)]
    elif kind == "ties":  # few distinct magnitudes: ties at every threshold
        deltas = [torch.randint(-3, 4, shape, generator=g).float() * 0.25 for _ in range(n)]
    elif kind == "zero_rows":
        deltas = [torch.randn(shape, generator=g) for _ in range(n)]
        for d in deltas:
            d[::3] = 0
    elif kind in ("cancel_plus", "cancel_minus"):  # exact cancellations; the majority decides them
        sign = 1.0 if kind == "cancel_plus" else -1.0
        d0 = sign * torch.rand(shape, generator=g).add_(0.5)
        d1 = torch.where(torch.rand(shape, generator=g) < 0.4, -d0, 0.1 * d0)
        deltas = [d0, d1] + [torch.zeros(shape) for _ in range(n - 2)]
        base = torch.zeros(shape)  # exact task vectors
    return base, [base + d for d in deltas]


CASES = [(k, n) for k in ("random", "ties", "zero_rows") for n in (1, 2, 3, 5)] + \
        [(k, n) for k in ("cancel_plus", "cancel_minus") for n in (2, 3)]


@pytest.mark.parametrize("kind,n", CASES, ids=[f"{k}-{n}" for k, n in CASES])
@pytest.mark.parametrize("density,lam", [(0.2, 1.0), (0.5, 0.7), (1.0, 1.0), (0.001, 1.0)])
def test_ties_equals_the_reference_bit_for_bit(kind, n, density, lam):
    base, tensors = _case(kind, n)
    want = reference_ties(base, tensors, density, lam)
    got = get_method("ties", density=density, lam=lam).merge_tensor(NAME, 1, base, tensors)
    assert got.shape == base.shape and torch.equal(bits(got), bits(want))
    for chunk in (1, 7, 50, 119):  # any chunk size gives the same bits
        s = ties_stream(TaskVectors(MemoryInputs(base, tensors), "ties"), density, lam, chunk)
        assert torch.equal(bits(s), bits(want).reshape(-1)), chunk


def test_cancellations_follow_the_majority():
    for kind, majority in (("cancel_plus", 1.0), ("cancel_minus", -1.0)):
        base, (e0, e1) = _case(kind, 2)
        out = get_method("ties", density=1.0).merge_tensor(NAME, 1, base, [e0, e1])
        cancel = (e0 + e1 == 0)
        assert cancel.any()
        want = torch.where(majority * e0 > 0, e0, e1)  # the value whose sign is the majority's
        assert torch.equal(out[cancel], want[cancel])


@pytest.mark.parametrize("k", [1, 2, 17, 60, 119, 120])
def test_kth_largest_is_exact_with_ties(k):
    g = torch.Generator().manual_seed(k)
    v = torch.randint(0, 5, (120,), generator=g).float()
    want = float(v.sort(descending=True).values[k - 1])
    assert kth_largest(v.clone(), k) == want


@pytest.mark.parametrize("kind", ["continuous", "zeros80", "few_values", "all_equal"])
@pytest.mark.parametrize("density", [1e-5, 0.2, 0.5, 0.999])
def test_kth_largest_large_tensors_through_the_bracket(kind, density):
    n = 300_000
    g = torch.Generator().manual_seed(1)
    v = {"continuous": torch.randn(n, generator=g).abs(),
         "zeros80": torch.where(torch.rand(n, generator=g) < 0.8, 0.0, torch.randn(n, generator=g).abs()),
         "few_values": torch.randint(0, 7, (n,), generator=g).float(),
         "all_equal": torch.full((n,), 0.5)}[kind]
    k = max(1, int(density * n))
    assert kth_largest(v.clone(), k) == float(v.sort(descending=True).values[k - 1])


def test_signed_zeros_of_the_base_are_kept_as_the_reference_keeps_them():
    base, tensors = _case("zero_rows", 3)
    base[0] = -0.0
    tensors = [t.clone() for t in tensors]
    for t in tensors:
        t[0] = -0.0  # no task vector there: the merge is base + 0.0
    want = reference_ties(base, tensors, 0.5, 1.0)
    got = get_method("ties", density=0.5).merge_tensor(NAME, 1, base, tensors)
    assert torch.equal(bits(got), bits(want))


@pytest.mark.parametrize("p", [0.0, 0.3, 0.9])
def test_dare_chunks_draw_the_whole_tensor_masks(p):
    base, tensors = _case("random", 3, shape=(40, 25))
    g = tensor_generator(5, NAME)
    want = [drop_and_rescale(t - base, p, g).reshape(-1) for t in tensors]  # model after model
    for chunk in (1, 13, 1000):
        v = DroppedVectors(MemoryInputs(base, tensors), "dare", p, 5, NAME)
        parts = [(s, min(chunk, 1000 - s)) for s in range(0, 1000, chunk)]
        got = {i: [] for i in range(3)}
        for s, c in parts:  # chunk by chunk across models: each model's masks come from its own state
            for i in (2, 0, 1):
                got[i].append(v.get(i, s, c))
        for i in range(3):
            assert torch.equal(bits(torch.cat(got[i])), bits(want[i])), (chunk, i)
    v = DroppedVectors(MemoryInputs(base, tensors), "dare", 0.5, 5, NAME)
    v.get(0, 0, 10)
    with pytest.raises(RuntimeError, match="drawn in order"):
        v.get(0, 20, 10)


@pytest.mark.parametrize("opts", [{"p": 0.5}, {"p": 0.5, "combine": "ties"},
                                  {"p": 0.3, "combine": "ties", "density": 0.5, "lam": 0.8}])
def test_dare_equals_the_reference_bit_for_bit(opts):
    base, tensors = _case("ties", 3, shape=(30, 20))
    method = get_method("dare", seed=11, **opts)
    g = tensor_generator(11, NAME)
    dropped = [drop_and_rescale(t - base, opts["p"], g) for t in tensors]
    if opts.get("combine") == "ties":  # TIES' disjoint mean of the dropped vectors (around a zero base)
        mean = reference_ties(torch.zeros_like(base), dropped, opts.get("density", 0.2), 1.0)
        want = base + opts.get("lam", 1.0) * mean
    else:
        total = torch.zeros_like(base)
        for d in dropped:
            total = total + d
        want = base + 0.3 * total
    got = method.merge_tensor(NAME, 1, base, tensors)
    assert torch.equal(bits(got), bits(want))
    for chunk in (1, 7, 64):
        s = method.merge_stream(NAME, 1, MemoryInputs(base, tensors), chunk)
        assert torch.equal(bits(s), bits(want).reshape(-1)), chunk
