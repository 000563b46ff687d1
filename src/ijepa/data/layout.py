"""How a folder of images is read, in the words every command's ``--help`` uses: one home for the convention that
``train``, ``extract``, ``eval``, ``finetune`` and ``shards`` share (:mod:`ijepa.data.sources` applies it).

- ``imagefolder``: class sub-folders (ImageNet layout, ``ROOT/<class>/**/<image>``), labelled by class.
- ``folder``: every image under the root, unlabelled.
- Either may have split folders: ``ROOT/train``, ``ROOT/val`` (or ``ROOT/test``). Then every command reads one
  split at a time: ``train`` reads ``train/``; ``eval`` and ``finetune`` fit on ``train/`` and test on ``val/``
  (else ``test/``); ``extract`` and ``shards`` read the split ``--split`` names and, without it, stop and ask,
  since their output is the features (or shards) of one split and a guess would be silent. A root without split
  folders is one split: read whole.
- Links to image files are read; links to directories only with ``follow_symlinks``, and each real directory at
  most once.

Only the standard library here: ``ijepa --help`` imports it without torch.
"""

from __future__ import annotations

__all__ = ["FOLDER_KINDS", "FOLLOW_HELP", "LABELLED_KIND", "SPLITS", "SPLIT_FOLDERS", "UNLABELLED_KIND",
           "split_help"]

SPLITS = ("train", "val", "test")

LABELLED_KIND = "imagefolder: class sub-folders (ImageNet layout, ROOT/<class>/**/<image>), labelled by class"
UNLABELLED_KIND = "folder: every image under ROOT, unlabelled"
FOLDER_KINDS = f"{LABELLED_KIND}; {UNLABELLED_KIND}"
SPLIT_FOLDERS = ("A ROOT with split folders (train/, val/, test/) is read one split at a time; a ROOT without them "
                 "is one split")
FOLLOW_HELP = ("also read folders reached through links to directories (each real directory once, never one of "
               "ROOT's own again); links to image files are always read")


def split_help(default: str) -> str:
    """The ``--split`` help of a command: the convention, then what the command does without ``--split``."""
    return f"read ROOT/<split>. {SPLIT_FOLDERS}. Without --split: {default}"
