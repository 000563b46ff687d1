"""The stochastic decoder's part of the ``train-decoder`` and ``viz predict`` commands: its options and what they
run. ``viz/cli.py`` adds the options and hands over when they are given; nothing heavy is imported here until a
command runs.
"""

from __future__ import annotations

import argparse
import json

KINDS = ("pixel", "stochastic")


def add_train_args(t: argparse.ArgumentParser) -> None:
    t.add_argument("--kind", default="pixel", choices=KINDS,
                   help="pixel: the deterministic decoder (default); stochastic: a conditional generative decoder "
                        "that draws samples (`viz predict --stochastic-decoder`), see docs/visualisation.md")
    t.add_argument("--process", default="flow", choices=["flow", "ddpm"],
                   help="stochastic: flow matching (default) or DDPM with DDIM sampling (needs ijepa[diffusion])")
    t.add_argument("--pixel-channels", type=int, default=16, help="stochastic: channels at pixel level")
    t.add_argument("--device", default="auto", help="stochastic: cpu, cuda, cuda:1 or auto")


def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stochastic-decoder", metavar="FILE",
                   help="a decoder from `ijepa train-decoder --kind stochastic`: the picture shows --samples samples "
                        "of each prediction, and --measure adds the sample figures")
    p.add_argument("--samples", type=int, default=4, help="samples per box with --stochastic-decoder (default 4)")
    p.add_argument("--sample-steps", type=int, default=24, help="sampling steps per sample (default 24)")
    p.add_argument("--device", default="auto", help="where the samples are drawn: cpu, cuda or auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="the precision policy's choice for the samples (auto: bf16 where native)")


def train(args: argparse.Namespace, encoder, train_images, val_images, mask_cfg, minutes: float) -> int:
    """``train-decoder --kind stochastic``: train, save, print the held-out figures."""
    from ..device import resolve_device
    from .stochastic import save_stochastic_decoder, train_stochastic_decoder

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


def predict(args: argparse.Namespace, wm, shown, boxes, decoder, probe, probe_boxes, classifier_set) -> None:
    """``viz predict --stochastic-decoder``: the sample picture, and with ``--measure`` the sample figures."""
    from ..device import resolve_device
    from .features import save_figure
    from .samples import draw_sample_rows, measure_samples, render_samples, train_classifier
    from .stochastic import check_fits, load_stochastic_decoder

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
    if classifier_set is not None and class_labels(probe) is not None:
        print(f"training the judge (a small CNN) on {len(classifier_set.images)} real training images", flush=True)
        clf = train_classifier(classifier_set.images, class_labels(classifier_set), steps=args.judge_steps,
                               seed=args.seed)
        labels = class_labels(probe)
    m = measure_samples(wm, probe.images, probe_boxes, sampler, k=max(args.samples, 2), labels=labels,
                        classifier=clf, decoder=decoder, **kw)
    print(f"stochastic decoder over {len(probe.images)} held-out images, {max(args.samples, 2)} samples each:")
    print(json.dumps({g: {k: round(v, 4) for k, v in d.items()} for g, d in m.items()}, indent=2))
    for line in verdicts(m):
        print(line)


def class_labels(image_set):
    """Integer labels of a Fashion-MNIST image set (its names are the class names); None for other images."""
    import torch

    from ..data.fashion_mnist import CLASSES

    names = image_set.names or []
    if not names or any(n not in CLASSES for n in names):
        return None
    return torch.tensor([CLASSES.index(n) for n in names])


def verdicts(m: dict[str, dict[str, float]]) -> list[str]:
    """The issue's thresholds, one line each: PASS or FAIL with the figures compared."""
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
