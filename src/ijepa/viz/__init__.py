"""Pictures for people: masking configs, training curves, patch-feature PCA, and the predictor as a world model.

Every picture is a ``matplotlib.figure.Figure`` built without pyplot (no global backend or figure state, so it
works headless and in tests); ``save_figure`` writes it. Each name is imported from its module (``from
ijepa.viz.masks import render_masks``): this package imports neither torch nor matplotlib, so the ``ijepa``
command's parser, which registers ``viz``, stays light.

- :mod:`.masks`    ``render_masks`` / ``draw_masks`` / ``drawn_patches`` / ``mask_batch``: what the sampler hides
- :mod:`.curves`   ``read_run`` / ``plot_curves``: loss, schedules and collapse monitors of a run
- :mod:`.features` ``pca_feature_maps`` / ``draw_features`` / ``save_figure``: DINO-style PCA of patch tokens
- :mod:`.decoder`  ``PixelDecoder`` / ``train_decoder`` / ``save_decoder`` / ``load_decoder``
- :mod:`.predict`  ``predict_box`` / ``build_gallery`` / ``retrieve`` / ``draw_predictions`` /
  ``box_specificity``: render what the predictor predicts for a hidden box
- :mod:`.stochastic` ``GridDenoiser`` / ``train_stochastic_decoder`` / ``sample``: a generative decoder of tokens
- :mod:`.samples`  ``render_samples`` / ``draw_sample_rows`` / ``measure_samples``: samples of predictions
- :mod:`.cli`      ``register``: the ``ijepa viz`` and ``ijepa train-decoder`` commands
"""

from __future__ import annotations

from ..errors import IJepaError

__all__ = ["VizError"]


class VizError(IJepaError, ValueError):
    """A problem with what a picture was asked to show (the user's to fix: a bad box, a model without a
    predictor, a run folder without logs); the ``viz`` commands print it as one line."""
