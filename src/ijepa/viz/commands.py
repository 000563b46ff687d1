"""The ``ijepa viz`` pictures and ``ijepa train-decoder``: parsed arguments in, calls into the viz API, the result
printed. ``viz/cli.py`` defines the arguments; ``ijepa.cli`` imports this module only when one of them runs."""

from __future__ import annotations

import argparse
import json

import torch

from ..data.fashion_mnist import CLASSES
from ..device import resolve_device
from ..interop import load
from ..recipes import native_rung
from . import VizError
from .curves import plot_curves
from .decoder import load_decoder, save_decoder, train_decoder
from .features import ImageSet, feature_figure, load_images, pick_dataset, save_figure
from .masks import draw_masks, mask_batch
from .predict import (
    box_specificity,
    build_gallery,
    draw_predictions,
    load_world_model,
    mask_config_of,
    render_predictions,
    sample_boxes,
)
from .samples import draw_sample_rows, measure_samples, render_samples, train_classifier
from .stochastic import check_fits, load_stochastic_decoder, save_stochastic_decoder, train_stochastic_decoder


def _dataset(args: argparse.Namespace) -> str:
    """--images DIR means a folder; otherwise Fashion-MNIST for 28-px grey models (--root its folder)."""
    return "folder" if getattr(args, "images", None) else "auto"


def masks_command(args: argparse.Namespace) -> int:
    """``ijepa viz masks``: a config's training crops with the blocks its mask sampler draws; with no ``--config``
    the config `ijepa train` would run here (the CPU default's rung for this machine's hardware)."""
    config = args.config
    if config is None:
        rung, why = native_rung()
        config = rung.config
        print(f"no --config: {config}, the CPU default's rung for this machine ({why})")
    mb = mask_batch(config, args.overrides, n=args.n, seed=args.seed)
    fig = draw_masks(mb.images, mb.masks_enc, mb.masks_pred, mb.grid_size, mb.patch_size, ncols=args.ncols,
                     title=mb.title)
    print(f"{mb.title}\nwrote {save_figure(fig, args.out)}")
    return 0


def curves_command(args: argparse.Namespace) -> int:
    """``ijepa viz curves``: a run folder's logs against the training step."""
    print(f"wrote {save_figure(plot_curves(args.run_dir), args.out)}")
    return 0


def features_command(args: argparse.Namespace) -> int:
    """``ijepa viz features``: patch-token PCA maps beside each image."""
    encoder = load(args.model, which=args.which, path=args.path)
    spec = encoder.input_spec
    data = {"dataset": _dataset(args), "root": args.images or args.root, "split": args.split}
    shown = load_images(spec, args.n, seed=args.seed, **data)
    fit = None
    if args.fit:
        try:  # a folder gives what it has, up to --fit
            fit = load_images(spec, args.fit, seed=args.seed + 1, exclude=shown.indices, **data)
        except VizError:
            if pick_dataset(spec, data["dataset"], data["root"]) != "folder":
                raise
            # every image of the folder is shown: the PCA is fit on those alone
    fitted = len(shown.images) + (len(fit.images) if fit is not None else 0)
    title = (f"{getattr(encoder, 'source', args.model)} — patch-token PCA, "
             f"{'per-position mean removed' if args.center == 'position' else 'plain'}, fit on {fitted} images"
             + (" (all there are)" if fitted < args.n + (args.fit or 0) else ""))
    fig, maps = feature_figure(encoder, shown, fit=fit, threshold=args.threshold, upsample=args.upsample,
                               center=args.center, title=title)
    print(title)
    print(f"PC1 explains {100 * maps.explained_pc1:.1f}% of the variance; threshold {maps.threshold:.4g}; "
          f"{100 * maps.foreground.mean():.0f}% of the shown patches are foreground")
    print(f"wrote {save_figure(fig, args.out)}")
    return 0


def predict_command(args: argparse.Namespace) -> int:
    """``ijepa viz predict``: hide a box, predict it, render the prediction (retrieval, a decoder, samples)."""
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
        _predict_samples(args, wm, shown, boxes, decoder, probe, probe_boxes, judge)
    return 0


def train_decoder_command(args: argparse.Namespace) -> int:
    """``ijepa train-decoder``: a pixel decoder (or with ``--kind stochastic`` a generative one) on frozen
    target-encoder features; prints the held-out figures."""
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
        return _train_stochastic(args, encoder, train.images, val.images, mask_config_of(args.model), minutes)
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


def _train_stochastic(args: argparse.Namespace, encoder, train_images, val_images, mask_cfg, minutes: float) -> int:
    """``train-decoder --kind stochastic``: train, save, print the held-out figures."""
    device = resolve_device(args.device)
    print(f"training a stochastic decoder ({args.process}) on {len(train_images)} images' {encoder.source} "
          f"features on {device} ({f'{args.steps} steps' if args.steps else f'{minutes} min'})", flush=True)
    model, stats = train_stochastic_decoder(
        encoder, train_images, val_images=val_images, steps=args.steps, minutes=minutes, batch_size=args.batch_size,
        lr=args.lr, hidden=args.hidden, depth=args.depth if args.depth is not None else 4,
        pixel_channels=args.pixel_channels, process=args.process, mask_cfg=mask_cfg, device=device,
        precision=args.dtype or "auto", seed=args.seed, log=lambda m: print(m, flush=True), log_every=args.log_every)
    path = save_stochastic_decoder(model, args.out, encoder=encoder, source=encoder.source or str(args.model),
                                   stats=stats)
    print(f"{stats.steps} steps in {stats.seconds:.0f} s; one sample from the true tokens: {stats.sample_psnr:.2f} dB "
          f"PSNR (the mean image: {stats.mean_image_psnr:.2f} dB) on {stats.val_images} held-out images\n"
          f"wrote {path}")
    return 0


