"""RECALL: representation-aligned, layer-wise model merging (Wang et al., EMNLP 2025, arXiv 2510.20479).

Four stages, as the paper's pipeline figure describes them:

1. typical samples: embed the new task's samples with the newest model M_N and keep the sample
   nearest each of ``k`` KMeans centroids (``selection="random"`` is the ablation);
2. representations: every pool model reads the typical samples; each layer's hidden states are
   mean-pooled over the sample's own tokens (``pooling="content"``: the chat template and instruction
   that every sample shares are left out; ``"mean"`` pools the whole prompt);
3. per layer, the similarity of each model's representations to M_N's goes through a softmax over
   models to give the layer's weights (``reading``, below);
4. hierarchical merge: each parameter is the weighted sum of the pool's parameters with the
   weights of its layer (``recall.merge.layers``).

Readings of stage 3 (``recall.weights``):

- ``"relative"`` (default): delta_i^l = D_i^l / S^l, with D the mean paired squared distance between model
  i's and M_N's representations of the same sample and S the median squared distance between two
  samples' representations by M_N; w_i^l = softmax_i(-delta_i^l / (tau T)), tau the median of delta over
  the models other than M_N and all layers. Weights are near uniform where the models agree with M_N and
  move to M_N where they diverge. With a similarity other than ``rbf``, delta = -log(similarity).
- ``"literal"``: w_i^l = softmax_i(s_i^l / T) with s the paired RBF similarity with the median-heuristic
  bandwidth (``bandwidth``: samples, models, or hidden = sklearn's gamma = 1/H). On fine-tuned LLMs every
  s is 0.97-0.999, so the weights are uniform: the named negative control.

``anchor="each"`` is the symmetric variant for multi-model merging: every merged model in turn is M_N,
with typical samples of its own task (samples tagged ``model=i``), and the weights are averaged over the
references; the default ``"last"`` takes the newest model as M_N, as the paper describes.

Every merge writes its diagnostics (``recall_diagnostics.csv`` in the merged folder): per layer and model,
D, S, delta, the similarity and the weight, so a reader sees which regime a merge is in.

The paper's full text is not available to us; every choice it leaves open is an option here
(the book's "What the paper leaves open"): the pool is the base plus all models (``include_base``),
the clustering embedding is M_N's last hidden layer.
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
READINGS = ("relative", "literal")
ANCHORS = ("last", "each")
EPS = 1e-12
DTYPES = ("float32", "bfloat16", "float16")


# Representations already computed in this process, by (model files, pass options, texts): a merge that changes
# only how similarities become weights (a temperature grid, the literal reading) reads no model again.
_REPS: dict = {}
_REPS_MAX = 256


def _identity(path: str) -> tuple:
    """A model folder's identity: its path and the size and modification time of its weights files."""
    from pathlib import Path

    files = sorted(Path(path).glob("*.safetensors"))
    return (str(Path(path).resolve()), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))


def _remember(key, value):
    if len(_REPS) >= _REPS_MAX:
        _REPS.pop(next(iter(_REPS)))
    _REPS[key] = value
    return value


