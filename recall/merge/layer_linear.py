"""Layer-wise linear interpolation with a given weights table: RECALL's merge step on its own.

``theta_merged[p] = sum_i W[layer(p), i] * theta_i[p]`` over the model pool (base first when
``include_base``, then the models in order). The table has one row per layer 0..L and one column
per pool model (a single row means one model-level weight for every layer). This is what
``mergekit``'s linear method computes with per-layer weights, and what a saved
``recall_weights.csv`` replays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .base import MergeContext, MergeError, MergeMethod, Table, opt
from .pool import model_pool, pool_labels
from .registry import register


def pool_names(ctx: MergeContext, include_base: bool) -> tuple[list[str], list[str]]:
    """(labels, paths) of the pool, in the order of ``model_pool``."""
    return (pool_labels(ctx.base, ctx.models, include_base),
            [str(p) for p in model_pool(ctx.base, ctx.models, include_base)])


def weighted_sum(tensors: list[torch.Tensor], weights) -> torch.Tensor:
    """sum_i w_i t_i in float32, accumulated in a fixed order (deterministic)."""
    out = tensors[0] * float(weights[0])
    for t, w in zip(tensors[1:], weights[1:]):
        out.add_(t, alpha=float(w))
    return out


def check_weights(table: np.ndarray, num_layers: int, pool_size: int) -> None:
    if table.ndim != 2 or table.shape[1] != pool_size or table.shape[0] not in (1, num_layers + 1):
        raise MergeError(f"weights table has shape {table.shape}; expected ({num_layers + 1}, {pool_size}) "
                         f"(layers 0..{num_layers} x pool models) or (1, {pool_size})")
    if not np.isfinite(table).all():
        raise MergeError("weights table contains NaN or Inf")


@register("layer_linear")
@dataclass
class LayerLinear(MergeMethod):
    """Layer-wise linear merge with weights read from a CSV (index: layer; columns: pool models)."""

    label = "Layer-wise linear"
    role = "tool"

    elementwise = True

    weights: str = opt("", str, doc="path of the weights table (CSV: index layer, one column per pool model)")
    include_base: bool = opt(True, bool, doc="the base model is the pool's first column")
    _table: np.ndarray | None = field(default=None, repr=False)
    _names: list[str] = field(default_factory=list, repr=False)
    _paths: list[str] = field(default_factory=list, repr=False)

    reference = "layer-wise linear interpolation (RECALL's merge step, Wang et al. 2025)"

    def check(self) -> None:
        if not self.weights:
            raise MergeError("layer_linear needs a weights table: pass weights=PATH to a CSV "
                             "(e.g. a recall_weights.csv)")

    def input_files(self) -> list[str]:
        return [self.weights]

    def _read_table(self, ctx: MergeContext) -> tuple[np.ndarray, list[str], list[str]]:
        try:
            with open(self.weights, encoding="utf-8") as f:
                table = Table.read_csv(f.read(), what=f"weights table {self.weights}").to_numpy()
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise MergeError(f"cannot read weights table {self.weights}: {e}") from None
        names, paths = pool_names(ctx, self.include_base)
        check_weights(table, ctx.num_layers, len(names))
        return table, names, paths

    def validate(self, ctx: MergeContext) -> None:
        self._read_table(ctx)

    def prepare(self, ctx: MergeContext) -> None:
        self.set_table(*self._read_table(ctx))

    def set_table(self, table: np.ndarray, names: list[str], paths: list[str]) -> None:
        self._table = np.asarray(table, dtype=np.float64)
        self._names = list(names)
        self._paths = list(paths)

    def merge_tensor(self, name, layer, base, tensors):
        if self._table is None:
            raise MergeError("layer_linear: prepare() was not run")
        pool = model_pool(base, tensors, self.include_base)
        row = self._table[0 if len(self._table) == 1 else layer]
        if len(row) != len(pool):
            raise MergeError(f"weights table has {len(row)} columns but the pool has {len(pool)} models")
        return weighted_sum(pool, row)

    def report(self):
        if self._table is None:
            return {}
        return {"weights": Table(tuple(self._names), self._table), "pool": self._paths}
