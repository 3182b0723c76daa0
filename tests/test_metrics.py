"""Accuracy and macro-F1: the plain functions, our local evaluate modules, and sklearn agree."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from recall.metrics import METRIC_NAMES, accuracy, compute_metrics, macro_f1, metric_path


def _cases():
    rng = np.random.default_rng(0)
    cases = [([0, 1, 1], [0, 1, 0]), ([2, 2, 2, 2], [0, 1, 2, 2]), ([0, 0], [0, 0]), ([1, 0], [0, 1])]
    for k, n in [(2, 50), (5, 200), (8, 37)]:
        y = rng.integers(0, k, n)
        p = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))
        cases.append((p.tolist(), y.tolist()))
    return cases


@pytest.mark.parametrize("pred,ref", _cases())
def test_plain_matches_sklearn(pred, ref):
    assert accuracy(pred, ref) == pytest.approx(accuracy_score(ref, pred))
    assert macro_f1(pred, ref) == pytest.approx(f1_score(ref, pred, average="macro"))
    labels = list(range(max(pred + ref) + 3))  # with absent classes: they count as 0
    assert macro_f1(pred, ref, labels=labels) == pytest.approx(
        f1_score(ref, pred, average="macro", labels=labels, zero_division=0))
    assert compute_metrics(pred, ref) == {"accuracy": accuracy(pred, ref), "macro_f1": macro_f1(pred, ref)}


def test_label_words_and_errors():
    assert compute_metrics(["spam", "normal"], ["spam", "spam"]) == pytest.approx(
        {"accuracy": 0.5, "macro_f1": f1_score(["spam", "spam"], ["spam", "normal"], average="macro")})
    with pytest.raises(ValueError, match="equal length"):
        compute_metrics([0, 1], [0])
    with pytest.raises(ValueError, match="no predictions"):
        compute_metrics([], [])


def test_metric_files_exist():
    for name in METRIC_NAMES:
        path = metric_path(name)
        assert path.is_file() and path.parent.name == path.stem == name
        for line in path.read_text().splitlines():  # evaluate's import scanner misreads "import a, b"
            assert not (line.startswith("import ") and "," in line), line
    with pytest.raises(ValueError, match="unknown metric"):
        metric_path("bleu")


def test_evaluate_modules_match(monkeypatch):
    """Both modules load offline from their local scripts and agree with sklearn."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from recall.metrics import load_metric

    acc = load_metric("accuracy")
    f1 = load_metric("macro_f1")
    for pred, ref in _cases():
        assert acc.compute(predictions=pred, references=ref)["accuracy"] == pytest.approx(accuracy_score(ref, pred))
        assert f1.compute(predictions=pred, references=ref)["macro_f1"] == pytest.approx(
            f1_score(ref, pred, average="macro"))
    pred, ref = _cases()[-1]
    labels = list(range(10))
    assert f1.compute(predictions=pred, references=ref, labels=labels)["macro_f1"] == pytest.approx(
        macro_f1(pred, ref, labels=labels))