@register("recall")
@dataclass
class RecallMerge(LayerLinear):
    """RECALL. Options (defaults are our reading of the paper; see the book's "What the paper leaves open"):

    k: number of typical samples (clusters). selection: kmeans | random | minibatch.
    reading: relative (softmax of -D/(tau S), default) | literal (softmax of the similarity; the negative control).
    similarity: rbf | cka_rbf | cka_linear | cosine | combo. bandwidth (literal rbf only): samples (median of the
    squared distances between samples, default) | models (median of the paired distances between the
    models, per layer) | hidden (sklearn's rbf_kernel default, gamma = 1/H). temperature: softmax temperature (> 0).
    weighting: softmax (of the similarity to M_N) | centrality (of the mean similarity to all models).
    anchor: last (M_N is the newest model) | each (every model in turn, with samples of its own task).
    layerwise: False gives one global weight per model (softmax of the layer-averaged similarity): an ablation.
    include_base: whether the base model joins the pool. pooling: content (the sample's own tokens) | mean
    (whole prompt) | last. cluster_layer: hidden-state index used to cluster (-1 = last). max_length: tokens read
    per sample. dtype: float32 | bfloat16 | float16, the compute dtype of the representation pass (pooling
    accumulates in float32); bfloat16 is about 5x faster on CPUs with AVX512-BF16 and changes the weights by
    about 0.005 (benchmarks/merge_speed.py).
    """

    label = "RECALL"
    role = "method"

    weights: str = field(default="computed", init=False, repr=False)  # not an option: computed in prepare
    k: int = opt(32, int, interval(1), "number of typical samples (clusters), at most the samples given")
    selection: str = opt("kmeans", str, one_of(*SELECTIONS), "how typical samples are chosen")
    reading: str = opt("relative", str, one_of(*READINGS), "how similarities become weights")
    similarity: str = opt("rbf", str, one_of(*SIMILARITY_NAMES), "similarity of representations per layer")
    bandwidth: str = opt("samples", str, one_of(*BANDWIDTHS), "what the RBF bandwidth comes from (rbf only)")
    temperature: float = opt(1.0, float, interval(0, lo_open=True), "softmax temperature")
    weighting: str = opt("softmax", str, one_of(*WEIGHTINGS), "what the softmax is taken of")
    anchor: str = opt("last", str, one_of(*ANCHORS), "which model is M_N: the last, or each in turn")
    layerwise: bool = opt(True, bool, doc="one weight per layer (false: one per model)")
    include_base: bool = opt(True, bool, doc="the base model joins the pool")
    pooling: str = opt("content", str, one_of(*POOLINGS), "pooling of a layer's hidden states over tokens")
    cluster_layer: int = opt(-1, int, doc="hidden-state index used to cluster, -(L+1)..L (-1 = last)")
    max_length: int = opt(512, int, interval(1), "tokens read per sample")
    dtype: str = opt("float32", str, one_of(*DTYPES), "compute dtype of the representation pass")
    _similarity: Table | None = field(default=None, repr=False)
    _selected: list[int] = field(default_factory=list, repr=False)
    _diagnostics: Table | None = field(default=None, repr=False)
    _tau: list[float] = field(default_factory=list, repr=False)

    needs_samples = True
    reference = "Wang et al., RECALL, EMNLP 2025 (arXiv 2510.20479)"

    def check(self) -> None:
        if self.bandwidth != "samples" and self.similarity != "rbf":
            raise MergeError(f"method recall: bandwidth={self.bandwidth!r} applies to similarity='rbf' only, "
                             f"not {self.similarity!r}")
        if self.bandwidth != "samples" and self.reading != "literal":
            raise MergeError(f"method recall: bandwidth={self.bandwidth!r} applies to reading='literal' only (the "
                             f"relative reading scales by the spread between samples); set reading=literal")

    def input_files(self) -> list[str]:
        return []

    def options(self):
        opts = super().options()
        opts.pop("weights", None)
        return opts

    def _groups(self, ctx: MergeContext) -> list[tuple[int, list[str]]]:
        """(index of M_N among ctx.models, texts of its task) for each anchor."""
        samples = ctx.samples or []
        if self.anchor == "last":
            return [(len(ctx.models) - 1, [s.text for s in samples])]
        return [(j, [s.text for s in samples if s.model == j]) for j in range(len(ctx.models))]

    def validate(self, ctx: MergeContext) -> None:
        texts = [s.text for s in (ctx.samples or [])]
        if not texts or not any(t.strip() for t in texts):
            raise MergeError("RECALL needs samples of the new task (non-empty texts): "
                             "pass --samples FILE or --task NAME")
        for j, group in self._groups(ctx):
            if self.k > len(group):
                which = f"model {j}'s task (samples with model={j})" if self.anchor == "each" else "the new task"
                raise MergeError(f"k={self.k} typical samples requested but only {len(group)} samples of {which} "
                                 f"given; lower --k or give more samples"
                                 + ("; anchor=each needs samples tagged with the index of their model"
                                    if self.anchor == "each" else ""))
        if not -(ctx.num_layers + 1) <= self.cluster_layer <= ctx.num_layers:
            raise MergeError(f"method recall: cluster_layer must be a hidden-state index in {-(ctx.num_layers + 1)}.."
                             f"{ctx.num_layers} (the model has {ctx.num_layers} blocks), got {self.cluster_layer}")
        if len(pool_names(ctx, self.include_base)[1]) < 2:
            raise MergeError("RECALL needs at least two models in the pool (e.g. --base DIR and one --models DIR)")

    def prepare(self, ctx: MergeContext) -> None:
        from ..assets import load_model
        from ..representations import layer_representations, shared_affixes
        from ..typical import select_typical

        self.validate(ctx)
        names, paths = pool_names(ctx, self.include_base)
        offset = len(paths) - len(ctx.models)  # 1 when the base leads the pool
        groups = self._groups(ctx)

        def load(path: str):
            return load_model(path, device=ctx.device, dtype=getattr(torch, self.dtype))

        def reps(model, tok, texts, trim, desc):
            return layer_representations(model, tok, texts, batch_size=ctx.batch_size, max_length=self.max_length,
                                         pooling=self.pooling, device=ctx.device, progress=ctx.progress, desc=desc,
                                         trim=trim)

        def key(path: str, texts, trim):
            return (_identity(path), self.dtype, self.pooling, self.max_length, trim, str(ctx.device), ctx.batch_size,
                    tuple(texts))

        # Stage 1: for each anchor M_N, typical samples of its task, embedded by M_N itself.
        chosen, ref_reps, trims = [], [], []
        for j, texts in groups:
            k = ("all", *key(paths[offset + j], texts, None))
            if k in _REPS:
                trim, r = _REPS[k]
            else:
                model, tok = load(paths[offset + j])
                trim = shared_affixes(tok, texts, self.max_length) if self.pooling == "content" else None
                r = _remember(k, (trim, reps(model, tok, texts, trim,
                                             f"representations {names[offset + j]} (all samples)")))[1]
                del model
                gc.collect()
            if self.k == len(texts) and self.selection != "random":
                sel = list(range(len(texts)))
            else:
                sel = select_typical(r[self.cluster_layer].numpy(), self.k, method=self.selection, seed=ctx.seed)
            chosen.append([texts[i] for i in sel])
            ref_reps.append(r[:, sel])
            trims.append(trim)
        self._selected = sel if self.anchor == "last" else []
        # Stage 2: every pool model reads every anchor's typical samples (each model is loaded once).
        per_ref = [[None] * len(paths) for _ in groups]
        for i, (name, path) in enumerate(zip(names, paths)):
            todo = []
            for g, (j, _) in enumerate(groups):
                if offset + j == i:
                    per_ref[g][i] = ref_reps[g]
                elif key(path, chosen[g], trims[g]) in _REPS:
                    per_ref[g][i] = _REPS[key(path, chosen[g], trims[g])]
                else:
                    todo.append(g)
            if todo:
                model, tok = load(path)
                for g in todo:
                    per_ref[g][i] = _remember(key(path, chosen[g], trims[g]),
                                              reps(model, tok, chosen[g], trims[g], f"representations {name}"))
                del model
                gc.collect()
        # Stage 3: per anchor, divergence/similarity to M_N per layer -> softmax weights per layer.
        tables, sims, rows, self._tau = [], [], [], []
        for g, (j, _) in enumerate(groups):
            w, s, diag, tau = self._weights(per_ref[g], offset + j)
            tables.append(w)
            sims.append(s)
            self._tau.append(tau)
            rows += [(layer, names[offset + j], names[i], *diag[layer, i], w[0 if len(w) == 1 else layer, i])
                     for layer in range(diag.shape[0]) for i in range(len(names))]
        table = np.mean(tables, axis=0)
        self._similarity = Table(tuple(names), np.mean(sims, axis=0))
        self._diagnostics = Table(("anchor", "model", "D", "S", "delta", "similarity", "weight"),
                                  np.array([r[1:] for r in rows], dtype=object), tuple(r[0] for r in rows))
        self.set_table(table, names, paths)

    def _weights(self, reps: list, ref: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(weights, similarity (L+1, M), diagnostics (L+1, M, 4): D, S, delta, similarity; tau) for one M_N."""
        from .. import similarity as simlib
        from ..weights import centrality_weights, layer_weights, relative_weights

        d = simlib.paired_sq_distance(reps, ref=ref)
        spread = simlib.sample_spread(reps[ref])[:, None]
        rel = d / spread
        tau = float("nan")
        if self.reading == "relative":
            if self.similarity == "rbf":
                delta = simlib.paired_sq_distance_matrix(reps).mean(axis=2) / spread if self.weighting == "centrality" \
                    else rel
            else:
                s = simlib.similarity_matrix(reps, self.similarity).mean(axis=2) if self.weighting == "centrality" \
                    else simlib.similarity_to_reference(reps, ref=ref, measure=self.similarity)
                delta = -np.log(np.maximum(s, EPS))
            table, tau = relative_weights(delta, self.temperature, ref=ref)
            sim = np.exp(-delta / tau)
            if not self.layerwise:
                table, _ = relative_weights(delta.mean(axis=0, keepdims=True), self.temperature, ref=ref, tau=tau)
        else:
            if self.weighting == "centrality":
                sim_m = simlib.similarity_matrix(reps, self.similarity, bandwidth=self.bandwidth)
                sim = sim_m.mean(axis=2)
                table = centrality_weights(sim_m, self.temperature)
            else:
                sim = simlib.similarity_to_reference(reps, ref=ref, measure=self.similarity, bandwidth=self.bandwidth)
                table = layer_weights(sim, self.temperature)
            if not self.layerwise:
                table = layer_weights(sim.mean(axis=0, keepdims=True), self.temperature)
        diag = np.stack([d, np.broadcast_to(spread, d.shape), rel, sim], axis=2)
        return np.asarray(table, dtype=np.float64), np.asarray(sim, dtype=np.float64), diag, tau

    def report(self):
        out = dict(super().report())
        if self._similarity is not None:
            out["similarity"] = self._similarity
            out["diagnostics"] = self._diagnostics
            out["typical_samples"] = self._selected
            out["tau"] = self._tau[0] if len(self._tau) == 1 else self._tau
        return out


@register("recall_symmetric")
@dataclass
class RecallSymmetric(RecallMerge):
    """RECALL with every merged model in turn as M_N (with typical samples of its own task) and the layer weights
    averaged over the references: the order-free control of multi-model merging. Options as ``recall``."""

    label = "RECALL (each model as M_N)"
    role = "control"

    anchor: str = opt("each", str, one_of(*ANCHORS), "which model is M_N: the last, or each in turn")


@register("recall_history")
@dataclass
class RecallHistory(RecallMerge):
    """RECALL whose sequential pool is the history {base, M_1..M_t} (every step's fine-tuned model) instead of
    {current, new}: the reading of the sequential protocol in which old experts keep their own weights."""

    label = "RECALL (history pool)"
    role = "control"
    sequential_pool = "history"
