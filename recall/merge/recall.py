"""RECALL: representation-aligned, layer-wise model merging (Wang et al., EMNLP 2025, arXiv 2510.20479).

Four stages, as the paper's pipeline figure describes them:

1. typical samples: embed the new task's samples with the newest model M_N and keep the sample
   nearest each of ``k`` KMeans centroids (``selection="random"`` is the ablation);
2. representations: every pool model reads the typical samples; each layer's hidden states are
   mean-pooled over the tokens of a sample;
3. per layer, the similarity of each model's representations to M_N's (RBF kernel by default)
   goes through a softmax over models (temperature ``temperature``) to give the layer's weights;
4. hierarchical merge: each parameter is the weighted sum of the pool's parameters with the
   weights of its layer (``recall.merge.layers``).

The paper's full text is not available to us; every choice it leaves open is an option here,
with the defaults of our notes (section 2): the pool is the base plus all models
(``include_base``), the clustering embedding is M_N's last hidden layer, the similarity is the
paired RBF kernel with the median-heuristic bandwidth, and the temperature is 1 (a plain softmax).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import numpy as np
import torch

from ..representations import POOLINGS
from ..similarity import BANDWIDTHS, SIMILARITIES
from .base import MergeContext, MergeError, Table, interval, one_of, opt
from .layer_linear import LayerLinear, pool_names
from .registry import register

SELECTIONS = ("kmeans", "random", "minibatch")
SIMILARITY_NAMES = tuple(SIMILARITIES)
WEIGHTINGS = ("softmax", "centrality")
DTYPES = ("float32", "bfloat16", "float16")


@register("recall")
@dataclass
class RecallMerge(LayerLinear):
    """RECALL. Options (defaults are our reading of the paper; see the book's "What the paper leaves open"):

    k: number of typical samples (clusters). selection: kmeans | random | minibatch.
    similarity: rbf | cka_rbf | cka_linear | cosine | combo. bandwidth (rbf only): samples (median of the
    squared distances between samples, default) | models (median of the paired distances between the
    models, per layer). temperature: softmax temperature (> 0).
    weighting: softmax (of the similarity to M_N) | centrality (of the mean similarity to all models).
    layerwise: False gives one global weight per model (softmax of the layer-averaged similarity): an ablation.
    include_base: whether the base model joins the pool. pooling: mean | last. cluster_layer: hidden-state
    index used to cluster (-1 = last). max_length: tokens read per sample. dtype: float32 | bfloat16 | float16,
    the compute dtype of the representation pass (pooling accumulates in float32); bfloat16 is about 5x
    faster on CPUs with AVX512-BF16 and changes the weights by about 0.005 (benchmarks/merge_speed.py).
    """

    label = "RECALL"
    role = "method"

    weights: str = field(default="computed", init=False, repr=False)  # not an option: computed in prepare
    k: int = opt(32, int, interval(1), "number of typical samples (clusters), at most the samples given")
    selection: str = opt("kmeans", str, one_of(*SELECTIONS), "how typical samples are chosen")
    similarity: str = opt("rbf", str, one_of(*SIMILARITY_NAMES), "similarity of representations per layer")
    bandwidth: str = opt("samples", str, one_of(*BANDWIDTHS), "what the RBF bandwidth comes from (rbf only)")
    temperature: float = opt(1.0, float, interval(0, lo_open=True), "softmax temperature")
    weighting: str = opt("softmax", str, one_of(*WEIGHTINGS), "what the softmax is taken of")
    layerwise: bool = opt(True, bool, doc="one weight per layer (false: one per model)")
    include_base: bool = opt(True, bool, doc="the base model joins the pool")
    pooling: str = opt("mean", str, one_of(*POOLINGS), "pooling of a layer's hidden states over tokens")
    cluster_layer: int = opt(-1, int, doc="hidden-state index used to cluster, -(L+1)..L (-1 = last)")
    max_length: int = opt(512, int, interval(1), "tokens read per sample")
    dtype: str = opt("float32", str, one_of(*DTYPES), "compute dtype of the representation pass")
    _similarity: Table | None = field(default=None, repr=False)
    _selected: list[int] = field(default_factory=list, repr=False)

    needs_samples = True
    reference = "Wang et al., RECALL, EMNLP 2025 (arXiv 2510.20479)"

    def check(self) -> None:
        if self.bandwidth != "samples" and self.similarity != "rbf":
            raise MergeError(f"method recall: bandwidth={self.bandwidth!r} applies to similarity='rbf' only, "
                             f"not {self.similarity!r}")

    def input_files(self) -> list[str]:
        return []

    def options(self):
        opts = super().options()
        opts.pop("weights", None)
        return opts

    def validate(self, ctx: MergeContext) -> None:
        texts = [s.text for s in (ctx.samples or [])]
        if not texts or not any(t.strip() for t in texts):
            raise MergeError("RECALL needs samples of the new task (non-empty texts): "
                             "pass --samples FILE or --task NAME")
        if self.k > len(texts):
            raise MergeError(f"k={self.k} typical samples requested but only {len(texts)} samples given; "
                             f"lower --k or give more samples")
        if not -(ctx.num_layers + 1) <= self.cluster_layer <= ctx.num_layers:
            raise MergeError(f"method recall: cluster_layer must be a hidden-state index in {-(ctx.num_layers + 1)}.."
                             f"{ctx.num_layers} (the model has {ctx.num_layers} blocks), got {self.cluster_layer}")
        if len(pool_names(ctx, self.include_base)[1]) < 2:
            raise MergeError("RECALL needs at least two models in the pool (e.g. --base DIR and one --models DIR)")

    def prepare(self, ctx: MergeContext) -> None:
        from ..assets import load_model
        from ..representations import layer_representations
        from ..similarity import similarity_matrix, similarity_to_reference
        from ..typical import select_typical
        from ..weights import centrality_weights, layer_weights

        self.validate(ctx)
        texts = [s.text for s in ctx.samples]
        names, paths = pool_names(ctx, self.include_base)

        def reps_of(path: str, which: list[str], desc: str):
            model, tok = load_model(path, device=ctx.device, dtype=getattr(torch, self.dtype))
            r = layer_representations(model, tok, which, batch_size=ctx.batch_size, max_length=self.max_length,
                                      pooling=self.pooling, device=ctx.device, progress=ctx.progress, desc=desc)
            del model
            gc.collect()
            return r

        # Stage 1: typical samples, embedded by the newest model M_N.
        new_all = reps_of(paths[-1], texts, "representations M_N (all samples)")
        if self.k == len(texts) and self.selection != "random":
            self._selected = list(range(len(texts)))
        else:
            self._selected = select_typical(new_all[self.cluster_layer].numpy(), self.k, method=self.selection,
                                            seed=ctx.seed)
        chosen = [texts[i] for i in self._selected]
        # Stage 2: representations of every pool model on the typical samples.
        reps = []
        for name, path in zip(names[:-1], paths[:-1]):
            reps.append(reps_of(path, chosen, f"representations {name}"))
        reps.append(new_all[:, self._selected])
        # Stage 3: similarity to M_N per layer -> softmax weights per layer.
        if self.weighting == "centrality":
            sim_m = similarity_matrix(reps, self.similarity, bandwidth=self.bandwidth)
            sim = sim_m.mean(axis=2)
            table = centrality_weights(sim_m, self.temperature)
        else:
            sim = similarity_to_reference(reps, ref=-1, measure=self.similarity, bandwidth=self.bandwidth)
            table = layer_weights(sim, self.temperature)
        if not self.layerwise:
            table = layer_weights(sim.mean(axis=0, keepdims=True), self.temperature)
        table = np.asarray(table, dtype=np.float64)
        self._similarity = Table(tuple(names), np.asarray(sim, dtype=np.float64))
        self.set_table(table, names, paths)

    def report(self):
        out = dict(super().report())
        if self._similarity is not None:
            out["similarity"] = self._similarity
            out["typical_samples"] = self._selected
        return out
