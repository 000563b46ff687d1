"""I-JEPA: Image-based Joint-Embedding Predictive Architecture (Assran et al., CVPR 2023).

Public API: ``build_encoder``, ``build_predictor``, ``load``, ``convert``, ``export``, ``load_config``, ``train``.
Imported lazily, so ``import ijepa`` stays fast and torch-free until a model is needed.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "build_encoder": "ijepa.models", "build_predictor": "ijepa.models", "VisionTransformer": "ijepa.models",
    "VisionTransformerPredictor": "ijepa.models", "load": "ijepa.interop", "convert": "ijepa.interop",
    "export": "ijepa.interop", "load_config": "ijepa.config", "train": "ijepa.train.loop",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ijepa' has no attribute {name!r}")
