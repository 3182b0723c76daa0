"""Causal-LM inputs: tokenizing a prompt and an optional answer, and padding examples into a batch.

Every model input of the package goes through here (training, rank-classification scoring,
layer representations, LM-Cocktail's losses); each caller states its convention with explicit
options instead of re-implementing it.

Encoding (:func:`encode`)
    An example is ``prompt ids + answer ids [+ eos]``: the prompt and the answer are tokenized
    separately and their ids concatenated, so the token boundary between them is exact (a
    tokenizer could merge characters across it when tokenizing the joined string). The answer is
    appended as given (no space is inserted) and never gets special tokens.

    - ``special_tokens`` applies to the prompt: ``False`` (none; for chat-formatted prompts, whose
      template already wrote them), ``True`` (the tokenizer's own, e.g. a BOS), or ``"auto"``
      (the tokenizer's own unless the prompt already starts with the BOS token's text).
    - ``eos=True`` appends the tokenizer's EOS id at the end (after the answer, or after the prompt
      when there is none); it is a target like the answer.
    - ``labels``: -100 on the prompt, the answer (+ eos) ids after it. Without an answer the whole
      text (+ eos) is the target (plain language-modelling loss).
    - An empty prompt or answer (no tokens) is an error, and so is an example longer than
      ``max_length``: nothing is truncated here (cutting a chat-formatted prompt would corrupt its
      template). :func:`tokenize` is the primitive without these checks, with optional truncation.

Padding (:func:`collate`)
    Examples (dicts with ``input_ids`` and optionally ``labels``) become a batch of ``input_ids``
    (``pad_id`` on padding), ``attention_mask`` (1 on real tokens), ``labels`` (-100 on padding;
    only when the examples have labels) and ``position_ids`` (real tokens count from 0 whatever
    the padding side: ``cumsum(mask) - 1``, clamped at 0). ``side="right"`` keeps every real token
    at its unpadded position; ``side="left"`` puts the last real tokens in the last column (what
    batched next-token scoring wants). ``prefix=n`` says the rows continue a shared prefix of ``n``
    tokens already in the KV cache: the mask gets ``n`` leading ones and positions count from them.

Pad id (:func:`pad_token_id`)
    The tokenizer's pad token, else its EOS token, else 0. The pad id only fills masked positions,
    so it never changes a result.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SIDES = ("left", "right")


def common_prefix_len(seqs: Sequence[Sequence[int]], cap: int | None = None) -> int:
    """Length of the token prefix every sequence shares, at most ``cap`` (default: leaving at least one token of
    each sequence)."""
    n = min(len(x) for x in seqs) - 1 if cap is None else cap
    first = seqs[0]
    for x in seqs[1:]:
        i = 0
        while i < n and x[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id, else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    return 0


def _starts_with_bos(tokenizer, text: str) -> bool:
    bos = getattr(tokenizer, "bos_token", None)
    return bool(bos) and text.startswith(bos)


def tokenize(tokenizer, text: str, special_tokens: bool | str = False, max_length: int | None = None) -> list[int]:
    """Token ids of ``text``; ``special_tokens`` as in :func:`encode`; ``max_length`` truncates (the
    tokenizer's own truncation, special tokens included). No checks: the result may be empty."""
    if special_tokens == "auto":
        special_tokens = not _starts_with_bos(tokenizer, text)
    elif not isinstance(special_tokens, bool):
        raise ValueError(f"special_tokens must be True, False or 'auto', got {special_tokens!r}")
    kw = {} if max_length is None else {"truncation": True, "max_length": max_length}
    return list(tokenizer(text, add_special_tokens=special_tokens, **kw)["input_ids"])


def encode(tokenizer, prompt: str, answer: str | None = None, *, special_tokens: bool | str = False,
           eos: bool = False, max_length: int | None = None) -> dict[str, list[int]]:
    """``{"input_ids", "labels"}`` of one example (see the module docstring for the conventions)."""
    ids = tokenize(tokenizer, prompt, special_tokens)
    if not ids:
        raise ValueError(f"the prompt {prompt[:40]!r} tokenizes to no tokens")
    target: list[int] = []
    if answer is not None:
        target = tokenize(tokenizer, str(answer))
        if not target:
            raise ValueError(f"the answer {answer!r} tokenizes to no tokens")
    if eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token; eos=True appends it to every example")
        target = target + [tokenizer.eos_token_id]
    n = len(ids) + len(target)
    if max_length is not None and n > max_length:
        raise ValueError(f"example is {n} tokens long (prompt {len(ids)} + answer/eos {len(target)}), more than "
                         f"max_length={max_length}; nothing is truncated: shorten the prompt (a task's "
                         f"max_text_tokens) or raise max_length (TrainConfig.max_length in training)")
    if answer is None:
        return {"input_ids": ids + target, "labels": ids + target}
    return {"input_ids": ids + target, "labels": [-100] * len(ids) + target}


def collate(examples: Sequence[dict], pad_id: int, side: str = "right", prefix: int = 0) -> dict[str, torch.Tensor]:
    """Pad examples into ``input_ids``, ``attention_mask``, ``position_ids`` (and ``labels`` when the
    examples have them). Shapes (B, T), the mask (B, prefix + T)."""
    if side not in SIDES:
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if not examples:
        raise ValueError("no examples to collate")
    has_labels = "labels" in examples[0]
    if any(("labels" in e) != has_labels for e in examples):
        raise ValueError("either every example has labels or none has")
    if any(len(e["input_ids"]) == 0 for e in examples):
        raise ValueError("an example has no tokens")
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), prefix + width), dtype=torch.long)
    mask[:, :prefix] = 1
    for r, e in enumerate(examples):
        n = len(e["input_ids"])
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        ids[r, cols] = torch.tensor(e["input_ids"], dtype=torch.long)
        if has_labels:
            labels[r, cols] = torch.tensor(e["labels"], dtype=torch.long)
        mask[r, prefix + cols.start: prefix + cols.stop] = 1
    out = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)[:, prefix:]}
    if has_labels:
        out["labels"] = labels
    return out


def input_device(model) -> torch.device:
    """Where a model's inputs go: its input embeddings' device (the first device of a model dispatched over
    several with a ``device_map``)."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(emb, "weight", None)
    if weight is not None and weight.device.type != "meta":
        return weight.device
    try:
        return next(p.device for p in model.parameters() if p.device.type != "meta")
    except StopIteration:
        return torch.device("cpu")
