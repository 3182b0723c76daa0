"""Writing results: CSV tables, PNG figures and provenance, atomically, under ``results/<profile>/``.

Every number in the book comes from a file written here by a notebook run; ``provenance.json``
records for each notebook the git commit, profile, parameters, device, library versions and
wall time. Tables are written through ``recall.tables.to_csv`` (declared columns checked); the
results root is resolved in one place, :func:`results_root`.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from .fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "datasets", "scikit-learn", "numpy", "pandas",
             "seaborn", "papermill")


class NoCheckout(LookupError):
    """Neither a checkout (a folder holding ``notebooks/``) nor ``$RECALL_RESULTS`` says where results go."""


def checkout(start: str | os.PathLike | None = None) -> Path | None:
    """The checkout a run is started in: the nearest folder at or above ``start`` (default: the working
    folder) that holds ``notebooks/``; None outside any."""
    here = Path(start if start is not None else Path.cwd()).resolve()
    return next((p for p in (here, *here.parents) if (p / "notebooks").is_dir()), None)


def repo_root() -> Path:
    """The checkout (:func:`checkout`): where the notebooks, the book and ``results/`` are; never the installed
    package's folder."""
    root = checkout()
    if root is None:
        raise NoCheckout(f"{Path.cwd()} is not inside a checkout of recall (no notebooks/ folder here or above); "
                         "start from the checkout, or set RECALL_RESULTS for results elsewhere")
    return root


def results_root(explicit: str | os.PathLike | None = None) -> Path:
    """The results root: ``explicit``, else ``$RECALL_RESULTS``, else ``results/`` of the checkout the run is
    started in (:func:`checkout`; a notebook's kernel runs in ``notebooks/``, so its checkout is the one above)."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("RECALL_RESULTS")
    return Path(env) if env else repo_root() / "results"


# what a replication run writes itself: changes there do not make the code "dirty"
OUTPUT_PATHS = (":(exclude)results", ":(exclude)book/results")


def git_commit() -> str:
    """HEAD's sha, with ``+dirty`` when tracked files outside the run's own outputs have changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *OUTPUT_PATHS],
                               cwd=repo_root(), capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired, NoCheckout):
        return "unknown"


def device_description(device: str = "cpu") -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (cuda)"
    return f"{platform.processor() or platform.machine()} cpu, {os.cpu_count()} cores, torch threads " \
           f"{torch.get_num_threads()}"


def blas_description() -> str:
    """The BLAS and OpenMP libraries numpy, scikit-learn and torch use, with the kernel each picked
    (``OPENBLAS_CORETYPE`` changes it): KMeans, and so RECALL's typical samples, can depend on it."""
    try:
        from threadpoolctl import threadpool_info

        libs = {" ".join(str(i[k]) for k in ("internal_api", "version", "architecture") if i.get(k))
                + f" ({i.get('num_threads')} threads)" for i in threadpool_info()}
        return "; ".join(sorted(libs))
    except Exception as e:  # provenance must never fail a run
        return f"unknown ({e})"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            out[lib] = "not installed"
    return out


def subdir_for(seed: int = 0, task_order=None, profile_order=None) -> str | None:
    """The results subfolder of a run: ``seed<n>`` for a seed other than 0, ``order-<tasks>`` for a task order
    other than the profile's (``profile_order``; None: any given order counts), both joined by ``-``; None for
    the main run. The executed notebook is named ``<notebook>-<subfolder>`` the same way."""
    parts = [f"seed{seed}"] if seed else []
    if task_order and (profile_order is None or tuple(task_order) != tuple(profile_order)):
        parts.append("order-" + "-".join(map(str, task_order)))
    return "-".join(parts) or None


