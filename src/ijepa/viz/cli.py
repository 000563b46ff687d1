"""The ``viz`` and ``train-decoder`` commands: argument parsing and one call each into the viz API.

``register(subparsers)`` adds them to the ``ijepa`` command. Nothing heavy is imported until a command runs,
so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from ..config import PRECISIONS
from . import VizError, stochastic_cli

MASKS_EPILOG = """\
examples:
  ijepa viz masks --out masks.png                              # the CPU default (Fashion-MNIST)
  ijepa viz masks -c runs/recipe/e2/config.yaml --out m.png    # a run's own config
  ijepa viz masks mask.num_pred_masks=2 mask.min_keep=10 --out m.png
"""


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Print VizError as one line (the main command prints its own user errors the same way)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except VizError as e:
            print(f"ijepa: error: {e}", file=sys.stderr)
            return 1

    return run


def _dataset(args: argparse.Namespace) -> str:
    """--images DIR means a folder; otherwise Fashion-MNIST for 28-px grey models (--root its folder)."""
    return "folder" if getattr(args, "images", None) else "auto"


def _box(text: str):
    from .predict import parse_box

    try:
        return parse_box(text)
    except VizError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


# ------------------------------------------------------------------------------------------------- commands


def cmd_masks(args: argparse.Namespace) -> int:
    from .features import save_figure
    from .masks import draw_masks, mask_batch

    mb = mask_batch(args.config, args.overrides, n=args.n, seed=args.seed)
    fig = draw_masks(mb.images, mb.masks_enc, mb.masks_pred, mb.grid_size, mb.patch_size, ncols=args.ncols,
                     title=mb.title)
    print(f"{mb.title}\nwrote {save_figure(fig, args.out)}")
    return 0


def cmd_curves(args: argparse.Namespace) -> int:
    from .curves import plot_curves
    from .features import save_figure

    print(f"wrote {save_figure(plot_curves(args.run_dir), args.out)}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from ..interop import load
    from .features import feature_figure, load_images, save_figure

    encoder = load(args.model, which=args.which, path=args.path)
    spec = encoder.input_spec
    data = {"dataset": _dataset(args), "root": args.images or args.root, "split": args.split}
    shown = load_images(spec, args.n, seed=args.seed, **data)
    fit = None
    if args.fit:
        fit = load_images(spec, args.fit, seed=args.seed + 1, exclude=shown.indices, **data)
    title = (f"{getattr(encoder, 'source', args.model)} — patch-token PCA, "
             f"{'per-position mean removed' if args.center == 'position' else 'plain'}, fit on "
             f"{args.n + (args.fit or 0)} images")
    fig, maps = feature_figure(encoder, shown, fit=fit, threshold=args.threshold, upsample=args.upsample,
                               center=args.center, title=title)
    print(f"PC1 explains {100 * maps.explained_pc1:.1f}% of the variance; threshold {maps.threshold:.4g}; "
          f"{100 * maps.foreground.mean():.0f}% of the shown patches are foreground")
    print(f"wrote {save_figure(fig, args.out)}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .decoder import load_decoder
    from .features import load_images, save_figure
    from .predict import (
        box_specificity,
        build_gallery,
        draw_predictions,
        load_world_model,
        mask_config_of,
        render_predictions,
        sample_boxes,
    )

    wm = load_world_model(args.model, args.path)
    spec = wm.target_encoder.input_spec
    root, dataset = args.images or args.root, _dataset(args)
    shown = load_images(spec, args.n, dataset=dataset, root=root, split=args.split, seed=args.seed)
    # The gallery comes from the training split (Fashion-MNIST) and never holds a shown image.
    same_pool = args.images is not None or args.split == "train"
    gal_set = load_images(spec, args.gallery, dataset=dataset, root=root, split="train", seed=args.seed + 1,
                          exclude=shown.indices if same_pool else ())
    gallery = build_gallery(wm.target_encoder, gal_set.images, gal_set.indices)
    decoder = info = None
    if args.decoder:
        decoder, info = load_decoder(args.decoder)
    mask_cfg = mask_config_of(args.model)
    boxes = [args.box] * args.n if args.box else sample_boxes(wm.grid_size, args.n, args.seed, mask_cfg)
    rendered = render_predictions(wm, shown.images, boxes, gallery=gallery, decoder=decoder,
                                  same_position=args.same_position)
    title = (f"{args.model} ({wm.source}): context encoder + predictor fill the red box\n"
             f"retrieval: nearest target-encoder patches of {len(gal_set.images)} training images")
    st = (info or {}).get("stats") or {}
    if st:
        title += (f"; decoder: {st['val_psnr']:.1f} dB PSNR on held-out images "
                  f"(mean image {st['mean_image_psnr']:.1f} dB)")
    if not args.stochastic_decoder:  # with one, --out is the picture of samples (below)
        print(f"wrote {save_figure(draw_predictions(rendered, names=shown.names, title=title), args.out)}")
    probe = probe_boxes = None
    if args.measure:
        probe = load_images(spec, args.measure, dataset=dataset, root=root, split=args.split, seed=args.seed + 2,
                            exclude=gal_set.indices if same_pool else ())
        probe_boxes = ([args.box] * args.measure if args.box
                       else sample_boxes(wm.grid_size, args.measure, args.seed + 2, mask_cfg))
        m = box_specificity(wm, probe.images, probe_boxes, decoder=decoder, gallery=gallery)
        print(f"box specificity over {args.measure} images (own prediction vs another image's, same box):")
        print(json.dumps({k: round(v, 5) for k, v in m.items()}, indent=2))
    if args.stochastic_decoder:
        judge = None  # the semantic test's classifier trains on real training images (labelled datasets only)
        if probe is not None and dataset != "folder":
            judge = load_images(spec, args.judge_images, dataset=dataset, root=root, split="train", seed=args.seed + 3)
        stochastic_cli.predict(args, wm, shown, boxes, decoder, probe, probe_boxes, judge)
    return 0


def cmd_train_decoder(args: argparse.Namespace) -> int:
    from ..interop import load
    from .decoder import save_decoder, train_decoder
    from .features import load_images

    encoder = load(args.model, which=args.which, path=args.path)
    spec = encoder.input_spec
    root, dataset = args.images or args.root, _dataset(args)
    folder = args.images is not None
    train = load_images(spec, args.train_images, dataset=dataset, root=root, split="train", seed=args.seed)
    # held out: the test split, or for a folder the images not drawn for training
    val = load_images(spec, args.val_images, dataset=dataset, root=root, split="train" if folder else "test",
                      seed=args.seed + 1, exclude=train.indices if folder else ())
    minutes = args.minutes if args.minutes is not None or args.steps is not None else 3.0
    if args.kind == "stochastic":
        from .predict import mask_config_of

        return stochastic_cli.train(args, encoder, train.images, val.images, mask_config_of(args.model), minutes)
    print(f"training a pixel decoder on {len(train.images)} images' {getattr(encoder, 'source', args.model)} "
          f"features ({f'{args.steps} steps' if args.steps else f'{minutes} min'})", flush=True)
    decoder, stats = train_decoder(encoder, train.images, val_images=val.images, steps=args.steps, minutes=minutes,
                                   batch_size=args.batch_size, lr=args.lr, hidden=args.hidden,
                                   depth=args.depth if args.depth is not None else 2,
                                   seed=args.seed, log=lambda m: print(m, flush=True), log_every=args.log_every,
                                   dtype=args.dtype or "fp32")
    path = save_decoder(decoder, args.out, input_spec=spec, source=str(getattr(encoder, "source", args.model)),
                        stats=stats)
    print(f"{stats.steps} steps ({stats.precision}) in {stats.seconds:.0f} s; held-out PSNR {stats.val_psnr:.2f} dB "
          f"(the mean image: {stats.mean_image_psnr:.2f} dB) on {stats.val_images} images\nwrote {path}")
    return 0


# ------------------------------------------------------------------------------------------------- parsers


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
    vs = v.add_subparsers(dest="viz_command", metavar="PICTURE")
    v.set_defaults(func=lambda _args: v.print_help() or 0)

    m = vs.add_parser("masks", help="training crops with the context and target blocks the sampler draws",
                      description="Draw a config's masks over its training crops, straight from the real crop "
                                  "transform and MultiBlockMaskSampler: context tinted blue, each target block "
                                  "in its own colour (striped where blocks overlap), dropped patches grey.",
                      epilog=MASKS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--config", "-c", help="YAML file (e.g. a run's config.yaml) or shipped config name")
    m.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. mask.min_keep=10")
    m.add_argument("--out", "-o", required=True, help="PNG to write")
    m.add_argument("--n", type=int, default=8, help="images (default 8)")
    m.add_argument("--ncols", type=int, default=4, help="images per row")
    m.add_argument("--seed", type=int, default=0, help="fixes the images, crops and masks")
    m.set_defaults(func=_guard(cmd_masks))

    c = vs.add_parser("curves", help="loss, lr, wd, EMA momentum, RankMe, target std, k-NN against step",
                      description="Plot a run folder's log.csv and monitor.csv against the training step.")
    c.add_argument("run_dir", help="a run folder (the --out of `ijepa train`)")
    c.add_argument("--out", "-o", required=True, help="PNG to write")
    c.set_defaults(func=_guard(cmd_curves))

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
    f.set_defaults(func=_guard(cmd_features))

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
    stochastic_cli.add_predict_args(p)
    p.set_defaults(func=_guard(cmd_predict))

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
    stochastic_cli.add_train_args(t)
    t.set_defaults(func=_guard(cmd_train_decoder))
