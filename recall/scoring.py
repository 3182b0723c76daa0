"""Rank classification for any Hugging Face causal LM.

Each test example is scored by the log-likelihood of every label's words after its prompt; the
prediction is the label with the highest (summed) log-likelihood. The prompt batch runs once
with a KV cache; the logits are computed only at the positions that score label tokens (the
last prompt position, plus the label's own positions for labels longer than one token, which
continue from a copy of the cache). Padding-aware: left padding with explicit position ids, so a
batch gives the same scores as one example at a time (up to float noise).

Convention shared with training: prompt and answer are tokenized separately (no special tokens
added) and their ids concatenated.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def _final_hidden(model, input_ids, attention_mask, position_ids, past=None):
    """Last-layer hidden states (no lm_head yet) and the cache."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    out = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
               past_key_values=past, use_cache=True)
    return out.last_hidden_state, out.past_key_values


def _logprobs(model, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden).float()
    return torch.log_softmax(logits, dim=-1)


@torch.inference_mode()
def label_loglik(model, tokenizer, prompts: list[str], candidates: list[str], batch_size: int = 16,
                 progress: bool = True, desc: str = "scoring") -> np.ndarray:
    """(N, C) summed log-likelihood of each candidate continuation after each prompt."""
    if not prompts:
        raise ValueError("no prompts to score")
    if not candidates:
        raise ValueError("no candidate labels to score")
    device = next(model.parameters()).device
    cand_ids = _encode(tokenizer, candidates)
    if any(len(c) == 0 for c in cand_ids):
        raise ValueError(f"a candidate label tokenizes to nothing: {candidates}")
    prompt_ids = _encode(tokenizer, prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = np.argsort([-len(p) for p in prompt_ids], kind="stable")  # similar lengths together
    scores = np.zeros((len(prompts), len(candidates)), dtype=np.float64)
    for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
        idx = order[s: s + batch_size]
        seqs = [prompt_ids[i] for i in idx]
        width = max(len(x) for x in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, x in enumerate(seqs):
            ids[r, width - len(x):] = torch.tensor(x)
            mask[r, width - len(x):] = 1
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden, past = _final_hidden(model, ids, mask, pos)
        first = _logprobs(model, hidden[:, -1])  # (B, V): next-token distribution after the prompt
        last_pos = pos[:, -1]
        for c, toks in enumerate(cand_ids):
            lp = first[:, toks[0]].double()
            if len(toks) > 1:
                cont = torch.tensor(toks[:-1], device=device).expand(len(seqs), -1)
                m2 = torch.cat([mask, torch.ones_like(cont)], dim=1)
                p2 = last_pos[:, None] + 1 + torch.arange(len(toks) - 1, device=device)[None]
                h2, _ = _final_hidden(model, cont, m2, p2, past=copy.deepcopy(past))
                lps = _logprobs(model, h2)  # (B, len-1, V)
                nxt = torch.tensor(toks[1:], device=device)
                lp = lp + lps.gather(-1, nxt.expand(len(seqs), -1)[..., None])[..., 0].double().sum(-1)
            scores[idx, c] = lp.cpu().numpy()
    return scores


def score_task(model, tokenizer, task, dataset, max_text_tokens: int = 128, batch_size: int = 16,
               progress: bool = True) -> pd.DataFrame:
    """Per-example results of ``task`` on ``dataset`` (a split with ``text`` and ``label``).

    Columns: example (index in the split), label, pred, correct, and ``ll_<label word>`` per label.
    """
    prompts = [task.prompt(t, tokenizer, max_text_tokens=max_text_tokens) for t in dataset["text"]]
    answers = [task.answer(i) for i in range(len(task.labels))]
    ll = label_loglik(model, tokenizer, prompts, answers, batch_size=batch_size, progress=progress,
                      desc=f"scoring {task.name}")
    labels = np.asarray(dataset["label"])
    pred = ll.argmax(axis=1)
    df = pd.DataFrame({"example": np.arange(len(labels)), "label": labels, "pred": pred,
                       "correct": (pred == labels).astype(int)})
    for c, w in enumerate(task.labels):
        df[f"ll_{w}"] = ll[:, c]
    return df


def evaluate_tasks(model, tokenizer, datasets: dict, max_text_tokens: int = 128, batch_size: int = 16,
                   progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score a model on several tasks. ``datasets`` maps task name -> test split.

    Returns (summary with task, n, accuracy, macro_f1, seconds; per-example frame with a task column).
    """
    from .metrics import compute_metrics
    from .tasks import get_task

    rows, frames = [], []
    for name, ds in datasets.items():
        task = get_task(name)
        t0 = time.time()
        df = score_task(model, tokenizer, task, ds, max_text_tokens=max_text_tokens, batch_size=batch_size,
                        progress=progress)
        m = compute_metrics(df["pred"].tolist(), df["label"].tolist())
        rows.append({"task": name, "n": len(df), **m, "seconds": round(time.time() - t0, 2)})
        frames.append(df.assign(task=name))
    return pd.DataFrame(rows), pd.concat(frames, ignore_index=True)
