"""Rank classification: batched, prefix-shared scores equal a plain full forward pass per example."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from recall.scoring import CONTENT_FREE, label_loglik, label_scores, score_task
from recall.tasks import get_task, load_task
from recall.tiny import make_tiny_checkpoint

PROMPTS = [f"<|im_start|>user\nClassify: {t}<|im_end|>\n<|im_start|>assistant\n"
           for t in ["free prize call now", "the film was wonderful", "who won the hockey game in the end",
                     "markets", "a long message about space and cars and guns and hockey and grain"]]
CANDS = ["spam", "positive review", "sport", "business news today"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny(request, tmp_path_factory):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("m") / "m", seed=3, family=request.param)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    return model, tok


def _reference(model, tok, prompts, cands, reduce="sum"):
    out = np.zeros((len(prompts), len(cands)))
    for i, p in enumerate(prompts):
        pi = tok(p, add_special_tokens=False)["input_ids"]
        for j, c in enumerate(cands):
            ci = tok(c, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([pi + ci])
            with torch.no_grad():
                lp = torch.log_softmax(model(ids).logits[0].double(), -1)
            per_token = [lp[len(pi) - 1 + k, t].item() for k, t in enumerate(ci)]
            out[i, j] = {"sum": sum(per_token), "mean": sum(per_token) / len(ci), "first": per_token[0]}[reduce]
    return out


@pytest.mark.parametrize("batch_size,share_prefix", [(1, False), (2, True), (5, True), (3, False)])
def test_label_loglik_matches_reference(tiny, batch_size, share_prefix):
    model, tok = tiny
    ref = _reference(model, tok, PROMPTS, CANDS)
    got = label_loglik(model, tok, PROMPTS, CANDS, batch_size=batch_size, progress=False,
                       share_prefix=share_prefix)
    np.testing.assert_allclose(got, ref, atol=2e-4)


@pytest.mark.parametrize("reduce", ["mean", "first"])
def test_length_normalized_and_first_token_match_reference(tiny, reduce):
    model, tok = tiny
    got = label_loglik(model, tok, PROMPTS, CANDS, batch_size=2, progress=False, reduce=reduce)
    np.testing.assert_allclose(got, _reference(model, tok, PROMPTS, CANDS, reduce), atol=2e-4)


def test_calibrated_scores_divide_out_the_content_free_prior(tiny):
    model, tok = tiny
    task = get_task("rt")
    texts = ["a wonderful film", "dull and long", "fine"]
    got = label_scores(model, tok, task, texts, max_text_tokens=16, progress=False, scoring="calibrated")
    words = [task.answer(i) for i in range(len(task.labels))]

    def probs(ts):
        ll = _reference(model, tok, [task.prompt(t, tok, 16) for t in ts], words)
        p = np.exp(ll - ll.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)

    want = np.log(probs(texts)) - np.log(probs(CONTENT_FREE).mean(0))[None]
    np.testing.assert_allclose(got, want, atol=2e-4)
    # the content-free inputs themselves come out with their prior removed: on average no label is favoured
    free = label_scores(model, tok, task, CONTENT_FREE, max_text_tokens=16, progress=False, scoring="calibrated")
    np.testing.assert_allclose(np.exp(free).mean(0), 1.0, atol=1e-3)


def test_bfloat16_autocast_scores_near_float32_and_leave_the_model_as_it_was(tiny):
    """autocast="bfloat16" scores the same prompts within bf16's rounding (the cpu profile's eval_autocast); the
    model's weights stay float32 and a later plain call is float32 again."""
    model, tok = tiny
    ref = label_loglik(model, tok, PROMPTS, CANDS, batch_size=2, progress=False)
    got = label_loglik(model, tok, PROMPTS, CANDS, batch_size=2, progress=False, autocast="bfloat16")
    assert got.dtype == np.float64 and not np.array_equal(got, ref)  # it really ran in bf16
    np.testing.assert_allclose(got, ref, atol=0.15)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    np.testing.assert_array_equal(label_loglik(model, tok, PROMPTS, CANDS, batch_size=2, progress=False), ref)
    with pytest.raises(ValueError, match="unknown autocast"):
        label_loglik(model, tok, PROMPTS, CANDS, autocast="int8")


def test_label_loglik_bad_input(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="unknown reduce"):
        label_loglik(model, tok, PROMPTS, CANDS, reduce="max")
    with pytest.raises(ValueError, match="unknown scoring"):
        label_scores(model, tok, get_task("rt"), ["x"], scoring="vote")
    with pytest.raises(ValueError, match="no prompts"):
        label_loglik(model, tok, [], CANDS)
    with pytest.raises(ValueError, match="no candidate"):
        label_loglik(model, tok, PROMPTS, [])


def test_score_task_per_example_frame(tiny):
    model, tok = tiny
    task = get_task("sms")
    ds = load_task("sms", n_train=0, n_val=0, n_test=12, seed=0)["test"]
    df = score_task(model, tok, task, ds, max_text_tokens=16, batch_size=4, progress=False)
    assert list(df.columns[:4]) == ["example", "label", "pred", "correct"]
    assert len(df) == 12 and set(df["pred"]) <= {0, 1}
    assert (df["correct"] == (df["pred"] == df["label"])).all()
    ll = df[[f"ll_{w}" for w in task.labels]].to_numpy()
    assert np.isfinite(ll).all() and (ll <= 0).all()


def test_a_model_spread_by_a_device_map_scores_and_reads_as_the_plain_one(tmp_path):
    """load_model(device_map=...): accelerate's dispatch (one block offloaded to disk, so inputs and states move
    between devices through its hooks) gives the same label scores and layer representations."""
    from recall.assets import load_model
    from recall.representations import layer_representations

    path = make_tiny_checkpoint(tmp_path / "m", seed=3)
    plain, tok = load_model(path)
    layers = [f"model.layers.{i}" for i in range(plain.config.num_hidden_layers)]
    device_map = {"model.embed_tokens": "cpu", **{n: "cpu" for n in layers}, layers[1]: "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    spread, _ = load_model(path, device_map=device_map, offload_folder=tmp_path / "offload")
    assert getattr(spread, "hf_device_map", None)
    np.testing.assert_allclose(label_loglik(spread, tok, PROMPTS, CANDS, batch_size=2, progress=False),
                               label_loglik(plain, tok, PROMPTS, CANDS, batch_size=2, progress=False), atol=1e-5)
    a = layer_representations(spread, tok, PROMPTS, batch_size=2, progress=False)
    b = layer_representations(plain, tok, PROMPTS, batch_size=2, progress=False)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
