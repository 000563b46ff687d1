"""Models on the Hugging Face Hub by repo id: ``ijepa.load("facebook/ijepa_vith14_1k")``.

The id resolves through ``huggingface_hub`` (the optional extra ``pip install 'ijepa[hub]'``; transformers
installs it too): its cache (``HF_HOME`` / ``HF_HUB_CACHE``), ``HF_HUB_OFFLINE=1`` (only what the cache holds,
never the network), ``revision=`` (a branch, tag or commit) and its progress bars. Only what ``load`` reads is
fetched: ``config.json``, the preprocessor config and the safetensors weights (the pickled ``pytorch_model.bin``
only for a repo that has no safetensors). The folder it gives is read as any transformers ``IJepaModel`` folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, CheckpointNotFoundError, first_line

# owner/name, as the Hub spells repo ids (letters, digits, '-', '_', '.'; no leading '.' or '-')
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
FILES = ["config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json"]
PICKLED = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]


def is_repo_id(src: Any) -> bool:
    """A string shaped like ``owner/name`` that is not a path on this machine (a local folder of that name wins)."""
    return isinstance(src, str) and bool(REPO_ID.match(src)) and not Path(src).expanduser().exists()


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The local folder of ``repo_id`` at ``revision`` (default: the main branch), downloaded into the Hub cache
    the first time and read from it afterwards."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise CheckpointError(f"{repo_id!r} looks like a Hugging Face Hub repo id; reading it needs huggingface_hub: "
                              "pip install 'ijepa[hub]'") from None
    at = f"{repo_id}@{revision or 'main'}"
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=FILES))
        if not _has_weights(folder):
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=FILES + PICKLED))
    except LocalEntryNotFoundError:
        raise CheckpointNotFoundError(f"{at} is not in the Hugging Face cache and downloads are off "
                                      "(HF_HUB_OFFLINE=1, or no network): run once with a network") from None
    except (HfHubHTTPError, ValueError, OSError) as e:
        raise CheckpointNotFoundError(f"{at}: {type(e).__name__}: {first_line(e)}") from None
    if not ((folder / "config.json").is_file() and _has_weights(folder)):
        raise CheckpointNotFoundError(f"{at} ({folder}) has no config.json with weights: not a transformers model")
    return folder


__all__ = ["is_repo_id", "snapshot"]
