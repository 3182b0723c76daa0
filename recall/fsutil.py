"""Atomic file and folder writes: a kill never leaves a half-written file that a later run trusts."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path


def cache_dir() -> Path:
    """The one cache folder: ``$RECALL_CACHE`` if set, else ``~/.cache/recall`` (XDG_CACHE_HOME honoured)."""
    env = os.environ.get("RECALL_CACHE")
    if env:
        root = Path(env).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "recall"
    root.mkdir(parents=True, exist_ok=True)
    return root


def runs_dir() -> Path:
    """Where experiment units are cached: ``$RECALL_RUNS`` if set, else ``cache_dir()/runs``. The tests point
    it at a temporary folder, so they never write into a user's cache."""
    env = os.environ.get("RECALL_RUNS")
    root = Path(env).expanduser() if env else cache_dir() / "runs"
    root.mkdir(parents=True, exist_ok=True)
    return root


class CacheBusy(RuntimeError):
    """Another process holds the experiment cache's lock."""


@contextlib.contextmanager
def cache_lock(root: Path | None = None) -> Iterator[Path]:
    """Hold the lock of the experiment cache (``runs_dir()/.lock``) for a whole replicate run, so two runs never
    build the same units at once; a second run raises ``CacheBusy`` naming the holder instead of waiting."""
    import fcntl

    path = Path(root or runs_dir()) / ".lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise CacheBusy(f"the experiment cache {path.parent} is in use by replicate run {holder}; wait for it to "
                            f"finish, or give this run its own cache with RECALL_RUNS=DIR") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        try:
            yield path
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


STALE_AGE_S = 24 * 3600  # a leftover whose writer cannot be told (older naming, no PID) is stale after a day


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: a process of another user
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink(missing_ok=True)
    elif p.is_dir():
        shutil.rmtree(p, ignore_errors=True)


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the leftovers of ``atomic_dir(path)`` that no live process is writing: ``.NAME.PID-XXXX.partial``
    and ``.NAME.old-PID`` of a dead PID, and ``.NAME.XXXXXXXX.partial`` (no PID) older than a day. Returns them."""
    path = Path(path)
    name = re.escape(path.name)
    with_pid = re.compile(rf"\.{name}\.(?:(\d+)-[a-z0-9_]+\.partial|old-(\d+))")
    without_pid = re.compile(rf"\.{name}\.[a-z0-9_]{{8}}\.partial")
    removed = []
    try:
        siblings = [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]
    except OSError:
        return removed
    for p in siblings:
        m = with_pid.fullmatch(p.name)
        try:
            stale = (not _pid_alive(int(m.group(1) or m.group(2))) if m else
                     bool(without_pid.fullmatch(p.name)) and time.time() - p.lstat().st_mtime > STALE_AGE_S)
        except OSError:
            continue
        if stale:
            _remove(p)
            removed.append(p)
    return removed


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit(143)`` (so ``finally`` and ``except`` clean up) instead of
    killing the process; a second SIGTERM is ignored while that runs. Only in the main thread, and only when
    SIGTERM has its default action."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        signal.signal(signum, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """SIGTERM and SIGINT wait until the block is done (for the two renames that swap a folder)."""
    sigs = {signal.SIGTERM, signal.SIGINT}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs) if hasattr(signal, "pthread_sigmask") else None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _swap(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` (folder, file or link) is replaced, and kept when that fails."""
    with _signals_blocked():
        if not (path.exists() or path.is_symlink()):
            os.replace(tmp, path)
            return
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        _remove(old)
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)
            raise
    _remove(old)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder ``.NAME.PID-XXXX.partial``; on success it is renamed to ``path``, on
    error (SIGTERM included) it is removed, with any parent folders it created.

    ``path`` must not exist unless ``force`` (then the old folder is replaced only after success). Leftovers
    of killed writers (SIGKILL) are removed on the next call for the same ``path`` (``clean_stale``).
    """
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not force:
        raise FileExistsError(f"output folder {path} already exists; choose another path or pass --force to replace it")
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # deepest first
    tmp = None
    with _terminate_as_exit():
        try:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                clean_stale(path)
                tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-",
                                            suffix=".partial"))
            except OSError as e:
                raise OSError(e.errno, f"cannot write {path}: {e.strerror} in {path.parent}; choose a writable "
                                       f"folder for the output") from None
            yield tmp
            _swap(tmp, path)
        except BaseException:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            for d in created:
                try:
                    d.rmdir()
                except OSError:
                    break
            raise