class Results:
    """The results folder of one notebook run: ``<results root>/<profile>/[<subdir>/]``."""

    def __init__(self, profile: str, notebook: str, subdir: str | None = None, root: str | Path | None = None):
        self.profile_dir = results_root(root) / profile
        self.dir = self.profile_dir / subdir if subdir else self.profile_dir  # made by the first write: a run that
        self.notebook = notebook  # fails before writing leaves no empty folder
        self.t0 = time.time()
        self.files: list[str] = []

    def _record(self, path: Path) -> Path:
        self.files.append(str(path.relative_to(self.profile_dir)))
        return path

    def table(self, name: str, df: pd.DataFrame) -> Path:
        """Write table ``name`` (declared in ``recall.tables.SPECS``) as ``<name>.csv``."""
        from .tables import to_csv

        return self._record(atomic_write_text(self.dir / f"{name}.csv", to_csv(name, df)))

    def write(self, **tables: pd.DataFrame) -> None:
        """Write several tables: ``res.write(multi_examples=df, ...)``."""
        for name, df in tables.items():
            self.table(name, df)

    def derive(self, params) -> dict[str, pd.DataFrame]:
        """Compute this notebook's derived tables from the measured ones already written here
        (``recall.tables.derive``), write them, and return them."""
        from .tables import derive

        out = derive(self.notebook, self.dir, params)
        self.write(**out)
        return out

    def figure(self, name: str, fig) -> Path:
        """Save ``fig`` (a ``recall.plots`` figure) as ``<name>.png``."""
        return self._record(atomic_write_bytes(self.dir / f"{name}.png", png_bytes(fig)))

    def provenance(self, profile, params: dict | None = None, timings: dict | None = None,
                   planned_s: float | None = None, planned_phases_s: dict | None = None,
                   machine: dict | None = None) -> Path:
        """Record this notebook's run in ``results/<profile>/provenance.json`` (one entry per notebook), with the
        planner's estimate of its cold wall time (``planned_s``, and per phase: ``planned_phases_s``, beside the
        measured ``step_timings_s``) and a reading of the machine's speed (``machine``, ``recall.bench.probe``)."""
        path = self.profile_dir / "provenance.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        key = self.notebook + (f"/{self.dir.name}" if self.dir != self.profile_dir else "")
        old = data.get("notebooks", {}).get(key, {})
        remove_files(self.profile_dir, set(old.get("files", [])) - set(self.files))  # an earlier run's leftovers
        data.setdefault("notebooks", {})[key] = {
            "git_commit": git_commit(),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "wall_time_s": round(time.time() - self.t0, 1),
            "planned_cold_s": None if planned_s is None else round(float(planned_s), 1),
            "planned_phases_s": {k: round(float(v), 1) for k, v in (planned_phases_s or {}).items()},
            "profile": profile.to_dict() if hasattr(profile, "to_dict") else profile,
            "parameters": params or {},
            "device": device_description(getattr(profile, "device", "cpu")),
            "blas": blas_description(),
            "libraries": library_versions(),
            "step_timings_s": timings or {},
            "machine": machine or {},
            "files": sorted(set(self.files)),
        }
        return atomic_write_json(path, data)


def remove_files(profile_dir: Path, names) -> list[str]:
    """Delete the files ``names`` (paths relative to ``profile_dir``, as provenance lists them) that an earlier
    run of a notebook wrote and a later run did not: plain files inside the folder only, nothing else."""
    root = Path(profile_dir).resolve()
    gone = []
    for name in sorted(names):
        raw = root / name
        f = raw.resolve()
        if raw.is_symlink() or not f.is_relative_to(root) or not f.is_file():
            continue
        if f.suffix in (".csv", ".png", ".json", ".ipynb"):
            f.unlink()
            gone.append(name)
    return gone


def forget_notebook(profile_dir: str | Path, notebook: str) -> list[str]:
    """Remove ``notebook``'s entries (its main run and its subfolders) from ``provenance.json`` and delete the
    result files they list and its executed notebooks; returns the deleted files. For a notebook a profile no
    longer runs (``skip``), so its earlier results never sit beside a new run's."""
    path = Path(profile_dir) / "provenance.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    entries = data.get("notebooks", {})
    keys = [k for k in entries if k == notebook or k.startswith(notebook + "/")]
    if not keys:
        return []
    executed = [f"notebooks/{p.name}" for p in (Path(profile_dir) / "notebooks").glob(f"{notebook}*.ipynb")
                if p.stem == notebook or p.stem.startswith(notebook + "-")]
    gone = remove_files(Path(profile_dir), {f for k in keys for f in entries[k].get("files", [])} | set(executed))
    for k in keys:
        del entries[k]
    atomic_write_json(path, data)
    return gone


def png_bytes(fig) -> bytes:
    """The PNG of a figure at ``recall.plots.DPI``, its size as drawn (no cropping: the book shows it at that
    size), without a timestamp."""
    from .plots import DPI

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def read_provenance(profile_dir: str | Path) -> dict:
    """``provenance.json``'s notebook entries (key: notebook, or notebook/subdir), or {} when absent."""
    path = Path(profile_dir) / "provenance.json"
    return json.loads(path.read_text()).get("notebooks", {}) if path.exists() else {}


