"""``ijepa push``: a run folder, checkpoint or transformers export uploaded to the Hugging Face Hub as a model repo.

Anything that is not a transformers ``IJepaModel`` folder already is exported to one first (``convert --to hf``,
with its model card, in a temporary folder), then ``huggingface_hub`` creates the repo (an existing one is kept)
and uploads the folder in one commit. An export's card is uploaded naming the repo in its usage example (the
export's own folder is not changed). A token comes from ``--token``, else ``HF_TOKEN`` or ``hf auth login``'s;
``HF_ENDPOINT`` names another Hub (a mirror, or a test's server on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError, HubError, first_line
from ..io import read_json
from .hf import is_hf_config
from .hub import REPO_ID
from .load import convert
from .modelcard import CARD_FILE, with_repo_id

HF_EXTRA = "pip install 'ijepa[hub]'"


def hf_export_folder(src: Any) -> Path | None:
    """``src`` when it is a transformers I-JEPA folder (ours, ``finetune --export-hf``'s, or anyone's)."""
    if not isinstance(src, (str, os.PathLike)):
        return None
    p = Path(src).expanduser()
    cfg = p / "config.json"
    if p.is_dir() and cfg.is_file():
        c = read_json(cfg)
        if is_hf_config(c) and c.get("model_type", "ijepa") == "ijepa" and "architecture" not in c:
            return p
    return None


def _hub_api(token: str | None) -> Any:
    try:
        from huggingface_hub import HfApi, get_token
    except ImportError:
        raise HubError(f"pushing to the Hugging Face Hub needs huggingface_hub: {HF_EXTRA}") from None
    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token: pass --token, set HF_TOKEN, or log in once with `hf auth login`")
    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)


def upload(folder: Path, repo_id: str, *, private: bool = False, token: str | None = None,
           message: str | None = None) -> str:
    """Create ``repo_id`` (kept when it exists) and upload ``folder`` to it in one commit; returns the commit's
    URL."""
    api = _hub_api(token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                 commit_message=message or f"Upload I-JEPA encoder ({folder.name})")
    except Exception as e:  # the Hub's answers (HfHubHTTPError), no network (httpx's errors), a refused card
        raise HubError(f"{repo_id}: {type(e).__name__}: {first_line(e)}") from None
    return str(getattr(info, "commit_url", info))


def _linked_copy(src: Path, dst: Path) -> Path:
    """``dst`` holding ``src``'s files as symbolic links (the weights are not copied), its card left out."""
    for here, _, files in os.walk(src):
        rel = Path(here).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            if rel / name != Path(CARD_FILE):
                (dst / rel / name).symlink_to(Path(here, name).resolve())
    return dst


def push(src: Any, repo_id: str, *, private: bool = False, token: str | None = None, which: str = "target_encoder",
         license: str | None = None, path: str | None = None, message: str | None = None) -> str:
    """Upload ``src`` to the Hub as ``repo_id`` (``owner/name``): a transformers folder as it is, anything else
    ``ijepa.load`` reads exported first (``which``, ``license`` and ``path`` as for ``convert``), its model card
    naming ``repo_id`` (an export's own card too, in what is uploaded: its folder is left as it is). Returns the
    commit's URL."""
    if not REPO_ID.match(repo_id):
        raise ConfigError(f"{repo_id!r} is not a Hub repo id (owner/name)")
    folder = hf_export_folder(src)
    if folder is not None:
        if license is not None:
            raise ConfigError(f"--license: {folder} is an export already; its {CARD_FILE} states its licence "
                              "(export again with `ijepa convert --to hf --license ID`)")
        _hub_api(token)  # no token, no package: one line before anything else
        card = folder / CARD_FILE
        text = card.read_text(encoding="utf-8") if card.is_file() else ""
        if with_repo_id(text, repo_id) == text:  # no card, or one that names no placeholder: as it is
            return upload(folder, repo_id, private=private, token=token, message=message)
        with tempfile.TemporaryDirectory(prefix="ijepa-push-") as tmp:  # the card names the repo; the folder stays
            staged = _linked_copy(folder, Path(tmp) / folder.name)
            (staged / CARD_FILE).write_text(with_repo_id(text, repo_id), encoding="utf-8")
            return upload(staged, repo_id, private=private, token=token, message=message)
    _hub_api(token)
    with tempfile.TemporaryDirectory(prefix="ijepa-push-") as tmp:
        out = convert(src, Path(tmp) / Path(repo_id).name, to="hf", which=which, path=path, license=license)
        card = out / CARD_FILE
        card.write_text(with_repo_id(card.read_text(encoding="utf-8"), repo_id), encoding="utf-8")
        return upload(out, repo_id, private=private, token=token, message=message)


def push_command(args: argparse.Namespace) -> int:
    """``ijepa push SRC REPO_ID``."""
    url = push(args.src, args.repo_id, private=args.private, token=args.token, which=args.which,
               license=args.license, path=args.path, message=args.message)
    print(f"pushed {args.src} to {args.repo_id}: {url}")
    return 0


__all__ = ["hf_export_folder", "push", "push_command", "upload"]
