"""Shards in an object store: ``data.root_path`` (with ``data.dataset: shards``) and the DST of ``ijepa shards`` may
be any URL fsspec opens: ``s3://``, ``gs://``, ``http(s)://``, ``file://``.

Reading: :func:`read_remote_index` reads ``index.json`` (and ``classes.json``) at the URL, and :func:`open_shard`
opens a shard as a :class:`ShardStream`, which the reader hands to ``tarfile`` as it would a local file: members
are read as the epoch reaches them, never the whole shard first. An object store is read by byte ranges, so a
resumed epoch skips to its member by the member's offset; ``http(s)://`` is read as one stream per shard (many
servers, ``python -m http.server`` among them, answer no range requests). A dropped connection is retried
:func:`retries` times with a doubling wait, the shard re-opened at the byte it had reached (a stream reads up to
it again); after the last try reading stops in one line naming the shard (:class:`RemoteStoreError`).

Writing: :class:`RemoteFolder` is the output of ``ijepa shards`` at a URL. Each shard is written to a local
temporary folder, uploaded when complete and removed there (the local disk holds one shard at a time);
``index.json`` is uploaded last, so a set half written has no index and is never read as whole.

Packages: fsspec (installed with torch) and the protocol's own, imported when a URL is first opened, never by
``ijepa --help``: s3fs for ``s3://`` (``pip install 'ijepa[remote]'``), gcsfs for ``gs://``, aiohttp for
``http(s)://``. Credentials are the store's: s3fs reads ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE`` and ``~/.aws``; ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` points ``s3://`` at an
S3-compatible store (MinIO, Ceph, moto). fsspec's own variables set any other option of a protocol
(``FSSPEC_S3_ANON=true``: a public bucket without credentials).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ...errors import DataError, first_line
from .format import (
    _HOW_TO_CREATE,
    CLASSES_NAME,
    INDEX_NAME,
    ShardInfo,
    ShardsNotFoundError,
    check_present,
    parse_index,
)

__all__ = ["URL", "RemoteFolder", "RemoteStoreError", "ShardStream", "filesystem", "is_url", "join_root",
           "location", "open_shard", "read_remote_index", "retries", "retry_delay", "with_retries"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
LOCAL = ("file", "local")
STREAMED = ("http", "https")  # read as one stream per shard: no range requests assumed
# The package each protocol needs beside fsspec, and how to install it.
_PACKAGES = {"s3": ("s3fs", "pip install 'ijepa[remote]'"), "s3a": ("s3fs", "pip install 'ijepa[remote]'"),
             "gs": ("gcsfs", "pip install gcsfs"), "gcs": ("gcsfs", "pip install gcsfs"),
             "http": ("aiohttp", "pip install aiohttp"), "https": ("aiohttp", "pip install aiohttp")}
RETRIES, RETRY_DELAY_S, MAX_WAIT_S = 5, 1.0, 30.0
# Libraries whose exceptions are a store's answers (a refused connection, a server error, a refused credential)
# rather than bugs: they end as one RemoteStoreError line.
_STORE_MODULES = ("aiohttp", "botocore", "aiobotocore", "s3fs", "gcsfs", "google", "fsspec")
_NO_RETRY = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)

T = TypeVar("T")


class RemoteStoreError(DataError):
    """A shard set at a URL that cannot be read or written: the store stayed unreachable through every retry,
    refused the credentials, or lost a shard its index lists. One line naming the shard or file."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker's exception reaches the main process as type(text), text holding the worker's
        # traceback, whose last line is "...RemoteStoreError: <message>": keep the line a user reads.
        if message.startswith("Caught ") and "Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


class URL(str):
    """A remote folder or file, with the operations of :class:`~pathlib.Path` the shard code uses on either
    (``/``, ``parent``, ``name``): ``Path`` itself would fold ``s3://`` into ``s3:/``."""

    def __truediv__(self, name: str) -> URL:
        return URL(f"{self.rstrip('/')}/{name}") if name else self

    @property
    def parent(self) -> URL:
        return URL(self.rstrip("/").rpartition("/")[0])

    @property
    def name(self) -> str:
        return self.rstrip("/").rpartition("/")[2]

    @property
    def protocol(self) -> str:
        return self.split("://", 1)[0].lower()


