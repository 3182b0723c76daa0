"""Rank classification for any Hugging Face causal LM.

Each test example is scored by the log-likelihood of every label's words after its prompt; the
prediction is the label with the highest (summed) log-likelihood. The prompt batch runs once
with a KV cache; the logits are computed only at the positions that score label tokens (the
last prompt position, plus the label's own positions for labels longer than one token, which continue
the cache as one packed sequence per example under a 4D attention mask). Padding-aware: left padding with
explicit position ids, so a batch gives the same scores as one example at a time (up to float noise).

Precision: ``autocast="bfloat16"`` runs the model under ``torch.autocast`` (about 2.4x faster on a CPU with
AVX512-BF16, and on accelerators); scores move by up to about 0.4 nats, so near-ties can flip. The cpu profile
chooses it (``Profile.eval_autocast``); ``benchmarks/throughput.py`` measures both.

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

import contextlib
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
AUTOCASTS = (None, "bfloat16", "float16")


def _autocast(model, dtype: str | None):
    """``torch.autocast`` on the model's input device at ``dtype`` (None: no autocast, the model's own dtype)."""
    if dtype not in AUTOCASTS:
        raise ValueError(f"unknown autocast {dtype!r}; choose one of: {', '.join(map(str, AUTOCASTS))}")
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(input_device(model).type, dtype=getattr(torch, dtype))


def _final_hidden(model, input_ids, attention_mask, position_ids, past=None):
    """Last-layer hidden states (no lm_head yet) and the cache."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    out = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
               cache=past, use_cache=True)
    return out.last_hidden_state, out.past_key_values


def _logprobs(model, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden).float()
    return torch.log_softmax(logits, dim=-1)


def _continuations(model, past, mask, pos, labels: list[list[int]]) -> list[torch.Tensor]:
    """Per label (its token ids), the (B, len-1, V) log-probabilities of its tokens 2.. after each prompt of
    the batch whose cache is ``past`` (attention mask ``mask``, position ids ``pos``).

    All labels' inputs (each label's tokens but its last) run as one packed continuation per example: a
    4D mask lets each label's tokens see the prompt and the label's own earlier tokens only, and position ids
    restart after the prompt for every label; the same scores as continuing a copy of the cache per label,
    without copying the cache.
    """
    device = mask.device
    segs = [toks[:-1] for toks in labels]
    ids = torch.tensor([t for seg in segs for t in seg], device=device)
    k, b = len(ids), mask.shape[0]
    offset = torch.cat([torch.arange(len(seg), device=device) for seg in segs])
    owner = torch.cat([torch.full((len(seg),), j, device=device) for j, seg in enumerate(segs)])
    own = (owner[:, None] == owner[None, :]) & (offset[None, :] <= offset[:, None])  # (K, K): same label, causal
    allowed = torch.cat([mask.bool()[:, None, :].expand(b, k, -1), own[None].expand(b, -1, -1)], dim=2)
    dtype = next(model.parameters()).dtype
    mask4 = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
    p2 = pos[:, -1:] + 1 + offset[None]
    hidden, _ = _final_hidden(model, ids.expand(b, -1), mask4[:, None], p2, past=past)
    lps = _logprobs(model, hidden).double()  # (B, K, V)
    starts = np.cumsum([0] + [len(seg) for seg in segs])
    return [lps[:, starts[j]: starts[j + 1]] for j in range(len(segs))]


