"""Accuracy: the fraction of predictions equal to their reference (a local evaluate module)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy = (number of predictions equal to their reference) / (number of predictions)."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class indices.
    references (list of int): true class indices.
Returns:
    accuracy (float): in [0, 1].
Examples:
    >>> m = evaluate.load("recall/metrics/accuracy")
    >>> m.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        p = np.asarray(predictions)
        r = np.asarray(references)
        if len(p) == 0:
            raise ValueError("no predictions to score")
        return {"accuracy": float(np.mean(p == r))}
