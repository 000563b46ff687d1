"""Models: pure ``torch.nn``; nothing here imports the rest of ijepa, so a model loads without the training stack."""

from .pos_embed import resample_pos_embed, sincos_2d
from .predictor import VisionTransformerPredictor, build_predictor
from .vit import VIT_SIZES, VisionTransformer, apply_masks, build_encoder, gather_tokens, inference_forward

__all__ = ["VIT_SIZES", "VisionTransformer", "VisionTransformerPredictor", "apply_masks", "build_encoder",
           "build_predictor", "gather_tokens", "inference_forward", "resample_pos_embed", "sincos_2d"]
