"""Supervised fine-tuning (LoRA or full), EWC, and the sequential / multi-task protocols.

What is trained
    Each :class:`~recall.samples.Sample` is a chat-formatted prompt (``text``) and a label word
    (``answer``). The model reads ``prompt + answer + eos`` and the loss is the token-mean
    cross-entropy of the answer tokens and the eos token only (labels are -100 on the prompt and
    on padding). Prompt and answer are tokenized separately, without special tokens (the chat
    template already wrote them into the prompt): :func:`encode_sample` is the one place that does
    it, so scoring code that wants the same token boundary should call it too.

Length policy
    ``TrainConfig.max_length`` bounds prompt + answer + eos. An example that does not fit is an
    error (raised before any training, naming the sample), never silently truncated: cutting a
    chat-formatted prompt would corrupt its template, and the task code already truncates the text
    (``max_text_tokens``). Raise ``max_length`` or lower ``max_text_tokens``.

Determinism
    Same seed, same data, same machine -> bit-identical weights on CPU: the seed fixes the LoRA
    initialisation (``accelerate.utils.set_seed``, which also seeds the global RNGs) and the
    shuffling (a seeded ``torch.Generator`` handed to the ``DataLoader``); LoRA dropout defaults
    to 0, which also keeps CPU runs fast.

LoRA results are plain checkpoints
    With ``mode="lora"`` the adapters are merged back into the weights (peft ``merge_and_unload``)
    before :func:`finetune` returns, so every result is an ordinary ``PreTrainedModel`` that the
    merge code can treat like any full fine-tune.

Several GPUs
    Training runs through ``accelerate.Accelerator`` (model, optimizer and dataloader are
    prepared; backward is ``accelerator.backward``), so the same script runs data-parallel with::

        accelerate launch --num_processes 4 my_script.py      # or torchrun --nproc_per_node 4

    Each process then draws ``batch_size`` examples per micro-batch (effective batch =
    ``batch_size * grad_accum * num_processes``) from one shared seeded permutation; only the main
    process writes checkpoints and Fisher files and runs ``after_task`` hooks, the others wait.
    Fisher diagonals are computed redundantly on every process (identical results). The
    single-process path is the tested one.

EWC (Kirkpatrick et al., 2017)
    :func:`fisher_diagonal` estimates the diagonal empirical Fisher of the answer log-likelihood at
    the current parameters ``theta*``. With an :class:`EWCState` and ``ewc_lambda > 0`` the
    training loss becomes ``loss + lambda/2 * sum_i F_i (theta_i - theta*_i)^2`` over the weights
    being trained: all parameters in full fine-tuning; in LoRA mode the *effective* weight
    ``W + scale * B A`` of every adapted linear layer (the frozen parameters cannot move, so their
    terms are constant). Sequential EWC keeps a single penalty: ``F <- gamma * F_old + F_new``,
    anchored at the latest parameters (gamma = 1: the summed-Fisher form of Huszar 2018; gamma < 1:
    online EWC of Schwarz et al. 2018). ``ewc_lambda = 0`` skips the penalty entirely, so it equals
    plain fine-tuning bit for bit.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .fsutil import atomic_dir, atomic_write_bytes
from .samples import Sample

MODES = ("lora", "full")
DEFAULT_LR = {"lora": 3e-4, "full": 2e-5}
TRAINING_META = "training.json"


# --------------------------------------------------------------------------- config


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
    - ``max_length``: tokens of prompt + answer + eos; longer examples are an error (see module doc).
    - ``lora_r`` / ``lora_alpha`` / ``lora_dropout`` / ``lora_targets`` (``"all-linear"``: every
      linear layer but the output head). Dropout 0 keeps CPU runs deterministic and fast.
    - ``seed``: LoRA initialisation and shuffling.
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


# --------------------------------------------------------------------------- data


def _check_samples(samples: Sequence[Sample], what: str = "samples") -> None:
    if not samples:
        raise ValueError(f"no {what} to train on; pass at least one Sample with an answer")
    for i, s in enumerate(samples):
        if not isinstance(s, Sample):
            raise TypeError(f"{what}[{i}] is a {type(s).__name__}, not a recall.samples.Sample")
        if s.answer is None or not str(s.answer):
            raise ValueError(f"{what}[{i}] has no answer; supervised fine-tuning needs Sample(text, answer)")


def encode_sample(tokenizer, sample: Sample) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids + eos id), both tokenized without special tokens."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; training appends it after every answer")
    prompt = tokenizer(sample.text, add_special_tokens=False)["input_ids"]
    answer = tokenizer(str(sample.answer), add_special_tokens=False)["input_ids"]
    return list(prompt), list(answer) + [tokenizer.eos_token_id]


def encode_samples(tokenizer, samples: Sequence[Sample], max_length: int) -> list[dict]:
    """Examples ``{"input_ids", "labels"}`` (labels -100 on the prompt). Raises on over-long ones."""
    _check_samples(samples)
    out = []
    for i, s in enumerate(samples):
        prompt, answer = encode_sample(tokenizer, s)
        n = len(prompt) + len(answer)
        if n > max_length:
            raise ValueError(
                f"sample {i} is {n} tokens long (prompt {len(prompt)} + answer/eos {len(answer)}), more than "
                f"max_length={max_length}; lower the task's max_text_tokens or raise TrainConfig.max_length")
        out.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    return out


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def collate(examples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples into ``input_ids``, ``attention_mask`` and ``labels`` (-100 on pads)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[r, :n] = torch.tensor(e["input_ids"])
        labels[r, :n] = torch.tensor(e["labels"])
        mask[r, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class _Collator:  # picklable, for DataLoader workers
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples):
        return collate(examples, self.pad_id)


def _supports_logits_to_keep(model) -> bool:
    base = model
    while hasattr(base, "get_base_model") or hasattr(base, "module"):
        base = base.get_base_model() if hasattr(base, "get_base_model") else base.module
    try:
        return "logits_to_keep" in inspect.signature(type(base).forward).parameters
    except (TypeError, ValueError):
        return False


def _answer_nll(model, batch: dict, keep_logits: bool) -> torch.Tensor:
    """Per-token negative log-likelihood (fp32) of every labelled token of the batch, flattened.

    Logits are computed only where a label is predicted (``logits_to_keep`` with a boolean mask,
    when the model supports it): the output head over a large vocabulary is a fifth of the cost of a
    small model, and the prompt positions do not need it.
    """
    labels = batch["labels"]
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    where = targets != -100
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    if keep_logits:
        kwargs["logits_to_keep"] = where
    logits = model(**kwargs).logits
    if logits.dim() == 3:
        logits = logits[where]
    return F.cross_entropy(logits.float(), targets[where], reduction="none")


@torch.no_grad()
def mean_answer_loss(model, tokenizer, samples: Sequence[Sample], batch_size: int = 8,
                     max_length: int | None = None) -> float:
    """Token-mean answer+eos cross-entropy of ``samples`` under ``model`` (the training objective)."""
    examples = encode_samples(tokenizer, samples, max_length or 10**9)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    keep = _supports_logits_to_keep(model)
    total, count = 0.0, 0
    try:
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[i:i + batch_size], _pad_id(tokenizer)).items()}
            nll = _answer_nll(model, batch, keep)
            total += nll.sum().item()
            count += nll.numel()
    finally:
        model.train(was_training)
    return total / count


def samples_fingerprint(samples: Sequence[Sample]) -> str:
    """sha256 of the samples' texts and answers, in order."""
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps([s.text, s.answer], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


# --------------------------------------------------------------------------- EWC


@dataclass
class EWCState:
    """Diagonal Fisher ``fisher[name]`` and anchor ``theta_star[name]`` (fp32, CPU), keyed by the
    plain model's parameter names (``model.named_parameters()``, tied weights once)."""

    fisher: dict[str, torch.Tensor]
    theta_star: dict[str, torch.Tensor]
    n_samples: int
    tasks: tuple[str, ...] = ()

    def __post_init__(self):
        if set(self.fisher) != set(self.theta_star):
            raise ValueError("EWCState: fisher and theta_star must cover the same parameters")
        for k, f in self.fisher.items():
            if f.shape != self.theta_star[k].shape:
                raise ValueError(f"EWCState: shape of fisher[{k!r}] {tuple(f.shape)} != theta_star "
                                 f"{tuple(self.theta_star[k].shape)}")

    def combine(self, newer: EWCState, gamma: float = 1.0) -> EWCState:
        """Sequential EWC: ``F = gamma * F_self + F_newer``, anchored at ``newer.theta_star``.

        gamma = 1 sums the Fishers of all tasks so far; gamma < 1 is online EWC (old tasks decay).
        """
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if set(self.fisher) != set(newer.fisher):
            raise ValueError("EWCState.combine: the two states cover different parameters (different models?)")
        fisher = {k: gamma * self.fisher[k] + newer.fisher[k] for k in newer.fisher}
        return EWCState(fisher, newer.theta_star, self.n_samples + newer.n_samples, self.tasks + newer.tasks)


def _float_params(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]


def fisher_diagonal(model, tokenizer, samples: Sequence[Sample], batch_size: int = 8,
                    max_samples: int | None = None, seed: int = 0, max_length: int | None = None,
                    task: str | None = None, progress: bool = False) -> EWCState:
    """Diagonal empirical Fisher of the answer log-likelihood at the model's current parameters.

    ``F = (1/N) * sum over batches b of (grad of sum_{x in b} log p(answer_x | prompt_x))^2``, the
    log-likelihood of an example being the sum over its answer and eos tokens. With
    ``batch_size=1`` this is exactly the per-example empirical Fisher ``mean_x g_x^2``; with larger
    batches the squares of the per-example gradients are still counted once each, plus cross terms
    ``g_x g_y`` whose expectation (``(batch_size-1) * E[g]^2``) vanishes near an optimum of the
    task: a biased but much cheaper estimate. ``max_samples`` keeps a seeded random subset.
    Returns fp32 CPU tensors for every floating parameter; ``theta_star`` is a copy of them.
    The model is left unchanged (gradients cleared, requires_grad flags and train/eval mode restored).
    """
    from tqdm.auto import tqdm

    _check_samples(samples)
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    samples = list(samples)
    if max_samples is not None and max_samples < len(samples):
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(samples), generator=g)[:max_samples].sort().values.tolist()
        samples = [samples[i] for i in idx]
    examples = encode_samples(tokenizer, samples, max_length or 10**9)
    params = _float_params(model)
    flags = {n: p.requires_grad for n, p in params}
    was_training = model.training
    device = next(model.parameters()).device
    keep = _supports_logits_to_keep(model)
    fisher = {n: torch.zeros(p.shape, dtype=torch.float32, device=device) for n, p in params}
    model.eval()
    try:
        for _, p in params:
            p.requires_grad_(True)
            p.grad = None
        for i in tqdm(range(0, len(examples), batch_size), desc="fisher", disable=not progress, leave=False):
            batch = {k: v.to(device) for k, v in collate(examples[i:i + batch_size], _pad_id(tokenizer)).items()}
            _answer_nll(model, batch, keep).sum().backward()  # -log-lik; its square is the same
            with torch.no_grad():
                for n, p in params:
                    if p.grad is not None:
                        fisher[n].add_(p.grad.float().pow(2))
                        p.grad = None
    finally:
        for n, p in params:
            p.grad = None
            p.requires_grad_(flags[n])
        model.train(was_training)
    n = len(examples)
    fisher = {k: (v / n).cpu() for k, v in fisher.items()}
    theta = {name: p.detach().float().cpu().clone() for name, p in params}
    return EWCState(fisher, theta, n, (task,) if task else ())


