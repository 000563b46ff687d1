"""Evaluation of frozen encoders: feature extraction, linear / k-NN / low-shot / attentive probes.

Works with any encoder whose ``forward(images)`` returns patch tokens (B, N, D); nothing here depends on
the training code.
"""

from .attentive import AttentiveProbe, train_attentive_probe
from .extract import (
    POOLINGS,
    bf16_supported,
    default_input_spec,
    extract_features,
    load_features,
    prepare_images,
    resolve_input_spec,
    save_features,
)
from .knn import knn_accuracy, knn_classify
from .linear import (
    DEFAULT_WDS,
    LogisticRegression,
    fit_logistic,
    fmnist_probe,
    linear_probe,
    pixel_features,
    stratified_split,
)
from .lowshot import lowshot_eval, parse_shot, sample_per_class

__all__ = [
    "DEFAULT_WDS", "POOLINGS", "AttentiveProbe", "LogisticRegression", "bf16_supported", "default_input_spec",
    "extract_features", "fit_logistic", "fmnist_probe", "knn_accuracy", "knn_classify", "linear_probe",
    "load_features", "lowshot_eval", "parse_shot", "pixel_features", "prepare_images", "resolve_input_spec",
    "sample_per_class", "save_features", "stratified_split", "train_attentive_probe",
]
