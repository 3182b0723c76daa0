"""Per-layer sentence representations: one pooled vector per text for every hidden state.

RECALL compares models through their internal representations of a few typical samples. Here a
sample's representation at layer l is its pooled ``output_hidden_states[l]`` (l = 0: embedding
output, l = 1..L: output of block l; in Hugging Face models the last entry already has the final
norm applied). The paper says the representations are averaged over a sample's tokens. Poolings:

- ``"content"`` (RECALL's default): mean over the sample's own tokens, i.e. without the token prefix and
  suffix that every sample of the set shares (chat template, system prompt, instruction, label list,
  generation prompt). Over a whole chat prompt about half the tokens are such shared text, which pulls
  every sample's mean toward the same point. The shared affixes are measured once on a set of texts
  (:func:`shared_affixes`) and passed as ``trim``, so every model and every subset of the set is pooled
  over the same positions.
- ``"mean"``: mean over every non-padding token (the whole prompt); the reading of our first runs.
- ``"last"``: the last non-padding token.

Padding is masked out and position ids are computed from the attention mask (``recall.encoding``),
so the result does not depend on the padding side or the batch size (up to float noise).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .encoding import collate, common_prefix_len, input_device, pad_token_id, tokenize

POOLINGS = ("content", "mean", "last")


def shared_affixes(tokenizer, texts: Sequence[str], max_length: int = 512) -> tuple[int, int]:
    """(prefix, suffix): how many leading and trailing tokens every one of ``texts`` shares (tokenized as
    :func:`layer_representations` does), leaving at least one token of each text. Fewer than two texts
    share nothing: (0, 0)."""
    ids = [tokenize(tokenizer, t, special_tokens=True, max_length=max_length) for t in texts]
    if len(ids) < 2 or min(len(x) for x in ids) < 2:
        return 0, 0
    cap = min(len(x) for x in ids) - 1
    prefix = common_prefix_len(ids, cap)
    suffix = common_prefix_len([x[::-1] for x in ids], cap - prefix)
    return prefix, suffix


def _pool(h: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, H) hidden states, (B, T) bool mask -> (B, H) float32. Padding positions may hold
    anything (even NaN from fully masked attention rows): they are filled, never multiplied.
    ``"content"`` gets a mask that already excludes the shared affixes."""
    h = h.float()
    if pooling in ("mean", "content"):
        summed = h.masked_fill(~mask[..., None], 0.0).sum(dim=1)
        return summed / mask.sum(dim=1, keepdim=True).to(h.dtype)
    pos = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, pos, -1).max(dim=1).values
    return h[torch.arange(h.shape[0], device=h.device), last]


def _span_mask(mask: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """The padding ``mask`` restricted to each row's token span [start, end) (positions among its real tokens)."""
    pos = torch.cumsum(mask.long(), dim=1) - 1  # position of each real token in its row
    start = torch.tensor([s for s, _ in spans])[:, None]
    end = torch.tensor([e for _, e in spans])[:, None]
    return mask & (pos >= start) & (pos < end)


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
                          layers: Sequence[int] | None = None,
                          trim: tuple[int, int] | None = None) -> torch.Tensor:
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
        ``"mean"`` over non-padding tokens (default), ``"content"`` (mean without the ``trim`` affixes) or
        ``"last"`` non-padding token.
    device
        Where the forward pass runs; default: the model's device.
    layers
        Optional subset of hidden-state indices to keep (negative indices allowed), to save
        memory; default: all L+1.
    trim
        ``(prefix, suffix)`` token counts left out of ``"content"`` pooling (from :func:`shared_affixes` on
        the set the texts come from); default: the affixes ``texts`` themselves share.

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
    device = torch.device(device) if device is not None else input_device(model)
    side = getattr(tokenizer, "padding_side", "right")
    pad_id = pad_token_id(tokenizer)

    ids = [tokenize(tokenizer, t, special_tokens=True, max_length=max_length) for t in texts]
    empty = [i for i, x in enumerate(ids) if len(x) == 0]
    if empty:
        raise ValueError(f"texts at positions {empty[:10]} tokenize to no tokens; drop empty texts")
    order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
    keep_span: dict[int, tuple[int, int]] = {}
    if pooling == "content":
        pre, suf = shared_affixes(tokenizer, texts, max_length) if trim is None else trim
        if isinstance(pre, bool) or isinstance(suf, bool) or int(pre) != pre or int(suf) != suf or pre < 0 or suf < 0:
            raise ValueError(f"trim must be two integers >= 0 (prefix, suffix), got {trim!r}")
        short = [i for i, x in enumerate(ids) if len(x) <= pre + suf]
        if short:
            raise ValueError(f"texts at positions {short[:10]} have no tokens left after trimming {pre} prefix and "
                             f"{suf} suffix tokens; compute trim with shared_affixes on the set they come from")
        keep_span = {i: (int(pre), len(ids[i]) - int(suf)) for i in range(len(ids))}

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
                pool_mask = mask.bool()
                if keep_span:
                    pool_mask = _span_mask(mask.bool(), [keep_span[i] for i in idx])
                res = body(input_ids=batch["input_ids"].to(device), attention_mask=mask.to(device),
                            position_ids=batch["position_ids"].to(device), output_hidden_states=True,
                            use_cache=False)
                hidden = res.hidden_states
                keep = _layer_indices(layers, len(hidden))
                # each layer's states stay on their layer's device (a device_map spreads them); pooled on the CPU
                pooled = torch.stack([_pool(hidden[j], pool_mask.to(hidden[j].device), pooling).cpu() for j in keep])
                if out is None:
                    out = torch.empty((pooled.shape[0], len(texts), pooled.shape[2]), dtype=torch.float32)
                out[:, torch.tensor(idx)] = pooled
                bar.update(len(idx))
    finally:
        model.train(was_training)
    return out