def rederive(profile_dir: str | Path, notebooks=None) -> dict[str, list[str]]:
    """Recompute the derived tables of every notebook run recorded in ``<profile_dir>/provenance.json`` from the
    measured tables it wrote (``recall.tables.derive``, with the run's own parameters), write them, and record
    the commit and time in the run's entry under ``derived``; the run's measurements stay as they were. Claims
    (``07_claims``) come last. Returns notebook -> tables written."""
    from .tables import DERIVATIONS, Params, derive, to_csv

    profile_dir = Path(profile_dir)
    path = profile_dir / "provenance.json"
    data = json.loads(path.read_text())
    entries = data.get("notebooks", {})
    keys = sorted((k for k in entries if k.split("/")[0] in DERIVATIONS and (not notebooks or k.split("/")[0] in
                                                                             notebooks)),
                  key=lambda k: (k.startswith("07_claims"), k))
    written = {}
    for key in keys:
        nb, _, sub = key.partition("/")
        folder = profile_dir / sub if sub else profile_dir
        out = derive(nb, folder, Params.from_provenance(entries[key]))
        for name, df in out.items():
            atomic_write_text(folder / f"{name}.csv", to_csv(name, df))
        entries[key]["derived"] = {"git_commit": git_commit(), "finished": datetime.now(UTC).isoformat(
            timespec="seconds"), "tables": sorted(out)}
        entries[key]["files"] = sorted(set(entries[key].get("files", [])) | {
            str((folder / f"{n}.csv").relative_to(profile_dir)) for n in out})
        written[key] = sorted(out)
    atomic_write_json(path, data)
    return written


def notebook_tables(notebook: str, folder: str | Path) -> dict[str, pd.DataFrame]:
    """Every table of ``notebook`` in ``folder`` (``recall.tables.SPECS``; ``R_{method}`` once per file), by name:
    what its figures are drawn from."""
    from .tables import SPECS, read

    folder = Path(folder)
    out = {}
    for spec in (s for s in SPECS.values() if s.notebook == notebook):
        for path in sorted(folder.glob(re.sub(r"\{\w+\}", "*", spec.name) + ".csv")):
            out[path.stem] = read(path, spec.name)
    return out


def redraw(profile_dir: str | Path, notebooks=None) -> dict[str, list[str]]:
    """Draw again every figure of every notebook run recorded in ``<profile_dir>/provenance.json`` from the tables
    it wrote (``recall.plots.figures``, with the run's profile and task order), delete the PNGs of that run the
    plots no longer draw, and record the commit and time in the run's entry under ``redrawn``; no table is
    touched. Returns notebook -> figures written."""
    from .plots import FIGURES, figures, where

    profile_dir = Path(profile_dir)
    path = profile_dir / "provenance.json"
    data = json.loads(path.read_text())
    written = {}
    for key, entry in data.get("notebooks", {}).items():
        nb, _, sub = key.partition("/")
        if nb not in FIGURES or (notebooks and nb not in notebooks):
            continue
        folder = profile_dir / sub if sub else profile_dir
        prof = entry.get("profile") or {}
        order = (entry.get("parameters") or {}).get("task_order") or prof.get("task_order") or ()
        figs = figures(nb, notebook_tables(nb, folder), where(prof.get("name", profile_dir.name), prof.get("model")),
                       order)
        new = {str((folder / f"{name}.png").relative_to(profile_dir)) for name in figs}
        for name, fig in figs.items():
            atomic_write_bytes(folder / f"{name}.png", png_bytes(fig))
        old = {f for f in entry.get("files", []) if f.endswith(".png")} - new
        for f in old:
            (profile_dir / f).unlink(missing_ok=True)
        entry["files"] = sorted((set(entry.get("files", [])) - old) | new)
        entry["redrawn"] = {"git_commit": git_commit(), "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                            "figures": sorted(figs)}
        written[key] = sorted(figs)
    atomic_write_json(path, data)
    return written


def main(argv=None) -> int:
    """``python -m recall.results --profile cpu``: :func:`rederive` the tables of ``results/<profile>/``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m recall.results", description="Recompute the derived tables of a "
                                 "profile's results from its measured tables (after a change of recall.tables, "
                                 "recall.cl_metrics or recall.claims), or with --figures draw its figures again "
                                 "(after a change of recall.plots), without rerunning any experiment.")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--results-root", type=Path)
    ap.add_argument("--notebooks", nargs="+", help="only these notebooks (full names)")
    ap.add_argument("--figures", action="store_true", help="draw the figures again from the tables there "
                    "(recall.plots) instead of recomputing derived tables; no table is touched")
    args = ap.parse_args(argv)
    try:
        folder = results_root(args.results_root) / args.profile
    except NoCheckout as e:
        print(f"recall results: error: {e}", file=sys.stderr)
        return 2
    if not (folder / "provenance.json").is_file():
        print(f"recall results: error: {folder}/provenance.json not found; run the notebooks first", file=sys.stderr)
        return 2
    for key, names in (redraw if args.figures else rederive)(folder, args.notebooks).items():
        print(f"{key}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
