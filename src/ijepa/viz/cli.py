"""The arguments of the ``viz`` and ``train-decoder`` commands; what each runs is in :mod:`.commands`.

``register(subparsers)`` adds them to the ``ijepa`` command. Nothing heavy is imported here (the commands' module
is imported only when one runs), so building the parser stays cheap.
"""

from __future__ import annotations

import argparse

from ..config import PRECISIONS
from . import VizError

KINDS = ("pixel", "stochastic")

MASKS_EPILOG = """\
examples:
  ijepa viz masks --out masks.png                              # the CPU default's rung for this machine
  ijepa viz masks -c runs/quickstart/config.yaml --out m.png   # a run's own config
  ijepa viz masks mask.num_pred_masks=2 mask.min_keep=10 --out m.png
"""


def _box(text: str):
    # Imported here: --box is checked as the command line is parsed, before any model loads, and the box's
    # parser lives with the rest of the prediction code, which imports torch.
    from .predict import parse_box

    try:
        return parse_box(text)
    except VizError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _model_args(p: argparse.ArgumentParser, which: bool = True) -> None:
    p.add_argument("model", help="run folder, checkpoint file, export, or a published model's name with --path")
    if which:
        p.add_argument("--which", default="target_encoder", choices=["target_encoder", "encoder"],
                       help="which encoder of a training checkpoint (default: the target/EMA encoder)")
    p.add_argument("--path", help="the checkpoint file, when MODEL is a published model's name")


def _image_args(p: argparse.ArgumentParser, split: bool = True) -> None:
    p.add_argument("--images", dest="images", metavar="DIR",
                   help="a folder of images (recursive) instead of Fashion-MNIST (needed for non-28-px models)")
    p.add_argument("--root", help="Fashion-MNIST folder (default /usr/share/datasets/fashion-mnist)")
    if split:
        p.add_argument("--split", default="test", choices=["train", "test"], help="Fashion-MNIST split shown")


def register(subparsers) -> None:
    """Add ``viz`` (masks, curves, features, predict) and ``train-decoder`` to the ``ijepa`` command."""
    v = subparsers.add_parser("viz", help="pictures: masks, training curves, feature PCA, predictions",
                              description="Write PNG pictures: what the mask sampler hides (masks), a run's "
                                          "curves (curves), patch-feature PCA maps (features), and the "
                                          "predictor's predictions rendered as pixels (predict). See "
                                          "docs/visualisation.md.")
    v.set_defaults(run=None, usage=v)  # `ijepa viz` alone prints its help
    vs = v.add_subparsers(dest="viz_command", metavar="PICTURE")
    for add in (_add_masks, _add_curves, _add_features, _add_predict):
        add(vs)
    _add_train_decoder(subparsers)


