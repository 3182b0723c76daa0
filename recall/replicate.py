"""Run the result notebooks of one profile with papermill: ``python -m recall.replicate --profile cpu``.

    python -m recall.replicate --profile cpu                        # all notebooks, every seed and order
    python -m recall.replicate --profile smoke --notebooks 01 04   # a selection (number prefixes or names)
    python -m recall.replicate --profile cpu --notebooks 04 -y 'task_order: [trec, bbc, sms, ng, rt]'
    python -m recall.replicate --profile cpu --param task_order='[trec, bbc, sms, ng, rt]'
    python -m recall.replicate --profile smoke --results-root /tmp/res   # results elsewhere (tests)

First prints the budget plan (``recall.planner``) of the selected notebooks, then executes the notebooks of
``notebooks/`` in order with papermill's Python API (kernel ``python3``, working folder ``notebooks/``,
parameters ``profile``, ``seed`` and any extra parameter the notebook declares). Every seed of the
profile's ``seeds`` is run (``--seed N``: only that one), and the sequential notebook also for each of the
profile's ``extra_orders`` (unless ``task_order`` is given); ``07_claims`` runs last, once, after any
selection, so the verdicts always reflect every result in the folder. The notebooks
write their tables and figures to ``<results root>/<profile>/`` and record provenance there; the executed
notebook goes to ``<results root>/<profile>/notebooks/<name>.ipynb`` (written under a temporary name and
renamed when the run succeeded, with long text outputs trimmed). A notebook run with another
``task_order`` is saved as ``<name>-order-<tasks>.ipynb``, one with a seed other than 0 as
``<name>-seed<n>.ipynb`` (their tables go to the subfolders ``order-<tasks>/`` and ``seed<n>/``).

The notebooks' sources are the ``py:percent`` files beside them (``notebooks/0*.py``, paired with the
``.ipynb`` by jupytext); a notebook whose ``.ipynb`` differs from its source is refused (run
``jupytext --sync notebooks/0*.py``).

While a notebook runs, the terminal shows papermill's bar of cells and, above it, what the kernel computes
(``recall.progress``: "training expert-trec (lora fine-tuning): step 12/48, about 3 min left", at most one
line every 15 s); the kernels log errors only.

The results root is ``--results-root``, else ``$RECALL_RESULTS``, else ``results/`` of the checkout the
command is started in (``recall.results.checkout``); the option sets ``RECALL_RESULTS`` for the kernels.
A failing notebook stops the run: the error names the notebook and the failing cell, and the partly
executed notebook is kept as ``<name>.failed.ipynb``.

The cache: trained models, merges and evaluations are kept in ``$RECALL_RUNS`` (default
``~/.cache/recall/runs``, or ``$RECALL_CACHE/runs``), keyed by their configuration and by a fingerprint of
the code that makes them, so an edit of the code recomputes what it affects and never serves a stale
result. To start from nothing, delete that folder (``rm -r ~/.cache/recall/runs``) or point
``RECALL_RUNS`` at an empty one; the downloaded archives and the converted model stay in
``~/.cache/recall``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from .fsutil import CacheBusy, cache_lock
from .planner import READING_ENV, reading
from .profiles import PROFILES, check_task_order, get_profile
from .progress import ENV as PROGRESS_ENV
from .results import NoCheckout, forget_notebook, repo_root, results_root, subdir_for

OFFLINE_DEFAULTS = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
MAX_TEXT_OUTPUT = 4000  # characters kept of each text output of the executed notebooks
# the kernels log errors only: not ipykernel's warning "Kernel is running over TCP without encryption" (the kernel
# listens on localhost, for this process) before every notebook
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]


class ReplicateError(ValueError):
    """A bad request (unknown notebook, bad parameter, busy cache): one line, exit status 2, nothing written."""


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook, the cell and the error."""


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


CLAIMS_NOTEBOOK = "07_claims"  # reads every other notebook's tables: runs last, once
# run only when named: the pilot fixes the testbed once, before the replication (recall.pilot)
ON_REQUEST = ("00_pilot",)


def available_notebooks() -> list[Path]:
    return sorted(p for p in notebooks_dir().glob("[0-9]*.ipynb"))


