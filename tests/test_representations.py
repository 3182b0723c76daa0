"""layer_representations: shapes, pooling, and independence from padding side and batch size."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from recall.representations import layer_representations, shared_affixes
from recall.tiny import make_tiny_checkpoint

TEXTS = ["the quick brown fox jumps over the lazy dog and keeps running", "hi", "what who where",
         "ham spam free prize call now winner", "x", "positive negative fresh rotten movie review"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model_tok(request, tmp_path_factory):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp(request.param) / "m", family=request.param)
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _reps(model, tok, side, **kw):
    tok.padding_side = side
    return layer_representations(model, tok, TEXTS, progress=False, **kw)


def test_shape_dtype_and_order(model_tok):
    model, tok = model_tok
    r = _reps(model, tok, "left")
    n_layers = model.config.num_hidden_layers
    assert r.shape == (n_layers + 1, len(TEXTS), model.config.hidden_size)
    assert r.dtype == torch.float32 and r.device.type == "cpu" and torch.isfinite(r).all()
    # input order is kept although texts are sorted by length internally
    alone = layer_representations(model, tok, [TEXTS[1]], progress=False)
    torch.testing.assert_close(r[:, 1:2], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pooling", ["mean", "last", "content"])
@pytest.mark.parametrize("side,batch_size", [("left", 1), ("left", 4), ("right", 1), ("right", 3), ("right", 8)])
def test_padding_side_and_batch_size_invariance(model_tok, pooling, side, batch_size):
    model, tok = model_tok
    ref = _reps(model, tok, "left", batch_size=len(TEXTS), pooling=pooling)
    got = _reps(model, tok, side, batch_size=batch_size, pooling=pooling)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_pooling_matches_manual_forward(model_tok):
    model, tok = model_tok
    text = TEXTS[0]
    enc = tok([text], return_tensors="pt")
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
    mean = layer_representations(model, tok, [text], pooling="mean", progress=False)
    last = layer_representations(model, tok, [text], pooling="last", progress=False)
    torch.testing.assert_close(mean[:, 0], torch.stack([h[0].mean(0) for h in hs]), atol=1e-5, rtol=0)
    torch.testing.assert_close(last[:, 0], torch.stack([h[0, -1] for h in hs]), atol=1e-5, rtol=0)


def test_layers_subset_and_max_length(model_tok):
    model, tok = model_tok
    full = _reps(model, tok, "right")
    sub = _reps(model, tok, "right", layers=[0, -1])
    torch.testing.assert_close(sub, full[[0, -1]])
    short = _reps(model, tok, "right", max_length=2)
    torch.testing.assert_close(short[:, 1], full[:, 1], atol=1e-5, rtol=0)  # "hi" is short anyway
    assert not torch.allclose(short[:, 0], full[:, 0])
    with pytest.raises(ValueError, match="out of range"):
        _reps(model, tok, "right", layers=[99])


def test_bf16_model_gives_float32(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(path)
    m32 = AutoModelForCausalLM.from_pretrained(path)
    m16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    r16 = layer_representations(m16, tok, TEXTS, progress=False)
    assert r16.dtype == torch.float32 and torch.isfinite(r16).all()
    r32 = layer_representations(m32, tok, TEXTS, progress=False)
    assert (r16 - r32).abs().max() < 0.1 * r32.abs().max()


def test_training_mode_restored(model_tok):
    model, tok = model_tok
    model.train()
    _reps(model, tok, "left")
    assert model.training
    model.eval()


@pytest.mark.parametrize("texts,kw,match", [
    ([], {}, "empty list of texts"),
    (["a"], {"pooling": "max"}, "content, mean, last"),
    (["a b c", "a d c"], {"pooling": "content", "trim": (2, 2)}, "no tokens left"),
    (["a b c", "a d c"], {"pooling": "content", "trim": (-1, 0)}, "two integers >= 0"),
    (["a", ""], {}, r"positions \[1\]"),
    (["a"], {"batch_size": 0}, "batch_size"),
])
def test_errors(model_tok, texts, kw, match):
    model, tok = model_tok
    with pytest.raises(ValueError, match=match):
        layer_representations(model, tok, texts, progress=False, **kw)


TEMPLATED = [f"<|user|> Classify this text please. Text: {w} ok? Answer with one word. <|assistant|>"
             for w in ["stocks fell sharply", "the team won", "free prize call now", "rain"]]


def test_shared_affixes_are_the_template(model_tok):
    _, tok = model_tok
    pre, suf = shared_affixes(tok, TEMPLATED)
    ids = [tok(t)["input_ids"] for t in TEMPLATED]
    assert pre > 0 and suf > 0
    assert all(x[:pre] == ids[0][:pre] and x[len(x) - suf:] == ids[0][len(ids[0]) - suf:] for x in ids)
    assert len({x[pre] for x in ids}) > 1 and len({x[len(x) - suf - 1] for x in ids}) > 1  # maximal
    assert shared_affixes(tok, TEMPLATED[:1]) == (0, 0)
    assert shared_affixes(tok, [TEMPLATED[0]] * 3) == (len(ids[0]) - 1, 0)  # one token is always left


def test_content_pooling_is_the_mean_of_the_own_tokens(model_tok):
    model, tok = model_tok
    pre, suf = shared_affixes(tok, TEMPLATED)
    got = layer_representations(model, tok, TEMPLATED, pooling="content", progress=False)
    for i, text in enumerate(TEMPLATED):
        enc = tok([text], return_tensors="pt")
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states
        n = enc["input_ids"].shape[1]
        want = torch.stack([h[0, pre:n - suf].mean(0) for h in hs])
        torch.testing.assert_close(got[:, i], want, atol=1e-5, rtol=0)
    # an explicit trim measured on the whole set pools a subset over the same positions
    sub = layer_representations(model, tok, TEMPLATED[:2], pooling="content", trim=(pre, suf), progress=False)
    torch.testing.assert_close(sub, got[:, :2], atol=1e-5, rtol=0)
    whole = layer_representations(model, tok, TEMPLATED, pooling="mean", progress=False)
    assert not torch.allclose(whole, got)
