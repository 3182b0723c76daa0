"""recall.encoding: one encoder and one collator for every causal-LM input (table-driven)."""

from __future__ import annotations

import copy

import pytest
import torch
from tokenizers import processors

from recall.assets import load_model, load_tokenizer
from recall.encoding import collate, encode, pad_token_id, tokenize
from recall.tiny import make_tiny_checkpoint, make_tiny_tokenizer

PROMPT = "<|im_start|>user\nfox ->"  # starts with the tiny tokenizer's BOS token text
PLAIN = "the quick brown fox"
ANSWER = " sport"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """The tiny tokenizer: adds no special tokens of its own."""
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def bos_tok(tok):
    """The same tokenizer, adding its BOS before every text when asked for special tokens."""
    t = copy.deepcopy(tok)
    t._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{t.bos_token} $A", special_tokens=[(t.bos_token, t.bos_token_id)])
    return t


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- encode

# (tokenizer, prompt, answer, options, expected input_ids, expected labels) in parts:
# B = bos id, P = prompt ids, A = answer ids, E = eos id; a leading "_" masks the part (-100)
ENCODE = [
    ("tok", PLAIN, None, {}, "P", "P"),  # text only: the text is its own target
    ("tok", PLAIN, None, {"eos": True}, "P E", "P E"),
    ("tok", PROMPT, ANSWER, {}, "P A", "_P A"),  # LM-Cocktail: answer, no eos
    ("tok", PROMPT, ANSWER, {"eos": True}, "P A E", "_P A E"),  # training: answer + eos
    ("tok", PROMPT, ANSWER, {"special_tokens": True}, "P A", "_P A"),  # this tokenizer adds none
    ("bos", PLAIN, ANSWER, {"special_tokens": True}, "B P A", "_B _P A"),
    ("bos", PLAIN, ANSWER, {"special_tokens": False}, "P A", "_P A"),
    ("bos", PLAIN, ANSWER, {"special_tokens": "auto"}, "B P A", "_B _P A"),
    ("bos", PROMPT, ANSWER, {"special_tokens": "auto"}, "P A", "_P A"),  # the prompt holds its BOS already
    ("bos", PROMPT, ANSWER, {"special_tokens": True}, "B P A", "_B _P A"),  # a second BOS: why "auto" exists
    ("bos", PLAIN, None, {"special_tokens": "auto", "eos": True}, "B P E", "B P E"),
]


def _expand(spec: str, parts: dict[str, list[int]]) -> list[int]:
    out: list[int] = []
    for p in spec.split():
        ids = parts[p.lstrip("_")]
        out += [-100] * len(ids) if p.startswith("_") else ids
    return out


@pytest.mark.parametrize("which, prompt, answer, kw, want_ids, want_labels", ENCODE)
def test_encode(tok, bos_tok, which, prompt, answer, kw, want_ids, want_labels):
    t = bos_tok if which == "bos" else tok
    parts = {"B": [t.bos_token_id], "P": _ids(t, prompt), "A": _ids(t, ANSWER), "E": [t.eos_token_id]}
    e = encode(t, prompt, answer, **kw)
    assert e == {"input_ids": _expand(want_ids, parts), "labels": _expand(want_labels, parts)}


def test_encode_joins_ids_not_strings(tok):
    """Prompt and answer are tokenized apart: the boundary is exact even where the joined string
    would tokenize differently."""
    e = encode(tok, "th", "e")
    assert e["input_ids"] == _ids(tok, "th") + _ids(tok, "e")
    assert _ids(tok, "the") != e["input_ids"]


ENCODE_ERRORS = [
    ("", None, {}, "prompt '' tokenizes to no tokens"),
    (PROMPT, "", {}, "answer '' tokenizes to no tokens"),
    (PROMPT, ANSWER, {"special_tokens": "yes"}, "special_tokens must be"),
    (PROMPT, ANSWER, {"eos": True, "max_length": "short"}, r"more than max_length=\d+"),
]


@pytest.mark.parametrize("prompt, answer, kw, match", ENCODE_ERRORS)
def test_encode_errors(tok, prompt, answer, kw, match):
    if kw.get("max_length") == "short":
        kw = {**kw, "max_length": len(encode(tok, prompt, answer, eos=True)["input_ids"]) - 1}
    with pytest.raises(ValueError, match=match):
        encode(tok, prompt, answer, **kw)


def test_encode_max_length_is_inclusive_and_eos_needs_a_token(tok):
    n = len(encode(tok, PROMPT, ANSWER, eos=True)["input_ids"])
    assert len(encode(tok, PROMPT, ANSWER, eos=True, max_length=n)["input_ids"]) == n
    no_eos = copy.deepcopy(tok)
    no_eos.eos_token = None
    with pytest.raises(ValueError, match="no eos token"):
        encode(no_eos, PROMPT, ANSWER, eos=True)
    assert encode(no_eos, PROMPT, ANSWER) == encode(tok, PROMPT, ANSWER)  # without eos it is not needed