def out_of_sync(path: Path) -> str | None:
    """Why ``path`` (an ``.ipynb``) differs from its ``py:percent`` source, or None when they agree."""
    import jupytext
    import nbformat

    src = path.with_suffix(".py")
    if not src.is_file():
        return f"{path.name} has no source {src.name}"
    want = [(c.cell_type, c.source) for c in jupytext.read(src).cells]
    have = [(c.cell_type, c.source) for c in nbformat.read(path, as_version=4).cells]
    if want != have:
        return f"{path.name} differs from {src.name}"
    return None


def select_notebooks(selection: list[str] | None, skip: tuple[str, ...] = ()) -> list[Path]:
    """Notebooks by number prefix (``01``), full name (``01_representations``) or file name, in run order; with no
    selection every notebook but the ``ON_REQUEST`` ones (the pilot) and those the profile skips (``skip``)."""
    found = available_notebooks()
    if not found:
        raise ReplicateError(f"no notebooks in {notebooks_dir()}")
    if not selection:
        return [p for p in found if p.stem not in ON_REQUEST and p.stem not in skip]
    out = []
    for s in selection:
        s = s.removesuffix(".ipynb")
        hits = [p for p in found if p.stem == s or p.stem.split("_", 1)[0] == s]
        if not hits:
            raise ReplicateError(f"unknown notebook {s!r}; choose from {', '.join(p.stem for p in found)}")
        out += [p for p in hits if p not in out]
    return sorted(out)


