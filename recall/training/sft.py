"""Supervised fine-tuning (LoRA or full): :func:`finetune` and what a run measured.

Determinism
    Same seed, same data, same machine -> bit-identical weights on CPU: the seed fixes the LoRA
    initialisation (``accelerate.utils.set_seed``, which also seeds the global RNGs) and the
    shuffling (a seeded ``torch.Generator`` drawing the batches, ``recall.training.batching``); LoRA
    dropout defaults to 0, which also keeps CPU runs fast.

Compute only where it counts
    The output head runs only at the positions whose next token is a label (``logits_to_keep`` with a
    boolean mask, ``objective._answer_nll``); batches group examples of similar length
    (``TrainConfig.group_by_length``), so little is spent on padding. ``benchmarks/throughput.py``
    measures ms per token against the FLOP floor.

LoRA results are plain checkpoints
    With ``mode="lora"`` the adapters are merged back into the weights (peft ``merge_and_unload``)
    before :func:`finetune` returns, so every result is an ordinary ``PreTrainedModel`` that the
    merge code can treat like any full fine-tune.

Several GPUs
    Training runs through ``accelerate.Accelerator`` (model, optimizer and dataloader are
    prepared; backward is ``accelerator.backward``), so the same script runs data-parallel with::

        accelerate launch --num_processes 4 my_script.py      # or torchrun --nproc_per_node 4

    Each micro-batch is one global batch of ``batch_size * num_processes`` examples, drawn as a single
    process would draw it (same seed, same batches) and split between the processes; the loss is
    the token mean over the global batch (answer-token counts summed across processes), so a run on
    N processes with ``batch_size=b`` trains like one process with ``batch_size=N*b`` (effective batch
    ``batch_size * grad_accum * num_processes``), up to float rounding (``tests/test_accelerate.py``
    checks 2 processes against 1 under ``accelerate launch --cpu``). Only the main process writes
    checkpoints and Fisher files and runs ``after_task`` hooks, the others wait. Fisher diagonals are
    computed redundantly on every process (identical results).
"""

from __future__ import annotations

import contextlib
import functools
import math
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..encoding import collate, pad_token_id
from ..samples import Sample
from .batching import LengthGroupedBatches
from .config import TrainConfig
from .ewc import EWCState, _EWCPenalty, _float_params
from .objective import _answer_nll, _supports_logits_to_keep, encode_samples


@dataclass
class TrainResult:
    """The fine-tuned plain model (LoRA merged in) and what the run measured.

    ``losses``: mean answer loss of each optimizer update; ``penalties``: EWC penalty per update
    (empty without EWC); ``tokens``: non-padding tokens read (prompt + answer, every epoch);
    ``padded_tokens``: positions computed (batch size x longest example, summed over batches);
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
    padded_tokens: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else float("inf")

    @property
    def s_per_1k_tokens(self) -> float:
        return 1000 * self.wall_s / self.tokens if self.tokens else float("nan")

    def summary(self) -> dict:
        return {"steps": self.steps, "tokens": self.tokens, "answer_tokens": self.answer_tokens,
                "padded_tokens": self.padded_tokens,
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
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    examples = encode_samples(tokenizer, samples, config.max_length)
    set_seed(config.seed)
    # each process takes its share of one global micro-batch of batch_size x processes examples
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    world = accelerator.num_processes
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
    collate_fn = functools.partial(collate, pad_id=pad_token_id(tokenizer))
    if config.group_by_length:
        batches = LengthGroupedBatches([len(e["input_ids"]) for e in examples], config.batch_size * world, generator)
        loader = DataLoader(examples, batch_sampler=batches, collate_fn=collate_fn)
    else:
        loader = DataLoader(examples, batch_size=config.batch_size * world, shuffle=True, generator=generator,
                            collate_fn=collate_fn)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    updates_per_epoch = math.ceil(len(loader) / config.grad_accum)
    total = config.max_steps or config.epochs * updates_per_epoch
    scheduler = _linear_schedule(optimizer, math.ceil(config.warmup_ratio * total), total)

    penalty = None
    if ewc is not None and config.ewc_lambda > 0:
        penalty = _EWCPenalty(accelerator.unwrap_model(model), ewc, config.ewc_lambda, config.mode,
                              accelerator.device)

    autocast = (functools.partial(torch.autocast, accelerator.device.type, dtype=getattr(torch, config.autocast))
                if config.autocast else contextlib.nullcontext)
    losses: list[float] = []
    penalties: list[float] = []
    tokens = answer_tokens = padded = 0
    step = 0
    window_loss, window_pen, window_n = 0.0, 0.0, 0
    bar = tqdm(total=total, desc=f"{config.mode} fine-tuning", unit="step",
               disable=not progress or not accelerator.is_local_main_process)
    params = [p for _, p in trainable]
    t0 = time.perf_counter()
    while step < total:
        for batch in loader:
            with accelerator.accumulate(model):
                with autocast():
                    nll = _answer_nll(model, batch, keep)
                if world > 1:  # the token mean over the global micro-batch (DDP averages the processes' gradients)
                    count = accelerator.reduce(torch.tensor(float(nll.numel()), device=nll.device), "sum")
                    loss = nll.sum() * world / count
                else:
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
            padded += batch["input_ids"].numel()
            answer_tokens += nll.numel()
            window_loss += (accelerator.reduce(loss.detach(), "mean") if world > 1 else loss).item()
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
        counts = accelerator.reduce(torch.tensor([tokens, answer_tokens, padded], device=accelerator.device), "sum")
        tokens, answer_tokens, padded = (int(x) for x in counts.tolist())
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
                       wall_s=wall, penalties=penalties, peak_memory_mb=round(peak, 1), padded_tokens=padded)
