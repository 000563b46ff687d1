"""Model cards: the ``README.md`` a transformers export carries, as the Hugging Face Hub reads it.

YAML front matter (``library_name``, ``pipeline_tag``, ``license``, ``tags``), then what the weights are (which
encoder, the architecture, the input they expect), how they were trained and how they scored. What a card says is
read from what there is: the encoder and its ``source``; for the reference's published weights, the registry;
for a run of ours, the run folder (``config.yaml``, ``summary.json``, ``log.csv`` and the ``eval_*.json`` files
``ijepa eval`` writes beside the checkpoint); for a fine-tuned classifier, its results.

Licence: the reference's published weights (and anything made from them) are CC-BY-NC 4.0, and their cards say so
whatever is asked; other weights carry the licence the caller names (``--license``), else ``unknown``: who trained
them decides, and a card does not guess.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..errors import ConfigError
from ..models.vit import VIT_SIZES
from . import registry
from .weights import declared_spec

CARD_FILE = "README.md"
REFERENCE_LICENSE = "cc-by-nc-4.0"
DEFAULT_LICENSE = "unknown"
# the Hub's licence ids are lower-case words joined by '-', '.' or '+' (apache-2.0, cc-by-nc-4.0, openrail++)
LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
TAGS = ["ijepa", "i-jepa", "vision", "vit", "self-supervised", "image-feature-extraction"]
# what the source of weights that come from the reference's published checkpoints says (reference.py, hf.py)
REFERENCE_MARKERS = ("reference .pth.tar", "as converted from the reference's")
# where the usage example names the model; `ijepa push` puts the repo id there
MODEL_PLACEHOLDER = "path/to/this/folder"
CITATION = """@inproceedings{assran2023ijepa,
  title     = {Self-Supervised Learning from Images with a Joint-Embedding Predictive Architecture},
  author    = {Assran, Mahmoud and Duval, Quentin and Misra, Ishan and Bojanowski, Piotr and Vincent, Pascal and
               Rabbat, Michael and LeCun, Yann and Ballas, Nicolas},
  booktitle = {CVPR},
  year      = {2023}
}"""


# ------------------------------------------------------------------------------------------ what the weights are

def published_model(source: str, src: Any = None) -> registry.PublishedModel | None:
    """The registry's entry the weights are, when their source or file name says."""
    found = registry.find(source.split(":", 1)[0].strip())
    if found is None and isinstance(src, (str, os.PathLike)):
        found = registry.find(Path(src).name)
    return found


def from_reference(source: str, src: Any = None) -> bool:
    """Whether the weights are (or derive from) the reference's published checkpoints."""
    return any(m in source for m in REFERENCE_MARKERS) or published_model(source, src) is not None


def choose_license(asked: str | None, reference: bool) -> str:
    """The licence a card states: the reference's for its weights, else ``asked``, else :data:`DEFAULT_LICENSE`."""
    if asked is not None and not LICENSE_ID.match(asked):
        raise ConfigError(f"--license {asked!r}: give a Hub licence id (apache-2.0, mit, cc-by-4.0, ...)")
    if reference:
        if asked not in (None, REFERENCE_LICENSE):
            raise ConfigError(f"--license {asked}: these weights come from the reference's published checkpoints, "
                              f"which are released under CC-BY-NC 4.0; their export carries {REFERENCE_LICENSE}")
        return REFERENCE_LICENSE
    return asked or DEFAULT_LICENSE


def encoder_role(source: str) -> str:
    if "target_encoder" in source:
        return "target encoder (the EMA of the context encoder; what the I-JEPA paper evaluates)"
    if re.search(r": encoder\b", source) or "context encoder" in source:
        return "context encoder (trained by gradient; what the published transformers and timm ports carry)"
    return "the encoder its source holds"


def size_name(encoder: Any) -> str:
    for name, (dim, depth, heads, _) in VIT_SIZES.items():
        if (dim, depth, heads) == (encoder.embed_dim, encoder.depth, encoder.num_heads):
            return name
    return "custom ViT"