def is_url(path: object) -> bool:
    """``path`` is a string with a ``scheme://`` prefix."""
    return isinstance(path, str) and _SCHEME.match(path) is not None


def location(spec: str | os.PathLike) -> str | URL:
    """``spec`` as the shard code reads it: a :class:`URL` for a remote store, else a local path (``file://``
    dropped: a local file is read as one)."""
    s = os.fspath(spec)
    if not is_url(s):
        return s
    url = URL(s)
    return s.split("://", 1)[1] if url.protocol in LOCAL else url


def join_root(root: str | os.PathLike, sub: str) -> Path | URL:
    """``root/sub`` (``data.root_path`` joined with ``data.image_folder``), a URL kept a URL."""
    s = os.fspath(root)
    return URL(s) / sub if is_url(s) else Path(s) / sub


def filesystem(url: URL) -> tuple[Any, str]:
    """fsspec's filesystem for ``url`` and the path on it. A package the protocol needs and lacks is one line
    naming it; ``s3://`` goes to ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` where one is set."""
    protocol = url.protocol
    options: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if protocol in ("s3", "s3a") and endpoint:
        # passed explicitly although botocore reads the variable too: fsspec then keeps one filesystem per endpoint
        options["endpoint_url"] = endpoint
    try:
        import fsspec

        return fsspec.core.url_to_fs(url, **options)
    except ImportError as e:
        package, how = _PACKAGES.get(protocol, ("fsspec", "pip install 'ijepa[remote]'"))
        if getattr(e, "name", None) == "fsspec":
            package, how = "fsspec", "pip install 'ijepa[remote]'"
        raise RemoteStoreError(f"reading or writing {protocol}:// URLs needs the {package} package: {how}") from None
    except ValueError as e:  # fsspec: "Protocol not known"
        raise RemoteStoreError(f"{url}: {first_line(e)} (s3://, gs://, http(s):// and file:// are known; another "
                               "protocol needs its fsspec package)") from None


# ---------------------------------------------------------------------------------------------------- retries

def _env_number(name: str, default: float, kind: type) -> Any:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise RemoteStoreError(f"{name}={raw!r}: expected a number >= 0")
    return value


def retries() -> int:
    """How many times a failed request to a store is tried again: ``IJEPA_REMOTE_RETRIES`` (default 5)."""
    return _env_number("IJEPA_REMOTE_RETRIES", RETRIES, int)


def retry_delay() -> float:
    """The wait before the first retry, doubled before each next one up to 30 s: ``IJEPA_REMOTE_RETRY_DELAY``
    seconds (default 1)."""
    return _env_number("IJEPA_REMOTE_RETRY_DELAY", RETRY_DELAY_S, float)


def _from_store(e: BaseException) -> bool:
    return isinstance(e, (OSError, asyncio.TimeoutError)) or type(e).__module__.startswith(_STORE_MODULES)


def _transient(e: BaseException) -> bool:
    """Worth another try: a connection refused, dropped or timed out, a server error or throttling. Not a missing
    file, a refused credential or a bad request, which every try would meet again."""
    if isinstance(e, _NO_RETRY):
        return False
    if isinstance(e, (OSError, asyncio.TimeoutError)):
        return True
    module = type(e).__module__
    if module.startswith("aiohttp"):
        status = getattr(e, "status", None)  # an HTTP answer (ClientResponseError), else a broken connection
        return status is None or status >= 500 or status in (408, 429)
    if module.startswith("botocore"):
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError

        return isinstance(e, (BotoConnectionError, HTTPClientError))
    return False


