"""The k-NN protocol of ``ijepa eval``: the metric lives in :mod:`ijepa.metrics` (training's monitor uses it too)."""

from ..metrics import knn_accuracy, knn_classify

__all__ = ["knn_accuracy", "knn_classify"]
