"""Experiment units: merged models whose weights are released once scored, and merged again only when needed."""

from __future__ import annotations

import dataclasses

import pandas as pd

from recall.experiments import WEIGHTS_DELETED, Run, has_weights
from recall.profiles import get_profile

SMOKE = get_profile("smoke")


def _run(tmp_path, **changes) -> tuple[Run, list]:
    run = Run(dataclasses.replace(SMOKE, **changes), progress=False)
    run.root = tmp_path  # keep the test's units out of the shared cache
    merges = []
    inner = run._merge
    run._merge = lambda out: (merges.append(out), inner(out))
    return run, merges


def test_released_merge_is_merged_again_only_when_its_weights_are_needed(tmp_path):
    run, merges = _run(tmp_path)
    task, unseen = SMOKE.tasks[0], SMOKE.unseen[0]
    merged = run.merge("average", [run.base, run.base], samples_task=None, name="m")
    first = run.evaluate_on(merged, (task,), method="average")
    run.release(merged)
    assert not has_weights(merged) and (merged / WEIGHTS_DELETED).exists()
    assert (merged / "merge_config.json").exists() and (merged / "README.md").exists()
    assert len(merges) == 1
    # cached: the same folder back, the same scores, no new merge
    assert run.merge("average", [run.base, run.base], samples_task=None, name="m") == merged
    pd.testing.assert_frame_equal(run.evaluate_on(merged, (task,), method="average"), first)
    assert len(merges) == 1 and not has_weights(merged)
    # a score not cached yet needs the weights: merged again, identical
    run.evaluate_on(merged, (unseen,), method="average")
    assert len(merges) == 2 and has_weights(merged) and not (merged / WEIGHTS_DELETED).exists()
    # a model that is not a merge of this run is never released
    run.release(run.base)
    assert has_weights(run.base)


def test_keep_merged_keeps_the_weights(tmp_path):
    run, _ = _run(tmp_path, keep_merged=True)
    merged = run.merge("average", [run.base, run.base], samples_task=None, name="m")
    run.evaluate_on(merged, (SMOKE.tasks[0],), method="average")
    run.release(merged)
    assert has_weights(merged) and not (merged / WEIGHTS_DELETED).exists()


def test_training_from_a_released_merge_merges_it_again(tmp_path):
    run, merges = _run(tmp_path)
    merged = run.merge("average", [run.base, run.base], samples_task=None, name="m")
    run.release(merged)
    out = run.train(merged, (SMOKE.tasks[0],), "from-merged")
    assert has_weights(out) and has_weights(merged) and len(merges) == 2