def weights_rows(encoder: Any, classifier: bool = False) -> list[tuple[str, str]]:
    spec = declared_spec(encoder)
    h, w = spec.image_size
    hidden = encoder.blocks[0].mlp.fc1.out_features if encoder.depth else int(encoder.embed_dim * encoder.mlp_ratio)
    params = sum(p.numel() for p in encoder.parameters())
    grid = (h // encoder.patch_size, w // encoder.patch_size)
    return [
        ("encoder", ("fine-tuned end to end from the " if classifier else "")
         + encoder_role(getattr(encoder, "source", "") or "")),
        ("architecture", f"{size_name(encoder)}: width {encoder.embed_dim}, depth {encoder.depth}, "
                         f"{encoder.num_heads} heads, MLP {hidden}, {params / 1e6:.1f} M parameters; no class token "
                         f"(features: the patch tokens, {grid[0]} x {grid[1]})"),
        ("input", f"{h} x {w} pixels, {spec.in_chans} channel{'s' if spec.in_chans > 1 else ''}, patch "
                  f"{encoder.patch_size}; normalised with mean {_nums(spec.mean)} and std {_nums(spec.std)} "
                  "(preprocessor_config.json)"),
        ("source", f"`{getattr(encoder, 'source', '') or 'ijepa export'}`"),
    ]


def _nums(values: Any) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


# ------------------------------------------------------------------------------------------ how they were trained

def run_folder_of(src: Any) -> Path | None:
    """The training run folder ``src`` is, or is a checkpoint of (it holds ``config.yaml`` and ``log.csv``)."""
    if not isinstance(src, (str, os.PathLike)):
        return None
    p = Path(src).expanduser()
    for d in (p, p.parent):
        if d.is_dir() and (d / "config.yaml").is_file() and (d / "log.csv").is_file():
            return d
    return None


def _read(path: Path, how: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if how == "json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError):
        return None


def last_logged(run: Path) -> dict[str, str] | None:
    """``log.csv``'s last whole row."""
    try:
        with open(run / "log.csv", newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and r.get("loss")]
    except OSError:
        return None
    return rows[-1] if rows else None


def hardware(summary: Mapping[str, Any]) -> str:
    device, n = str(summary.get("device", "")), int(summary.get("world_size") or 1)
    kind = "CUDA GPU" if device.startswith("cuda") else "Apple GPU (MPS)" if device.startswith("mps") else "CPU"
    return f"{n} x {kind}" + ("s" if n > 1 and kind != "CPU" else "")


def run_training_rows(run: Path) -> list[tuple[str, str]]:
    """The training facts a run folder holds."""
    cfg, summary = _read(run / "config.yaml", "yaml"), _read(run / "summary.json", "json")
    cfg, summary = (x if isinstance(x, dict) else {} for x in (cfg, summary))
    meta, data, opt = cfg.get("meta", {}), cfg.get("data", {}), cfg.get("optimization", {})
    loss = cfg.get("loss", {})
    rows = [("recipe", f"I-JEPA pretraining with ijepa {__version__} (run folder `{run.name}`)")]
    if data:
        folder = data.get("image_folder") or Path(str(data.get("root_path") or "")).name
        rows.append(("data", f"{data.get('dataset')}{f' ({folder})' if folder else ''}, {data.get('crop_size')} px "
                             f"crops, batch {data.get('batch_size')} per process"))
    if opt:
        length = f"{opt['total_steps']} steps" if opt.get("total_steps") else f"{opt.get('epochs')} epochs"
        rows.append(("optimisation", f"{length}, AdamW lr {opt.get('lr')} (warm-up {opt.get('warmup')} epochs, "
                                     f"cosine to {opt.get('final_lr')}), weight decay {opt.get('weight_decay')} -> "
                                     f"{opt.get('final_weight_decay')}, EMA {opt.get('ema')}"
                                     + (f", time limit {opt['minutes']} min" if opt.get("minutes") else "")))
    extra = [f"{k} {v}" for k, v in loss.items() if k.endswith("_weight") and v]
    if meta:
        rows.append(("model", f"{meta.get('model_name')}, predictor {meta.get('pred_depth')} blocks x "
                              f"{meta.get('pred_emb_dim')}; precision {meta.get('precision')}; seed "
                              f"{meta.get('seed')}; loss: the paper's" + (f" + {', '.join(extra)}" if extra else "")))
    if summary:
        done = ("complete" if summary.get("complete") else f"stopped: {summary['stopped']}" if summary.get("stopped")
                else f"stopped by optimization.max_steps, of {summary.get('planned_steps')} planned")
        rows.append(("trained", f"{summary.get('steps')} steps ({float(summary.get('epochs') or 0):.2f} epochs, "
                                f"{done}) in {float(summary.get('wall_minutes') or summary.get('minutes') or 0):.1f} "
                                f"min on {hardware(summary)}, {summary.get('precision')}"))
        checks = [f"{k} {float(summary[k]):.4g}" for k in ("final_loss", "rankme", "knn", "target_std")
                  if isinstance(summary.get(k), (int, float))]
        if checks:
            note = " (knn: online k-NN accuracy)" if "knn" in summary else ""
            rows.append(("at the end", ", ".join(checks) + note))
    elif (row := last_logged(run)) is not None:
        rows.append(("trained", f"{int(row['step']) + 1} steps logged so far (no summary.json: the run had not "
                                f"ended); last loss {row['loss']}"))
    return rows


def reference_training_rows(published: registry.PublishedModel | None) -> list[tuple[str, str]]:
    rows = [("recipe", "the I-JEPA authors' (facebookresearch/ijepa), as published with the paper")]
    if published is not None:
        rows.append(("data", f"{published.data}, {published.epochs} epochs, {published.resolution} px"))
        rows.append(("checkpoint", f"`{published.filename}` (`ijepa models`: {published.name})"))
    return rows


# ------------------------------------------------------------------------------------------ how they scored

def eval_rows(run: Path) -> list[str]:
    """Table rows of the ``eval_*.json`` files ``ijepa eval`` wrote in the run folder."""
    rows = []
    for f in sorted(run.glob("eval_*.json")):
        res = _read(f, "json")
        if not isinstance(res, dict) or not isinstance(res.get("models"), dict):
            continue
        models = res["models"]
        for protocol, result in (models.get("pretrained") or {}).items():
            if protocol == "source" or not isinstance(result, dict):
                continue
            base = {name: m.get(protocol) for name, m in models.items() if name != "pretrained"}
            for label, score, others in _scores(protocol, result, base):
                rows.append(f"| {label} | {res.get('dataset')} ({res.get('pooling', 'mean')} pooling) | {score} | "
                            f"{others or '-'} | `{f.name}` |")
    return rows


def _scores(protocol: str, result: dict, base: dict[str, Any]) -> list[tuple[str, str, str]]:
    def pct(r: Any, shot: str | None = None) -> str | None:
        if not isinstance(r, dict):
            return None
        if shot is not None:
            v = (r.get("shots") or {}).get(shot)
            return f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}%" if isinstance(v, dict) else None
        return f"{100 * r['accuracy']:.2f}%" if isinstance(r.get("accuracy"), (int, float)) else None

    shots = list((result.get("shots") or {}).keys()) or [None]
    out = []
    for shot in shots:
        score = pct(result, shot)
        if score is None:
            continue
        others = ", ".join(f"{name} {p}" for name, r in base.items() if (p := pct(r, shot)) is not None)
        out.append((protocol if shot is None else f"{protocol} {shot}-shot", score, others))
    return out


# ------------------------------------------------------------------------------------------ the card

def front_matter(license: str, classifier: bool) -> str:
    meta = {"library_name": "transformers",
            "pipeline_tag": "image-classification" if classifier else "image-feature-extraction",
            "license": license,
            "tags": TAGS + (["image-classification", "fine-tuned"] if classifier else [])}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _table(rows: list[tuple[str, str]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v.replace('|', '/')} |" for k, v in rows), ""]


def usage(classifier: bool, in_chans: int) -> list[str]:
    cls, out = (("IJepaForImageClassification", "logits = model(**inputs).logits") if classifier else
                ("IJepaModel", "features = model(**inputs).last_hidden_state.mean(dim=1)  # mean-pooled patch tokens"))
    return ["## Use", "", "```python", "from PIL import Image", f"from transformers import AutoImageProcessor, {cls}",
            "", f'processor = AutoImageProcessor.from_pretrained("{MODEL_PLACEHOLDER}")',
            f'model = {cls}.from_pretrained("{MODEL_PLACEHOLDER}").eval()',
            f'inputs = processor(Image.open("image.jpg").convert("{"L" if in_chans == 1 else "RGB"}"), '
            'return_tensors="pt")', out, "```", "",
            f"`ijepa.load(\"{MODEL_PLACEHOLDER}\")` reads it too (`pip install ijepa`).", ""]


def model_card(encoder: Any, *, src: Any = None, license: str | None = None,
               classifier: Mapping[str, Any] | None = None) -> str:
    """The ``README.md`` of a transformers export of ``encoder``, read from ``src`` (what it was loaded from: a run
    folder or checkpoint adds the run's training and evaluations) and, for a fine-tuned classifier, its
    ``classifier`` results (``ijepa finetune``'s metrics). ``license``: see :func:`choose_license`."""
    source = getattr(encoder, "source", "") or ""
    published = published_model(source, src)
    reference = from_reference(source, src)
    lic = choose_license(license, reference)
    run = run_folder_of(src)
    title = (f"I-JEPA {published.name}" if published else
             f"I-JEPA {size_name(encoder)}" + (f" ({run.name})" if run else ""))
    lines = [front_matter(lic, classifier is not None), f"# {title}{' fine-tuned classifier' if classifier else ''}",
             "", "An I-JEPA (Assran et al., CVPR 2023) vision transformer encoder"
             + (" with a linear classification head on its mean-pooled patch tokens" if classifier else "")
             + f", exported by ijepa {__version__} as a transformers "
             f"`{'IJepaForImageClassification' if classifier is not None else 'IJepaModel'}` folder.", "",
             "## Weights", "", *_table(weights_rows(encoder, classifier is not None))]
    lines += usage(classifier is not None, encoder.in_chans)
    training = reference_training_rows(published) if reference else run_training_rows(run) if run else []
    lines += ["## Training", ""] + (_table(training) if training else
                                    ["Not recorded: the weights were not exported from a run folder.", ""])
    if classifier is not None:
        tuned = classifier_rows(classifier)
        lines += ["## Fine-tuning", ""] + (_table(tuned) if tuned else ["Not recorded.", ""])
    evals = eval_rows(run) if run else []
    if evals:
        lines += ["## Evaluation", "", "The pretrained encoder's frozen features (`ijepa eval`, in the run folder)"
                  + (", before fine-tuning" if classifier is not None else "") + "; accuracy on the test split:", "",
                  "| protocol | data | accuracy | baselines | file |", "|---|---|---|---|---|", *evals, ""]
    lines += ["## Licence", "", license_text(lic, reference), "", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def classifier_rows(res: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What ``ijepa finetune``'s results say (each row only where they say it)."""
    history, rows = res.get("history") or [], []
    if res.get("dataset"):
        rows.append(("data", f"{res['dataset']} ({res.get('split')}): {res.get('n_train')} training, "
                             f"{res.get('n_val')} validation images, {len(res.get('classes') or [])} classes"))
    if history:
        rows.append(("schedule", f"{len(history)} epoch{'s' if len(history) > 1 else ''}, end to end "
                                 "(`ijepa finetune`)"))
    if isinstance(res.get("best_val_top1"), (int, float)):
        rows.append(("validation top-1", f"{100 * res['final_val_top1']:.2f}% at the end, best "
                                         f"{100 * res['best_val_top1']:.2f}% (epoch {res.get('best_epoch')})"))
    return rows


def license_text(lic: str, reference: bool) -> str:
    if reference:
        return ("CC-BY-NC 4.0, as the reference's published weights these come from (facebookresearch/ijepa): "
                "non-commercial use, with attribution.")
    if lic == DEFAULT_LICENSE:
        return ("Not stated: whoever trained these weights decides their licence (the data they were trained on "
                "may restrict it). `ijepa convert --to hf --license ID` and `ijepa push --license ID` state one.")
    return f"`{lic}`, as stated by whoever exported these weights."


def with_repo_id(card: str, repo_id: str) -> str:
    """The card with its usage example naming ``repo_id`` (what ``ijepa push`` uploads)."""
    return card.replace(MODEL_PLACEHOLDER, repo_id)


def read_front_matter(card: str) -> dict[str, Any]:
    """The YAML front matter of a card (``{}`` without one)."""
    m = re.match(r"^---\n(.*?)\n---\n", card, flags=re.DOTALL)
    meta = yaml.safe_load(m.group(1)) if m else None
    return meta if isinstance(meta, dict) else {}


__all__ = ["CARD_FILE", "DEFAULT_LICENSE", "REFERENCE_LICENSE", "choose_license", "from_reference", "model_card",
           "read_front_matter", "run_folder_of", "with_repo_id"]
