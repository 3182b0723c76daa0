"""Supervised fine-tuning (LoRA or full), EWC, and the sequential protocol.

What is trained
    Each :class:`~recall.samples.Sample` is a chat-formatted prompt (``text``) and a label word
    (``answer``). The model reads ``prompt + answer + eos`` and the loss is the token-mean
    cross-entropy of the answer tokens and the eos token only (labels are -100 on the prompt and
    on padding). Prompt and answer are tokenized separately, without special tokens (the chat
    template already wrote them into the prompt): ``recall.encoding.encode(..., eos=True)`` is the
    one place that does it (scoring uses the same encoder without the eos, so the token boundary
    is the same), and ``recall.encoding.collate`` pads on the right.

Modules
    - ``config``: :class:`TrainConfig`, every field validated on construction.
    - ``objective``: samples -> examples (length policy), the answer NLL, :func:`mean_answer_loss`.
    - ``sft``: :func:`finetune` (determinism, LoRA merged back, several GPUs) and :class:`TrainResult`.
    - ``ewc``: :class:`EWCState`, :func:`fisher_diagonal`, the penalty, Fisher files.
    - ``checkpoints``: :func:`save_checkpoint` and the cache of runs, :func:`train_and_save`.
    - ``sequential``: :func:`sequential_finetune`, one task after another.
"""

from ..encoding import collate
from .checkpoints import TRAINING_META, is_complete_checkpoint, samples_fingerprint, save_checkpoint, train_and_save
from .config import DEFAULT_LR, MODES, TrainConfig
from .ewc import EWCState, fisher_diagonal, load_fisher, save_fisher
from .objective import encode_samples, mean_answer_loss
from .sequential import sequential_finetune
from .sft import TrainResult, finetune

__all__ = ["DEFAULT_LR", "MODES", "TRAINING_META", "EWCState", "TrainConfig", "TrainResult", "collate",
           "encode_samples", "finetune", "fisher_diagonal", "is_complete_checkpoint", "load_fisher",
           "mean_answer_loss", "samples_fingerprint", "save_checkpoint", "save_fisher", "sequential_finetune",
           "train_and_save"]
