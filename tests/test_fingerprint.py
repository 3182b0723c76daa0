"""Cache keys know the code: a unit's key holds the fingerprint of the sources that make it."""

from __future__ import annotations

import dataclasses

import pytest

from recall import fingerprint
from recall.experiments import Run, merge_code
from recall.fingerprint import ROOT, closure, code_fingerprint
from recall.profiles import get_profile


@pytest.fixture(autouse=True)
def _fresh():
    fingerprint.clear()
    yield
    fingerprint.clear()


def _names(*modules):
    return {p.relative_to(ROOT).as_posix() for p in closure(*modules)}


def test_closure_follows_imports_lazy_ones_too():
    recall_merge = _names(*merge_code("recall"))
    assert {"merge/recall.py", "merge/engine.py", "similarity.py", "typical.py", "weights.py", "representations.py",
            "tasks.py"} <= recall_merge
    ties = _names(*merge_code("ties"))
    assert "merge/ties.py" in ties and "merge/recall.py" not in ties and "merge/average.py" not in ties
    assert "scoring.py" in _names("recall.scoring") and "training" not in " ".join(_names("recall.scoring"))
    with pytest.raises(ValueError):
        closure("recall.no_such_module")


def _edit(monkeypatch, rel: str):
    """Simulate an edit of one source file."""
    real = fingerprint._read
    monkeypatch.setattr(fingerprint, "_read", lambda p: real(p) + (b"\n# edited\n" if p == ROOT / rel else b""))
    fingerprint.clear()


def test_editing_a_source_changes_only_the_fingerprints_that_depend_on_it(monkeypatch):
    before = {m: code_fingerprint(*merge_code(m)) for m in ("average", "ties", "recall")}
    scoring = code_fingerprint("recall.scoring", "recall.tasks")
    _edit(monkeypatch, "merge/average.py")
    after = {m: code_fingerprint(*merge_code(m)) for m in ("average", "ties", "recall")}
    assert after["average"] != before["average"]
    assert after["ties"] == before["ties"] and after["recall"] == before["recall"]
    assert code_fingerprint("recall.scoring", "recall.tasks") == scoring


def test_editing_a_method_invalidates_its_cached_merges(tmp_path, monkeypatch):
    monkeypatch.setenv("RECALL_RUNS", str(tmp_path))
    run = Run(dataclasses.replace(get_profile("smoke")), progress=False)
    merges = []
    inner = run._merge
    run._merge = lambda out: (merges.append(out), inner(out))
    first = run.merge("average", [run.base, run.base], samples_task=None, name="m")
    assert run.merge("average", [run.base, run.base], samples_task=None, name="m") == first and len(merges) == 1
    ties = run.merge("ties", [run.base], samples_task=None, name="t")
    assert len(merges) == 2
    _edit(monkeypatch, "merge/average.py")
    again = run.merge("average", [run.base, run.base], samples_task=None, name="m")
    assert again != first and len(merges) == 3  # the edited method merges again
    assert run.merge("ties", [run.base], samples_task=None, name="t") == ties and len(merges) == 3  # others do not
    # evaluations of the old merge are keyed by its folder, so they are not served for the new one
    assert run._eval_file(again, "trec") != run._eval_file(first, "trec")


def test_keys_do_not_depend_on_the_path_the_cache_is_reached_through(tmp_path, monkeypatch):
    real = tmp_path / "cache"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    keys = []
    for root in (real, link):
        monkeypatch.setenv("RECALL_RUNS", str(root))
        run = Run(get_profile("smoke"), progress=False)
        keys.append((run.ref(run.base), run._eval_file(run.base, "trec").name))
    assert keys[0] == keys[1] and keys[0][0].startswith("runs:")
