"""The baseline merge methods (average, task arithmetic, TIES, DARE, MagMax, LM-Cocktail): one row per
method and options, closed-form cases, bad input, and end to end through both merge engines."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from recall.merge import MergeContext, MergeError, get_method
from recall.merge.dare import drop_and_rescale, tensor_generator
from recall.merge.lm_cocktail import mean_token_loss
from recall.merge.pool import model_pool, pool_labels
from recall.merge.ties import disjoint_mean, elect_sign, trim
from recall.samples import Sample
from recall.tiny import make_tiny_checkpoint

NAME = "model.layers.0.mlp.up_proj.weight"
SAMPLES = [Sample(f"Classify the text. Text: {w} news about markets and films. Label:", " tech")
           for w in ["business", "sport", "spam", "prize", "hockey", "cars", "space", "grain"]]
TEXT_SAMPLES = [Sample(f"the quick brown fox number {i} jumps over the lazy dog") for i in range(4)]

# one row per method with its options; lm_cocktail is prepared on tiny checkpoints first
ROWS = [
    ("average", {}),
    ("average", {"include_base": True}),
    ("task_arithmetic", {}),
    ("task_arithmetic", {"lam": 1.0}),
    ("ties", {}),
    ("ties", {"density": 0.5, "lam": 0.7}),
    ("dare", {}),
    ("dare", {"p": 0.3, "combine": "ties", "density": 0.5, "lam": 0.8, "seed": 7}),
    ("magmax", {}),
    ("magmax", {"lam": 1.0}),
    ("lm_cocktail", {}),
    ("lm_cocktail", {"include_base": False, "temperature": 1.0, "n_samples": 3}),
    ("lm_cocktail", {"alpha": 0.5}),
    ("uniform", {}),
    ("uniform", {"include_base": False}),
]


def _ids(rows):
    return [f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'defaults'}" for n, o in rows]


@pytest.fixture(scope="module")
def far_expert(tiny_pool, tmp_path_factory):
    """An expert perturbed much more than the others: clearly the highest loss."""
    base, _ = tiny_pool
    return make_tiny_checkpoint(tmp_path_factory.mktemp("far") / "e3", seed=3, perturb_from=base, noise=0.5)


def _ctx(tiny_pool, samples=SAMPLES, seed=0, models=None):
    base, experts = tiny_pool
    return MergeContext(base=str(base), models=[str(m) for m in (models or experts)], samples=samples,
                        num_layers=4, seed=seed, progress=False)


def _tensors(n_models=2, shape=(8, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + 0.1 * torch.randn(shape, generator=g) for _ in range(n_models)]


def _method(name, opts, tiny_pool):
    m = get_method(name, **opts)
    m.prepare(_ctx(tiny_pool))
    return m


# ----------------------------------------------------------------------------- every method, every row

@pytest.mark.parametrize("name,opts", ROWS, ids=_ids(ROWS))
def test_merge_tensor_keeps_shape_dtype_and_inputs(name, opts, tiny_pool):
    m = _method(name, opts, tiny_pool)
    assert m.name == name and m.reference
    for shape in [(8, 6), (16,), ()]:
        base, tensors = _tensors(shape=shape)
        copies = [base.clone()] + [t.clone() for t in tensors]
        out = m.merge_tensor(NAME, 1, base, tensors)
        assert out.shape == base.shape and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        for a, b in zip([base] + tensors, copies, strict=True):
            assert torch.equal(a, b), "merge_tensor modified its inputs"


@pytest.mark.parametrize("name,opts", ROWS, ids=_ids(ROWS))
def test_options_round_trip(name, opts):
    m = get_method(name, **opts)
    assert {k: v for k, v in m.options().items() if k in opts} == opts


# ----------------------------------------------------------------------------- closed forms

def test_average_of_identical_models_is_identity():
    base, (t,) = _tensors(n_models=1)
    for include_base in (False, True):
        m = get_method("average", include_base=include_base)
        torch.testing.assert_close(m.merge_tensor(NAME, 1, t.clone(), [t.clone(), t.clone(), t.clone()]), t)
    # and the base joins only when asked
    a, b = torch.zeros(3), torch.ones(3)
    assert torch.equal(get_method("average").merge_tensor(NAME, 1, a, [b, b]), b)
    torch.testing.assert_close(get_method("average", include_base=True).merge_tensor(NAME, 1, a, [b, b]),
                               torch.full((3,), 2 / 3))
    assert torch.equal(get_method("average", include_base=True).merge_tensor(NAME, 1, None, [a, b]),
                       torch.full((3,), 0.5))


def test_task_arithmetic_one_expert_lam1_is_expert_and_sums_vectors():
    base, (e,) = _tensors(n_models=1)
    torch.testing.assert_close(get_method("task_arithmetic", lam=1.0).merge_tensor(NAME, 1, base, [e]), e)
    b = torch.tensor([1.0, 1.0])
    out = get_method("task_arithmetic", lam=0.5).merge_tensor(NAME, 1, b, [torch.tensor([3.0, 1.0]),
                                                                          torch.tensor([1.0, -1.0])])
    torch.testing.assert_close(out, torch.tensor([2.0, 0.0]))  # 1 + 0.5 * (2 + 0), 1 + 0.5 * (0 - 2)


def test_ties_density1_one_expert_equals_task_arithmetic():
    base, (e,) = _tensors(n_models=1)
    ties = get_method("ties", density=1.0, lam=1.0).merge_tensor(NAME, 1, base, [e])
    ta = get_method("task_arithmetic", lam=1.0).merge_tensor(NAME, 1, base, [e])
    torch.testing.assert_close(ties, ta)
    torch.testing.assert_close(ties, e)


def test_ties_steps_by_hand():
    tv = torch.tensor([0.1, -5.0, 3.0, 0.2, -0.05])
    assert torch.equal(trim(tv, 0.4), torch.tensor([0.0, -5.0, 3.0, 0.0, 0.0]))
    assert torch.equal(trim(tv, 0.0), torch.zeros(5)) and torch.equal(trim(tv, 1.0), tv)
    tvs = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-3.0, 1.0, 0.4, 0.0]])
    sign = elect_sign(tvs)
    assert sign.tolist() == [-1.0, -1.0, 1.0, -1.0]  # mass -2, -1, 0.9; zero mass -> tensor majority (-)
    torch.testing.assert_close(disjoint_mean(tvs, sign), torch.tensor([-3.0, -2.0, 0.45, 0.0]))
    out = get_method("ties", density=1.0, lam=2.0).merge_tensor(NAME, 1, torch.zeros(4), list(tvs))
    torch.testing.assert_close(out, torch.tensor([-6.0, -4.0, 0.9, 0.0]))


@pytest.mark.parametrize("combine,opts", [("task_arithmetic", {}), ("task_arithmetic", {"lam": 0.7}),
                                          ("ties", {}), ("ties", {"density": 0.5, "lam": 0.7})])
def test_dare_p0_equals_its_combiner(combine, opts):
    base, tensors = _tensors(n_models=3)
    dare = get_method("dare", p=0.0, combine=combine, **opts).merge_tensor(NAME, 1, base, tensors)
    ref = get_method(combine, **opts).merge_tensor(NAME, 1, base, tensors)
    assert torch.equal(dare, ref)


def test_dare_is_seeded_per_tensor_not_by_global_rng():
    base, tensors = _tensors(n_models=2, shape=(64, 32))
    a = get_method("dare", p=0.5, seed=1)
    torch.manual_seed(123)
    x = a.merge_tensor(NAME, 1, base, tensors)
    torch.manual_seed(999)
    assert torch.equal(x, get_method("dare", p=0.5, seed=1).merge_tensor(NAME, 1, base, tensors))
    assert not torch.equal(x, get_method("dare", p=0.5, seed=2).merge_tensor(NAME, 1, base, tensors))
    assert not torch.equal(x, a.merge_tensor("model.layers.1.mlp.up_proj.weight", 2, base, tensors))
    # seed=None takes the merge's seed from the context
    b = get_method("dare", p=0.5)
    b.prepare(MergeContext(base="b", models=["m"], seed=1))
    assert torch.equal(x, b.merge_tensor(NAME, 1, base, tensors))


def test_dare_drops_about_p_and_keeps_the_expectation():
    tv = torch.ones(200_000)
    out = drop_and_rescale(tv, 0.9, tensor_generator(0, NAME))
    assert abs(float((out == 0).float().mean()) - 0.9) < 0.01
    kept = out[out != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - 0.9)))
    assert abs(float(out.mean()) - 1.0) < 0.05


def test_magmax_one_expert_and_by_hand():
    base, (e,) = _tensors(n_models=1)
    torch.testing.assert_close(get_method("magmax", lam=1.0).merge_tensor(NAME, 1, base, [e]), e)
    out = get_method("magmax", lam=1.0).merge_tensor(
        NAME, 1, torch.zeros(3), [torch.tensor([1.0, -3.0, 2.0]), torch.tensor([-2.0, 2.0, -2.0])])
    assert out.tolist() == [-2.0, -3.0, 2.0]  # largest magnitude wins, ties to the earliest model
    assert get_method("magmax").lam == 0.5


def test_model_pool_helper():
    assert model_pool("b", ["m0", "m1"], True) == ["b", "m0", "m1"]
    assert model_pool("b", ["m0"], False) == ["m0"]
    assert model_pool(None, ["m0"], True) == ["m0"]
    assert pool_labels("b", ["/m/expert-trec", "/m/expert-sms"], True) == ["base", "expert-trec", "expert-sms"]
    assert pool_labels("b", ["/m/x"], False) == ["x"]
    # a name that would repeat gets its position
    assert pool_labels("b", ["/a/model", "/b/model", "/c/base"], True) == [
        "base", "model (model 0)", "model (model 1)", "base (model 2)"]


# ----------------------------------------------------------------------------- LM-Cocktail weights

def test_lm_cocktail_weights_follow_losses(tiny_pool, far_expert):
    base, experts = tiny_pool
    m = get_method("lm_cocktail")
    m.prepare(_ctx(tiny_pool, models=[*experts, far_expert]))
    rep = m.report()
    table, losses = rep["weights"], rep["losses"]
    assert list(table.columns) == ["base", *(p.name for p in (*experts, far_expert))] and len(table) == 1
    assert rep["pool"] == [str(p) for p in (base, *experts, far_expert)]
    w, loss = losses["weight"].to_numpy(), losses["loss"].to_numpy()
    assert math.isclose(w.sum(), 1.0, rel_tol=1e-9) and (w > 0).all()
    order = loss.argsort()
    assert (w[order][:-1] >= w[order][1:]).all(), "lower loss must give a higher weight"
    assert loss.argmax() == 3 and w.argmin() == 3  # the far expert
    expected = torch.softmax(-torch.tensor(loss, dtype=torch.float64) / 5.0, 0).numpy()
    assert abs(w - expected).max() < 1e-12
    assert rep["samples_used"] == 5
    # a lower temperature sharpens the same ordering
    sharp = get_method("lm_cocktail", temperature=0.1)
    sharp.prepare(_ctx(tiny_pool, models=[*experts, far_expert]))
    assert sharp.report()["losses"]["weight"].max() > w.max()


def test_lm_cocktail_alpha_and_sample_choice(tiny_pool):
    m = get_method("lm_cocktail", alpha=0.5, n_samples=3)
    m.prepare(_ctx(tiny_pool, seed=1))
    w = m.report()["losses"]["weight"].to_numpy()
    assert w[-1] == 0.5 and math.isclose(w.sum(), 1.0)
    assert math.isnan(m.report()["losses"]["loss"].iloc[-1])
    assert m.choose_samples(SAMPLES, 1) == m.choose_samples(SAMPLES, 1)
    assert m.choose_samples(SAMPLES, 1) != m.choose_samples(SAMPLES, 2)
    assert m.choose_samples(SAMPLES[:2], 0) == SAMPLES[:2]


def test_lm_cocktail_loss_is_on_answer_tokens_and_padding_free(tiny_pool):
    from recall.assets import load_model

    model, tok = load_model(tiny_pool[0])
    s = SAMPLES[0]
    text_ids = tok(s.text)["input_ids"]
    ans_ids = tok(s.answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([text_ids + ans_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    n = len(text_ids)
    manual = -sum(float(logp[n + j - 1, a]) for j, a in enumerate(ans_ids)) / len(ans_ids)
    assert mean_token_loss(model, tok, [s]) == pytest.approx(manual, rel=1e-5)
    # right padding: batching does not change the loss, with or without answers
    for samples in (SAMPLES, TEXT_SAMPLES + [Sample("short")]):
        assert mean_token_loss(model, tok, samples, batch_size=8) == pytest.approx(
            mean_token_loss(model, tok, samples, batch_size=1), rel=1e-5)


# ----------------------------------------------------------------------------- bad input

BAD = [
    ("no_such_method", {}, "unknown merge method"),
    ("ties", {"topk": 20}, "has no option"),
    ("average", {"lam": 1.0}, "has no option"),
    ("average", {"include_base": "yes"}, "include_base"),
    ("ties", {"density": -0.1}, r"density must be a number in \(0, 1\]"),
    ("ties", {"density": 1.5}, r"density must be a number in \(0, 1\]"),
    ("ties", {"lam": 0.0}, "lam must be a number > 0"),
    ("task_arithmetic", {"lam": -1.0}, "lam must be a number > 0"),
    ("magmax", {"lam": 0.0}, "lam must be a number > 0"),
    ("dare", {"p": -0.1}, r"p must be a number in \[0, 1\)"),
    ("dare", {"p": 1.0}, r"p must be a number in \[0, 1\), got 1.0 .*divides by zero"),
    ("dare", {"p": 1.5}, r"p must be a number in \[0, 1\)"),
    ("dare", {"lam": 0.0}, "lam must be a number > 0"),
    ("dare", {"combine": "mean"}, "combine must be one of"),
    ("dare", {"density": 0.5}, "only with combine='ties'"),
    ("dare", {"combine": "ties", "density": 2.0}, r"density must be a number in \(0, 1\]"),
    ("dare", {"seed": 1.5}, "seed must be an integer"),
    ("lm_cocktail", {"temperature": 0.0}, "temperature must be a number > 0"),
    ("lm_cocktail", {"temperature": -5.0}, "temperature must be a number > 0"),
    ("lm_cocktail", {"n_samples": 0}, "n_samples"),
    ("lm_cocktail", {"alpha": 1.5}, r"alpha must be a number in \[0, 1\]"),
]


@pytest.mark.parametrize("name,opts,match", BAD, ids=[f"{n}-{o}" for n, o, _ in BAD])
def test_bad_options(name, opts, match):
    with pytest.raises(MergeError, match=match):
        get_method(name, **opts)


@pytest.mark.parametrize("name", ["task_arithmetic", "ties", "dare", "magmax"])
def test_task_vector_methods_need_the_base(name):
    m = get_method(name)
    assert m.needs_base
    _, tensors = _tensors()
    with pytest.raises(MergeError, match="needs the base model"):
        m.merge_tensor(NAME, 1, None, tensors)


def test_lm_cocktail_bad_use(tiny_pool):
    m = get_method("lm_cocktail")
    assert m.needs_samples
    with pytest.raises(MergeError, match="call prepare"):
        m.merge_tensor(NAME, 1, *_tensors())
    with pytest.raises(MergeError, match="needs samples"):
        m.prepare(_ctx(tiny_pool, samples=None))
    with pytest.raises(MergeError, match="pool besides the newest"):
        get_method("lm_cocktail", alpha=0.5, include_base=False).prepare(_ctx(tiny_pool, models=tiny_pool[1][:1]))
    m.prepare(_ctx(tiny_pool))
    base, tensors = _tensors()
    with pytest.raises(MergeError, match="pool of 3 models"):
        m.merge_tensor(NAME, 1, None, tensors)  # prepared with a base, merged without


# ----------------------------------------------------------------------------- end to end, both engines

E2E = [("average", {}), ("task_arithmetic", {}), ("ties", {}), ("dare", {}), ("dare", {"combine": "ties"}),
       ("magmax", {}), ("lm_cocktail", {})]


@pytest.mark.parametrize("name,opts", E2E, ids=_ids(E2E))
def test_end_to_end_both_engines_agree(name, opts, tiny_pool, tmp_path):
    from recall.merge.engine import merge_models
    from recall.merge.safetensors_io import LazyCheckpoint

    base, experts = tiny_pool
    outs = {}
    for engine in ("memory", "streaming"):
        outs[engine] = merge_models(get_method(name, **opts), experts, tmp_path / engine, base=base,
                                    samples=SAMPLES, engine=engine, seed=3, progress=False)
    a, b = LazyCheckpoint(outs["memory"]).load_all(), LazyCheckpoint(outs["streaming"]).load_all()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "engines disagree"
    model = AutoModelForCausalLM.from_pretrained(outs["memory"])
    ref = LazyCheckpoint(base).load_all()
    for k, v in model.state_dict().items():
        assert torch.isfinite(v).all()
        if k in a:
            assert v.shape == ref[k].shape
    assert (outs["memory"] / "README.md").exists()
    if name == "lm_cocktail":
        assert (outs["memory"] / "recall_weights.csv").exists()
