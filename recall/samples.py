"""A sample: what a model reads (``text``), when known the expected answer, and optionally the model whose
task it comes from (``model``: its index among the merged models, for RECALL's ``anchor="each"``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """``text`` is the model input (for a task: the full chat-formatted prompt); ``answer`` the
    expected continuation (for a task: the label word), or ``None`` when unknown; ``model`` the index (0 =
    oldest) of the merged model whose task the sample belongs to, or ``None``."""

    text: str
    answer: str | None = None
    model: int | None = None


def read_samples_file(path: str | Path) -> list[Sample]:
    """Samples from a file: JSON lines with a ``text`` field (and optional ``answer`` and ``model``, the index
    of the merged model whose task the sample comes from), or plain text, one sample a line. Blank lines are
    skipped. An empty file is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"samples file {path} does not exist")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"samples file {path} cannot be read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); save the "
                         f"samples file as UTF-8") from None
    out: list[Sample] = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e.msg}); write one JSON object or one plain "
                                 f"text per line") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
                raise ValueError(f"{path}:{i}: JSON line has no non-empty 'text' field")
            if obj.get("answer") is not None and not isinstance(obj["answer"], str):
                raise ValueError(f"{path}:{i}: 'answer' must be a string, got {obj['answer']!r}")
            model = obj.get("model")
            if model is not None and (isinstance(model, bool) or not isinstance(model, int) or model < 0):
                raise ValueError(f"{path}:{i}: 'model' must be the index (an integer >= 0) of a merged model, "
                                 f"got {model!r}")
            out.append(Sample(obj["text"], obj.get("answer"), model))
        else:
            out.append(Sample(line))
    if not out:
        raise ValueError(f"samples file {path} holds no samples; write one sample a line")
    return out
