"""EWC (Kirkpatrick et al., 2017): the Fisher diagonal, its state, the penalty, Fisher files.

:func:`fisher_diagonal` estimates the diagonal empirical Fisher of the answer log-likelihood at
the current parameters ``theta*``. With an :class:`EWCState` and ``ewc_lambda > 0`` the training
loss becomes ``loss + lambda/2 * sum_i F_i (theta_i - theta*_i)^2`` over the weights being
trained: all parameters in full fine-tuning; in LoRA mode the *effective* weight ``W + scale * B A``
of every adapted linear layer (the frozen parameters cannot move, so their terms are constant).
Sequential EWC keeps a single penalty: ``F <- gamma * F_old + F_new``, anchored at the latest
parameters (gamma = 1: the summed-Fisher form of Huszar 2018; gamma < 1: online EWC of Schwarz et
al. 2018). ``ewc_lambda = 0`` skips the penalty entirely, so it equals plain fine-tuning bit for bit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..encoding import collate, pad_token_id
from ..fsutil import atomic_write_bytes
from ..samples import Sample
from .config import _is_int
from .objective import _answer_nll, _check_samples, _supports_logits_to_keep, encode_samples


@dataclass
class EWCState:
    """Diagonal Fisher ``fisher[name]`` and anchor ``theta_star[name]`` (fp32, CPU), keyed by the
    plain model's parameter names (``model.named_parameters()``, tied weights once)."""

    fisher: dict[str, torch.Tensor]
    theta_star: dict[str, torch.Tensor]
    n_samples: int
    tasks: tuple[str, ...] = ()

    def __post_init__(self):
        if set(self.fisher) != set(self.theta_star):
            raise ValueError("EWCState: fisher and theta_star must cover the same parameters")
        for k, f in self.fisher.items():
            if f.shape != self.theta_star[k].shape:
                raise ValueError(f"EWCState: shape of fisher[{k!r}] {tuple(f.shape)} != theta_star "
                                 f"{tuple(self.theta_star[k].shape)}")

    def combine(self, newer: EWCState, gamma: float = 1.0) -> EWCState:
        """Sequential EWC: ``F = gamma * F_self + F_newer``, anchored at ``newer.theta_star``.

        gamma = 1 sums the Fishers of all tasks so far; gamma < 1 is online EWC (old tasks decay).
        """
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if set(self.fisher) != set(newer.fisher):
            raise ValueError("EWCState.combine: the two states cover different parameters (different models?)")
        fisher = {k: gamma * self.fisher[k] + newer.fisher[k] for k in newer.fisher}
        return EWCState(fisher, newer.theta_star, self.n_samples + newer.n_samples, self.tasks + newer.tasks)


def _float_params(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]


def fisher_diagonal(model, tokenizer, samples: Sequence[Sample], batch_size: int = 8,
                    max_samples: int | None = None, seed: int = 0, max_length: int | None = None,
                    task: str | None = None, progress: bool = False) -> EWCState:
    """Diagonal empirical Fisher of the answer log-likelihood at the model's current parameters.

    ``F = (1/N) * sum over batches b of (grad of sum_{x in b} log p(answer_x | prompt_x))^2``, the
    log-likelihood of an example being the sum over its answer and eos tokens. With
    ``batch_size=1`` this is exactly the per-example empirical Fisher ``mean_x g_x^2``; with larger
    batches the squares of the per-example gradients are still counted once each, plus cross terms
    ``g_x g_y`` whose expectation (``(batch_size-1) * E[g]^2``) vanishes near an optimum of the
    task: a biased but much cheaper estimate. ``max_samples`` keeps a seeded random subset.
    Returns fp32 CPU tensors for every floating parameter; ``theta_star`` is a copy of them.
    The model is left unchanged (gradients cleared, requires_grad flags and train/eval mode restored).
    """
    from tqdm.auto import tqdm

    _check_samples(samples)
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    samples = list(samples)
    if max_samples is not None and max_samples < len(samples):
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(samples), generator=g)[:max_samples].sort().values.tolist()
        samples = [samples[i] for i in idx]
    examples = encode_samples(tokenizer, samples, max_length or None)
    params = _float_params(model)
    flags = {n: p.requires_grad for n, p in params}
    was_training = model.training
    device = next(model.parameters()).device
    keep = _supports_logits_to_keep(model)
    fisher = {n: torch.zeros(p.shape, dtype=torch.float32, device=device) for n, p in params}
    model.eval()
    try:
        for _, p in params:
            p.requires_grad_(True)
            p.grad = None
        for i in tqdm(range(0, len(examples), batch_size), desc="fisher", disable=not progress, leave=False):
            batch = {k: v.to(device) for k, v in collate(examples[i:i + batch_size], pad_token_id(tokenizer)).items()}
            _answer_nll(model, batch, keep).sum().backward()  # -log-lik; its square is the same
            with torch.no_grad():
                for n, p in params:
                    if p.grad is not None:
                        fisher[n].add_(p.grad.float().pow(2))
                        p.grad = None
    finally:
        for n, p in params:
            p.grad = None
            p.requires_grad_(flags[n])
        model.train(was_training)
    n = len(examples)
    fisher = {k: (v / n).cpu() for k, v in fisher.items()}
    theta = {name: p.detach().float().cpu().clone() for name, p in params}
    return EWCState(fisher, theta, n, (task,) if task else ())


