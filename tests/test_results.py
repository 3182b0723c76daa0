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
