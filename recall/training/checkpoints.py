"""Checkpoints: plain Hugging Face folders written atomically, and the cache of training runs.

:func:`train_and_save` fingerprints its inputs (base, config, samples, EWC tasks) into the
folder's ``training.json``: a folder made from the same inputs is reused, one made from other
inputs is an error. Under ``accelerate launch`` only the main process writes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..fsutil import atomic_dir
from ..samples import Sample
from .config import TrainConfig
from .ewc import EWCState
from .objective import _check_samples
from .sft import finetune

TRAINING_META = "training.json"


def samples_fingerprint(samples: Sequence[Sample]) -> str:
    """sha256 of the samples' texts and answers, in order."""
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps([s.text, s.answer], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _wait_for_everyone() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def _num_processes() -> int:
    from accelerate import PartialState

    return PartialState().num_processes


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
    from ..assets import resolve_model

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


EWC_FIELDS = ("ewc_lambda", "ewc_samples", "ewc_gamma")


def _stand_in(candidates, fp: dict) -> Path | None:
    """The first of ``candidates`` that is a finished checkpoint trained from the inputs of fingerprint ``fp``."""
    def plain(f: dict) -> dict:  # the EWC settings do not matter where no penalty applies
        if f.get("ewc") is not None:
            return f
        return {**f, "config": {k: v for k, v in f["config"].items() if k not in EWC_FIELDS}}

    want = plain(fp)
    for c in candidates:
        c = Path(c)
        if not (c / TRAINING_META).is_file() or not is_complete_checkpoint(c):
            continue
        have = json.loads((c / TRAINING_META).read_text()).get("fingerprint", {})
        if "config" in have and plain(have) == want:
            return c
    return None


def train_and_save(model_path: str | os.PathLike, samples: Sequence[Sample], config: TrainConfig,
                   out_dir: str | os.PathLike, ewc: EWCState | None = None, progress: bool = True) -> Path:
    """Load ``model_path`` (``smollm2`` or a folder), fine-tune, save a plain checkpoint to ``out_dir``.

    Cached: when ``out_dir`` already holds a complete checkpoint made from the same base, config,
    samples and EWC tasks it is returned without training; made from different ones, it is an error
    (delete it or choose another folder) rather than a silently stale result. ``training.json``
    records that fingerprint and the run's measurements (losses, tokens, wall time, tokens/s).
    """
    from ..assets import load_model

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

