"""I-JEPA: Image-based Joint-Embedding Predictive Architecture (Assran et al., CVPR 2023).

Public API: ``build_encoder``, ``build_predictor``, ``load``, ``convert``, ``export``, ``load_config`` and
``pretrain`` (the training function, :func:`ijepa.train.loop.train`; the name ``ijepa.train`` is the training
package). Imported lazily, so ``import ijepa`` stays fast and torch-free until a model is needed.
"""

__version__ = "0.2.0"

# name -> (module, its name there): pretrain is not called so in its module
_EXPORTS = {
    "build_encoder": ("ijepa.models", "build_encoder"),
    "build_predictor": ("ijepa.models", "build_predictor"),
    "VisionTransformer": ("ijepa.models", "VisionTransformer"),
    "VisionTransformerPredictor": ("ijepa.models", "VisionTransformerPredictor"),
    "load": ("ijepa.interop", "load"),
    "convert": ("ijepa.interop", "convert"),
    "export": ("ijepa.interop", "export"),
    "load_config": ("ijepa.config", "load_config"),
    "pretrain": ("ijepa.train.loop", "train"),
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        module, attr = _EXPORTS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ijepa' has no attribute {name!r}")
