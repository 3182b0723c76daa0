"""Every method name the experiments use, with its label and colour, in one place.

Merge methods come from the registry (``recall.merge``): a new module with ``@register`` appears in
the profiles' method lists, the figures, the tables' labels and the claims' baselines with no other
edit. Only the training baselines and the references (which are not merges) are listed here.
"""

from __future__ import annotations

from collections.abc import Sequence

TRAINING = {"sft": "LoRA SFT", "ewc": "EWC"}  # sequential baselines that train, not merge
REFERENCES = {"base": "Base model", "expert": "Expert", "experts": "Experts (own task)",
              "multitask": "Multi-task training", "default": "default"}
TASK_LABELS = {"bbc": "BBC", "rt": "RT", "trec": "TREC", "sms": "SMS", "ng": "20NG", "r8": "R8", "amazon": "Amazon",
               "mean": "mean"}
RECALL_RED = "#c0392b"
_FIXED_COLORS = {"recall": RECALL_RED, "base": "#7f7f7f", "expert": "#444444", "experts": "#444444",
                 "multitask": "#5e3c99"}


def _methods() -> dict:
    from .merge.registry import load_all

    return load_all()


def merge_methods() -> tuple[str, ...]:
    """RECALL, then every registered merging baseline (by name: the same order whatever was imported first)."""
    return ("recall",) + merge_baselines()


def merge_baselines() -> tuple[str, ...]:
    """Every registered merge method whose role is "baseline": what RECALL is compared with."""
    return tuple(sorted(n for n, cls in _methods().items() if cls.role == "baseline"))


def merge_controls() -> tuple[str, ...]:
    """Every registered merge method whose role is "control": variants that isolate one part of RECALL (uniform
    weights over its pool, each model as M_N, the history pool), reported beside it but not in the verdicts."""
    return tuple(sorted(n for n, cls in _methods().items() if cls.role == "control"))


def sequential_baselines() -> tuple[str, ...]:
    """The training baselines of the sequential scenario (they fine-tune; they do not merge)."""
    return tuple(TRAINING)


def task_label(name) -> str:
    return TASK_LABELS.get(str(name), str(name))


def label(name) -> str:
    """The display name of a method, reference or expert (``expert-trec`` -> ``Expert TREC``)."""
    name = str(name)
    if name.startswith("expert-"):
        return f"Expert {task_label(name.removeprefix('expert-'))}"
    methods = _methods()
    if name in methods:
        return methods[name].label or name
    return TRAINING.get(name) or REFERENCES.get(name) or name


def colors(names: Sequence) -> dict:
    """Name -> colour. RECALL is always red, the references grey; every other known method keeps one colour
    whatever else is plotted (merging baselines, then the training baselines, from one palette)."""
    import seaborn as sns

    cb = sns.color_palette("colorblind", 10)
    palette = [cb[i] for i in (0, 1, 2, 3, 4, 5, 6, 9)]  # without grey (base) and the pale yellow
    fixed = dict(_FIXED_COLORS)
    for i, m in enumerate(merge_baselines() + sequential_baselines()):
        fixed.setdefault(m, palette[i % len(palette)])
    extra = [m for m in names if str(m) not in fixed]
    more = sns.color_palette("husl", max(1, len(extra)))
    out = {m: fixed[str(m)] for m in names if str(m) in fixed}
    out.update({m: more[j] for j, m in enumerate(extra)})
    return out


__all__ = ["TRAINING", "REFERENCES", "TASK_LABELS", "RECALL_RED", "merge_methods", "merge_baselines",
           "merge_controls", "sequential_baselines", "label", "task_label", "colors"]