def save_fisher(state: EWCState, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write the Fisher diagonal (not theta*, which is the checkpoint itself) atomically."""
    from safetensors.torch import save

    meta = {"n_samples": str(state.n_samples), "tasks": json.dumps(list(state.tasks)),
            "extra": json.dumps(metadata or {}, sort_keys=True)}
    return atomic_write_bytes(path, save({k: v.contiguous() for k, v in state.fisher.items()}, metadata=meta))


def load_fisher(path: str | os.PathLike, theta_star: dict[str, torch.Tensor]) -> tuple[EWCState, dict]:
    """(EWCState with the given theta*, the extra metadata saved with it)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        fisher = {k: f.get_tensor(k) for k in f.keys()}
    state = EWCState(fisher, theta_star, int(meta.get("n_samples", 0)), tuple(json.loads(meta.get("tasks", "[]"))))
    return state, json.loads(meta.get("extra", "{}"))


class _EWCPenalty:
    """``lambda/2 * sum F (theta_eff - theta*)^2`` over the trained weights of a (peft-wrapped) model."""

    def __init__(self, model, state: EWCState, lam: float, mode: str, device):
        self.lam = lam
        self.terms: list[tuple] = []
        if mode == "full":
            for name, p in _float_params(model):
                if name in state.fisher and p.requires_grad:
                    self._check(name, p.shape, state)
                    self.terms.append(("full", p, state.fisher[name].to(device), state.theta_star[name].to(device)))
        else:
            from peft.tuners.lora import LoraLayer

            inner = model.get_base_model()
            for name, module in inner.named_modules():
                if not isinstance(module, LoraLayer):
                    continue
                key = f"{name}.weight"
                if key not in state.fisher:
                    continue
                base = module.get_base_layer().weight
                self._check(key, base.shape, state)
                adapter = module.active_adapters[0]
                # the base weight is frozen: keep (W - theta*) once, add the LoRA delta each step
                offset = base.detach().float().to(device) - state.theta_star[key].to(device)
                self.terms.append(("lora", module, adapter, state.fisher[key].to(device), offset))
        if not self.terms:
            raise ValueError("EWC: none of the trained weights is in the Fisher state; was it computed on a "
                             "different model?")

    @staticmethod
    def _check(name, shape, state):
        if state.fisher[name].shape != shape:
            raise ValueError(f"EWC: {name} has shape {tuple(shape)} but the Fisher has "
                             f"{tuple(state.fisher[name].shape)}; was it computed on a different model?")

    def __call__(self) -> torch.Tensor:
        total = None
        for term in self.terms:
            if term[0] == "full":
                _, p, f, star = term
                d = p.float() - star
                v = (f * d * d).sum()
            else:
                _, m, a, f, offset = term
                delta = m.lora_B[a].weight.float() @ m.lora_A[a].weight.float()
                if getattr(m, "fan_in_fan_out", False):
                    delta = delta.T
                d = offset + delta * m.scaling[a]
                v = (f * d * d).sum()
            total = v if total is None else total + v
        return 0.5 * self.lam * total
