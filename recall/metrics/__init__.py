"""Scores: accuracy and macro-F1, as plain functions and as local ``evaluate`` metric modules.

``evaluate`` ships no metric scripts and cannot fetch them offline, so ours live next to this file
(``accuracy/accuracy.py``, ``macro_f1/macro_f1.py``: folder name = script name) and are loaded by
path with ``load_metric``. ``compute_metrics`` uses the plain functions below (same definitions,
checked against the modules and scikit-learn in the tests) so that scoring does not pay the ~10 s
import of ``evaluate``.

Macro-F1 follows ``sklearn.metrics.f1_score(average="macro")``: the unweighted mean of per-class
F1 = 2TP / (2TP + FP + FN) over the classes present in the references or the predictions (or over
``labels`` when given; a class with 2TP + FP + FN = 0 then scores 0, as with ``zero_division=0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("accuracy", "macro_f1")


def metric_path(name: str) -> Path:
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRIC_NAMES)}")
    return METRICS_DIR / name / f"{name}.py"


def load_metric(name: str):
    """The ``evaluate`` module of one of our metrics, loaded from its local script (no hub access)."""
    import evaluate

    return evaluate.load(str(metric_path(name)))


def _arrays(predictions: Sequence, references: Sequence) -> tuple[np.ndarray, np.ndarray]:
    p, r = np.asarray(list(predictions)), np.asarray(list(references))
    if p.shape != r.shape or p.ndim != 1:
        raise ValueError(f"predictions and references must be 1-d and of equal length, got {p.shape} and {r.shape}")
    if len(p) == 0:
        raise ValueError("no predictions to score")
    return p, r


def accuracy(predictions: Sequence, references: Sequence) -> float:
    p, r = _arrays(predictions, references)
    return float(np.mean(p == r))


def macro_f1(predictions: Sequence, references: Sequence, labels: Sequence | None = None) -> float:
    p, r = _arrays(predictions, references)
    classes = np.unique(np.concatenate([p, r])) if labels is None else np.asarray(list(labels))
    scores = []
    for c in classes:
        tp = np.sum((p == c) & (r == c))
        fp = np.sum((p == c) & (r != c))
        fn = np.sum((p != c) & (r == c))
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def compute_metrics(predictions: Sequence, references: Sequence, labels: Sequence | None = None) -> dict[str, float]:
    """``{"accuracy": ..., "macro_f1": ...}`` for class predictions (ints or label words)."""
    return {"accuracy": accuracy(predictions, references),
            "macro_f1": macro_f1(predictions, references, labels)}
