"""LM-Cocktail: model-level weights from each model's loss on a few samples of the new task.

Reference: Xiao, Liu, Zhang and Xing, "LM-Cocktail: Resilient Tuning of Language Models via Model
Merging", Findings of ACL 2024 (arXiv 2311.13534); official code FlagOpen/FlagEmbedding,
``LM_Cocktail/utils.py: compute_weights`` and ``cocktail.py: mix_models_with_data``.

    loss_i = mean token cross-entropy of pool model i on the chosen samples
    w = softmax(-loss / temperature) over the pool
    merged = sum_i w_i * theta_i

The pool is the base model (when given and ``include_base``) followed by the models, oldest first
(``recall.merge.pool.model_pool``). A sample's loss covers its answer tokens when ``Sample.answer``
is set (the answer's tokens are appended to the text's, as given: no space or EOS is added) and
its text tokens otherwise, as LM-Cocktail's decoder loss does (``labels = -100`` on the prompt).
Sequences are right-padded, so padding never shifts positions or leaks into the loss.

Options (paper / official-code defaults):
- ``temperature`` (default ``5.0``): softmax temperature (``mix_models_with_data(temperature=5.0)``), > 0.
- ``n_samples`` (default ``5``): how many samples of ``MergeContext.samples`` to score: the paper's
  "a few examples (e.g., five examples)". When more are given, a seeded random choice
  (``MergeContext.seed``) picks them; when fewer, all are used.
- ``include_base`` (default ``True``): whether the base model joins the pool (LM-Cocktail mixes the
  fine-tuned model with the pre-trained base).
- ``alpha`` (default ``None``): ``None`` gives the formula above (what ``mix_models_with_data`` does
  over its whole model list). A number in [0, 1] gives the paper's resilient-tuning form
  ``merged = alpha * theta_N + (1 - alpha) * sum_i w_i theta_i``, where theta_N is the newest model
  (the fine-tuned one) and the softmax runs over the rest of the pool; the paper's experiments (and
  the README's ``mix_models(..., weights=[0.5, 0.5])``) use alpha = 0.5.

``report()`` gives the final per-model weights as a one-row table under ``"weights"`` (columns: pool
models; with ``"pool"`` the model card turns it into a mergekit ``linear`` config, and
``layer_linear`` can replay it), and each pool model's loss and weight under ``"losses"``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..encoding import collate, encode, pad_token_id
from .base import MergeContext, MergeError, MergeMethod, Sample, Table, interval, opt
from .layer_linear import pool_names, weighted_sum
from .pool import model_pool
from .registry import register


@torch.no_grad()
def mean_token_loss(model, tok, samples: list[Sample], batch_size: int = 8, device: str | None = None) -> float:
    """Mean cross-entropy per target token of ``model`` over ``samples`` (answer tokens when a sample has
    an answer, text tokens otherwise), over all target tokens of all samples."""
    device = device or next(model.parameters()).device
    encoded = []
    for i, s in enumerate(samples):
        try:  # the tokenizer's special tokens unless a (chat-formatted) text already holds the BOS; no EOS
            encoded.append(encode(tok, s.text, s.answer, special_tokens="auto"))
        except ValueError as e:
            raise MergeError(f"lm_cocktail: sample {i}: {e}") from None
    total, count = 0.0, 0
    for start in range(0, len(encoded), max(1, int(batch_size))):
        # right padding: real tokens keep positions 0..n-1
        batch = collate(encoded[start:start + max(1, int(batch_size))], pad_token_id(tok))
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits.float()
        target = batch["labels"][:, 1:].to(logits.device)
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1),
                                               ignore_index=-100, reduction="sum")
        total += float(ce)
        count += int((target != -100).sum())
    if count == 0:
        raise MergeError("the samples give no tokens to score (one-token texts without answers); pass samples "
                         "with an answer or a longer text")
    return total / count


def softmax_weights(losses: list[float], temperature: float) -> list[float]:
    """softmax(-loss / temperature), computed in float64."""
    return torch.softmax(-torch.tensor(losses, dtype=torch.float64) / float(temperature), dim=0).tolist()


@register("lm_cocktail")
@dataclass
class LMCocktail(MergeMethod):
    """Weighted average of whole models, weights = softmax(-loss on a few new-task samples / temperature)."""

    label = "LM-Cocktail"

    elementwise = True

    temperature: float = opt(5.0, float, interval(0, lo_open=True), "softmax temperature")
    n_samples: int = opt(5, int, interval(1), "samples scored (a seeded choice when more are given)")
    include_base: bool = opt(True, bool, doc="the base model joins the pool")
    alpha: float | None = opt(None, float, interval(0, 1), "weight of the newest model (none: one softmax over "
                                                            "the whole pool)")
    _weights: list[float] | None = field(default=None, init=False, repr=False, compare=False)
    _labels: list[str] = field(default_factory=list, init=False, repr=False, compare=False)
    _paths: list[str] = field(default_factory=list, init=False, repr=False, compare=False)
    _losses: list[float] = field(default_factory=list, init=False, repr=False, compare=False)
    _n_used: int = field(default=0, init=False, repr=False, compare=False)

    needs_samples: ClassVar[bool] = True
    reference: ClassVar[str] = ("Xiao et al., LM-Cocktail: Resilient Tuning of Language Models via Model Merging, "
                                "Findings of ACL 2024 (arXiv 2311.13534)")

    def choose_samples(self, samples: list[Sample], seed: int) -> list[Sample]:
        """``n_samples`` of ``samples``: all when there are no more; else a seeded random choice, in input order."""
        if len(samples) <= self.n_samples:
            return list(samples)
        idx = sorted(random.Random(seed).sample(range(len(samples)), self.n_samples))
        return [samples[i] for i in idx]

    def validate(self, ctx: MergeContext) -> None:
        if not ctx.samples:
            raise MergeError("method 'lm_cocktail' needs samples of the new task: pass --samples FILE or --task NAME")
        if not ctx.models:
            raise MergeError("no models to merge")
        if self.alpha is not None and len(pool_names(ctx, self.include_base)[1]) < 2:
            raise MergeError("lm_cocktail with alpha needs a pool besides the newest model: pass --base DIR "
                             "(with include_base) or more than one model")

    def prepare(self, ctx: MergeContext) -> None:
        from tqdm.auto import tqdm

        from ..assets import load_model

        self.validate(ctx)
        labels, paths = pool_names(ctx, self.include_base)
        # with alpha the newest model is set aside; the softmax runs over the rest of the pool
        scored = paths[:-1] if self.alpha is not None else paths
        samples = self.choose_samples(list(ctx.samples), ctx.seed)
        losses = []
        for path in tqdm(scored, desc="lm_cocktail: losses", unit="model", disable=not ctx.progress):
            model, tok = load_model(path, device=ctx.device)
            try:
                losses.append(mean_token_loss(model, tok, samples, ctx.batch_size, ctx.device))
            finally:
                del model
        soft = softmax_weights(losses, self.temperature)
        if self.alpha is None:
            weights = soft
        else:
            weights = [(1.0 - float(self.alpha)) * w for w in soft] + [float(self.alpha)]
            losses = losses + [math.nan]
        self._weights, self._losses = weights, losses
        self._labels, self._paths = labels, paths
        self._n_used = len(samples)

    def merge_tensor(self, name, layer, base, tensors):
        if self._weights is None:
            raise MergeError("lm_cocktail: call prepare() first (the merge engines do): its weights come from "
                             "the models' losses on the samples")
        pool = model_pool(base, tensors, self.include_base)
        if len(pool) != len(self._weights):
            raise MergeError(f"lm_cocktail was prepared for a pool of {len(self._weights)} models but got "
                             f"{len(pool)} tensors for {name}: pass the same base and models to prepare and merge")
        return weighted_sum(pool, self._weights)

    def weights_table(self) -> Table:
        """The model-level weights as a one-row table (columns: pool models), the shape ``layer_linear``
        replays from a ``recall_weights.csv``."""
        return Table(tuple(self._labels), np.asarray([self._weights], dtype=np.float64))

    def report(self) -> dict[str, Any]:
        if self._weights is None:
            return {}
        import pandas as pd

        losses = pd.DataFrame({"path": self._paths, "loss": self._losses, "weight": self._weights},
                              index=pd.Index(self._labels, name="model"))
        return {"weights": self.weights_table(), "pool": list(self._paths), "losses": losses,
                "temperature": float(self.temperature), "samples_used": self._n_used}
