"""Evaluation of encoders: feature extraction, linear / k-NN / low-shot / attentive probes on frozen features,
and end-to-end fine-tuning with a classification head (``ijepa.eval.finetune``; its ``finetune`` function is
not re-exported here, so that the name keeps meaning the module).

Works with any encoder whose ``forward(images)`` returns patch tokens (B, N, D); nothing here depends on
the training code. What evaluation shares with the rest of the package is imported from its one home: the k-NN
metric from :mod:`ijepa.metrics` (training's monitor uses it too), image preprocessing from
:mod:`ijepa.data.preprocess`, the bf16 check from :mod:`ijepa.device`.
"""

from .attentive import AttentiveProbe, train_attentive_probe
from .extract import POOLINGS, extract_feature_set, extract_features
from .feature_file import FeatureSet, load_features, save_features
from .finetune import (
    ClassifierModel,
    FinetuneConfig,
    evaluate_classifier,
    load_classifier,
    param_groups_lrd,
    save_classifier,
    save_hf_classifier,
)
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
    "DEFAULT_WDS", "POOLINGS", "AttentiveProbe", "ClassifierModel", "FeatureSet", "FinetuneConfig",
    "LogisticRegression", "evaluate_classifier", "extract_feature_set", "extract_features", "fit_logistic",
    "fmnist_probe", "linear_probe", "load_classifier", "load_features", "lowshot_eval", "param_groups_lrd",
    "parse_shot", "pixel_features", "sample_per_class", "save_classifier", "save_features", "save_hf_classifier",
    "stratified_split", "train_attentive_probe",
]
