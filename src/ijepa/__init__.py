"""I-JEPA: Image-based Joint-Embedding Predictive Architecture (Assran et al., CVPR 2023)."""

__version__ = "0.1.0"
