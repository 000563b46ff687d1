"""One family for every error a user is meant to read: the CLI prints any ``IJepaError`` as one line
(``ijepa: <kind>: <message>``) and needs no list of names. Modules subclass these; nothing else is caught."""

from __future__ import annotations

import re


class IJepaError(Exception):
    """Base of every error this package raises on purpose. ``kind`` is the word the CLI prints before it,
    ``exit_code`` the status it exits with."""

    kind = "error"
    exit_code = 1


class ConfigError(IJepaError, ValueError):
    """A configuration problem, naming the key."""

    kind = "config error"
    exit_code = 2  # argparse's status for a bad command line: nothing was started


class DataError(IJepaError, ValueError):
    """A dataset that cannot be used: a missing path, no readable images, a bad shard."""

    kind = "data error"


class DatasetNotFoundError(DataError, FileNotFoundError):
    kind = "data error"


class OutputExistsError(IJepaError, FileExistsError):
    """An output folder already holds what a command would write there, and overwriting was not asked for."""

    kind = "output exists"


class CheckpointError(IJepaError, ValueError):
    """A weights file that is missing, unreadable, unsafe to unpickle or does not fit the model."""

    kind = "checkpoint error"


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The path does not exist (also a ``FileNotFoundError``)."""


class CheckpointReadError(CheckpointError):
    """The file exists but cannot be read: truncated, corrupt, or not a checkpoint at all."""


class UnsafeCheckpointError(CheckpointReadError):
    """A pickle that holds objects other than tensors and plain containers: refused, never run."""


class UnknownFormatError(CheckpointError):
    """Readable, but none of the layouts we know (reference, transformers, timm, ours)."""


class CheckpointMismatchError(CheckpointError):
    """The weights do not fit the model: names the missing, unexpected and mis-shaped keys (first few of each,
    with counts). Raised instead of any partial load."""

    def __init__(self, what: str, target: str, missing: list[str], unexpected: list[str],
                 mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {preview(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {preview(unexpected)}")
        if mismatched:
            shapes = [f"{k} file {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched]
            parts.append(f"{len(mismatched)} mis-shaped: {preview(shapes, 3)}")
        self.summary = f"{what} does not fit {target}: " + "; ".join(parts) + "."
        super().__init__(self.summary
                         + " Pass the right arch=..., or strict=False to load only the matching keys.")


class NonFiniteLossError(IJepaError, FloatingPointError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left alone."""

    kind = "training stopped"


class ConfigChangedError(ConfigError):
    """A resume whose config changes the run the checkpoint was written by: names each key, old -> new."""

    kind = "config changed"


class RunFolderInUseError(IJepaError):
    """Another live process holds the run folder's lock: names it (pid, host, since when)."""

    kind = "run folder in use"


class DiskFullError(IJepaError):
    """No space left while a run wrote a file: names the file and what is intact (the previous checkpoint)."""

    kind = "disk full"


class HubError(IJepaError):
    """The Hugging Face Hub refused or could not be reached (``ijepa push``): no token, no network, no rights."""

    kind = "hub error"


class MissingPackageError(IJepaError):
    """An optional package the command needs is not installed: which one, and the extra that installs it."""

    kind = "missing package"


def missing_package(e: ModuleNotFoundError) -> MissingPackageError | None:
    """The one-line error for a package that is not installed, naming the ``ijepa`` extra that installs it (from
    the installed package's metadata); None for a module of this package itself, whose absence is a bug."""
    top = (e.name or "").split(".")[0]
    if not top or top == "ijepa":
        return None
    extra = _extra_installing(top)
    how = f"pip install 'ijepa[{extra}]'" if extra else f"pip install {top}"
    return MissingPackageError(f"this needs the {top} package, which is not installed: {how}")


def _extra_installing(module: str) -> str | None:
    """The first user-facing extra whose requirements hold ``module`` (a distribution named as the module, or with
    a suffix: ``mlflow-skinny`` holds ``mlflow``)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        reqs = requires("ijepa") or []
    except PackageNotFoundError:  # run from a source tree that was never installed
        return None
    for req in reqs:
        m = re.match(r"([A-Za-z0-9_.\-]+).*;\s*extra\s*==\s*[\"']([\w-]+)[\"']", req)
        if m and m.group(2) not in ("test", "docs"):
            dist = m.group(1).lower().replace("-", "_").replace(".", "_")
            if dist == module.lower() or dist.startswith(module.lower() + "_"):
                return m.group(2)
    return None


def preview(names: list[str], n: int = 5) -> str:
    """The first ``n`` names, and how many more: what an error lists of a long set."""
    shown = ", ".join(names[:n])
    return shown + (f", … (+{len(names) - n} more)" if len(names) > n else "")


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none): what a one-line error quotes."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
