"""The replicate side of "safe with anyone's folders": bad task orders, a busy cache, a cached rerun that writes
nothing, and no empty results folder from a failed run. Each bad request exits 2 with one line and writes nothing."""

from __future__ import annotations

import dataclasses
import os

import pytest

from recall import replicate
from recall.experiments import Run, multi_model, single_model
from recall.fsutil import cache_lock, runs_dir
from recall.profiles import check_task_order, get_profile

SMOKE = get_profile("smoke")

BAD_ORDERS = [
    ("a string", "task_order: trec", "must be a list"),
    ("empty", "task_order: []", "empty"),
    ("duplicates", "task_order: [trec, trec, sms]", "repeats"),
    ("unknown task", "task_order: [trec, sms, nope]", "not training tasks"),
    ("unseen-only task", "task_order: [trec, sms, amazon]", "unseen tasks are never trained on"),
    ("path characters", "task_order: ['x/../../evil', sms, rt]", "not training tasks"),
    ("a missing task", "task_order: [trec, sms]", "lacks"),
    ("not YAML", "task_order: [trec, sms", "not valid YAML"),
]


@pytest.mark.parametrize("case,yaml_text,message", BAD_ORDERS, ids=[c for c, _, _ in BAD_ORDERS])
def test_bad_task_order_is_refused_before_anything_is_written(case, yaml_text, message, tmp_path, capsys):
    rc = replicate.main(["--profile", "smoke", "--notebooks", "04", "--results-root", str(tmp_path / "res"),
                         "-y", yaml_text])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "res").exists()


def test_check_task_order_accepts_a_permutation():
    assert check_task_order(SMOKE, list(reversed(SMOKE.task_order))) == tuple(reversed(SMOKE.task_order))


def test_a_second_run_on_a_busy_cache_exits_with_one_line(tmp_path, capsys):
    with cache_lock():
        rc = replicate.main(["--profile", "smoke", "--notebooks", "06", "--results-root", str(tmp_path / "res"),
                             "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "in use by replicate run pid" in err[0] and "RECALL_RUNS" in err[0]
    assert not (tmp_path / "res").exists()


def _snapshot(folder):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_a_fully_cached_rerun_writes_nothing_to_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECALL_RUNS", str(tmp_path))
    profile = dataclasses.replace(SMOKE, single_methods=("average", "ties"), multi_methods=("average",),
                                  multitask=False)
    first = Run(profile, progress=False)
    a, b = single_model(first), multi_model(first)
    before = _snapshot(runs_dir())
    again = Run(profile, progress=False)
    assert single_model(again).equals(a) and multi_model(again).equals(b)
    assert _snapshot(runs_dir()) == before


def test_a_failed_notebook_leaves_no_empty_results_folder(tmp_path, monkeypatch):
    from recall.notebook import Notebook

    monkeypatch.setenv("RECALL_RESULTS", str(tmp_path))
    with pytest.raises(ValueError, match="not training tasks"):
        Notebook("04_sequential", "smoke", 0, task_order=["trec", "sms", "amazon"])
    nb = Notebook("04_sequential", "smoke", 0, task_order=list(reversed(SMOKE.task_order)))
    assert not nb.res.dir.exists() and not os.listdir(tmp_path)  # nothing until the first table is written


def test_kill_and_resume_gives_byte_identical_tables(tmp_path):
    """SIGKILL a replicate run once some units are cached, rerun it on the same cache: every table equals that of an
    uninterrupted run on its own cache, byte for byte."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def start(cache, results):
        env = {**os.environ, "RECALL_RUNS": str(cache), "PYTHONHASHSEED": "0", "MPLBACKEND": "Agg"}
        return subprocess.Popen([sys.executable, "-m", "recall.replicate", "--profile", "smoke", "--notebooks", "02",
                                 "--results-root", str(results), "--no-progress"], cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    killed = start(tmp_path / "cache", tmp_path / "killed")
    deadline = time.time() + 300
    while time.time() < deadline and len(list((tmp_path / "cache").rglob("evals/*.csv"))) < 3:
        time.sleep(0.2)
    assert killed.poll() is None, "the run finished before it could be killed"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert start(tmp_path / "cache", tmp_path / "killed").wait(timeout=600) == 0
    assert start(tmp_path / "fresh-cache", tmp_path / "fresh").wait(timeout=600) == 0
    for f in sorted((tmp_path / "fresh" / "smoke").glob("*.csv")):
        assert (tmp_path / "killed" / "smoke" / f.name).read_bytes() == f.read_bytes(), f.name