def label_loglik(model, tokenizer, prompts: list[str], candidates: list[str], batch_size: int = 16,
                 progress: bool = True, desc: str = "scoring", share_prefix: bool = True,
                 reduce: str = "sum", autocast: str | None = None) -> np.ndarray:
    """(N, C) log-likelihood of each candidate continuation after each prompt: summed over its tokens
    (``reduce="sum"``), their mean (``"mean"``) or its first token only (``"first"``).

    With ``share_prefix`` the token prefix common to all prompts (chat template, system prompt and
    instruction) runs once and its KV cache is reused by every batch: same scores, less compute.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}; choose one of: {', '.join(REDUCTIONS)}")
    return label_loglik_all(model, tokenizer, prompts, candidates, batch_size, progress, desc, share_prefix,
                            rest=reduce != "first", autocast=autocast)[reduce]


@torch.inference_mode()
def label_loglik_all(model, tokenizer, prompts: list[str], candidates: list[str], batch_size: int = 16,
                     progress: bool = True, desc: str = "scoring", share_prefix: bool = True,
                     rest: bool = True, autocast: str | None = None) -> dict[str, np.ndarray]:
    """Every reduction of :func:`label_loglik` from one pass: {"first", "sum", "mean"} (without ``rest`` the
    later tokens of multi-token labels are not scored and only "first" is returned). ``autocast``: run the model
    under ``torch.autocast`` at that dtype ("bfloat16": about 2.4x faster on a CPU with AVX512-BF16; the
    log-probabilities move by up to about 0.4 nats, so near-ties can flip); the scores are float64 either way."""
    with _autocast(model, autocast):
        return _label_loglik_all(model, tokenizer, prompts, candidates, batch_size, progress, desc, share_prefix,
                                 rest)


def _label_loglik_all(model, tokenizer, prompts, candidates, batch_size, progress, desc, share_prefix,
                      rest) -> dict[str, np.ndarray]:
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
        if multi:  # the later tokens of multi-token labels, packed into one continuation per example
            for (c, toks), lp in zip(multi, _continuations(model, past, mask, pos, [t for _, t in multi]), strict=True):
                nxt = torch.tensor(toks[1:], device=lp.device)
                block[:, c] += lp.gather(-1, nxt.expand(b, -1)[..., None])[..., 0].sum(-1)
        scores[idx] = block.cpu().numpy()
    if not rest:
        return {"first": firsts}
    lengths = np.array([len(c) for c in cand_ids], dtype=np.float64)[None]
    return {"first": firsts, "sum": scores, "mean": scores / lengths}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def label_scores(model, tokenizer, task, texts, max_text_tokens: int = 128, batch_size: int = 16,
                 progress: bool = True, scoring: str = "sum", autocast: str | None = None) -> np.ndarray:
    """(N, C) the scores whose argmax is the prediction, by rule ``scoring`` (``SCORINGS``)."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; choose one of: {', '.join(SCORINGS)}")
    return all_label_scores(model, tokenizer, task, texts, max_text_tokens, batch_size, progress,
                            calibrate=scoring == "calibrated", rest=scoring != "first", autocast=autocast)[scoring]


def all_label_scores(model, tokenizer, task, texts, max_text_tokens: int = 128, batch_size: int = 16,
                     progress: bool = True, calibrate: bool = True, rest: bool = True,
                     autocast: str | None = None) -> dict[str, np.ndarray]:
    """The scores of every rule in ``SCORINGS`` from one pass over ``texts`` (for choosing the rule)."""
    answers = [task.answer(i) for i in range(len(task.labels))]
    prompts = [task.prompt(t, tokenizer, max_text_tokens=max_text_tokens) for t in texts]
    out = label_loglik_all(model, tokenizer, prompts, answers, batch_size=batch_size, progress=progress,
                           desc=f"scoring {task.name}", rest=rest, autocast=autocast)
    if calibrate:
        free = [task.prompt(t, tokenizer, max_text_tokens=max_text_tokens) for t in CONTENT_FREE]
        cf = label_loglik(model, tokenizer, free, answers, batch_size=batch_size, progress=False, autocast=autocast)
        prior = np.exp(_log_softmax(cf)).mean(axis=0)  # the label distribution the prompt gives without content
        out["calibrated"] = _log_softmax(out["sum"]) - np.log(prior)[None]
    return out


def score_task(model, tokenizer, task, dataset, max_text_tokens: int = 128, batch_size: int = 16,
               progress: bool = True, scoring: str = "sum", autocast: str | None = None) -> pd.DataFrame:
    """Per-example results of ``task`` on ``dataset`` (a split with ``text`` and ``label``).

    Columns: example (index in the split), label, pred, correct, and ``ll_<label word>`` per label (the score
    of rule ``scoring`` that the prediction is the argmax of).
    """
    ll = label_scores(model, tokenizer, task, dataset["text"], max_text_tokens=max_text_tokens,
                      batch_size=batch_size, progress=progress, scoring=scoring, autocast=autocast)
    labels = np.asarray(dataset["label"])
    pred = ll.argmax(axis=1)
    df = pd.DataFrame({"example": np.arange(len(labels)), "label": labels, "pred": pred,
                       "correct": (pred == labels).astype(int)})
    for c, w in enumerate(task.labels):
        df[f"ll_{w}"] = ll[:, c]
    return df


def evaluate_tasks(model, tokenizer, datasets: dict, max_text_tokens: int = 128, batch_size: int = 16,
                   progress: bool = True, scoring: str = "sum",
                   autocast: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
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
                        progress=progress, scoring=scoring, autocast=autocast)
        m = compute_metrics(df["pred"].tolist(), df["label"].tolist())
        rows.append({"task": name, "n": len(df), **m, "seconds": round(time.time() - t0, 2)})
        frames.append(df.assign(task=name))
    return pd.DataFrame(rows), pd.concat(frames, ignore_index=True)
