"""Rank classification for any Hugging Face causal LM.

Each test example is scored by the log-likelihood of every label's words after its prompt; the
prediction is the label with the highest (summed) log-likelihood. The prompt batch runs once
with a KV cache; the logits are computed only at the positions that score label tokens (the
last prompt position, plus the label's own positions for labels longer than one token, which
continue from a copy of the cache). Padding-aware: left padding with explicit position ids, so a
batch gives the same scores as one example at a time (up to float noise).

Convention shared with training (``recall.encoding``): prompt and answer are tokenized separately,
without special tokens (the chat template already wrote them), and their ids concatenated.

Scoring rules (``score_task(scoring=...)``; chosen on validation, see the book's "What the paper leaves open"):

- ``"sum"``: summed log-likelihood of the label's tokens (multi-token labels pay for every token, so labels
  split into more tokens lose; the reading of our first runs);
- ``"mean"``: the same divided by the label's number of tokens (length-normalized);
- ``"first"``: the log-probability of the label's first token only;
- ``"calibrated"``: contextual calibration (Zhao et al., ICML 2021, arXiv 2102.09690): the label
  distribution of the summed scores, divided by its mean over content-free inputs ("N/A", "", "[MASK]") in
  the same prompt, so a label the prompt favours whatever the text loses that prior.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .encoding import collate, common_prefix_len, input_device, pad_token_id, tokenize

SCORINGS = ("sum", "mean", "first", "calibrated")
REDUCTIONS = ("sum", "mean", "first")
CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al. 2021's content-free inputs


def _final_hidden(model, input_ids, attention_mask, position_ids, past=None):
    """Last-layer hidden states (no lm_head yet) and the cache."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    out = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
               cache=past, use_cache=True)
    return out.last_hidden_state, out.past_key_values


def _logprobs(model, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden).float()
    return torch.log_softmax(logits, dim=-1)


def label_loglik(model, tokenizer, prompts: list[str], candidates: list[str], batch_size: int = 16,
                 progress: bool = True, desc: str = "scoring", share_prefix: bool = True,
                 reduce: str = "sum") -> np.ndarray:
    """(N, C) log-likelihood of each candidate continuation after each prompt: summed over its tokens
    (``reduce="sum"``), their mean (``"mean"``) or its first token only (``"first"``).

    With ``share_prefix`` the token prefix common to all prompts (chat template, system prompt and
    instruction) runs once and its KV cache is reused by every batch: same scores, less compute.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}; choose one of: {', '.join(REDUCTIONS)}")
    return label_loglik_all(model, tokenizer, prompts, candidates, batch_size, progress, desc, share_prefix,
                            rest=reduce != "first")[reduce]


@torch.inference_mode()
def label_loglik_all(model, tokenizer, prompts: list[str], candidates: list[str], batch_size: int = 16,
                     progress: bool = True, desc: str = "scoring", share_prefix: bool = True,
                     rest: bool = True) -> dict[str, np.ndarray]:
    """Every reduction of :func:`label_loglik` from one pass: {"first", "sum", "mean"} (without ``rest`` the
    later tokens of multi-token labels are not scored and only "first" is returned)."""
    if not prompts:
        raise ValueError("no prompts to score")
    if not candidates:
        raise ValueError("no candidate labels to score")
    device = input_device(model)  # the inputs' device (the first of a model spread by a device_map)
    cand_ids = [tokenize(tokenizer, c) for c in candidates]
    if any(len(c) == 0 for c in cand_ids):
        raise ValueError(f"a candidate label tokenizes to nothing: {candidates}")
    prompt_ids = [tokenize(tokenizer, p) for p in prompts]
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("a prompt tokenizes to nothing")
    pad = pad_token_id(tokenizer)
    cp = common_prefix_len(prompt_ids) if share_prefix else 0
    prefix_past = None
    if cp > 0:
        pre = torch.tensor(prompt_ids[0][:cp], device=device)[None]
        _, prefix_past = _final_hidden(model, pre, torch.ones_like(pre), torch.arange(cp, device=device)[None])
    order = np.argsort([-len(p) for p in prompt_ids], kind="stable")  # similar lengths together
    scores = np.zeros((len(prompts), len(candidates)), dtype=np.float64)
    firsts = np.zeros_like(scores)
    for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
        idx = order[s: s + batch_size]
        # left padding between the shared prefix and each suffix
        enc = collate([{"input_ids": prompt_ids[i][cp:]} for i in idx], pad, side="left", prefix=cp)
        b = len(idx)
        ids, mask, pos = (enc[k].to(device) for k in ("input_ids", "attention_mask", "position_ids"))
        past = None
        if prefix_past is not None:
            past = copy.deepcopy(prefix_past)
            past.batch_repeat_interleave(b)
        hidden, past = _final_hidden(model, ids, mask, pos, past=past)
        first = _logprobs(model, hidden[:, -1]).double()  # (B, V): next-token distribution after the prompt
        block = torch.stack([first[:, toks[0]] for toks in cand_ids], dim=1)  # (B, C)
        firsts[idx] = block.cpu().numpy()
        multi = [(c, toks) for c, toks in enumerate(cand_ids) if len(toks) > 1] if rest else []
        if multi:  # the later tokens of multi-token labels: one forward over (example, label) rows
            r = len(multi)
            enc = collate([{"input_ids": toks[:-1]} for _ in range(b) for _, toks in multi], pad)
            cont, cmask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            width2 = cont.shape[1]
            past.batch_repeat_interleave(r)  # row i*r + j = example i, label j
            m2 = torch.cat([mask.repeat_interleave(r, dim=0), cmask], dim=1)
            p2 = pos[:, -1].repeat_interleave(r)[:, None] + 1 + torch.arange(width2, device=device)[None]
            h2, _ = _final_hidden(model, cont, m2, p2, past=past)
            lps = _logprobs(model, h2).double()  # (B*r, width2, V)
            for j, (c, toks) in enumerate(multi):
                nxt = torch.tensor(toks[1:], device=lps.device)
                rows = lps[j::r, : len(toks) - 1]  # (B, len-1, V)
                block[:, c] += rows.gather(-1, nxt.expand(b, -1)[..., None])[..., 0].sum(-1)
        scores[idx] = block.cpu().numpy()
    if not rest:
        return {"first": firsts}
    lengths = np.array([len(c) for c in cand_ids], dtype=np.float64)[None]
    return {"first": firsts, "sum": scores, "mean": scores / lengths}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def label_scores(model, tokenizer, task, texts, max_text_tokens: int = 128, batch_size: int = 16,
                 progress: bool = True, scoring: str = "sum") -> np.ndarray:
    """(N, C) the scores whose argmax is the prediction, by rule ``scoring`` (``SCORINGS``)."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; choose one of: {', '.join(SCORINGS)}")
    return all_label_scores(model, tokenizer, task, texts, max_text_tokens, batch_size, progress,
                            calibrate=scoring == "calibrated", rest=scoring != "first")[scoring]