def _predict_samples(args: argparse.Namespace, wm, shown: ImageSet, boxes, decoder, probe: ImageSet | None,
                     probe_boxes, classifier_set: ImageSet | None) -> None:
    """``viz predict --stochastic-decoder``: the sample picture, and with ``--measure`` the sample figures."""
    sampler, info = load_stochastic_decoder(args.stochastic_decoder)
    check_fits(sampler, info, wm.target_encoder)
    device = str(resolve_device(args.device))
    kw = {"seed": args.seed, "steps": args.sample_steps, "device": device, "precision": args.dtype}
    rows = render_samples(wm, shown.images, boxes, sampler, args.samples, decoder=decoder, **kw)
    title = (f"{args.model} ({wm.source}): {args.samples} samples of what the predictor predicts for the red box\n"
             f"stochastic decoder ({sampler.arch.process}, {args.sample_steps} steps, seed {args.seed}) on the token "
             "grid: true target tokens outside the box, the prediction inside")
    print(f"wrote {save_figure(draw_sample_rows(rows, names=shown.names, title=title), args.out)}")
    if probe is None:
        return
    clf = labels = None
    if classifier_set is not None and _class_labels(probe) is not None:
        print(f"training the judge (a small CNN) on {len(classifier_set.images)} real training images", flush=True)
        clf = train_classifier(classifier_set.images, _class_labels(classifier_set), steps=args.judge_steps,
                               seed=args.seed)
        labels = _class_labels(probe)
    m = measure_samples(wm, probe.images, probe_boxes, sampler, k=max(args.samples, 2), labels=labels,
                        classifier=clf, decoder=decoder, **kw)
    print(f"stochastic decoder over {len(probe.images)} held-out images, {max(args.samples, 2)} samples each:")
    print(json.dumps({g: {k: round(v, 4) for k, v in d.items()} for g, d in m.items()}, indent=2))
    for line in _verdicts(m):
        print(line)


def _class_labels(image_set: ImageSet) -> torch.Tensor | None:
    """Integer labels of a Fashion-MNIST image set (its names are the class names); None for other images."""
    names = image_set.names or []
    if not names or any(n not in CLASSES for n in names):
        return None
    return torch.tensor([CLASSES.index(n) for n in names])


def _verdicts(m: dict[str, dict[str, float]]) -> list[str]:
    """What a stochastic decoder should show, one line each: PASS or FAIL with the figures compared."""
    f, s = m["faithful"], m["stochastic"]
    out = []

    def say(ok: bool, text: str) -> None:
        out.append(f"{'PASS' if ok else 'FAIL'}  {text}")

    if "decoder_true_psnr" in f:
        gap = f["decoder_true_psnr"] - f["true_mean_of_k_psnr"]
        say(gap <= 2.0, f"faithful: mean of the samples on the true tokens {f['true_mean_of_k_psnr']:.2f} dB, "
                        f"deterministic decoder {f['decoder_true_psnr']:.2f} dB (within 2 dB: {gap:.2f})")
    gain = f["true_one_sample_psnr"] - f["mean_image_psnr"]
    say(gain >= 6.0, f"faithful: one sample {f['true_one_sample_psnr']:.2f} dB against the mean image "
                     f"{f['mean_image_psnr']:.2f} dB (>= 6 dB better: {gain:.2f})")
    say(s["pred_in_out_ratio"] >= 5.0, f"stochastic: std across samples in the box {s['pred_std_in_box']:.4f}, "
                                       f"outside {s['pred_std_outside']:.4f} (>= 5x: {s['pred_in_out_ratio']:.1f}x)")
    say(s["pred_std_in_box"] > s["true_std_in_box"],
        f"stochastic: in-box std for the prediction {s['pred_std_in_box']:.4f} > for the true tokens "
        f"{s['true_std_in_box']:.4f}")
    if "semantic" in m:
        e = m["semantic"]
        say(e["acc_completion"] > e["acc_mean_fill"], f"semantic: completions labelled right "
            f"{e['acc_completion']:.1%}, context + mean fill {e['acc_mean_fill']:.1%}")
        say(e["acc_completion"] > e["acc_swap"], f"semantic: completions {e['acc_completion']:.1%} against "
            f"another image's prediction in the box {e['acc_swap']:.1%}")
        say(e["partner_prob_swap"] > e["partner_prob_completion"], f"semantic (swap): the partner's class "
            f"probability {e['partner_prob_swap']:.3f} with its prediction in the box, "
            f"{e['partner_prob_completion']:.3f} with the own")
    d = m["diversity"]
    out.append(f"diversity: mean pairwise L2 in the box {d['pred_pairwise_l2_in_box']:.3f} (prediction), "
               f"{d['true_pairwise_l2_in_box']:.3f} (true tokens)")
    return out
