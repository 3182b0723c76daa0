"""RECALL's pool with uniform weights: the control that separates RECALL's weighting from its pool.

RECALL merges a pool (by default the base and every model) with per-layer weights. Against methods that
merge another pool (``average`` leaves the base out), a difference can come from the pool alone: uniform
weights over base + N experts give the base plus N/(N+1) of the mean task vector. This control merges
RECALL's pool with weight 1/|P| at every layer, so RECALL minus it is the effect of the weights. In the
sequential scenario, where the pool is {current model, new model}, it is the fixed-0.5 average chain.

    merged = (1 / |P|) * sum_{theta in P} theta,   P = the base (if ``include_base``) and the models
"""

from __future__ import annotations

from dataclasses import dataclass

from .average import Average
from .base import opt
from .registry import register


@register("uniform")
@dataclass
class Uniform(Average):
    """Uniform average over RECALL's pool (the base included by default, as in RECALL)."""

    label = "Uniform (RECALL's pool)"
    role = "control"

    include_base: bool = opt(True, bool, doc="the base model, when given, joins the average (as in RECALL's pool)")

    reference = "control: RECALL's model pool with uniform weights (averaging, Wortsman et al. 2022)"
