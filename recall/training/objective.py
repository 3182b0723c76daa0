"""The training objective: samples -> examples, and the answer negative log-likelihood.

The loss is the token-mean cross-entropy of the answer and eos tokens (see ``recall.training``).

Length policy
    ``TrainConfig.max_length`` bounds prompt + answer + eos. An example that does not fit is an
    error (raised before any training, naming the sample), never silently truncated: cutting a
    chat-formatted prompt would corrupt its template, and the task code already truncates the text
    (``max_text_tokens``). Raise ``max_length`` or lower ``max_text_tokens``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..encoding import collate, encode, pad_token_id
from ..samples import Sample


def _check_samples(samples: Sequence[Sample], what: str = "samples") -> None:
    if not samples:
        raise ValueError(f"no {what} to train on; pass at least one Sample with an answer")
    for i, s in enumerate(samples):
        if not isinstance(s, Sample):
            raise TypeError(f"{what}[{i}] is a {type(s).__name__}, not a recall.samples.Sample")
        if s.answer is None or not str(s.answer):
            raise ValueError(f"{what}[{i}] has no answer; supervised fine-tuning needs Sample(text, answer)")


def encode_samples(tokenizer, samples: Sequence[Sample], max_length: int | None) -> list[dict]:
    """Examples ``{"input_ids", "labels"}`` of prompt + answer + eos, labels -100 on the prompt, no
    special tokens (``recall.encoding.encode``). Raises, naming the sample, on over-long ones."""
    _check_samples(samples)
    out = []
    for i, s in enumerate(samples):
        try:
            out.append(encode(tokenizer, s.text, s.answer, eos=True, max_length=max_length))
        except ValueError as e:
            raise ValueError(f"sample {i}: {e}") from None
    return out


def _supports_logits_to_keep(model) -> bool:
    base = model
    while hasattr(base, "get_base_model") or hasattr(base, "module"):
        base = base.get_base_model() if hasattr(base, "get_base_model") else base.module
    try:
        return "logits_to_keep" in inspect.signature(type(base).forward).parameters
    except (TypeError, ValueError):
        return False


def _answer_nll(model, batch: dict, keep_logits: bool) -> torch.Tensor:
    """Per-token negative log-likelihood (fp32) of every labelled token of the batch, flattened.

    Logits are computed only where a label is predicted (``logits_to_keep`` with a boolean mask,
    when the model supports it): the output head over a large vocabulary is a fifth of the cost of a
    small model, and the prompt positions do not need it.
    """
    labels = batch["labels"]
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    where = targets != -100
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    if keep_logits:
        kwargs["logits_to_keep"] = where
    logits = model(**kwargs).logits
    if logits.dim() == 3:
        logits = logits[where]
    return F.cross_entropy(logits.float(), targets[where], reduction="none")


@torch.no_grad()
def mean_answer_loss(model, tokenizer, samples: Sequence[Sample], batch_size: int = 8,
                     max_length: int | None = None) -> float:
    """Token-mean answer+eos cross-entropy of ``samples`` under ``model`` (the training objective)."""
    examples = encode_samples(tokenizer, samples, max_length or None)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    keep = _supports_logits_to_keep(model)
    total, count = 0.0, 0
    try:
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[i:i + batch_size], pad_token_id(tokenizer)).items()}
            nll = _answer_nll(model, batch, keep)
            total += nll.sum().item()
            count += nll.numel()
    finally:
        model.train(was_training)
    return total / count