def save_fisher(state: EWCState, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write the Fisher diagonal (not theta*, which is the checkpoint itself) atomically."""
    from safetensors.torch import save

    meta = {"n_samples": str(state.n_samples), "tasks": json.dumps(list(state.tasks)),
            "extra": json.dumps(metadata or {}, sort_keys=True)}
    return atomic_write_bytes(path, save({k: v.contiguous() for k, v in state.fisher.items()}, metadata=meta))


def load_fisher(path: str | os.PathLike, theta_star: dict[str, torch.Tensor]) -> tuple[EWCState, dict]:
    """(EWCState with the given theta*, the extra metadata saved with it)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        fisher = {k: f.get_tensor(k) for k in f.keys()}
    state = EWCState(fisher, theta_star, int(meta.get("n_samples", 0)), tuple(json.loads(meta.get("tasks", "[]"))))
    return state, json.loads(meta.get("extra", "{}"))


class _EWCPenalty:
    """``lambda/2 * sum F (theta_eff - theta*)^2`` over the trained weights of a (peft-wrapped) model."""

    def __init__(self, model, state: EWCState, lam: float, mode: str, device):
        self.lam = lam
        self.terms: list[tuple] = []
        if mode == "full":
            for name, p in _float_params(model):
                if name in state.fisher and p.requires_grad:
                    self._check(name, p.shape, state)
                    self.terms.append(("full", p, state.fisher[name].to(device), state.theta_star[name].to(device)))
        else:
            from peft.tuners.lora import LoraLayer

            inner = model.get_base_model()
            for name, module in inner.named_modules():
                if not isinstance(module, LoraLayer):
                    continue
                key = f"{name}.weight"
                if key not in state.fisher:
                    continue
                base = module.get_base_layer().weight
                self._check(key, base.shape, state)
                adapter = module.active_adapters[0]
                # the base weight is frozen: keep (W - theta*) once, add the LoRA delta each step
                offset = base.detach().float().to(device) - state.theta_star[key].to(device)
                self.terms.append(("lora", module, adapter, state.fisher[key].to(device), offset))
        if not self.terms:
            raise ValueError("EWC: none of the trained weights is in the Fisher state; was it computed on a "
                             "different model?")

    @staticmethod
    def _check(name, shape, state):
        if state.fisher[name].shape != shape:
            raise ValueError(f"EWC: {name} has shape {tuple(shape)} but the Fisher has "
                             f"{tuple(state.fisher[name].shape)}; was it computed on a different model?")

    def __call__(self) -> torch.Tensor:
        total = None
        for term in self.terms:
            if term[0] == "full":
                _, p, f, star = term
                d = p.float() - star
                v = (f * d * d).sum()
            else:
                _, m, a, f, offset = term
                delta = m.lora_B[a].weight.float() @ m.lora_A[a].weight.float()
                if getattr(m, "fan_in_fan_out", False):
                    delta = delta.T
                d = offset + delta * m.scaling[a]
                v = (f * d * d).sum()
            total = v if total is None else total + v
        return 0.5 * self.lam * total


# --------------------------------------------------------------------------- fine-tuning


@dataclass
class TrainResult:
    """The fine-tuned plain model (LoRA merged in) and what the run measured.

    ``losses``: mean answer loss of each optimizer update; ``penalties``: EWC penalty per update
    (empty without EWC); ``tokens``: non-padding tokens read (prompt + answer, every epoch);
    ``answer_tokens``: supervised tokens; ``peak_memory_mb``: peak resident memory of the process
    (CPU) or peak allocated CUDA memory, so far in the process.
    """

    model: object
    losses: list[float]
    steps: int
    tokens: int
    answer_tokens: int
    wall_s: float
    penalties: list[float] = field(default_factory=list)
    peak_memory_mb: float | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else float("inf")

    @property
    def s_per_1k_tokens(self) -> float:
        return 1000 * self.wall_s / self.tokens if self.tokens else float("nan")

    def summary(self) -> dict:
        return {"steps": self.steps, "tokens": self.tokens, "answer_tokens": self.answer_tokens,
                "wall_s": round(self.wall_s, 3), "tokens_per_s": round(self.tokens_per_s, 2),
                "s_per_1k_tokens": round(self.s_per_1k_tokens, 4), "peak_memory_mb": self.peak_memory_mb,
                "first_loss": self.losses[0] if self.losses else None,
                "last_loss": self.losses[-1] if self.losses else None, "losses": self.losses,
                "penalties": self.penalties}


def _peak_memory_mb(device) -> float:
    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _linear_schedule(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def finetune(model, tokenizer, samples: Sequence[Sample], config: TrainConfig = TrainConfig(),
             ewc: EWCState | None = None, progress: bool = True) -> TrainResult:
    """Supervised fine-tuning of ``model`` on ``samples`` (answer-only loss); returns a plain model.

    The model is trained in place (LoRA adapters are injected into it and merged back), keeps its
    dtype, and is returned in eval mode with its original ``requires_grad`` flags, on the device
    accelerate chose (the GPU when there is one). Pass a copy to keep the original. ``ewc`` (with
    ``config.ewc_lambda > 0``) adds the EWC penalty; with ``ewc_lambda == 0`` it is ignored.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    examples = encode_samples(tokenizer, samples, config.max_length)
    set_seed(config.seed)
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    keep = _supports_logits_to_keep(model)

    if config.mode == "lora":
        from peft import LoraConfig, get_peft_model

        targets = config.lora_targets if isinstance(config.lora_targets, str) else list(config.lora_targets)
        lcfg = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=targets, bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
    else:
        for _, p in _float_params(model):
            p.requires_grad_(True)
    model.train()

    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("nothing to train: no parameter requires grad (check lora_targets)")
    decay = [p for _, p in trainable if p.dim() >= 2]
    no_decay = [p for _, p in trainable if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate)

    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(examples, batch_size=config.batch_size, shuffle=True, generator=generator,
                        collate_fn=_Collator(_pad_id(tokenizer)))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    updates_per_epoch = math.ceil(len(loader) / config.grad_accum)
    total = config.max_steps or config.epochs * updates_per_epoch
    scheduler = _linear_schedule(optimizer, math.ceil(config.warmup_ratio * total), total)

    penalty = None
    if ewc is not None and config.ewc_lambda > 0:
        penalty = _EWCPenalty(accelerator.unwrap_model(model), ewc, config.ewc_lambda, config.mode,
                              accelerator.device)

    losses: list[float] = []
    penalties: list[float] = []
    tokens = answer_tokens = 0
    step = 0
    window_loss, window_pen, window_n = 0.0, 0.0, 0
    bar = tqdm(total=total, desc=f"{config.mode} fine-tuning", unit="step",
               disable=not progress or not accelerator.is_local_main_process)
    params = [p for _, p in trainable]
    t0 = time.perf_counter()
    while step < total:
        for batch in loader:
            with accelerator.accumulate(model):
                nll = _answer_nll(model, batch, keep)
                loss = nll.mean()
                full = loss
                if penalty is not None:
                    pen = penalty()
                    full = loss + pen
                    window_pen += pen.item()
                accelerator.backward(full)
                if accelerator.sync_gradients and config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
            answer_tokens += nll.numel()
            window_loss += loss.item()
            window_n += 1
            if accelerator.sync_gradients:
                scheduler.step()
                step += 1
                losses.append(window_loss / window_n)
                if penalty is not None:
                    penalties.append(window_pen / window_n)
                window_loss, window_pen, window_n = 0.0, 0.0, 0
                recent = losses[-10:]
                bar.update(1)
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
                if step >= total:
                    break
    wall = time.perf_counter() - t0
    bar.close()

    if accelerator.num_processes > 1:
        counts = accelerator.reduce(torch.tensor([tokens, answer_tokens], device=accelerator.device), "sum")
        tokens, answer_tokens = (int(x) for x in counts.tolist())
    peak = _peak_memory_mb(accelerator.device)
    model = accelerator.unwrap_model(model)
    if config.mode == "lora":
        model = model.merge_and_unload()
    accelerator.free_memory()
    del optimizer, penalty
    for n, p in model.named_parameters():
        p.requires_grad_(flags.get(n, True))
        p.grad = None
    model.eval()
    return TrainResult(model=model, losses=losses, steps=step, tokens=tokens, answer_tokens=answer_tokens,
                       wall_s=wall, penalties=penalties, peak_memory_mb=round(peak, 1))


def multitask_finetune(model, tokenizer, samples_by_task: dict[str, Sequence[Sample]],
                       config: TrainConfig = TrainConfig(), progress: bool = True) -> TrainResult:
    """Fine-tune on the union of all tasks' samples, shuffled with ``config.seed``.

    The multi-task upper bound of the merging experiments. It is *not* data-free: it needs every
    task's training data at once, which RECALL and the other merge methods do not.
    """
    if not samples_by_task:
        raise ValueError("samples_by_task is empty; pass at least one task")
    union: list[Sample] = []
    for task, samples in samples_by_task.items():
        _check_samples(samples, f"samples_by_task[{task!r}]")
        union.extend(samples)
    return finetune(model, tokenizer, union, config, progress=progress)


# --------------------------------------------------------------------------- checkpoints


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _wait_for_everyone() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def save_checkpoint(model, tokenizer, out_dir: str | os.PathLike, metadata: dict | None = None,
                    overwrite: bool = False) -> Path:
    """Write a plain Hugging Face folder (safetensors + config + tokenizer) atomically.

    The folder appears complete or not at all (``recall.fsutil.atomic_dir``). ``metadata`` goes to
    ``training.json`` inside it. An existing ``out_dir`` is an error unless ``overwrite``. Under
    ``accelerate launch`` only the main process writes; the others wait.
    """
    out = Path(out_dir)
    if _has_lora(model):
        raise TypeError("save_checkpoint expects a plain PreTrainedModel; merge LoRA adapters first "
                        "(finetune returns merged models)")
    if _is_main_process():
        with atomic_dir(out, force=overwrite) as d:
            model.save_pretrained(d)
            tokenizer.save_pretrained(d)
            if metadata is not None:
                (d / TRAINING_META).write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n")
    _wait_for_everyone()
    return out


def _has_lora(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel) or any(hasattr(m, "lora_A") for m in model.modules())


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """True when ``path`` is a finished :func:`train_and_save` output (config, weights, training.json)."""
    p = Path(path)
    return ((p / "config.json").is_file() and (p / TRAINING_META).is_file()
            and ((p / "model.safetensors").is_file() or (p / "model.safetensors.index.json").is_file()))


def _fingerprint(model_path, samples, config: TrainConfig, ewc: EWCState | None) -> dict:
    from .assets import resolve_model

    resolved = resolve_model(model_path)
    if Path(resolved).exists():
        resolved = str(Path(resolved).resolve())
    return {"base": resolved, "config": config.to_dict(), "samples_sha256": samples_fingerprint(samples),
            "n_samples": len(samples),
            "ewc": None if ewc is None or config.ewc_lambda == 0 else
            {"tasks": list(ewc.tasks), "n_samples": ewc.n_samples}}


def _reusable(out: Path, fp: dict, ignore: tuple[str, ...] = ()) -> bool:
    """True when ``out`` holds a finished checkpoint with fingerprint ``fp`` (keys in ``ignore`` not compared);
    False when it does not exist; an error when it is incomplete or was made from other inputs."""
    if not out.exists():
        return False
    if not is_complete_checkpoint(out):
        raise FileExistsError(f"{out} exists but is not a complete training checkpoint; delete it or "
                              f"choose another output folder")
    old = json.loads((out / TRAINING_META).read_text())
    diffs = [k for k in fp if k not in ignore and old.get("fingerprint", {}).get(k) != fp[k]]
    if diffs:
        raise ValueError(f"{out} holds a checkpoint trained with different {', '.join(diffs)}; delete it "
                         f"or choose another output folder")
    return True


def train_and_save(model_path: str | os.PathLike, samples: Sequence[Sample], config: TrainConfig,
                   out_dir: str | os.PathLike, ewc: EWCState | None = None, progress: bool = True) -> Path:
    """Load ``model_path`` (``smollm2`` or a folder), fine-tune, save a plain checkpoint to ``out_dir``.

    Cached: when ``out_dir`` already holds a complete checkpoint made from the same base, config,
    samples and EWC tasks it is returned without training; made from different ones, it is an error
    (delete it or choose another folder) rather than a silently stale result. ``training.json``
    records that fingerprint and the run's measurements (losses, tokens, wall time, tokens/s).
    """
    from .assets import load_model

    _check_samples(samples)
    out = Path(out_dir)
    fp = _fingerprint(model_path, samples, config, ewc)
    if _reusable(out, fp):
        return out
    model, tokenizer = load_model(model_path)
    result = finetune(model, tokenizer, samples, config, ewc=ewc, progress=progress)
    meta = {"fingerprint": fp, "result": result.summary()}
    save_checkpoint(result.model, tokenizer, out, metadata=meta)
    return out


# --------------------------------------------------------------------------- sequential


def _validate_order(task_order, samples_by_task) -> list[str]:
    if isinstance(task_order, str):
        raise ValueError(f"task_order must be a list of task names, not the string {task_order!r}")
    order = list(task_order)
    if not order:
        raise ValueError("task_order is empty; give at least one task")
    unknown = [t for t in order if t not in samples_by_task]
    if unknown:
        raise ValueError(f"task(s) {', '.join(map(repr, unknown))} in task_order have no samples; "
                         f"samples_by_task has {', '.join(map(repr, samples_by_task)) or 'no tasks'}")
    seen, repeated = set(), []
    for t in order:
        if t in seen and t not in repeated:
            repeated.append(t)
        seen.add(t)
    if repeated:
        raise ValueError(f"task(s) {', '.join(map(repr, repeated))} appear more than once in task_order; "
                         f"each task is learned once")
    for t in order:
        _check_samples(samples_by_task[t], f"samples_by_task[{t!r}]")
    return order


def sequential_finetune(model_path: str | os.PathLike, task_order: Sequence[str],
                        samples_by_task: dict[str, Sequence[Sample]], config: TrainConfig,
                        out_root: str | os.PathLike, ewc: bool = False,
                        after_task: Callable[[int, str, Path], Path | None] | None = None,
                        progress: bool = True) -> list[Path]:
    """Learn the tasks one after another; returns the model in effect after each step.

    Step ``i`` (1-based) fine-tunes the model left by step ``i-1`` (step 1: ``model_path``) on
    ``task_order[i-1]`` and saves it to ``out_root/step{i}_{task}``. Finished steps are found on
    disk and skipped (see :func:`train_and_save`), so a killed run resumes where it stopped.

    ``after_task(step, task, checkpoint)`` runs after every step, finished-on-disk ones included (so
    it should cache its own work); a returned folder replaces the checkpoint as the start of the
    next step and as the entry of the returned list (e.g. RECALL merging after each task). Under
    ``accelerate launch`` it runs on the main process only.

    ``ewc=True`` (needs ``config.ewc_lambda > 0``): after step ``i`` the Fisher of task ``i`` is
    estimated at the step's resulting model (``config.ewc_samples`` examples, batch
    ``config.batch_size``), cached in ``out_root/step{i}_{task}.fisher.safetensors``, and the
    accumulated Fisher (``config.ewc_gamma``) penalizes later steps, anchored at each step's start
    model. Fishers are computed lazily, only when a later step still has to train.
    """
    from accelerate.utils import broadcast_object_list

    from .assets import load_model

    order = _validate_order(task_order, samples_by_task)
    if ewc and config.ewc_lambda <= 0:
        raise ValueError("ewc=True needs config.ewc_lambda > 0 (with 0 the penalty is zero and EWC equals "
                         "plain sequential fine-tuning)")
    root = Path(out_root)
    current: str | os.PathLike = model_path
    done: list[tuple[int, str, Path]] = []  # (step, task, model after the step)
    results: list[Path] = []
    fisher_meta = {"ewc_samples": config.ewc_samples, "batch_size": config.batch_size, "seed": config.seed,
                   "max_length": config.max_length}
    acc: dict = {"n": 0, "state": None}  # accumulated EWC state over the first n finished steps

    def ewc_state() -> EWCState | None:
        if not ewc or not done:
            return None
        for step, task, path in done[acc["n"]:]:
            fpath = root / f"step{step}_{task}.fisher.safetensors"
            model, tok = load_model(path)
            theta = {n: p.detach().float().clone() for n, p in _float_params(model)}
            part = None
            if fpath.is_file():
                part, meta = load_fisher(fpath, theta)
                if meta != fisher_meta or set(part.fisher) != set(theta):
                    part = None  # stale: made with other settings
            if part is None:
                part = fisher_diagonal(model, tok, samples_by_task[task], batch_size=config.batch_size,
                                       max_samples=config.ewc_samples, seed=config.seed,
                                       max_length=config.max_length, task=task, progress=progress)
                if _is_main_process():
                    save_fisher(part, fpath, fisher_meta)
                _wait_for_everyone()
            del model
            acc["state"] = part if acc["state"] is None else acc["state"].combine(part, config.ewc_gamma)
            acc["n"] += 1
        return acc["state"]

    for i, task in enumerate(order, 1):
        ckpt = root / f"step{i}_{task}"
        # a finished step is reused without recomputing the Fishers it was trained with (its EWC
        # fingerprint is not compared; base, config and samples are)
        if not _reusable(ckpt, _fingerprint(current, samples_by_task[task], config, None), ignore=("ewc",)):
            state = ewc_state()
            train_and_save(current, samples_by_task[task], config, ckpt, ewc=state, progress=progress)
            del state
        result = ckpt
        if after_task is not None:
            box = [after_task(i, task, ckpt) if _is_main_process() else None]
            if _num_processes() > 1:
                box = broadcast_object_list(box)
            if box[0] is not None:
                result = Path(box[0])
                if not (result / "config.json").is_file():
                    raise ValueError(f"after_task({i}, {task!r}) returned {result}, which is not a model folder "
                                     f"(no config.json)")
        results.append(result)
        done.append((i, task, result))
        current = result
    return results


def _num_processes() -> int:
    from accelerate import PartialState

    return PartialState().num_processes
