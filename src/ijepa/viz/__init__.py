"""Pictures for people: masking configs, training curves, patch-feature PCA, and the predictor as a world model.

Every picture is a ``matplotlib.figure.Figure`` built without pyplot (no global backend or figure state, so it
works headless and in tests); ``save_figure`` writes it. The API is re-exported here lazily, so ``import
ijepa.viz`` (and the ``ijepa`` command's parser, which registers ``viz``) costs neither torch nor matplotlib.

- :mod:`.masks`    ``render_masks`` / ``draw_masks`` / ``drawn_patches`` / ``mask_batch``: what the sampler hides
- :mod:`.curves`   ``read_run`` / ``plot_curves``: loss, schedules and collapse monitors of a run
- :mod:`.features` ``pca_feature_maps`` / ``draw_features``: DINO-style PCA of patch tokens
- :mod:`.decoder`  ``PixelDecoder`` / ``train_decoder`` / ``save_decoder`` / ``load_decoder``
- :mod:`.predict`  ``predict_box`` / ``build_gallery`` / ``retrieve`` / ``draw_predictions`` /
  ``box_specificity``: render what the predictor predicts for a hidden box
- :mod:`.stochastic` ``GridDenoiser`` / ``train_stochastic_decoder`` / ``sample``: a generative decoder of tokens
- :mod:`.samples`  ``render_samples`` / ``draw_sample_rows`` / ``measure_samples``: samples of predictions
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import IJepaError


class VizError(IJepaError, ValueError):
    """A problem with what a picture was asked to show (the user's to fix: a bad box, a model without a
    predictor, a run folder without logs); the ``viz`` commands print it as one line."""


_EXPORTS = {
    "masks": ("render_masks", "draw_masks", "drawn_patches", "mask_batch", "training_images", "sampler_from_config"),
    "curves": ("read_run", "plot_curves"),
    "features": ("pca_feature_maps", "draw_features", "feature_figure", "load_images", "save_figure"),
    "decoder": ("PixelDecoder", "train_decoder", "save_decoder", "load_decoder", "psnr", "decoder_input"),
    "predict": ("predict_box", "box_ids", "sample_boxes", "build_gallery", "retrieve", "render_predictions",
                "draw_predictions", "box_specificity", "load_world_model"),
    "stochastic": ("GridDenoiser", "train_stochastic_decoder", "sample", "draw_samples", "save_stochastic_decoder",
                   "load_stochastic_decoder"),
    "samples": ("render_samples", "draw_sample_rows", "measure_samples"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["VizError", *sorted(_WHERE)]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
