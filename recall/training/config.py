"""Options of one fine-tuning run: :class:`TrainConfig`, validated on construction."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

MODES = ("lora", "full")
DEFAULT_LR = {"lora": 3e-4, "full": 2e-5}
AUTOCASTS = (None, "bfloat16")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class TrainConfig:
    """Options of one fine-tuning run. Every field is validated on construction.

    - ``mode``: ``"lora"`` (adapters on ``lora_targets``, merged back at the end) or ``"full"``.
    - ``epochs`` passes over the data, unless ``max_steps`` (optimizer updates) is set, which wins
      (the data are cycled, reshuffled each pass).
    - ``batch_size`` examples per micro-batch, ``grad_accum`` micro-batches per optimizer update.
    - ``lr``: ``None`` picks 3e-4 for LoRA and 2e-5 for full fine-tuning. AdamW, linear decay to 0
      after ``warmup_ratio`` of the updates of linear warm-up; ``weight_decay`` applies to matrices
      only (not to norms and biases); gradients clipped to ``max_grad_norm`` (``None``: no clipping).
    - ``max_length``: tokens of prompt + answer + eos; longer examples are an error (see ``objective``).
    - ``lora_r`` / ``lora_alpha`` / ``lora_dropout`` / ``lora_targets`` (``"all-linear"``: every
      linear layer but the output head). Dropout 0 keeps CPU runs deterministic and fast.
    - ``seed``: LoRA initialisation and shuffling.
    - ``group_by_length``: micro-batches of similar lengths, in random order (``recall.training.batching``),
      so padding costs little; ``False``: plain shuffled batches.
    - ``autocast``: ``None`` (fp32) or ``"bfloat16"``: forward and backward under ``torch.autocast`` (weights,
      optimizer state and the loss stay fp32).
    - ``ewc_lambda``: strength of the EWC penalty (0: none); ``ewc_gamma``: decay of old Fishers in
      sequential EWC (1: sum); ``ewc_samples``: examples per Fisher estimate (``None``: all).
    """

    mode: str = "lora"
    epochs: int = 2
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    max_length: int = 256
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    lora_targets: str | tuple[str, ...] = "all-linear"
    seed: int = 0
    group_by_length: bool = True
    autocast: str | None = None
    ewc_lambda: float = 0.0
    ewc_gamma: float = 1.0
    ewc_samples: int | None = None

    def __post_init__(self):
        def bad(name, want):
            raise ValueError(f"TrainConfig.{name} = {getattr(self, name)!r}: {want}")

        if self.mode not in MODES:
            bad("mode", f"must be one of {', '.join(map(repr, MODES))}")
        for name in ("epochs", "batch_size", "grad_accum", "lora_r"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                bad(name, "must be an integer >= 1")
        if self.max_steps is not None and (not _is_int(self.max_steps) or self.max_steps < 1):
            bad("max_steps", "must be None (train by epochs) or an integer >= 1")
        if self.lr is not None and (not _is_num(self.lr) or self.lr <= 0):
            bad("lr", "must be None (mode default) or a finite number > 0")
        if not _is_num(self.weight_decay) or self.weight_decay < 0:
            bad("weight_decay", "must be a finite number >= 0")
        if not _is_num(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1:
            bad("warmup_ratio", "must be in [0, 1)")
        if self.max_grad_norm is not None and (not _is_num(self.max_grad_norm) or self.max_grad_norm <= 0):
            bad("max_grad_norm", "must be None (no clipping) or a finite number > 0")
        if not _is_int(self.max_length) or self.max_length < 2:
            bad("max_length", "must be an integer >= 2 (prompt + answer + eos tokens)")
        if not _is_num(self.lora_alpha) or self.lora_alpha <= 0:
            bad("lora_alpha", "must be a finite number > 0")
        if not _is_num(self.lora_dropout) or not 0 <= self.lora_dropout < 1:
            bad("lora_dropout", "must be in [0, 1)")
        targets = self.lora_targets
        if isinstance(targets, list):
            targets = tuple(targets)
            object.__setattr__(self, "lora_targets", targets)
        if isinstance(targets, str):
            if not targets.strip():
                bad("lora_targets", "must be 'all-linear' or a non-empty list of module names")
        elif not (isinstance(targets, tuple) and targets and all(isinstance(t, str) and t for t in targets)):
            bad("lora_targets", "must be 'all-linear' or a non-empty list of module names")
        if not _is_int(self.seed) or self.seed < 0:
            bad("seed", "must be an integer >= 0")
        if not isinstance(self.group_by_length, bool):
            bad("group_by_length", "must be True or False")
        if self.autocast not in AUTOCASTS:
            bad("autocast", f"must be one of {', '.join(map(repr, AUTOCASTS))}")
        if not _is_num(self.ewc_lambda) or self.ewc_lambda < 0:
            bad("ewc_lambda", "must be a finite number >= 0")
        if not _is_num(self.ewc_gamma) or not 0 < self.ewc_gamma <= 1:
            bad("ewc_gamma", "must be in (0, 1]")
        if self.ewc_samples is not None and (not _is_int(self.ewc_samples) or self.ewc_samples < 1):
            bad("ewc_samples", "must be None (all) or an integer >= 1")

    @property
    def learning_rate(self) -> float:
        """``lr``, or the mode's default when ``lr`` is None."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.mode]

    def to_dict(self) -> dict:
        d = asdict(self)
        if isinstance(d["lora_targets"], tuple):
            d["lora_targets"] = list(d["lora_targets"])
        return d
