"""Progress of a long run, as lines the replicate driver prints while a notebook's kernel works.

``python -m recall.replicate`` names a file in ``$RECALL_PROGRESS`` for each notebook run and prints what
is appended to it. In the kernel, :func:`install` (called by ``recall.notebook.Notebook`` when the variable
is set) sends every tqdm bar the library opens (training steps, scoring batches, representation passes,
merges) to that file instead of the notebook's outputs: at most one line every ``INTERVAL`` seconds, the
state of the bar running then, and a last line for each bar that printed one, each naming the unit of
work being computed (:func:`unit`), e.g. ``training expert-trec (lora fine-tuning): step 12/48, about 3
min left``. Cached units open no bar and so print nothing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from pathlib import Path

ENV = "RECALL_PROGRESS"
INTERVAL = 15.0  # seconds between two lines
_SEP = "\x1f"
_FORMAT = _SEP.join(("{desc}", "{n}", "{total}", "{unit}", "{elapsed_s}"))
_units: list[str] = []  # what the run is computing, innermost last


@contextlib.contextmanager
def unit(name: str):
    """Name the unit of work (``"training expert-trec"``) the bars opened inside belong to."""
    _units.append(name)
    try:
        yield
    finally:
        _units.pop()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def line(desc: str, n: int, total: int | None, unit_name: str, elapsed: float) -> str:
    """One progress line: the current unit (and the bar's own description), the count and the time left."""
    where = _units[-1] if _units else ""
    if desc and desc not in where:
        where = f"{where} ({desc})" if where else desc
    count = f"{unit_name} {n}/{total}" if total else f"{unit_name} {n}"
    if total and n >= total:
        return f"{where}: {count}, done in {_duration(elapsed)}"
    if total and n > 0:
        return f"{where}: {count}, about {_duration(elapsed / n * (total - n))} left"
    return f"{where}: {count}"


class _Lines:
    """A file for tqdm: turns its carriage-return-refreshed status into whole lines appended to ``path``, at most
    one every ``INTERVAL`` seconds over all bars (many short bars do not flood the terminal), and the last line
    of every bar that printed one."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.last, self.last_time, self.talked = "", -INTERVAL, set()

    def write(self, text: str) -> None:
        fields = text.strip("\r\n ").split(_SEP)
        if len(fields) != 5:  # tqdm clearing its line, or anything else that is not a status
            return
        desc, n, total, unit_name, elapsed = fields
        n, total_n = int(float(n)), (int(float(total)) if total not in ("None", "", "0") else None)
        bar = (_units[-1] if _units else "", desc, total_n)
        now = time.monotonic()
        done = total_n is not None and n >= total_n
        if (done and bar not in self.talked) or (not done and now - self.last_time < INTERVAL):
            return
        text = line(desc, n, total_n, unit_name, float(elapsed))
        if text == self.last:  # a bar's close repeats its last status
            return
        self.last, self.last_time = text, now
        if done:
            self.talked.discard(bar)
        else:
            self.talked.add(bar)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text + "\n")

    def flush(self) -> None:
        pass


def install(path: str | os.PathLike | None = None) -> bool:
    """Send every tqdm bar of this process to the progress file ``path`` (default ``$RECALL_PROGRESS``) as
    lines; returns whether a file is set. Bars that name their own ``file`` are left alone."""
    import tqdm.std

    path = path or os.environ.get(ENV)
    if not path:
        return False
    init = tqdm.std.tqdm.__dict__["__init__"]
    init = init.func if isinstance(init, functools.partialmethod) else init  # installed twice: the original
    tqdm.std.tqdm.__init__ = functools.partialmethod(init, file=_Lines(Path(path)), bar_format=_FORMAT,
                                                     mininterval=INTERVAL)
    return True


__all__ = ["ENV", "INTERVAL", "install", "line", "unit"]
