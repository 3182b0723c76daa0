"""Which RECALL layer each parameter belongs to.

RECALL weights models per layer, where layer l is entry l of ``output_hidden_states``: 0 is the
embedding output and l >= 1 the output of block l-1. So (our reading, notes section 2):

- token and position embeddings -> layer 0
- block i (``model.layers.i.``, GPT-2's ``transformer.h.i.``) -> layer i + 1
- final norm and lm_head -> layer L (the last hidden state)

Tied embeddings are stored once (as the input embedding) and so are merged once, with layer 0's
weights. Covers the Llama, Qwen2, Mistral, Gemma (1-3) and GPT-2 families, and any model whose
names follow the same patterns.
"""

from __future__ import annotations

import re

from .base import MergeError

_BLOCK = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|layer)\.(\d+)\.")
_EMBED = re.compile(r"(?:^|\.)(?:embed_tokens|wte|wpe|embed_positions|word_embeddings|embeddings)(?:\.|$)")
_FINAL = re.compile(r"(?:^|\.)(?:norm|ln_f|final_layernorm|final_norm|lm_head|embed_out|score)(?:\.|$)")


def num_layers_of(config: dict) -> int:
    """Number of transformer blocks L from a config.json dict (text config for multimodal configs)."""
    cfg = config.get("text_config", config)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in cfg:
            return int(cfg[key])
    raise MergeError("config.json has no num_hidden_layers / n_layer: cannot map parameters to layers")


def layer_of(name: str, num_layers: int) -> int:
    """RECALL layer index (0..num_layers) of parameter ``name``."""
    m = _BLOCK.search(name)
    if m:
        i = int(m.group(1))
        if i >= num_layers:
            raise MergeError(f"parameter {name} names block {i}, but the config has {num_layers} blocks")
        return i + 1
    if _EMBED.search(name):
        return 0
    if _FINAL.search(name):
        return num_layers
    raise MergeError(f"cannot place parameter {name!r} in a layer: supported families are Llama, Qwen2, "
                     f"Mistral, Gemma and GPT-2 (embeddings -> 0, blocks -> 1..L, final norm/lm_head -> L)")