def with_retries(action: Callable[[], T], what: str, reset: Callable[[], None] | None = None) -> T:
    """``action()``, tried again after a transient failure (``reset()`` first, then a doubling wait) up to
    :func:`retries` times. A failure no retry mends, or the last one, is a :class:`RemoteStoreError` starting with
    ``what``; a missing file is raised as the ``FileNotFoundError`` it is, for the caller to word."""
    n, delay, waited = retries(), retry_delay(), 0.0
    for attempt in range(n + 1):
        try:
            return action()
        except FileNotFoundError:
            if reset is not None:
                reset()
            raise
        except Exception as e:
            if not _from_store(e):
                raise
            if reset is not None:
                reset()
            why = f"{type(e).__name__}: {first_line(e)}"
            if not _transient(e):
                hint = " (check the store's credentials)" if isinstance(e, PermissionError) else ""
                raise RemoteStoreError(f"{what}: {why}{hint}") from None
            if attempt == n:
                raise RemoteStoreError(f"{what}: {why} (gave up after {n + 1} tries over {waited:.0f} s; "
                                       "IJEPA_REMOTE_RETRIES sets the retries)") from None
            wait = min(delay * 2 ** attempt, MAX_WAIT_S)
            time.sleep(wait)
            waited += wait
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------- reading

class ShardStream:
    """A shard at a URL, opened for ``tarfile``: ``read`` (and ``seek``/``tell`` where the store serves byte
    ranges) over fsspec's file, which a dropped connection closes and re-opens at the byte reached."""

    def __init__(self, url: URL, nbytes: int | None = None) -> None:
        self.url, self.nbytes = url, nbytes
        self.fs, _ = filesystem(url)
        self.streamed = url.protocol in STREAMED
        self.pos = 0
        self.file: Any = None
        self._call(self._open)

    def _open(self) -> None:
        if self.file is not None:
            return
        kw: dict[str, Any] = {}
        if self.streamed:  # block_size 0: fsspec's streaming file; a known size spares it a HEAD request
            kw = {"block_size": 0, **({"size": self.nbytes} if self.nbytes else {})}
        f = self.fs.open(self.url, "rb", **kw)
        try:
            if self.streamed:
                left = self.pos
                while left:
                    chunk = f.read(min(left, 1 << 20))
                    if not chunk:
                        raise ConnectionError(f"the stream ended {left} bytes before byte {self.pos}, reached before")
                    left -= len(chunk)
            elif self.pos:
                f.seek(self.pos)
        except BaseException:
            with contextlib.suppress(Exception):
                f.close()
            raise
        self.file = f

    def _drop(self) -> None:
        f, self.file = self.file, None
        if f is not None:
            with contextlib.suppress(Exception):
                f.close()

    def _call(self, action: Callable[[], T]) -> T:
        try:
            return with_retries(action, f"cannot read shard {self.url} (at byte {self.pos})", reset=self._drop)
        except FileNotFoundError:
            raise RemoteStoreError(f"shard {self.url} is not there, although {INDEX_NAME} lists it: copy it back or "
                                   "re-create the shards") from None

    def read(self, n: int = -1) -> bytes:
        def once() -> bytes:
            self._open()
            return self.file.read(n)

        data = self._call(once)
        self.pos += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return not self.streamed

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if self.streamed:
            raise io.UnsupportedOperation(f"{self.url} is read as a stream")
        if whence == 1:
            offset += self.pos
        elif whence == 2:
            offset += self.nbytes if self.nbytes is not None else self._call(lambda: self.fs.size(self.url))
        self.pos = offset
        if self.file is not None:
            self.file.seek(offset)  # a position only: the next read fetches from there
        return offset

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> ShardStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_shard(shard: ShardInfo) -> Any:
    """``shard``'s bytes for ``tarfile``: a local file, or a :class:`ShardStream` for a shard at a URL."""
    return ShardStream(shard.path, shard.nbytes) if isinstance(shard.path, URL) else open(shard.path, "rb")


def _resolve(url: URL, fs: Any) -> tuple[URL, list[str] | None]:
    """The folder ``url`` names (a folder, its index.json, a shard, or a glob over shard files) and the shard names
    it selects (``None``: all)."""
    if any(c in url for c in "*?["):
        if any(c in url.parent for c in "*?["):
            raise ShardsNotFoundError(f"{url!r}: a pattern may select shard files of one folder, not folders")
        found = with_retries(lambda: fs.glob(url), f"cannot list {url.parent}")
        names = sorted(p.rstrip("/").rpartition("/")[2] for p in found if p.endswith(".tar"))
        if not names:
            raise ShardsNotFoundError(f"no shards match {url!r}: {_HOW_TO_CREATE}.")
        return url.parent, names
    if url.endswith(".json"):
        return url.parent, None
    if url.endswith(".tar"):
        return url.parent, [url.name]
    return URL(url.rstrip("/")), None


