"""A sample: what a model reads (``text``) and, when known, the expected answer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """``text`` is the model input (for a task: the full chat-formatted prompt); ``answer`` the
    expected continuation (for a task: the label word), or ``None`` when unknown."""

    text: str
    answer: str | None = None


def read_samples_file(path: str | Path) -> list[Sample]:
    """Samples from a file: JSON lines with a ``text`` field (and optional ``answer``), or plain text,
    one sample a line. Blank lines are skipped. An empty file is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"samples file {path} does not exist")
    out: list[Sample] = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e.msg}); write one JSON object or one plain "
                                 f"text per line") from None
            if not isinstance(obj.get("text"), str) or not obj["text"].strip():
                raise ValueError(f"{path}:{i}: JSON line has no non-empty 'text' field")
            out.append(Sample(obj["text"], obj.get("answer")))
        else:
            out.append(Sample(line))
    if not out:
        raise ValueError(f"samples file {path} holds no samples; write one sample a line")
    return out
