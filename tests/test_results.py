"""Provenance helpers: the commit a run used, and the BLAS kernels it ran on."""

from __future__ import annotations

import subprocess

from recall import results


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_git_commit_ignores_the_runs_own_outputs(tmp_path, monkeypatch):
    for f in ("recall/code.py", "results/cpu/table.csv", "book/results/page.md", "book/intro.md"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("v1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(results, "repo_root", lambda: tmp_path)
    clean = results.git_commit()
    assert len(clean) == 40 and not clean.endswith("+dirty")
    (tmp_path / "results/cpu/table.csv").write_text("v2\n")
    (tmp_path / "book/results/page.md").write_text("v2\n")
    assert results.git_commit() == clean  # a run writing its results is not a code change
    (tmp_path / "book/intro.md").write_text("v2\n")
    assert results.git_commit() == clean + "+dirty"


def test_blas_description_names_the_libraries():
    import numpy  # noqa: F401  (loads its BLAS)

    text = results.blas_description()
    assert "threads" in text and "unknown" not in text


def test_results_root_is_the_checkout_a_run_starts_in(tmp_path, monkeypatch):
    monkeypatch.delenv("RECALL_RESULTS", raising=False)
    (tmp_path / "checkout" / "notebooks").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "checkout" / "notebooks")  # where a notebook's kernel runs
    assert results.results_root() == (tmp_path / "checkout" / "results").resolve()
    monkeypatch.setenv("RECALL_RESULTS", str(tmp_path / "elsewhere"))
    assert results.results_root() == tmp_path / "elsewhere"
    assert results.results_root(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv("RECALL_RESULTS")
    monkeypatch.chdir(tmp_path)  # no notebooks/ here or above: never the installed package's folder
    import pytest

    with pytest.raises(results.NoCheckout, match="RECALL_RESULTS"):
        results.results_root()
    assert results.git_commit() == "unknown"


def test_redraw_replaces_a_runs_figures_and_touches_no_table(tmp_path):
    import json
    import shutil
    from pathlib import Path

    from recall.plots import DPI

    cpu = Path(__file__).resolve().parents[1] / "results" / "cpu"
    folder = tmp_path / "cpu"
    folder.mkdir()
    shutil.copy(cpu / "efficiency.csv", folder)
    entry = json.loads((cpu / "provenance.json").read_text())["notebooks"]["06_efficiency"]
    entry["files"] = ["efficiency.csv", "efficiency.png"]  # a figure the plots no longer draw
    (folder / "provenance.json").write_text(json.dumps({"notebooks": {"06_efficiency": entry}}))
    (folder / "efficiency.png").write_bytes(b"old")
    table = (folder / "efficiency.csv").read_bytes()
    assert results.redraw(folder) == {"06_efficiency": ["efficiency_memory", "efficiency_time"]}
    assert (folder / "efficiency.csv").read_bytes() == table and not (folder / "efficiency.png").exists()
    new = json.loads((folder / "provenance.json").read_text())["notebooks"]["06_efficiency"]
    assert new["files"] == ["efficiency.csv", "efficiency_memory.png", "efficiency_time.png"]
    assert new["redrawn"]["figures"] == ["efficiency_memory", "efficiency_time"]
    from recall.book import png_size

    width, _, dpi = png_size(folder / "efficiency_time.png")
    assert round(dpi) == DPI and width / dpi <= 7.0 + 1e-6


def test_a_rerun_removes_its_earlier_leftovers_and_a_skipped_notebook_is_forgotten(tmp_path):
    """A notebook's new run deletes the files its previous run listed and this one did not write; forgetting a
    notebook removes its entries, their files and its executed notebooks, and touches nothing else."""
    import json

    import pandas as pd

    folder = tmp_path / "p"
    (folder / "notebooks").mkdir(parents=True)
    for name in ("old.csv", "kept.csv", "other.csv", "notebooks/nb.ipynb", "notebooks/nb-order-a.ipynb",
                 "notebooks/nbx.ipynb", "user.txt"):
        (folder / name).write_text("x")
    entries = {"nb": {"files": ["old.csv", "kept.csv", "../outside.csv"]}, "nb/order-a": {"files": []},
               "other": {"files": ["other.csv"]}}
    (folder / "provenance.json").write_text(json.dumps({"notebooks": entries}))
    (tmp_path / "outside.csv").write_text("x")
    res = results.Results("p", "nb", root=tmp_path)
    res.table("base_scores", pd.DataFrame({"task": ["a"], "accuracy": [0.5]}))
    res.files.append("kept.csv")
    res.provenance({"name": "p"})
    assert not (folder / "old.csv").exists() and (folder / "kept.csv").exists()
    assert (tmp_path / "outside.csv").exists()  # never outside the results folder
    gone = results.forget_notebook(folder, "nb")
    assert sorted(gone) == ["base_scores.csv", "kept.csv", "notebooks/nb-order-a.ipynb", "notebooks/nb.ipynb"]
    left = json.loads((folder / "provenance.json").read_text())["notebooks"]
    assert list(left) == ["other"]
    assert all((folder / n).exists() for n in ("other.csv", "notebooks/nbx.ipynb", "user.txt"))