def _add_masks(vs) -> None:
    m = vs.add_parser("masks", help="training crops with the context and target blocks the sampler draws",
                      description="Draw a config's masks over its training crops, straight from the real crop "
                                  "transform and MultiBlockMaskSampler: context tinted blue, each target block "
                                  "in its own colour (striped where blocks overlap), dropped patches grey.",
                      epilog=MASKS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--config", "-c", help="YAML file (e.g. a run's config.yaml) or shipped config name (default: "
                                          "what `ijepa train` runs here, the CPU default's rung for this machine)")
    m.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. mask.min_keep=10")
    m.add_argument("--out", "-o", required=True, help="PNG to write")
    m.add_argument("--n", type=int, default=8, help="images (default 8)")
    m.add_argument("--ncols", type=int, default=4, help="images per row")
    m.add_argument("--seed", type=int, default=0, help="fixes the images, crops and masks")
    m.set_defaults(run="ijepa.viz.commands:masks_command")


def _add_curves(vs) -> None:
    c = vs.add_parser("curves", help="loss, lr, wd, EMA momentum, RankMe, target std, k-NN against step",
                      description="Plot a run folder's log.csv and monitor.csv against the training step.")
    c.add_argument("run_dir", help="a run folder (the --out of `ijepa train`)")
    c.add_argument("--out", "-o", required=True, help="PNG to write")
    c.set_defaults(run="ijepa.viz.commands:curves_command")


def _add_features(vs) -> None:
    f = vs.add_parser("features", help="PCA of patch features as RGB maps beside each image",
                      description="DINO-style: PCA over the patch tokens, PC1 thresholded (Otsu) as foreground, "
                                  "PCA of the foreground tokens to RGB, upsampled to the image.")
    _model_args(f)
    _image_args(f)
    f.add_argument("--out", "-o", required=True, help="PNG to write")
    f.add_argument("--n", type=int, default=8, help="images shown (default 8)")
    f.add_argument("--fit", type=int, default=512,
                   help="extra images the PCA is fit on besides the shown ones (default 512; 0: shown only)")
    f.add_argument("--center", default="position", choices=["position", "global"],
                   help="position: remove each grid position's mean token first (default; small models' tokens "
                        "are mostly position), global: the plain recipe")
    f.add_argument("--threshold", type=float, help="PC1 foreground threshold (default: Otsu's)")
    f.add_argument("--upsample", default="bilinear", choices=["bilinear", "nearest"])
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(run="ijepa.viz.commands:features_command")


def _add_predict(vs) -> None:
    p = vs.add_parser("predict", help="hide a box, predict it, render the prediction (retrieval, decoder)",
                      description="The predictor as a world model: for each image the context encoder sees every "
                                  "patch outside a box, the predictor predicts the box's representations, shown by "
                                  "retrieval (nearest target-encoder patches of a gallery, pasted) and, with "
                                  "--decoder, by a pixel decoder (`ijepa train-decoder`).")
    _model_args(p, which=False)
    _image_args(p)
    p.add_argument("--out", "-o", required=True, help="PNG to write")
    p.add_argument("--decoder", help="a decoder from `ijepa train-decoder` (adds the decoder columns)")
    p.add_argument("--box", type=_box, help="r0,c0,h,w in patches, for every image (default: a target-sized box "
                                            "drawn per image by the mask sampler, the run's config when MODEL is a "
                                            "run folder)")
    p.add_argument("--n", type=int, default=6, help="images (rows, default 6)")
    p.add_argument("--gallery", type=int, default=2000, help="training images in the retrieval gallery")
    p.add_argument("--same-position", action="store_true",
                   help="retrieve only gallery patches at the predicted patch's own grid position")
    p.add_argument("--measure", type=int, default=200,
                   help="also print how much closer each prediction is to its own image than another image's "
                        "prediction is, over this many images (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--judge-images", type=int, default=6000,
                   help="with --stochastic-decoder and --measure: training images of the semantic test's classifier")
    p.add_argument("--judge-steps", type=int, default=600, help="its training steps (batch 128)")
    _add_sample_args(p)
    p.set_defaults(run="ijepa.viz.commands:predict_command")


def _add_sample_args(p: argparse.ArgumentParser) -> None:
    """``viz predict``'s options for a stochastic decoder."""
    p.add_argument("--stochastic-decoder", metavar="FILE",
                   help="a decoder from `ijepa train-decoder --kind stochastic`: the picture shows --samples samples "
                        "of each prediction, and --measure adds the sample figures")
    p.add_argument("--samples", type=int, default=4, help="samples per box with --stochastic-decoder (default 4)")
    p.add_argument("--sample-steps", type=int, default=24, help="sampling steps per sample (default 24)")
    p.add_argument("--device", default="auto", help="where the samples are drawn: cpu, cuda or auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="the precision policy's choice for the samples (auto: bf16 where native)")


def _add_train_decoder(subparsers) -> None:
    t = subparsers.add_parser("train-decoder", help="train a pixel decoder on frozen target-encoder features",
                              description="Train a small decoder (per-token MLP, convolutions over the token grid, "
                                          "pixel convolutions; L1 loss) from the target encoder's layer-normed "
                                          "patch features to pixels, for `ijepa viz predict --decoder`. Prints the "
                                          "held-out PSNR beside the PSNR of the mean image.")
    _model_args(t)
    _image_args(t, split=False)
    t.add_argument("--out", "-o", required=True, help=".safetensors file to write")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="train for this long (default 3 minutes)")
    budget.add_argument("--steps", type=int, help="train this many steps")
    t.add_argument("--train-images", type=int, default=6000, help="training images (features extracted once)")
    t.add_argument("--val-images", type=int, default=1000, help="held-out images for the reported PSNR")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--hidden", type=int, default=128, help="decoder width")
    t.add_argument("--depth", type=int, help="residual conv blocks over the token grid (default 2; stochastic: 4)")
    t.add_argument("--log-every", type=int, default=100)
    t.add_argument("--dtype", choices=PRECISIONS,
                   help="the precision policy's choice for the extraction and the decoder's steps (auto: bf16 where "
                        "native, fp16 with a gradient scaler on CUDA without bf16); default fp32 for --kind pixel "
                        "(comparable across machines), auto for --kind stochastic")
    t.add_argument("--seed", type=int, default=0)
    _add_stochastic_args(t)
    t.set_defaults(run="ijepa.viz.commands:train_decoder_command")


def _add_stochastic_args(t: argparse.ArgumentParser) -> None:
    """``train-decoder``'s options for the decoder's kind, and a stochastic decoder's own."""
    t.add_argument("--kind", default="pixel", choices=KINDS,
                   help="pixel: the deterministic decoder (default); stochastic: a conditional generative decoder "
                        "that draws samples (`viz predict --stochastic-decoder`), see docs/visualisation.md")
    t.add_argument("--process", default="flow", choices=["flow", "ddpm"],
                   help="stochastic: flow matching (default) or DDPM with DDIM sampling (needs ijepa[diffusion])")
    t.add_argument("--pixel-channels", type=int, default=16, help="stochastic: channels at pixel level")
    t.add_argument("--device", default="auto", help="stochastic: cpu, cuda, cuda:1 or auto")
