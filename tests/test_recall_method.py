"""RECALL's readings of "softmax of the similarities", its diagnostics and its controls.

The relative reading is checked against a numpy reference on synthetic representations whose answer is
known (identical models share the weight equally; a model that diverges only in the deep layers loses
weight only there); the literal reading is shown to give near-uniform weights on the same data (the
negative control); the symmetric variant, the uniform control and the diagnostics run end to end on tiny
checkpoints; every option has its error."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from recall.merge import MergeError, get_method
from recall.merge.engine import merge_models
from recall.samples import Sample, read_samples_file
from recall.weights import TAU_MIN, relative_weights

L, N, H = 8, 12, 16


def _synthetic(deep_noise=0.5, seed=0):
    """(reps of [base-like A identical to M_N, B diverging from layer L/2 on, M_N], M_N index)."""
    g = np.random.default_rng(seed)
    x = g.normal(size=(L + 1, N, H)) * np.linspace(1, 4, L + 1)[:, None, None]  # scale grows with depth
    b = x.copy()
    b[L // 2:] += deep_noise * g.normal(size=(L + 1 - L // 2, N, H)) * np.linspace(1, 4, L + 1)[L // 2:, None, None]
    return [x.copy(), b, x], 2


def _reference(reps, ref, temperature=1.0):
    """The relative reading written out with numpy: delta = D / S, tau = median over others, softmax."""
    r = reps[ref]
    d = np.stack([((m - r) ** 2).sum(-1).mean(-1) for m in reps], axis=1)
    spread = []
    for layer in r:
        z = layer - layer.mean(0)
        sq = np.maximum((z * z).sum(1)[:, None] + (z * z).sum(1)[None] - 2 * z @ z.T, 0)
        spread.append(np.median(sq[np.triu_indices(len(z), 1)]))
    delta = d / np.array(spread)[:, None]
    tau = max(np.median(np.delete(delta, ref, axis=1)), TAU_MIN)
    e = np.exp(-delta / (tau * temperature))
    return e / e.sum(1, keepdims=True), delta, tau


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_relative_reading_matches_numpy_reference(temperature):
    reps, ref = _synthetic()
    w, sim, diag, tau = get_method("recall", temperature=temperature)._weights(reps, ref)
    want, delta, want_tau = _reference(reps, ref, temperature)
    np.testing.assert_allclose(w, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(diag[..., 2], delta, rtol=1e-10)
    np.testing.assert_allclose(sim, np.exp(-delta / want_tau), rtol=1e-10)
    assert tau == pytest.approx(want_tau)


def test_a_model_diverging_in_deep_layers_loses_weight_only_there():
    reps, ref = _synthetic()
    w, *_ = get_method("recall")._weights(reps, ref)
    np.testing.assert_allclose(w[: L // 2], 1 / 3, atol=1e-12)  # shallow: everyone agrees with M_N
    assert (w[L // 2:, 1] < 0.2).all()  # deep: B diverges and loses its weight ...
    np.testing.assert_allclose(w[L // 2:, 0], w[L // 2:, 2], atol=1e-12)  # ... to A and M_N equally
    lit, *_ = get_method("recall", reading="literal")._weights(reps, ref)
    assert np.abs(lit - 1 / 3).max() < 0.15  # the literal reading can never go beyond a factor e


def test_identical_models_share_the_weight_equally_in_every_reading():
    x = np.random.default_rng(1).normal(size=(L + 1, N, H))
    noisy = x + 1e-7 * np.random.default_rng(2).normal(size=x.shape)  # float noise of another batch
    for opts in [{}, {"reading": "literal"}, {"similarity": "cka_linear"}, {"weighting": "centrality"},
                 {"layerwise": False}]:
        w, *_ = get_method("recall", **opts)._weights([x, noisy, x], 2)
        np.testing.assert_allclose(w, 1 / 3, atol=1e-5)


def test_relative_weights_rules_and_errors():
    w, tau = relative_weights(np.zeros((3, 2)))
    np.testing.assert_allclose(w, 0.5) and tau == TAU_MIN
    w, tau = relative_weights(np.array([[2.0, 0.0]]), tau=2.0)
    np.testing.assert_allclose(w[0], np.exp([-1.0, 0.0]) / np.exp([-1.0, 0.0]).sum())
    for kw, match in [({"delta": [[-1.0, 0.0]]}, ">= 0"), ({"delta": [[np.nan, 0.0]]}, "NaN"),
                      ({"delta": [[1.0, 0.0]], "tau": 0.0}, "tau must be"),
                      ({"delta": [[1.0, 0.0]], "temperature": -1}, "temperature"),
                      ({"delta": [[1.0, 0.0]], "ref": 5}, "out of range"), ({"delta": [1.0, 0.0]}, "2-D")]:
        with pytest.raises(ValueError, match=match):
            relative_weights(**kw)


TEMPLATE = "<|im_start|>user\nWhat is the topic? Options: a, b.\nText: {}<|im_end|>\n<|im_start|>assistant\n"
WORDS = ["stocks fell", "team won the cup", "new phone out", "elections today", "film of the year", "rain",
         "the bank raised rates", "goal in extra time"]


def _samples(tag=None):
    return [Sample(TEMPLATE.format(w), None, tag) for w in WORDS]


def test_merge_writes_diagnostics_and_the_weights_follow_them(tmp_path, tiny_pool):
    base, experts = tiny_pool
    m = get_method("recall", k=5)
    out = merge_models(m, experts, tmp_path / "r", base=base, samples=_samples(), progress=False)
    diag = pd.read_csv(out / "recall_diagnostics.csv", index_col=0)
    assert list(diag.columns) == ["anchor", "model", "D", "S", "delta", "similarity", "weight"]
    newest = experts[-1].name  # pool members are named by their folders
    assert len(diag) == 5 * 3 and set(diag["anchor"]) == {newest}
    weights = pd.read_csv(out / "recall_weights.csv", index_col=0)
    np.testing.assert_allclose(diag.pivot(columns="model", values="weight")[weights.columns], weights, atol=1e-12)
    own = diag[diag["model"] == newest]
    assert (own["D"] == 0).all() and (own["similarity"] == 1).all()
    np.testing.assert_allclose(diag["delta"], diag["D"] / diag["S"], rtol=1e-12)
    info = json.loads((out / "merge_config.json").read_text())
    assert info["options"]["reading"] == "relative" and info["options"]["pooling"] == "content"
    assert info["report"]["tau"] > 0


def test_each_model_as_anchor_averages_the_anchors_weights(tmp_path, tiny_pool):
    base, experts = tiny_pool
    samples = _samples(0)[:4] + _samples(1)[4:]
    m = get_method("recall_symmetric", k=3)
    merge_models(m, experts, tmp_path / "s", base=base, samples=samples, progress=False)
    diag = m.report()["diagnostics"].to_frame()
    names = [e.name for e in experts]  # the pool is labelled by folder name
    assert set(diag["anchor"]) == set(names)
    per_anchor = [g.pivot(columns="model", values="weight")[["base", *names]].to_numpy(float)
                  for _, g in diag.groupby("anchor")]
    np.testing.assert_allclose(m.report()["weights"].to_numpy(), np.mean(per_anchor, axis=0), atol=1e-12)
    assert not np.allclose(per_anchor[0], per_anchor[1])
    for anchor, g in diag.groupby("anchor"):
        assert (g[g["model"] == anchor]["D"] == 0).all()
    with pytest.raises(MergeError, match="samples tagged with the index of their model"):
        merge_models(get_method("recall_symmetric", k=3), experts, tmp_path / "x", base=base, samples=_samples(),
                     progress=False)


def test_uniform_control_is_the_average_of_recalls_pool(tmp_path, tiny_pool):
    base, experts = tiny_pool
    u = merge_models(get_method("uniform"), experts, tmp_path / "u", base=base, progress=False)
    a = merge_models(get_method("average", include_base=True), experts, tmp_path / "a", base=base, progress=False)
    from safetensors.torch import load_file

    tu, ta = load_file(u / "model.safetensors"), load_file(a / "model.safetensors")
    assert tu.keys() == ta.keys() and all(torch.equal(tu[k], ta[k]) for k in tu)
    pair = merge_models(get_method("uniform", include_base=False), experts, tmp_path / "p", base=base,
                        progress=False)
    t0, t1 = (load_file(e / "model.safetensors") for e in experts)
    tp = load_file(pair / "model.safetensors")
    k = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(tp[k], (t0[k] + t1[k]) / 2)


def test_controls_are_registered_with_their_roles():
    assert get_method("uniform").role == "control" and get_method("recall_symmetric").anchor == "each"
    assert get_method("recall_history").sequential_pool == "history" and get_method("recall").sequential_pool == "pair"


@pytest.mark.parametrize("opts,match", [
    ({"reading": "softer"}, "reading must be one of relative, literal"),
    ({"anchor": "first"}, "anchor must be one of last, each"),
    ({"bandwidth": "models"}, "reading='literal' only"),
    ({"bandwidth": "hidden", "similarity": "cosine", "reading": "literal"}, "similarity='rbf' only"),
    ({"pooling": "sum"}, "pooling must be one of content, mean, last"),
])
def test_bad_options(opts, match):
    with pytest.raises(MergeError, match=match):
        get_method("recall", **opts)


def test_literal_sklearn_bandwidth_runs(tmp_path, tiny_pool):
    base, experts = tiny_pool
    m = get_method("recall", k=4, reading="literal", bandwidth="hidden")
    merge_models(m, experts, tmp_path / "h", base=base, samples=_samples(), progress=False)
    np.testing.assert_allclose(m.report()["weights"].to_numpy().sum(axis=1), 1.0, atol=1e-12)


def test_samples_file_model_tags(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text('{"text": "a", "model": 1}\n{"text": "b"}\n')
    assert [s.model for s in read_samples_file(f)] == [1, None]
    f.write_text('{"text": "a", "model": -1}\n')
    with pytest.raises(ValueError, match="'model' must be the index"):
        read_samples_file(f)
