"""Tiny random checkpoints and a tiny tokenizer, built offline in well under a second.

The ``smoke`` profile's model, the copies the efficiency notebook merges, and the tests' models: real
Hugging Face folders (safetensors, config, tokenizer with a chat template) small enough to fine-tune
and merge in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "business entertainment politics sport tech news article about markets and films",
    "positive negative fresh rotten movie review great awful boring wonderful",
    "what who where when why how many question type number location person entity description",
    "ham spam free prize call now winner text message reply stop",
    "graphics hardware space medicine religion politics sale hockey baseball cars guns",
    "earn acquisitions crude trade money interest grain ship product review good bad",
    "Classify the text. Answer with one word. Text: Label: Options: Question: Message: Review:",
    "0123456789 .,:;!?'\"()-",
]

FAMILIES = ("llama", "qwen2", "mistral", "gemma", "gpt2")


def make_tiny_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 384):
    """A byte-level BPE tokenizer with a ChatML template, saved to ``out_dir``; returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out_dir)
    return tok


def tiny_config(family: str = "llama", vocab_size: int = 384, num_layers: int = 4, hidden: int = 32,
                tie_word_embeddings: bool = True):
    """A tiny config of one of the supported architecture families."""
    from transformers import Gemma2Config, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, tie_word_embeddings=tie_word_embeddings, bos_token_id=1,
                  eos_token_id=2, pad_token_id=0)
    if family == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=num_layers, n_head=4, n_positions=256, **common)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig, "gemma": Gemma2Config}[family]
    kw = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **common)
    if family == "gemma":
        kw.update(head_dim=hidden // 4, sliding_window=64)
    return cls(**kw)


def make_tiny_checkpoint(out_dir: str | os.PathLike, seed: int = 0, family: str = "llama",
                         num_layers: int = 4, hidden: int = 32, tokenizer_dir: str | os.PathLike | None = None,
                         perturb_from: str | os.PathLike | None = None, noise: float = 0.02,
                         dtype: torch.dtype = torch.float32, tie_word_embeddings: bool = True) -> Path:
    """Write a tiny random causal LM (safetensors) with a tiny tokenizer into ``out_dir``.

    With ``perturb_from``, start from that checkpoint and add seeded Gaussian noise of scale
    ``noise`` to every float parameter: a stand-in for a fine-tuned expert of a shared base.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None and perturb_from is not None:
        tokenizer_dir = perturb_from
    tok = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else make_tiny_tokenizer(out)
    if tokenizer_dir:
        tok.save_pretrained(out)
    g = torch.Generator().manual_seed(seed)
    if perturb_from is not None:
        model = AutoModelForCausalLM.from_pretrained(perturb_from, dtype=torch.float32)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * noise)
    else:
        torch.manual_seed(seed)
        cfg = tiny_config(family, vocab_size=len(tok), num_layers=num_layers, hidden=hidden,
                          tie_word_embeddings=tie_word_embeddings)
        cfg.pad_token_id = tok.pad_token_id
        cfg.eos_token_id = tok.eos_token_id
        cfg.bos_token_id = tok.bos_token_id
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.to(dtype)
    model.save_pretrained(out)
    return out
