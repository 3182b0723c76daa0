"""The sequential protocol: learn tasks one after another, with optional EWC and a hook per step."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..samples import Sample
from .checkpoints import (
    _fingerprint,
    _is_main_process,
    _num_processes,
    _reusable,
    _stand_in,
    _wait_for_everyone,
    train_and_save,
)
from .config import TrainConfig
from .ewc import EWCState, _float_params, fisher_diagonal, load_fisher, save_fisher
from .objective import _check_samples


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
                        progress: bool = True, reuse: Sequence[str | os.PathLike] = ()) -> list[Path]:
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

    ``reuse``: finished checkpoints (``train_and_save`` folders) that may stand for a step. A step not yet on
    disk whose training inputs equal a candidate's (the same start model, samples and config, and the same EWC
    tasks; the EWC settings are not compared where no penalty applies, as in step 1) takes the candidate as its
    checkpoint instead of training: for example the expert of the first task, which step 1 of every chain is.
    """
    from accelerate.utils import broadcast_object_list

    from ..assets import load_model

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
            same = _stand_in(reuse, _fingerprint(current, samples_by_task[task], config, state))
            if same is not None:
                ckpt = same
            else:
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
