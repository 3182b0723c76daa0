"""Per-layer sentence representations: one pooled vector per text for every hidden state.

RECALL compares models through their internal representations of a few typical samples. Here a
sample's representation at layer l is its pooled ``output_hidden_states[l]`` (l = 0: embedding
output, l = 1..L: output of block l; in Hugging Face models the last entry already has the final
norm applied). Our reading of the paper: mean over the sample's non-padding tokens ("mean", default;
the paper says the representations are averaged over tokens); "last" (the last non-padding token)
is the alternative.

Padding is masked out and position ids are computed from the attention mask (``recall.encoding``),
so the result does not depend on the padding side or the batch size (up to float noise).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .encoding import collate, pad_token_id, tokenize

POOLINGS = ("mean", "last")


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _pool(h: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, H) hidden states, (B, T) bool mask -> (B, H) float32. Padding positions may hold
    anything (even NaN from fully masked attention rows): they are filled, never multiplied."""
    h = h.float()
    if pooling == "mean":
        summed = h.masked_fill(~mask[..., None], 0.0).sum(dim=1)
        return summed / mask.sum(dim=1, keepdim=True).to(h.dtype)
    pos = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, pos, -1).max(dim=1).values
    return h[torch.arange(h.shape[0], device=h.device), last]


def _layer_indices(layers: Sequence[int] | None, n: int) -> list[int]:
    if layers is None:
        return list(range(n))
    bad = [j for j in layers if not -n <= j < n]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {n} hidden states (0..{n - 1})")
    return [j % n for j in layers]


def layer_representations(model, tokenizer, texts: list[str], batch_size: int = 8, max_length: int = 512,
                          pooling: str = "mean", device: str | torch.device | None = None,
                          progress: bool = True, desc: str | None = None,
                          layers: Sequence[int] | None = None) -> torch.Tensor:
    """Pooled hidden states of ``texts`` at every layer.

    Parameters
    ----------
    model, tokenizer
        A Hugging Face causal LM (any dtype; pooling accumulates in float32) and its tokenizer.
        The tokenizer's ``padding_side`` is used; its pad token only fills masked positions.
    texts
        The inputs, tokenized with the tokenizer's default special tokens, truncated to ``max_length``.
    batch_size, max_length
        Texts are sorted by length (longest first) before batching, to limit padding.
    pooling
        ``"mean"`` over non-padding tokens (default) or ``"last"`` non-padding token.
    device
        Where the forward pass runs; default: the model's device.
    layers
        Optional subset of hidden-state indices to keep (negative indices allowed), to save
        memory; default: all L+1.

    Returns
    -------
    torch.Tensor
        float32 on CPU, shape (L+1, N, H) (or (len(layers), N, H)), rows in the input order.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
    texts = list(texts)
    if not texts:
        raise ValueError("layer_representations got an empty list of texts; pass at least one text")
    if batch_size < 1 or max_length < 1:
        raise ValueError(f"batch_size and max_length must be >= 1, got {batch_size} and {max_length}")
    device = torch.device(device) if device is not None else _model_device(model)
    side = getattr(tokenizer, "padding_side", "right")
    pad_id = pad_token_id(tokenizer)

    ids = [tokenize(tokenizer, t, special_tokens=True, max_length=max_length) for t in texts]
    empty = [i for i, x in enumerate(ids) if len(x) == 0]
    if empty:
        raise ValueError(f"texts at positions {empty[:10]} tokenize to no tokens; drop empty texts")
    order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))

    out: torch.Tensor | None = None
    # the decoder alone gives the same hidden states without computing logits over the vocabulary
    body = model.get_decoder() if hasattr(model, "get_decoder") and model.get_decoder() is not None else model
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(texts), disable=not progress, unit="text",
                                          desc=desc or "representations") as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                batch = collate([{"input_ids": ids[i]} for i in idx], pad_id, side)
                mask = batch["attention_mask"]
                res = body(input_ids=batch["input_ids"].to(device), attention_mask=mask.to(device),
                            position_ids=batch["position_ids"].to(device), output_hidden_states=True,
                            use_cache=False)
                hidden = res.hidden_states
                keep = _layer_indices(layers, len(hidden))
                bmask = mask.to(device).bool()
                pooled = torch.stack([_pool(hidden[j], bmask, pooling) for j in keep]).cpu()
                if out is None:
                    out = torch.empty((pooled.shape[0], len(texts), pooled.shape[2]), dtype=torch.float32)
                out[:, torch.tensor(idx)] = pooled
                bar.update(len(idx))
    finally:
        model.train(was_training)
    return out