def parse_params(pairs: list[str], yamls: list[str]) -> dict:
    """``key=YAML`` pairs and ``'key: value'`` YAML mappings -> a dict of parameters."""
    params: dict = {}
    for y in yamls:
        try:
            data = yaml.safe_load(y)
        except yaml.YAMLError as e:
            raise ReplicateError(f"-y {y!r}: not valid YAML ({e.problem})") from None
        if not isinstance(data, dict):
            raise ReplicateError(f"-y expects a YAML mapping such as 'task_order: [trec, bbc]', got {y!r}")
        params.update(data)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ReplicateError(f"--param expects key=value (value in YAML), got {pair!r}")
        try:
            params[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ReplicateError(f"--param {key.strip()}: not valid YAML ({e.problem})") from None
    for key in ("profile", "seed"):
        if key in params:
            raise ReplicateError(f"pass {key} with --{key}, not as an extra parameter")
    return params


def declared_parameters(path: Path) -> dict:
    import papermill

    return papermill.inspect_notebook(str(path))


def output_name(stem: str, params: dict, profile=None) -> str:
    """The executed notebook's name: ``stem``, plus the run's results subfolder (``recall.results.subdir_for``:
    ``-seed<n>`` for a seed other than 0, ``-order-<tasks>`` for a task order other than the profile's)."""
    sub = subdir_for(params.get("seed") or 0, params.get("task_order"),
                     None if profile is None else profile.task_order)
    return f"{stem}-{sub}" if sub else stem


def plan_jobs(profile, selected: list[Path], declared: dict, extra: dict, seeds: list[int] | None = None
              ) -> list[tuple[Path, dict]]:
    """(notebook, parameters) of every run: each selected notebook for every seed (default: the profile's
    ``seeds``), the sequential one also for every ``extra_orders`` entry unless ``task_order`` is given, and
    ``07_claims`` last, once."""
    jobs, last = [], []
    for path in selected:
        own = {k: v for k, v in extra.items() if k in declared[path.stem]}
        if path.stem == CLAIMS_NOTEBOOK:
            last.append((path, {"profile": profile.name, "seed": 0, **own}))
            continue
        for seed in seeds if seeds is not None else list(profile.seeds):
            params = {"profile": profile.name, "seed": seed, **own}
            jobs.append((path, params))
            if "task_order" in declared[path.stem] and "task_order" not in own:
                jobs += [(path, {**params, "task_order": list(o)}) for o in profile.extra_orders]
    return jobs + last


def selected_plan(profile, stems: list[str], seeds: list[int] | None = None, task_order: list | None = None,
                  machine: dict | None = None) -> str:
    """The budget plan (``recall.planner``) of the notebooks ``stems``, for ``seeds`` (default the profile's) and,
    with ``task_order``, that task order only; calibrated to ``machine`` (default: a reading now)."""
    from .planner import reading, report

    changes = {"seeds": tuple(seeds)} if seeds is not None else {}
    if task_order:
        changes.update(task_order=tuple(task_order), extra_orders=())
    return report(dataclasses.replace(profile, **changes), stems,
                  machine=reading(profile) if machine is None else machine)


class _Tail(threading.Thread):
    """Prints the lines appended to a progress file (``recall.progress``) while a notebook runs, each prefixed,
    without breaking papermill's progress bar."""

    def __init__(self, path: Path, prefix: str):
        super().__init__(daemon=True)
        self.path, self.prefix, self.done = path, prefix, threading.Event()

    def run(self):
        from tqdm import tqdm

        pending = ""
        with open(self.path, encoding="utf-8") as f:
            while True:
                finished = self.done.wait(1.0)
                pending += f.read()
                *lines, pending = pending.split("\n")
                for line in lines:
                    tqdm.write(f"{self.prefix}{line}", file=sys.stdout)
                if lines:
                    sys.stdout.flush()  # a log file sees the lines as they come, not at the end
                if finished:
                    return

    def stop(self):
        self.done.set()
        self.join()


def _trim_outputs(nb, limit: int = MAX_TEXT_OUTPUT):
    """Keep executed notebooks small: long streams and text reprs keep their last ``limit`` characters."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and len(out.get("text", "")) > limit:
                out["text"] = f"[... {len(out['text']) - limit} characters trimmed ...]\n" + out["text"][-limit:]
            data = out.get("data", {})
            if "text/plain" in data and len(data["text/plain"]) > limit:
                data["text/plain"] = data["text/plain"][:limit] + "\n[... trimmed ...]"
    return nb


def _failure(stem: str, err, failed_path: Path) -> NotebookFailed:
    cell = getattr(err, "exec_count", None)
    ename, evalue = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
    where = f" in cell [{cell}]" if cell is not None else ""
    return NotebookFailed(f"notebook {stem} failed{where}: {ename}: {evalue}\n"
                          f"the partly executed notebook with the traceback: {failed_path}")


def run_notebook(path: Path, out_dir: Path, params: dict, kernel: str = "python3", progress: bool = True,
                 timeout: int | None = None) -> Path:
    """Execute one notebook with papermill; returns the executed notebook's path (written atomically)."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out_dir.mkdir(parents=True, exist_ok=True)
    name = output_name(path.stem, params, get_profile(params["profile"]) if "profile" in params else None)
    final = out_dir / f"{name}.ipynb"
    tmp = out_dir / f".{name}.partial.ipynb"
    failed = out_dir / f"{name}.failed.ipynb"
    fd, lines = tempfile.mkstemp(prefix=f"recall-{name}-", suffix=".progress")
    os.close(fd)
    os.environ[PROGRESS_ENV] = lines  # the kernel inherits it: its bars become lines there (recall.progress)
    tail = _Tail(Path(lines), f"   {name}: ")
    tail.start()
    try:
        papermill.execute_notebook(str(path), str(tmp), parameters=params, kernel_name=kernel,
                                   cwd=str(path.parent), progress_bar=progress, log_output=False,
                                   execution_timeout=timeout, extra_arguments=KERNEL_ARGUMENTS)
    except PapermillExecutionError as e:
        if tmp.exists():
            os.replace(tmp, failed)
        raise _failure(name, e, failed) from None
    except BaseException:
        if tmp.exists():
            os.replace(tmp, failed)
        raise
    finally:
        tail.stop()
        os.environ.pop(PROGRESS_ENV, None)
        os.unlink(lines)
    nb = _trim_outputs(nbformat.read(str(tmp), as_version=4))
    nbformat.write(nb, str(tmp))
    os.replace(tmp, final)
    if failed.exists():
        failed.unlink()
    return final


def main(argv=None) -> int:
    try:
        return _main(argv)
    except (ReplicateError, CacheBusy, NoCheckout) as e:
        print(f"recall replicate: error: {e}", file=sys.stderr)
        return 2


def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recall.replicate", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n")[-1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", help=f"profile ({', '.join(PROFILES)}); default cpu")
    ap.add_argument("--notebooks", nargs="+", metavar="NB", help="notebooks to run (e.g. 01 03); default all")
    ap.add_argument("--seed", type=int, help="run only this seed (default: every seed of the profile)")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=YAML",
                    help="extra notebook parameter, value in YAML (repeatable), e.g. task_order='[trec, bbc]'")
    ap.add_argument("-y", "--yaml", action="append", default=[], metavar="YAML",
                    help="extra parameters as a YAML mapping, papermill style: -y 'task_order: [trec, bbc]'")
    ap.add_argument("--results-root", type=Path,
                    help="results root (default $RECALL_RESULTS, else results/ of the checkout)")
    ap.add_argument("--kernel", default="python3", help="Jupyter kernel (default python3: this environment)")
    ap.add_argument("--timeout", type=int, help="per-cell execution timeout in seconds (default none)")
    ap.add_argument("--threads", type=int, help="CPU threads of the kernels (OMP_NUM_THREADS, MKL_NUM_THREADS); "
                    "default: 1 for the tiny model of the smoke profile (tiny matrices gain nothing from threads and "
                    "lose a lot on a busy machine), else the environment's setting")
    ap.add_argument("--no-progress", action="store_true", help="hide papermill's progress bar")
    ap.add_argument("--list", action="store_true", help="list the notebooks and their parameters, run nothing")
    args = ap.parse_args(argv)

    try:
        profile = get_profile(args.profile)
    except ValueError as e:
        raise ReplicateError(str(e)) from None
    selected = select_notebooks(args.notebooks, profile.skip)
    claims = [p for p in available_notebooks() if p.stem == CLAIMS_NOTEBOOK]
    if claims and claims[0] not in selected:  # the verdicts always reflect every result there is
        selected.append(claims[0])
    stale = [why for p in selected if (why := out_of_sync(p))]
    if stale:
        raise ReplicateError("; ".join(stale) + " (run `jupytext --sync notebooks/0*.py`)")
    extra = parse_params(args.param, args.yaml)
    declared = {p.stem: declared_parameters(p) for p in selected}
    if args.list:
        for stem, d in declared.items():
            print(f"{stem}: " + ", ".join(f"{k} = {v['default']}" for k, v in d.items()))
        return 0
    unused = sorted(k for k in extra if not any(k in d for d in declared.values()))
    if unused:
        raise ReplicateError(f"no selected notebook declares parameter(s) {', '.join(unused)}")
    if "task_order" in extra:
        try:
            extra["task_order"] = list(check_task_order(profile, extra["task_order"]))
        except ValueError as e:
            raise ReplicateError(str(e)) from None
    jobs = plan_jobs(profile, selected, declared, extra, None if args.seed is None else [args.seed])

    root = results_root(args.results_root).resolve()
    os.environ["RECALL_RESULTS"] = str(root)
    for k, v in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    threads = args.threads or (1 if profile.model == "tiny" and "OMP_NUM_THREADS" not in os.environ else None)
    if threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)

    stems = sorted({p.stem for p, _ in jobs})
    print(f"recall replicate: profile {profile.name} ({profile.notes}), {len(jobs)} notebook run(s)")
    print(f"budget plan of {', '.join(stems)} (units already cached cost nothing):")
    machine = reading(profile)  # one reading for the plan and every notebook's (the kernels inherit it)
    if machine:
        os.environ[READING_ENV] = json.dumps(machine)
    print(selected_plan(profile, stems, None if args.seed is None else [args.seed], extra.get("task_order"),
                        machine))
    print(f"results: {root / profile.name}" + (f"; kernels use {threads} CPU thread(s)" if threads else ""))
    with cache_lock():  # one replicate run per experiment cache; a second one exits with a clear message
        if not args.notebooks:  # the whole replication: a notebook the profile skips keeps no earlier results
            for stem in profile.skip:
                gone = forget_notebook(root / profile.name, stem)
                if gone:
                    print(f"profile {profile.name} skips {stem}: removed its earlier results ({len(gone)} files)")
        return _run_jobs(jobs, root / profile.name / "notebooks", args)


def _run_jobs(jobs, out_dir: Path, args) -> int:
    times = []
    t_all = time.time()
    for path, params in jobs:
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        print(f"\n== {path.stem} ({shown})", flush=True)
        t0 = time.time()
        try:
            out = run_notebook(path, out_dir, params, kernel=args.kernel, progress=not args.no_progress,
                               timeout=args.timeout)
        except NotebookFailed as e:
            print(f"\nERROR: {e}", file=sys.stderr, flush=True)
            _print_times(times, time.time() - t_all)
            return 1
        times.append((output_name(path.stem, params, get_profile(params["profile"])), time.time() - t0))
        print(f"   done in {times[-1][1]:.1f} s -> {out}", flush=True)
    _print_times(times, time.time() - t_all)
    return 0


def _print_times(times: list, total: float) -> None:
    if not times:
        return
    print("\nwall time per notebook:")
    for stem, s in times:
        print(f"  {stem:28s} {s:8.1f} s")
    print(f"  {'total':28s} {total:8.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
