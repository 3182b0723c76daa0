"""Macro-F1 (a local evaluate module), defined as sklearn's f1_score(average="macro").

The unweighted mean over classes of F1 = 2TP / (2TP + FP + FN). Classes: those present in the
references or predictions, or ``labels`` when given (a class with 2TP + FP + FN = 0 then scores 0).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Macro-averaged F1: the unweighted mean of the per-class F1 scores (as sklearn's average='macro')."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class indices.
    references (list of int): true class indices.
    labels (list of int, optional): the classes to average over; default: all classes present in
        predictions or references.
Returns:
    macro_f1 (float): in [0, 1].
Examples:
    >>> m = evaluate.load("recall/metrics/macro_f1")
    >>> m.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'macro_f1': 0.6666666666666666}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MacroF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, labels=None):
        p = np.asarray(predictions)
        r = np.asarray(references)
        if len(p) == 0:
            raise ValueError("no predictions to score")
        classes = np.unique(np.concatenate([p, r])) if labels is None else np.asarray(list(labels))
        scores = []
        for c in classes:
            tp = np.sum((p == c) & (r == c))
            fp = np.sum((p == c) & (r != c))
            fn = np.sum((p != c) & (r == c))
            denom = 2 * tp + fp + fn
            scores.append(2 * tp / denom if denom else 0.0)
        return {"macro_f1": float(np.mean(scores))}
