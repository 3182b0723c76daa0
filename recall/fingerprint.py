"""Code fingerprints: a cached unit is keyed by its configuration *and* by the code that makes it.

``code_fingerprint("recall.scoring", "recall.tasks")`` hashes the package version and the source of
those modules and of every ``recall`` module they import, transitively (import statements anywhere
in a file count, also the lazy ones inside functions). Editing any of those files changes the
fingerprint, so ``recall.experiments`` never serves a result that older code made; editing an
unrelated module (another merge method, the book) changes nothing.

Dynamic imports (``importlib``) are invisible here: a unit that dispatches by name (the merge
registry) names the module it dispatches to, e.g. ``code_fingerprint("recall.merge.engine",
"recall.merge.ties")``.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "recall"
ROOT = Path(__file__).resolve().parent  # the recall package folder


def _read(path: Path) -> bytes:
    """A source file's bytes (the one place fingerprints read files; tests patch it to simulate an edit)."""
    return path.read_bytes()


def module_file(module: str) -> Path | None:
    """The source file of a ``recall`` module (a package's ``__init__.py``), or None when there is none."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [PACKAGE, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The ``recall`` modules that ``path`` imports anywhere (relative imports resolved)."""
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(_read(path), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names if module_file(f"{target}.{a.name}"))
    return {m for m in out if module_file(m) is not None}


@functools.cache
def closure(*modules: str) -> tuple[Path, ...]:
    """Source files of ``modules`` and of every ``recall`` module they import, transitively (sorted)."""
    seen: set[Path] = set()
    todo = []
    for m in modules:
        f = module_file(m)
        if f is None:
            raise ValueError(f"no source file for module {m!r} in {ROOT}")
        todo.append(f)
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        # a submodule's package __init__ runs first on import
        parent = f.parent / "__init__.py"
        if parent != f and parent.is_file():
            todo.append(parent)
        todo.extend(module_file(m) for m in imports_of(f))
    return tuple(sorted(seen))


@functools.cache
def code_fingerprint(*modules: str) -> str:
    """12 hex digits of sha256 over the package version and the sources of ``closure(*modules)``."""
    from . import __version__

    h = hashlib.sha256(f"recall {__version__}\n".encode())
    for f in closure(*modules):
        h.update(str(f.relative_to(ROOT)).encode() + b"\0")
        h.update(hashlib.sha256(_read(f)).digest())
    return h.hexdigest()[:12]


def clear() -> None:
    """Forget the memoized fingerprints (after source files changed in this process)."""
    closure.cache_clear()
    code_fingerprint.cache_clear()


__all__ = ["code_fingerprint", "closure", "imports_of", "module_file", "clear"]