@pytest.mark.parametrize("which, special, max_length, want", [
    ("tok", False, None, "P"), ("bos", True, None, "B P"), ("bos", "auto", None, "B P"),
    ("bos", True, 3, "B P2"),  # truncation counts the special tokens
    ("tok", False, 2, "P2"),
])
def test_tokenize(tok, bos_tok, which, special, max_length, want):
    t = bos_tok if which == "bos" else tok
    p = _ids(t, PLAIN)
    parts = {"B": [t.bos_token_id], "P": p, "P2": p[:2]}
    assert tokenize(t, PLAIN, special, max_length) == _expand(want, parts)
    adds_bos = which == "bos" and special in (True, "auto")
    assert tokenize(t, "", special) == ([t.bos_token_id] if adds_bos else [])  # no checks here


# --------------------------------------------------------------------------- collate

EXAMPLES = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]

# (side, prefix, input_ids, attention_mask, labels, position_ids), pad id 0
COLLATE = [
    ("right", 0, [[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]], [[-100, 6, 7], [8, -100, -100]],
     [[0, 1, 2], [0, 0, 0]]),
    ("left", 0, [[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]], [[-100, 6, 7], [-100, -100, 8]],
     [[0, 1, 2], [0, 0, 0]]),
    ("left", 2, [[5, 6, 7], [0, 0, 8]], [[1, 1, 1, 1, 1], [1, 1, 0, 0, 1]], [[-100, 6, 7], [-100, -100, 8]],
     [[2, 3, 4], [1, 1, 2]]),
    ("right", 2, [[5, 6, 7], [8, 0, 0]], [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], [[-100, 6, 7], [8, -100, -100]],
     [[2, 3, 4], [2, 2, 2]]),
]


@pytest.mark.parametrize("side, prefix, ids, mask, labels, pos", COLLATE)
def test_collate(side, prefix, ids, mask, labels, pos):
    got = collate(EXAMPLES, pad_id=0, side=side, prefix=prefix)
    want = {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": pos}
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == torch.long and got[k].tolist() == v, k
    unlabelled = collate([{"input_ids": e["input_ids"]} for e in EXAMPLES], pad_id=9, side=side, prefix=prefix)
    assert "labels" not in unlabelled
    assert unlabelled["input_ids"].tolist() == [[9 if x == 0 else x for x in row] for row in ids]


@pytest.mark.parametrize("examples, kw, match", [
    ([], {}, "no examples"),
    ([{"input_ids": [1]}, {"input_ids": []}], {}, "has no tokens"),
    ([{"input_ids": [1], "labels": [1]}, {"input_ids": [2]}], {}, "every example has labels or none"),
    ([{"input_ids": [1]}], {"side": "middle"}, "'left' or 'right'"),
])
def test_collate_errors(examples, kw, match):
    with pytest.raises(ValueError, match=match):
        collate(examples, 0, **kw)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_gives_the_unpadded_logits(tmp_path, side):
    """The mask and position ids make a padded row read exactly like the example alone."""
    model, tok = load_model(make_tiny_checkpoint(tmp_path / "m"))
    examples = [encode(tok, t, ANSWER, eos=True) for t in (PROMPT, PLAIN + " jumps over the lazy dog", "x")]
    batch = collate(examples, pad_token_id(tok), side=side)
    with torch.no_grad():
        logits = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits
        for r, e in enumerate(examples):
            n = len(e["input_ids"])
            alone = model(input_ids=torch.tensor([e["input_ids"]])).logits[0]
            cols = slice(logits.shape[1] - n, None) if side == "left" else slice(0, n)
            torch.testing.assert_close(logits[r, cols], alone, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- pad id and tokenizer setup

@pytest.mark.parametrize("drop, want", [((), "pad"), (("pad_token",), "eos"), (("pad_token", "eos_token"), 0)])
def test_pad_token_id_fallback(tok, drop, want):
    t = copy.deepcopy(tok)
    for name in drop:
        setattr(t, name, None)
    assert pad_token_id(t) == {"pad": tok.pad_token_id, "eos": tok.eos_token_id}.get(want, want)


def test_load_tokenizer_sets_pad_token_and_left_padding(tmp_path, tok):
    path = make_tiny_checkpoint(tmp_path / "m")
    bare = copy.deepcopy(tok)
    bare.pad_token = None
    bare.padding_side = "right"
    bare.save_pretrained(path)
    t = load_tokenizer(path)
    assert (t.pad_token, t.padding_side) == (t.eos_token, "left")
    _, t2 = load_model(path)
    assert (t2.pad_token, t2.padding_side) == (t.eos_token, "left")
