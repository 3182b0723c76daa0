"""Fine-tuning, EWC and the sequential protocol on tiny random checkpoints (CPU, seconds)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from recall import training
from recall.assets import load_model
from recall.samples import Sample
from recall.tiny import make_tiny_checkpoint
from recall.training import (
    EWCState,
    TrainConfig,
    collate,
    encode_samples,
    finetune,
    fisher_diagonal,
    is_complete_checkpoint,
    mean_answer_loss,
    save_checkpoint,
    sequential_finetune,
    train_and_save,
)

WORDS = ["fox", "dog", "markets", "films", "movie", "prize", "hockey", "grain"]
LABELS = ["sport", "tech", "business", "politics"]
LR = {"lora": 1e-2, "full": 1e-3}  # tiny random models need large steps to move in a few updates


def cfg(mode="lora", **kw) -> TrainConfig:
    kw.setdefault("lr", LR[mode])
    kw.setdefault("epochs", 4)
    kw.setdefault("batch_size", 4)
    return TrainConfig(mode=mode, **kw)


def make_samples(tok, words=WORDS, labels=LABELS, offset=0) -> list[Sample]:
    return [Sample(tok.apply_chat_template([{"role": "user", "content": f"{w} ->"}], add_generation_prompt=True,
                                           tokenize=False), labels[(i + offset) % len(labels)])
            for i, w in enumerate(words)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices gain nothing from threads, and on a busy 2-core machine OpenMP spinning makes
    this file 5-10x slower (118 s vs 15 s measured)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("train") / "base")


@pytest.fixture(scope="module")
def samples(base):
    _, tok = load_model(base)
    return make_samples(tok)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train(base, samples, config, ewc=None):
    model, tok = load_model(base)
    return finetune(model, tok, samples, config, ewc=ewc, progress=False)


# --------------------------------------------------------------------------- data and config


def test_loss_mask_covers_answer_and_eos_only(base, samples):
    _, tok = load_model(base)
    ex = encode_samples(tok, samples[:2], 256)
    for e, s in zip(ex, samples):
        prompt = tok(s.text, add_special_tokens=False)["input_ids"]
        answer = tok(s.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert e["input_ids"] == prompt + answer
        assert e["labels"] == [-100] * len(prompt) + answer
    long = Sample(samples[0].text + " fox" * 20, "sport")
    batch = collate(encode_samples(tok, [samples[0], long], 256), tok.pad_token_id)
    short_len = len(ex[0]["input_ids"])
    assert batch["attention_mask"][0].tolist() == [1] * short_len + [0] * (batch["input_ids"].shape[1] - short_len)
    assert (batch["labels"][0, short_len:] == -100).all()  # right padding carries no labels
    assert (batch["input_ids"][0, short_len:] == tok.pad_token_id).all()


def test_overlong_and_unanswered_samples_are_errors(base, samples):
    _, tok = load_model(base)
    with pytest.raises(ValueError, match="max_length=8"):
        encode_samples(tok, samples, 8)
    with pytest.raises(ValueError, match="no answer"):
        encode_samples(tok, [Sample("text only")], 256)
    with pytest.raises(ValueError, match="no samples"):
        encode_samples(tok, [], 256)


@pytest.mark.parametrize("kw, field", [
    (dict(mode="qlora"), "mode"), (dict(epochs=0), "epochs"), (dict(max_steps=0), "max_steps"),
    (dict(batch_size=0), "batch_size"), (dict(grad_accum=1.5), "grad_accum"), (dict(lr=-1.0), "lr"),
    (dict(lr=float("nan")), "lr"), (dict(weight_decay=-0.1), "weight_decay"),
    (dict(warmup_ratio=1.0), "warmup_ratio"), (dict(max_length=1), "max_length"), (dict(lora_r=0), "lora_r"),
    (dict(lora_alpha=0), "lora_alpha"), (dict(lora_dropout=1.0), "lora_dropout"),
    (dict(lora_targets=()), "lora_targets"), (dict(seed=-1), "seed"), (dict(epochs=True), "epochs"),
    (dict(ewc_lambda=-1.0), "ewc_lambda"), (dict(ewc_gamma=0.0), "ewc_gamma"),
    (dict(ewc_samples=0), "ewc_samples"), (dict(max_grad_norm=0.0), "max_grad_norm"),
    (dict(group_by_length="yes"), "group_by_length"), (dict(autocast="float16"), "autocast"),
])
def test_bad_config_values_raise(kw, field):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        TrainConfig(**kw)


def test_config_defaults():
    c = TrainConfig()
    assert (c.mode, c.epochs, c.batch_size, c.lora_r, c.lora_alpha, c.lora_dropout, c.max_length) == \
        ("lora", 2, 8, 8, 16, 0.0, 256)
    assert c.learning_rate == 3e-4 and TrainConfig(mode="full").learning_rate == 2e-5
    assert TrainConfig(lora_targets=["q_proj", "v_proj"]).lora_targets == ("q_proj", "v_proj")


# --------------------------------------------------------------------------- batches


def test_length_grouped_batches_are_seeded_complete_and_pad_less():
    from recall.training.batching import LengthGroupedBatches, padded_tokens

    lengths = [int(x) for x in torch.randint(5, 60, (100,), generator=torch.Generator().manual_seed(0))]
    draw = LengthGroupedBatches(lengths, 8, torch.Generator().manual_seed(3), group=4)
    epochs = [list(draw) for _ in range(3)]
    again = LengthGroupedBatches(lengths, 8, torch.Generator().manual_seed(3), group=4)
    assert [list(again) for _ in range(3)] == epochs  # same seed, same batches, epoch after epoch
    assert epochs[0] != epochs[1] and len(draw) == len(epochs[0]) == 13
    for batches in epochs:
        assert sorted(i for b in batches for i in b) == list(range(100))  # every example once per epoch
        assert sum(len(b) < 8 for b in batches) == 1
    shuffled = torch.randperm(100, generator=torch.Generator().manual_seed(3)).tolist()
    plain = [shuffled[i:i + 8] for i in range(0, 100, 8)]
    assert padded_tokens(epochs[0], lengths) < 0.8 * padded_tokens(plain, lengths)


# --------------------------------------------------------------------------- fine-tuning


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_finetune_lowers_loss_and_is_deterministic(base, samples, mode):
    model, tok = load_model(base)
    before = mean_answer_loss(model, tok, samples)
    r1 = finetune(model, tok, samples, cfg(mode), progress=False)
    after = mean_answer_loss(r1.model, tok, samples)
    assert after < before - 0.2, (before, after)
    assert r1.steps == 8 and len(r1.losses) == 8  # 4 epochs x 2 batches
    assert r1.tokens == 4 * sum(len(e["input_ids"]) for e in encode_samples(tok, samples, 256))
    assert r1.tokens_per_s > 0 and r1.peak_memory_mb > 0
    r2 = train(base, samples, cfg(mode))
    assert same(state(r1.model), state(r2.model))  # same seed -> bit-identical
    r3 = train(base, samples, cfg(mode, seed=1))
    assert not same(state(r1.model), state(r3.model))


@pytest.mark.parametrize("over", [dict(group_by_length=False), dict(autocast="bfloat16")])
def test_batching_and_autocast_options(base, samples, over):
    r1, r2 = train(base, samples, cfg("lora", **over)), train(base, samples, cfg("lora", **over))
    assert same(state(r1.model), state(r2.model))  # deterministic for the seed
    ref = train(base, samples, cfg("lora"))
    assert r1.tokens == ref.tokens and r1.padded_tokens >= r1.tokens
    if "group_by_length" in over:  # the old shuffled batches pad more
        assert r1.padded_tokens > ref.padded_tokens
    else:  # bf16 autocast: the same training, rounded
        assert abs(r1.losses[-1] - ref.losses[-1]) < 0.05 * ref.losses[0]


def test_max_steps_and_grad_accum(base, samples):
    r = train(base, samples, cfg("full", max_steps=5, grad_accum=2, warmup_ratio=0.2))
    assert r.steps == 5 and len(r.losses) == 5


def test_lora_result_is_a_plain_checkpoint(base, samples, tmp_path):
    from transformers import AutoModelForCausalLM

    r = train(base, samples, cfg("lora", epochs=1))
    model = r.model
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not any("lora" in k or "base_layer" in k for k in model.state_dict())
    base_model, tok = load_model(base)
    assert set(model.state_dict()) == set(base_model.state_dict())
    assert not any(p.requires_grad is False for p in model.parameters())  # flags restored
    out = save_checkpoint(model, tok, tmp_path / "ckpt")
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").exists()
    assert not list(tmp_path.glob(".*partial"))
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 30, 77]])
    with torch.no_grad():
        assert torch.equal(model.cpu()(ids).logits, reloaded(ids).logits)
        assert not torch.equal(base_model(ids).logits, reloaded(ids).logits)
    with pytest.raises(FileExistsError):
        save_checkpoint(model, tok, out)


# --------------------------------------------------------------------------- EWC


def _weighted_distance(model, ewc: EWCState) -> float:
    sd = dict(model.named_parameters())
    return sum(float((ewc.fisher[k] * (sd[k].detach().cpu() - ewc.theta_star[k]) ** 2).sum()) for k in ewc.fisher)


def test_fisher_diagonal(base, samples):
    model, tok = load_model(base)
    before = state(model)
    ewc = fisher_diagonal(model, tok, samples, batch_size=4, task="t")
    assert same(before, state(model)) and not model.training
    assert all(p.grad is None for p in model.parameters())
    assert ewc.tasks == ("t",) and ewc.n_samples == len(samples)
    assert set(ewc.fisher) == {n for n, _ in model.named_parameters()}
    assert all((f >= 0).all() for f in ewc.fisher.values())
    assert sum(float(f.sum()) for f in ewc.fisher.values()) > 0
    sub = fisher_diagonal(model, tok, samples, batch_size=1, max_samples=3)
    assert sub.n_samples == 3
    both = ewc.combine(ewc, gamma=0.5)
    k = next(iter(ewc.fisher))
    assert torch.allclose(both.fisher[k], 1.5 * ewc.fisher[k]) and both.tasks == ("t", "t")


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_ewc_lambda_zero_is_plain_sft_and_positive_lambda_stays_close(base, samples, mode):
    model, tok = load_model(base)
    # anchor: a model fine-tuned on another labelling of the prompts
    other = make_samples(tok, offset=1)
    anchor = finetune(model, tok, other, cfg("full", epochs=2), progress=False).model
    ewc = fisher_diagonal(anchor, tok, other, batch_size=4)
    anchor_state = state(anchor)

    def run(lam, with_ewc=True):
        m = type(anchor)(anchor.config)
        m.load_state_dict(anchor_state)
        return finetune(m, tok, samples, cfg(mode, ewc_lambda=lam), ewc=ewc if with_ewc else None,
                        progress=False)

    plain = run(0.0, with_ewc=False)
    zero = run(0.0)
    assert same(state(plain.model), state(zero.model)) and not zero.penalties
    strong = run(1e4)
    assert len(strong.penalties) == strong.steps
    assert _weighted_distance(strong.model, ewc) < 0.5 * _weighted_distance(plain.model, ewc)


# --------------------------------------------------------------------------- caching and sequential


def test_train_and_save_caches_and_rejects_stale(base, samples, tmp_path, monkeypatch):
    out = train_and_save(base, samples, cfg("lora", epochs=1), tmp_path / "e", progress=False)
    assert is_complete_checkpoint(out)
    meta = json.loads((out / "training.json").read_text())
    assert meta["fingerprint"]["config"]["mode"] == "lora" and meta["result"]["steps"] == 2
    monkeypatch.setattr(training.checkpoints, "finetune", lambda *a, **k: pytest.fail("retrained a cached checkpoint"))
    assert train_and_save(base, samples, cfg("lora", epochs=1), out, progress=False) == out
    with pytest.raises(ValueError, match="different config"):
        train_and_save(base, samples, cfg("lora", epochs=2), out, progress=False)
    with pytest.raises(ValueError, match="different samples_sha256"):
        train_and_save(base, samples[:4], cfg("lora", epochs=1), out, progress=False)


def test_sequential_finetune_saves_resumes_and_hooks(base, tmp_path, monkeypatch):
    _, tok = load_model(base)
    by_task = {"a": make_samples(tok, WORDS[:4]), "b": make_samples(tok, WORDS[4:], offset=1),
               "c": make_samples(tok, WORDS[2:6], offset=2)}
    calls = []
    real = training.finetune
    monkeypatch.setattr(training.checkpoints, "finetune", lambda *a, **k: calls.append(1) or real(*a, **k))
    hooked = []

    def after(step, task, ckpt):
        hooked.append((step, task, ckpt.name))
        return None

    config = cfg("lora", epochs=1)
    paths = sequential_finetune(base, ["a", "b"], by_task, config, tmp_path / "seq", after_task=after,
                                progress=False)
    assert [p.name for p in paths] == ["step1_a", "step2_b"] and all(map(is_complete_checkpoint, paths))
    assert hooked == [(1, "a", "step1_a"), (2, "b", "step2_b")] and len(calls) == 2
    meta2 = json.loads((paths[1] / "training.json").read_text())
    assert meta2["fingerprint"]["base"] == str(paths[0].resolve())  # step 2 starts from step 1
    mtimes = [os.stat(p / "model.safetensors").st_mtime_ns for p in paths]

    # resume with one more task: the finished steps are not retrained
    paths3 = sequential_finetune(base, ["a", "b", "c"], by_task, config, tmp_path / "seq", progress=False)
    assert [p.name for p in paths3] == ["step1_a", "step2_b", "step3_c"] and len(calls) == 3
    assert [os.stat(p / "model.safetensors").st_mtime_ns for p in paths3[:2]] == mtimes

    # a hook's replacement becomes the start of the next step and the step's result
    def replace(step, task, ckpt):
        return paths[0] if step == 1 else None

    out = sequential_finetune(base, ["a", "b"], by_task, config, tmp_path / "seq2", after_task=replace,
                              progress=False)
    assert out[0] == paths[0]
    assert json.loads((out[1] / "training.json").read_text())["fingerprint"]["base"] == str(paths[0].resolve())


def test_sequential_ewc_caches_fisher(base, tmp_path):
    _, tok = load_model(base)
    by_task = {"a": make_samples(tok, WORDS[:4]), "b": make_samples(tok, WORDS[4:], offset=1)}
    config = cfg("lora", epochs=1, ewc_lambda=10.0, ewc_samples=2)
    paths = sequential_finetune(base, ["a", "b"], by_task, config, tmp_path / "ewc", ewc=True, progress=False)
    assert (tmp_path / "ewc" / "step1_a.fisher.safetensors").is_file()
    assert not (tmp_path / "ewc" / "step2_b.fisher.safetensors").exists()  # the last task needs none
    meta = json.loads((paths[1] / "training.json").read_text())
    assert meta["fingerprint"]["ewc"] == {"tasks": ["a"], "n_samples": 2} and meta["result"]["penalties"]
    # a rerun resumes from the finished steps (no retraining, no error about the EWC fingerprint)
    mtimes = [(p / "model.safetensors").stat().st_mtime_ns for p in paths]
    again = sequential_finetune(base, ["a", "b"], by_task, config, tmp_path / "ewc", ewc=True, progress=False)
    assert again == paths and [(p / "model.safetensors").stat().st_mtime_ns for p in again] == mtimes
    with pytest.raises(ValueError, match="ewc_lambda > 0"):
        sequential_finetune(base, ["a"], by_task, cfg("lora"), tmp_path / "x", ewc=True)


def test_sequential_steps_reuse_checkpoints_of_the_same_inputs(base, tmp_path, monkeypatch):
    """Step 1 of a chain is the expert of its first task (sft and ewc alike) and is not trained again; a step 2
    trained elsewhere from the same inputs (the tuning's) stands in too; training would give the same weights."""
    _, tok = load_model(base)
    by_task = {"a": make_samples(tok, WORDS[:4]), "b": make_samples(tok, WORDS[4:], offset=1)}
    plain = cfg("lora", epochs=1)
    expert = train_and_save(base, by_task["a"], plain, tmp_path / "expert-a", progress=False)
    second = train_and_save(expert, by_task["b"], plain, tmp_path / "second", progress=False)
    calls = []
    real = training.finetune
    monkeypatch.setattr(training.checkpoints, "finetune", lambda *a, **k: calls.append(1) or real(*a, **k))
    paths = sequential_finetune(base, ["a", "b"], by_task, plain, tmp_path / "sft", progress=False,
                                reuse=[tmp_path / "missing", expert, second])
    assert paths == [expert, second] and not calls
    ewc_cfg = cfg("lora", epochs=1, ewc_lambda=10.0, ewc_samples=2)
    paths = sequential_finetune(base, ["a", "b"], by_task, ewc_cfg, tmp_path / "ewc", ewc=True, progress=False,
                                reuse=[expert, second])
    assert paths[0] == expert and paths[1] == tmp_path / "ewc" / "step2_b" and len(calls) == 1  # penalty: trains
    fresh = sequential_finetune(base, ["a"], by_task, plain, tmp_path / "fresh", progress=False)
    assert same(load_model(fresh[0])[0].state_dict(), load_model(expert)[0].state_dict())


@pytest.mark.parametrize("order, match", [
    (["a", "zzz"], "'zzz' in task_order have no samples"),
    (["a", "b", "a"], "'a' appear more than once"),
    ([], "task_order is empty"),
    ("a", "not the string"),
])
def test_sequential_rejects_bad_orders(base, tmp_path, order, match):
    by_task = {"a": [Sample("x", "y")], "b": [Sample("x", "z")]}
    with pytest.raises(ValueError, match=match):
        sequential_finetune(base, order, by_task, cfg(), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