def _read_text(fs: Any, url: URL) -> str | None:
    """The text of ``url``, or ``None`` where there is no such file."""
    try:
        return with_retries(lambda: fs.cat_file(url), f"cannot read {url}").decode()
    except FileNotFoundError:
        return None


def read_remote_index(url: URL) -> tuple[dict[str, Any], list[ShardInfo], list[str] | None]:
    """:func:`~.format.read_index` for a set at ``url``: ``(index, shards, classes or None)``, each shard's path a
    :class:`URL`. A store that lists its files (not ``http(s)://``) is checked at once for every shard the index
    names, with its size; over ``http(s)://`` a missing shard is found when it is read."""
    fs, _ = filesystem(url)
    folder, selected = _resolve(url, fs)
    index_url = folder / INDEX_NAME
    text = _read_text(fs, index_url)
    if text is None:
        raise ShardsNotFoundError(f"no {INDEX_NAME} at {folder}: {_HOW_TO_CREATE} (DST may be a URL).")
    index, entries = parse_index(text, index_url, url, selected)
    shards = [ShardInfo(folder / e["name"], e["name"], int(e["count"]), e.get("bytes")) for e in entries]
    if url.protocol not in STREAMED:
        fs.invalidate_cache(folder)  # a listing cached before the set was (re)written would be stale
        found = with_retries(lambda: fs.ls(folder, detail=True), f"cannot list {folder}")
        check_present(shards, {f["name"].rstrip("/").rpartition("/")[2]: f["size"] for f in found
                               if f.get("type") != "directory"}, index_url)
    classes_text = _read_text(fs, folder / CLASSES_NAME) if index.get("labelled") else None
    return index, shards, None if classes_text is None else json.loads(classes_text)


# ---------------------------------------------------------------------------------------------------- writing

class RemoteFolder:
    """The output of ``ijepa shards`` at a URL: shards are written into ``staging``, a local temporary folder, and
    :meth:`publish` uploads each one when complete and removes it there; the caller writes ``index.json`` last.
    A context manager: leaving it removes ``staging``."""

    def __init__(self, url: URL) -> None:
        if url.protocol in STREAMED:
            raise RemoteStoreError(f"cannot write shards to {url}: http(s):// is read-only here; write them to an "
                                   "object store (s3://, gs://) or a folder and serve that")
        self.url = URL(url.rstrip("/"))
        self.fs, _ = filesystem(self.url)
        self._staging: Path | None = None

    @property
    def staging(self) -> Path:
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="ijepa-shards-"))
        return self._staging

    def __str__(self) -> str:
        return str(self.url)

    def __enter__(self) -> RemoteFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)

    def names(self) -> list[str]:
        """The file names in the folder (none where it does not exist yet)."""
        self.fs.invalidate_cache(self.url)
        try:
            found = with_retries(lambda: self.fs.ls(self.url, detail=False), f"cannot list {self.url}")
        except FileNotFoundError:
            return []
        return [p.rstrip("/").rpartition("/")[2] for p in found]

    def read_text(self, name: str) -> str | None:
        return _read_text(self.fs, self.url / name)

    def _write(self, action: Callable[[], Any], what: str) -> None:
        try:
            with_retries(action, what)
        except FileNotFoundError as e:  # the bucket, or the folder above, does not exist
            raise RemoteStoreError(f"{what}: {first_line(e)} (is the bucket there?)") from None

    def write_json(self, name: str, obj: Any) -> None:
        data = (json.dumps(obj, indent=1) + "\n").encode()
        self._write(lambda: self.fs.pipe_file(self.url / name, data), f"cannot write {self.url / name}")

    def publish(self, path: Path) -> URL:
        """Upload the finished shard ``path`` beside the others, remove it locally; its URL."""
        target = self.url / path.name
        self._write(lambda: self.fs.put_file(str(path), target), f"cannot upload {path.name} to {self.url}")
        path.unlink()
        return target

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            with_retries(lambda: self.fs.rm_file(self.url / name), f"cannot remove {self.url / name}")