def all_label_scores(model, tokenizer, task, texts, max_text_tokens: int = 128, batch_size: int = 16,
                     progress: bool = True, calibrate: bool = True, rest: bool = True) -> dict[str, np.ndarray]:
    """The scores of every rule in ``SCORINGS`` from one pass over ``texts`` (for choosing the rule)."""
    answers = [task.answer(i) for i in range(len(task.labels))]
    prompts = [task.prompt(t, tokenizer, max_text_tokens=max_text_tokens) for t in texts]
    out = label_loglik_all(model, tokenizer, prompts, answers, batch_size=batch_size, progress=progress,
                           desc=f"scoring {task.name}", rest=rest)
    if calibrate:
        free = [task.prompt(t, tokenizer, max_text_tokens=max_text_tokens) for t in CONTENT_FREE]
        cf = label_loglik(model, tokenizer, free, answers, batch_size=batch_size, progress=False, share_prefix=False)
        prior = np.exp(_log_softmax(cf)).mean(axis=0)  # the label distribution the prompt gives without content
        out["calibrated"] = _log_softmax(out["sum"]) - np.log(prior)[None]
    return out


def score_task(model, tokenizer, task, dataset, max_text_tokens: int = 128, batch_size: int = 16,
               progress: bool = True, scoring: str = "sum") -> pd.DataFrame:
    """Per-example results of ``task`` on ``dataset`` (a split with ``text`` and ``label``).

    Columns: example (index in the split), label, pred, correct, and ``ll_<label word>`` per label (the score
    of rule ``scoring`` that the prediction is the argmax of).
    """
    ll = label_scores(model, tokenizer, task, dataset["text"], max_text_tokens=max_text_tokens,
                      batch_size=batch_size, progress=progress, scoring=scoring)
    labels = np.asarray(dataset["label"])
    pred = ll.argmax(axis=1)
    df = pd.DataFrame({"example": np.arange(len(labels)), "label": labels, "pred": pred,
                       "correct": (pred == labels).astype(int)})
    for c, w in enumerate(task.labels):
        df[f"ll_{w}"] = ll[:, c]
    return df


def evaluate_tasks(model, tokenizer, datasets: dict, max_text_tokens: int = 128, batch_size: int = 16,
                   progress: bool = True, scoring: str = "sum") -> tuple[pd.DataFrame, pd.DataFrame]:
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
                        progress=progress, scoring=scoring)
        m = compute_metrics(df["pred"].tolist(), df["label"].tolist())
        rows.append({"task": name, "n": len(df), **m, "seconds": round(time.time() - t0, 2)})
        frames.append(df.assign(task=name))
    return pd.DataFrame(rows), pd.concat(frames, ignore_index=True)
