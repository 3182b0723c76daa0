"""The merge engines, the layer map, the output folder, RECALL end to end, and bad input (tiny checkpoints)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from recall.merge import MergeError, Table, get_method
from recall.merge.engine import merge_models, plan_merge
from recall.merge.layers import layer_of
from recall.merge.safetensors_io import LazyCheckpoint
from recall.samples import Sample
from recall.tiny import make_tiny_checkpoint

TEXTS = [f"sample number {i} about {w} news and reviews" for i, w in
         enumerate(["business", "films", "sport", "spam", "prize", "hockey", "cars", "space", "trade", "grain"] * 2)]
SAMPLES = [Sample(t) for t in TEXTS]


def _weights(path):
    return LazyCheckpoint(path).load_all()


def _write_weights_csv(path, table, names):
    pd.DataFrame(table, columns=names, index=pd.RangeIndex(len(table), name="layer")).to_csv(path)
    return path


# ----------------------------------------------------------------------------- layer map

@pytest.mark.parametrize("name,expected", [
    ("model.embed_tokens.weight", 0),
    ("model.layers.0.self_attn.q_proj.weight", 1),
    ("model.layers.3.mlp.down_proj.weight", 4),
    ("model.layers.3.pre_feedforward_layernorm.weight", 4),
    ("model.norm.weight", 4),
    ("lm_head.weight", 4),
    ("transformer.wte.weight", 0),
    ("transformer.wpe.weight", 0),
    ("transformer.h.2.attn.c_attn.weight", 3),
    ("transformer.ln_f.bias", 4),
])
def test_layer_map(name, expected):
    assert layer_of(name, 4) == expected


def test_layer_map_rejects_unknown_and_out_of_range():
    with pytest.raises(MergeError, match="cannot place"):
        layer_of("vision_tower.patch.weight", 4)
    with pytest.raises(MergeError, match="block 7"):
        layer_of("model.layers.7.mlp.up_proj.weight", 4)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma", "gpt2"])
def test_every_family_maps_and_merges(tmp_path, family):
    base = make_tiny_checkpoint(tmp_path / "b", seed=0, family=family)
    exp = make_tiny_checkpoint(tmp_path / "e", seed=1, perturb_from=base)
    ck = LazyCheckpoint(base)
    layers = {layer_of(n, 4) for n in ck.names()}
    assert layers == set(range(5))
    out = merge_models(get_method("average", include_base=True), [exp], tmp_path / "m", base=base, progress=False)
    AutoModelForCausalLM.from_pretrained(out)


# ----------------------------------------------------------------------------- engines

def test_identical_models_merge_to_themselves(tmp_path, tiny_pool):
    base, _ = tiny_pool
    table = np.full((5, 3), 1 / 3)
    csv = _write_weights_csv(tmp_path / "w.csv", table, ["base", "m1", "m2"])
    out = merge_models(get_method("layer_linear", weights=str(csv)), [base, base], tmp_path / "out", base=base,
                       progress=False)
    a, b = _weights(base), _weights(out)
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=1e-6)


def test_streaming_and_memory_engines_agree_bit_for_bit(tmp_path, tiny_pool):
    base, experts = tiny_pool
    rng = np.random.default_rng(0)
    table = rng.dirichlet(np.ones(3), size=5)
    csv = _write_weights_csv(tmp_path / "w.csv", table, ["base", "m1", "m2"])
    outs = {}
    for engine, shard in [("memory", 10**9), ("streaming", 10**9), ("streaming", 20_000)]:
        outs[(engine, shard)] = _weights(merge_models(get_method("layer_linear", weights=str(csv)), experts,
                                                      tmp_path / f"{engine}{shard}", base=base, engine=engine,
                                                      progress=False, max_shard_bytes=shard))
    ref = outs[("memory", 10**9)]
    assert (tmp_path / "streaming20000" / "model.safetensors.index.json").exists()
    for other in outs.values():
        assert other.keys() == ref.keys()
        for n in ref:
            assert torch.equal(ref[n], other[n]), n


def test_layer_weights_are_applied_per_layer(tmp_path, tiny_pool):
    base, experts = tiny_pool
    table = np.zeros((5, 3))
    table[:, 0] = 1.0
    table[2] = [0.0, 0.0, 1.0]  # layer 2 = block 1 takes expert 2
    csv = _write_weights_csv(tmp_path / "w.csv", table, ["base", "m1", "m2"])
    out = _weights(merge_models(get_method("layer_linear", weights=str(csv)), experts, tmp_path / "o", base=base,
                                progress=False))
    b, e2 = _weights(base), _weights(experts[1])
    for n in out:
        want = e2[n] if n.startswith("model.layers.1.") else b[n]
        assert torch.equal(out[n], want), n


def test_bf16_inputs_keep_dtype(tmp_path):
    base = make_tiny_checkpoint(tmp_path / "b", seed=0, dtype=torch.bfloat16)
    exp = make_tiny_checkpoint(tmp_path / "e", seed=1, perturb_from=base, dtype=torch.bfloat16)
    out = merge_models(get_method("average"), [base, exp], tmp_path / "m", progress=False)
    w = _weights(out)
    assert all(t.dtype == torch.bfloat16 for t in w.values())
    ref = (_weights(base)["model.norm.weight"].float() + _weights(exp)["model.norm.weight"].float()) / 2
    torch.testing.assert_close(w["model.norm.weight"].float(), ref, rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------- RECALL end to end

def test_recall_merge_writes_a_loadable_documented_folder(tmp_path, tiny_pool):
    base, experts = tiny_pool
    method = get_method("recall", k=6)
    out = merge_models(method, experts, tmp_path / "r", base=base, samples=SAMPLES, progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("hello news", return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 3
    w = pd.read_csv(out / "recall_weights.csv", index_col=0)
    assert w.shape == (5, 3)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-9)
    card = (out / "README.md").read_text()
    assert "recall" in card and "Merge weights" in card and "k" in card
    front = yaml.safe_load(card.split("---\n")[1])  # the Hub's model-card front matter
    assert front == {"base_model": [base.name, *(e.name for e in experts)], "library_name": "transformers",
                     "tags": ["merge", "recall"]}
    info = json.loads((out / "merge_config.json").read_text())
    assert info["method"] == "recall" and info["options"]["k"] == 6
    assert len(info["report"]["typical_samples"]) == 6
    cfg = yaml.safe_load((out / "mergekit.yml").read_text())
    assert cfg["merge_method"] == "linear" and len(cfg["models"]) == 3
    sim = pd.read_csv(out / "recall_similarity.csv", index_col=0)
    assert list(sim.columns) == ["base", *(e.name for e in experts)]  # columns named by the models' folders
    np.testing.assert_allclose(sim[experts[-1].name], 1.0)  # M_N is similar to itself


@pytest.mark.parametrize("temperature,check", [
    (1e6, "uniform"),
    (1e-6, "argmax"),
])
def test_recall_temperature_extremes(tmp_path, tiny_pool, temperature, check):
    base, experts = tiny_pool
    method = get_method("recall", k=5, temperature=temperature)
    merge_models(method, experts, tmp_path / "r", base=base, samples=SAMPLES, progress=False)
    w = method.report()["weights"].to_numpy()
    if check == "uniform":
        np.testing.assert_allclose(w, 1 / 3, atol=1e-5)
    else:
        sim = method.report()["similarity"].to_numpy()
        np.testing.assert_array_equal(w.argmax(axis=1), sim.argmax(axis=1))
        np.testing.assert_allclose(w.max(axis=1), 1.0, atol=1e-6)


def test_recall_of_identical_models_is_identity_and_uniform(tmp_path, tiny_pool):
    base, _ = tiny_pool
    method = get_method("recall", k=4)
    out = merge_models(method, [base], tmp_path / "r", base=base, samples=SAMPLES, progress=False)
    np.testing.assert_allclose(method.report()["weights"].to_numpy(), 0.5, atol=1e-9)
    a, b = _weights(base), _weights(out)
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=1e-6)


def test_recall_options_variants_run(tmp_path, tiny_pool):
    base, experts = tiny_pool
    for i, opts in enumerate([dict(selection="random"), dict(similarity="cka_linear"),
                              dict(weighting="centrality"), dict(layerwise=False), dict(include_base=False),
                              dict(dtype="bfloat16"), dict(reading="literal", bandwidth="models"),
                              dict(reading="literal", bandwidth="models", weighting="centrality")]):
        m = get_method("recall", k=4, **opts)
        merge_models(m, experts, tmp_path / f"v{i}", base=base, samples=SAMPLES, progress=False)
        w = m.report()["weights"].to_numpy()
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-9)


# ----------------------------------------------------------------------------- bad input

def _corrupt(src, dst):
    shutil.copytree(src, dst)
    f = dst / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    return dst


def _nan(src, dst):
    from recall.merge.safetensors_io import ShardWriter

    shutil.copytree(src, dst)
    sd = LazyCheckpoint(src).load_all()
    sd["model.norm.weight"] = sd["model.norm.weight"].clone()
    sd["model.norm.weight"][0] = float("nan")
    (dst / "model.safetensors").unlink()
    w = ShardWriter(dst / "model.safetensors", [(n, t.dtype, tuple(t.shape)) for n, t in sd.items()])
    for n, t in sd.items():
        w.write(n, t)
    w.close()
    return dst


def _other_arch(src, dst):
    return make_tiny_checkpoint(dst, seed=0, family="qwen2", tokenizer_dir=src)


def _wider(src, dst):
    return make_tiny_checkpoint(dst, seed=0, hidden=48, tokenizer_dir=src)


def _vocab(src, dst):
    m = AutoModelForCausalLM.from_pretrained(src)
    m.resize_token_embeddings(m.config.vocab_size + 8)
    m.save_pretrained(dst)
    return dst


def _pickled(src, dst):
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    (dst / "pytorch_model.bin").write_bytes(b"not loaded")
    return dst


@pytest.mark.parametrize("make_bad,match", [
    (_corrupt, "not a readable safetensors|truncated"),
    (_nan, "NaN or Inf"),
    (_other_arch, "different architectures"),
    (_wider, "shape mismatch"),
    (_vocab, "vocabulary mismatch"),
    (_pickled, "pickled weights are never loaded"),
])
def test_bad_models_are_refused_and_leave_nothing(tmp_path, tiny_pool, make_bad, match):
    base, experts = tiny_pool
    bad = make_bad(base, tmp_path / "bad")
    out = tmp_path / "out"
    with pytest.raises(MergeError, match=match):
        merge_models(get_method("average"), [experts[0], bad], out, progress=False)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("call,match", [
    (lambda b, e, o: merge_models(get_method("average"), e, o, progress=False) and
     merge_models(get_method("average"), e, o, progress=False), "already exists"),
    (lambda b, e, o: get_method("recall", temperature=0), "temperature must be a number > 0"),
    (lambda b, e, o: get_method("recall", similarity="euclid"), "similarity must be one of rbf, "),
    (lambda b, e, o: get_method("recall", bandwidth="global"), "bandwidth must be one of samples, "),
    (lambda b, e, o: get_method("recall", similarity="cosine", bandwidth="models"), "similarity='rbf' only"),
    (lambda b, e, o: get_method("recall", dtype="int8"), "dtype must be one of float32, "),
    (lambda b, e, o: get_method("nope"), "unknown merge method"),
    (lambda b, e, o: merge_models(get_method("recall", k=50), e, o, base=b, samples=SAMPLES, progress=False),
     "k=50"),
    (lambda b, e, o: merge_models(get_method("recall"), e, o, base=b, samples=[], progress=False), "needs samples"),
    (lambda b, e, o: merge_models(get_method("recall", k=2), e, o, base=b, samples=[Sample("  ")] * 3,
                                  progress=False), "non-empty"),
    (lambda b, e, o: merge_models(get_method("average"), e, o, engine="gpu", progress=False), "unknown engine"),
    (lambda b, e, o: merge_models(get_method("average"), [o / "missing"], o / "x", progress=False), "does not exist"),
])
def test_bad_calls(tmp_path, tiny_pool, call, match):
    base, experts = tiny_pool
    with pytest.raises(MergeError, match=match):
        call(base, experts, tmp_path / "out")
    assert not (tmp_path / "out" / "x").exists()


def test_force_replaces_existing_output(tmp_path, tiny_pool):
    base, experts = tiny_pool
    out = merge_models(get_method("average"), experts, tmp_path / "o", progress=False)
    merge_models(get_method("average", include_base=True), experts, out, base=base, force=True, progress=False)
    assert json.loads((out / "merge_config.json").read_text())["options"]["include_base"] is True


@pytest.mark.parametrize("content,match", [
    ("", "header row"),
    ("layer,base,m1,m2\n", "header row"),
    ("layer,base,m1,m2\n0,0.5,0.5\n", "different number of fields"),
    ("layer,base,m1,m2\n0,0.5,x,0\n", "not a number"),
    ("layer,base,m1,m2\n0,0.5,,0.5\n", "not a number"),
    ("layer,base,m1,m2\n0,nan,0.5,0.5\n", "NaN or Inf"),
    ("layer,base,m1\n0,0.5,0.5\n", "expected \\(5, 3\\)"),
    ("layer,base,m1,m2\n" + "".join(f"{i},0.2,0.4,0.4\n" for i in range(3)), "expected \\(5, 3\\)"),
    (None, "cannot read weights table"),
])
def test_bad_weights_tables_are_refused(tmp_path, tiny_pool, content, match):
    base, experts = tiny_pool
    csv = tmp_path / "w.csv"
    if content is not None:
        csv.write_text(content)
    with pytest.raises(MergeError, match=match):
        merge_models(get_method("layer_linear", weights=str(csv)), experts, tmp_path / "out", base=base,
                     progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("frame", [
    pd.DataFrame(np.random.default_rng(0).random((5, 3)), columns=["base", "model 0", "model 1"],
                 index=pd.RangeIndex(5, name="layer")),
    pd.DataFrame([[1 / 3, 2 / 3]], columns=["base", "new"], index=pd.RangeIndex(1, name="layer")),
    pd.DataFrame({"path": ["a", "b"], "loss": [0.25, float("nan")], "weight": [1.0, 0.0]},
                 index=pd.Index(["base", "model 0"], name="model")),
])
def test_table_csv_is_the_pandas_csv(frame):
    table = Table.from_frame(frame)
    assert table.to_csv() == frame.to_csv(lineterminator="\n")
    assert len(table) == len(frame) and table.columns == tuple(frame.columns)
    if frame.dtypes.map(lambda d: d.kind == "f").all():
        back = Table.read_csv(frame.to_csv())
        np.testing.assert_array_equal(back.to_numpy(), frame.to_numpy())
        assert back.index == tuple(frame.index) and back.index_name == frame.index.name
        pd.testing.assert_frame_equal(back.to_frame(), frame, check_index_type=False)


def test_plan_merge(tiny_pool):
    base, experts = tiny_pool
    plan = plan_merge(get_method("recall", k=4), experts, base=base, samples=SAMPLES)
    assert plan["blocks"] == 4 and plan["layers"] == 5 and plan["newest_model"] == str(experts[-1])
    with pytest.raises(MergeError, match="k=32"):  # a plan checks what the merge would check first
        plan_merge(get_method("recall"), experts, base=base, samples=SAMPLES)


# ----------------------------------------------------------------------------- CLI

def test_cli_merge_and_dry_run(tmp_path, tiny_pool, capsys):
    from recall.cli import main

    base, experts = tiny_pool
    samples = tmp_path / "s.jsonl"
    samples.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS) + "\n")
    args = ["merge", "--method", "recall", "--base", str(base), "--models", *map(str, experts),
            "--samples", str(samples), "--k", "4", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "dry"), "--dry-run"]) == 0
    assert not (tmp_path / "dry").exists()
    assert '"blocks": 4' in capsys.readouterr().out
    assert main(args + ["--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "recall_weights.csv").exists()
    assert main(args + ["--out", str(tmp_path / "o")]) == 2
    assert "already exists" in capsys.readouterr().err
    # the saved weights table replays the same merge through layer_linear
    assert main(["merge", "--method", "layer_linear", "-o", f"weights={tmp_path / 'o' / 'recall_weights.csv'}",
                 "--base", str(base), "--models", *map(str, experts), "--out", str(tmp_path / "replay"),
                 "--quiet"]) == 0
    a, b = _weights(tmp_path / "o"), _weights(tmp_path / "replay")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_cli_merge_takes_a_task_pool_of_the_size_and_truncation_asked(tmp_path, tiny_pool, monkeypatch):
    """``--task``: the first ``--n-samples`` training examples, each text cut to ``--max-text-tokens``."""
    from recall import cli

    base, experts = tiny_pool
    seen = {}
    real = cli._task_samples
    monkeypatch.setattr(cli, "_task_samples", lambda *a: seen.setdefault("s", real(*a)))
    assert cli.main(["merge", "--method", "recall", "--base", str(base), "--models", *map(str, experts),
                     "--task", "trec", "--n-samples", "12", "--max-text-tokens", "6", "--k", "4",
                     "--out", str(tmp_path / "o"), "--quiet"]) == 0
    long = real("trec", str(experts[-1]), 12, 0, 64)
    assert len(seen["s"]) == 12 and all(len(a.text) <= len(b.text) for a, b in zip(seen["s"], long))
    assert any(len(a.text) < len(b.text) for a, b in zip(seen["s"], long))


def test_similarity_names_match_the_registry():
    from recall.merge.recall import SIMILARITY_NAMES
    from recall.similarity import SIMILARITIES

    assert set(SIMILARITY_NAMES) == set(SIMILARITIES)
    from recall.merge.recall import BANDWIDTHS as MERGE_BANDWIDTHS
    from recall.similarity import BANDWIDTHS

    assert MERGE_BANDWIDTHS == BANDWIDTHS


@pytest.mark.parametrize("method,opts", [("layer_linear", None), ("average", {}), ("task_arithmetic", {}),
                                         ("magmax", {}), ("ties", {}), ("dare", {"p": 0.3}),
                                         ("dare", {"p": 0.3, "combine": "ties"})])
def test_chunked_streaming_is_bit_identical(tmp_path, tiny_pool, monkeypatch, method, opts):
    import recall.merge.engine as engine

    base, experts = tiny_pool
    if opts is None:
        csv = _write_weights_csv(tmp_path / "w.csv", np.random.default_rng(1).dirichlet(np.ones(3), size=5),
                                 ["base", "m1", "m2"])
        opts = {"weights": str(csv)}
    ref = _weights(merge_models(get_method(method, **opts), experts, tmp_path / "mem", base=base, engine="memory",
                                progress=False))
    monkeypatch.setattr(engine, "CHUNK_ELEMENTS", 1000)  # every matrix of the tiny model is chunked
    monkeypatch.setattr(engine, "STREAM_CHUNK", 333)  # and read in chunks by TIES and DARE
    got = _weights(merge_models(get_method(method, **opts), experts, tmp_path / "chunk", base=base,
                                engine="streaming", progress=False))
    for n in ref:
        assert torch.equal(ref[n], got[n]), n


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_mergekit_filters_follow_the_layer_map(tmp_path, family):
    from recall.merge.card import layer_filters

    ck = LazyCheckpoint(make_tiny_checkpoint(tmp_path / "m", family=family, tie_word_embeddings=False))
    items = layer_filters(ck.names(), 4)
    for n in ck.names():  # mergekit: the first filter that is a substring of the name wins
        assert next(lay for f, lay in items if f in n) == layer_of(n, 4)


# one row per method: the mergekit.yml its merged folder carries (None: no mergekit equivalent)
MERGEKIT_ROWS = [
    ("average", {}, "linear", {"normalize": True}, {"weight": 1.0}),
    ("average", {"include_base": True}, "linear", {"normalize": True}, {"weight": 1.0}),
    ("task_arithmetic", {"lam": 0.7}, "task_arithmetic", {"normalize": False, "lambda": 0.7}, {"weight": 1.0}),
    ("ties", {"density": 0.5, "lam": 0.8}, "ties", {"normalize": True, "lambda": 0.8},
     {"weight": 1.0, "density": 0.5}),
    ("dare", {"p": 0.8}, "dare_linear", {"normalize": False, "rescale": True, "lambda": 0.3},
     {"weight": 1.0, "density": pytest.approx(0.2)}),
    ("dare", {"p": 0.8, "combine": "ties", "density": 1.0}, "dare_ties",
     {"normalize": True, "rescale": True, "lambda": 1.0}, {"weight": 1.0, "density": pytest.approx(0.2)}),
    ("dare", {"combine": "ties"}, None, "does not trim by magnitude", None),
    ("magmax", {}, None, "has no magmax method", None),
]


@pytest.mark.parametrize("name,opts,mk_method,params,per_model", MERGEKIT_ROWS,
                         ids=[f"{r[0]}-{r[1]}" for r in MERGEKIT_ROWS])
def test_merged_folder_carries_a_mergekit_yml(tmp_path, tiny_pool, name, opts, mk_method, params, per_model):
    base, experts = tiny_pool
    out = merge_models(get_method(name, **opts), experts, tmp_path / "m", base=base, progress=False)
    card = (out / "README.md").read_text()
    if mk_method is None:
        assert not (out / "mergekit.yml").exists() and params in card
        return
    cfg = yaml.safe_load((out / "mergekit.yml").read_text())
    assert cfg["merge_method"] == mk_method and cfg["parameters"] == params and cfg["dtype"] == "float32"
    pool = [base, *experts] if opts.get("include_base") else experts
    assert [m["model"] for m in cfg["models"]] == [str(p) for p in pool]
    assert all(m["parameters"] == per_model for m in cfg["models"])
    assert cfg.get("base_model") == (None if mk_method == "linear" else str(base))
    assert "mergekit-yaml mergekit.yml OUT" in card
