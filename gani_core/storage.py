"""Reading and writing run outputs by URI: a local folder or anything fsspec reads (``s3://`` via s3fs).

Writes are atomic: on a local disk the bytes go to a temporary file in the same folder that is renamed
into place; on object stores a PUT is all-or-nothing. A reader or a crash never sees half an object. A process
killed in the middle of a local write leaves its hidden temporary file behind (nothing runs on SIGKILL):
:func:`remove_orphaned_temp_files` removes those of writers that are gone.

A call that cannot reach the storage (connection refused or reset, a timeout: an S3 endpoint restarting) is tried
again, with exponential backoff, a bounded number of times (:func:`retry_policy`); every retry is logged on this
module's logger. When the attempts run out it raises :class:`ConnectionError` (an ``OSError``) saying what, where
and how often it tried. Nothing else is retried: a missing object (``FileNotFoundError``), a refused permission or a
full disk fails at once. Credentials the store refuses, or none at all (botocore's ``NoCredentialsError``; an
``InvalidAccessKeyId``, ``SignatureDoesNotMatch``, ``ExpiredToken`` or ``AccessDenied`` answer) are permanent too:
they raise :class:`~gani_core.errors.StorageAccessError` at once, one line naming the URI and what to set
(:func:`access_error`).

    GANI_STORAGE_RETRIES    retries after the first attempt (default 4; 0: no retry)
    GANI_STORAGE_BACKOFF    seconds before the first retry, doubled for each next one up to 30 s (default 1)

The defaults ride out about 15 s of outage on top of the client's own retries (botocore tries a connection 5 times
over about 10 s unless ``AWS_MAX_ATTEMPTS`` says otherwise).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import random
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from gani_core.errors import GaniError, StorageAccessError

log = logging.getLogger(__name__)

RETRIES_ENV = "GANI_STORAGE_RETRIES"
BACKOFF_ENV = "GANI_STORAGE_BACKOFF"
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = 1.0       # seconds before the first retry
MAX_BACKOFF = 30.0          # the longest wait between two attempts

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    retries: int            # attempts after the first one
    backoff: float          # seconds before the first retry; doubled each time, at most MAX_BACKOFF

    def delay(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (1-based), with up to 25% jitter so that workers cut off
        together do not come back together."""
        return min(self.backoff * 2 ** (retry - 1), MAX_BACKOFF) * random.uniform(1.0, 1.25)


def retry_policy() -> RetryPolicy:
    """The policy from ``$GANI_STORAGE_RETRIES`` and ``$GANI_STORAGE_BACKOFF`` (read at each call, so a worker
    process follows its environment), else the defaults."""
    retries, backoff = os.environ.get(RETRIES_ENV, "").strip(), os.environ.get(BACKOFF_ENV, "").strip()
    try:
        policy = RetryPolicy(int(retries) if retries else DEFAULT_RETRIES,
                             float(backoff) if backoff else DEFAULT_BACKOFF)
    except ValueError:
        policy = RetryPolicy(-1, -1.0)
    if policy.retries < 0 or policy.backoff < 0:
        raise ValueError(f"${RETRIES_ENV} must be a whole number and ${BACKOFF_ENV} a number of seconds, both at "
                         f"least 0; got {retries!r} and {backoff!r}")
    return policy


@functools.cache
def transient_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the storage could not be reached", worth another attempt: the OS's connection
    errors and timeouts, and those of botocore and aiohttp (s3fs) when they are installed."""
    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError

        kinds += [BotoConnectionError, HTTPClientError]      # endpoint unreachable; connection closed, read timeout
    except ImportError:
        pass
    try:
        from aiohttp import ClientConnectionError

        kinds.append(ClientConnectionError)
    except ImportError:
        pass
    return tuple(kinds)


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, transient_errors()) and not isinstance(exc, FileNotFoundError)


# What to set when the store does not accept who we are (or we are nobody): botocore's chain of credentials.
CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and AWS_ENDPOINT_URL for an "
                    "S3-compatible store")
# The S3 error codes that are about the credentials, not the storage: retrying cannot help.
_REFUSED = {
    "InvalidAccessKeyId": "the store does not know the AWS access key id",
    "SignatureDoesNotMatch": "the AWS secret access key does not match the access key id",
    "ExpiredToken": "the AWS session token has expired",
    "ExpiredTokenException": "the AWS session token has expired",
    "InvalidToken": "the AWS session token is not valid",
    "AccessDenied": "access denied to these AWS credentials",
    "403": "the store refused access (HTTP 403 Forbidden)",       # a HEAD request's answer carries no code
}


@functools.cache
def _credential_errors() -> tuple[tuple[type[BaseException], ...], type[BaseException] | None]:
    """botocore's "no usable credentials" exceptions, and its ClientError (whose code says more); none without
    botocore."""
    try:
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError
    except ImportError:
        return (), None
    return (NoCredentialsError, PartialCredentialsError), ClientError


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it: s3fs wraps botocore's ClientError in a PermissionError (``__cause__``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def access_error(exc: BaseException, uri: str | Path) -> StorageAccessError | None:
    """The one-line :class:`StorageAccessError` for ``uri`` when ``exc`` says that the store has no credentials
    or refuses them, else None. Never the secret: only the error's code is quoted, not the request."""
    missing, client_error = _credential_errors()
    for cause in _chain(exc):
        if missing and isinstance(cause, missing):
            what = "no AWS credentials found" if type(cause).__name__ == "NoCredentialsError" else \
                f"incomplete AWS credentials ({cause})"
            return StorageAccessError(f"{uri}: {what}: {CREDENTIALS_HINT}")
        if client_error is not None and isinstance(cause, client_error):
            code = str(getattr(cause, "response", {}).get("Error", {}).get("Code", ""))
            if code in _REFUSED:
                hint = "check that the credentials in use may read and write it" if code == "AccessDenied" else \
                    f"{CREDENTIALS_HINT.replace('set ', 'check ', 1)}, and that they may read and write it" \
                    if code == "403" else "renew it (AWS_SESSION_TOKEN, or aws sso login)" if "Token" in code else \
                    CREDENTIALS_HINT.replace("set ", "check ", 1)
                said = _REFUSED[code] + ("" if code == "403" else f" ({code})")
                return StorageAccessError(f"{uri}: {said}: {hint}")
    return None


def with_retries(what: str, uri: str | Path, call: Callable[[], T]) -> T:
    """``call()``, tried again after a transient error (see the module docstring); ``what`` and ``uri`` name it in
    the log and in the final error. Refused or missing credentials raise StorageAccessError at once."""
    policy = retry_policy()
    started = time.monotonic()
    attempt = 1
    while True:
        try:
            return call()
        except Exception as exc:
            if (refused := access_error(exc, uri)) is not None:
                raise refused from exc
            if not _is_transient(exc):
                raise
            if attempt > policy.retries:
                raise ConnectionError(f"{uri}: {what} failed after {attempt} attempt(s) over "
                                      f"{time.monotonic() - started:.1f} s: {type(exc).__name__}: {exc}") from exc
            delay = policy.delay(attempt)
            log.warning("%s: %s failed (%s: %s); retry %d of %d in %.1f s", uri, what, type(exc).__name__, exc,
                        attempt, policy.retries, delay)
        time.sleep(delay)
        attempt += 1


# A URL that chains filesystems, ``simplecache::s3://bucket/key``: protocols joined by ``::`` before the ``://``.
_CHAINED_URL = re.compile(r"[a-z][a-z0-9+.-]*(::[a-z][a-z0-9+.-]*)+://")


def resolve(uri: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of ``uri``: a ``Path`` or a string without ``://`` is a local path, else the
    protocol before ``://`` names the filesystem (``s3://bucket/key``).

    The path is taken literally: a local file ``a::b.png`` or an S3 key ``in/a::b.png`` is that file. fsspec's own
    ``url_to_fs`` would split it at ``::`` into a chain of filesystems and open another file, or fail; only a URL
    whose protocols are chained before the ``://`` (``simplecache::s3://bucket/key``) goes to it.
    """
    text = str(uri)
    if _CHAINED_URL.match(text):
        return fsspec.core.url_to_fs(text)
    protocol = fsspec.core.split_protocol(text)[0] if not isinstance(uri, Path) else None
    cls = fsspec.get_filesystem_class(protocol or "file")
    return fsspec.filesystem(protocol or "file", **cls._get_kwargs_from_urls(text)), cls._strip_protocol(text)


def join(uri: str | Path, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *parts])


# Temporary files of local writes: ``.NAME.~PID@HOST~RANDOM.tmp`` beside the target, so that a sweep can tell
# whether their writer still runs.
_TEMP_FILE = re.compile(r"\..+\.~(\d+)@([\w-]*)~\w*\.tmp")
ORPHAN_AGE = 3600.0         # seconds after which a temp file written on another host is an orphan


def _host() -> str:
    return re.sub(r"[^\w-]", "_", socket.gethostname())


def write_bytes(uri: str | Path, data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically, creating parent folders.

    A local write that fails (a full disk: ``ENOSPC``, a file size limit: ``EFBIG``) raises the OSError with the
    target's path in it and leaves nothing behind; the file keeps its previous content, if it had one.
    """
    fs, path = resolve(uri)
    if isinstance(fs, LocalFileSystem):
        _write_local(Path(path), data)
    else:
        def put() -> None:
            with fs.open(path, "wb") as f:
                f.write(data)

        with_retries("write", uri, put)


def _write_local(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.~{os.getpid()}@{_host()}~", suffix=".tmp",
                               dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)          # mkstemp's 0600 would make a run folder unreadable to others
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            # A failed write() or fsync() says only "No space left on device": name the file that was not written.
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        raise


def _read_umask() -> int:
    """This process's umask, read once at import (by setting it and setting it back: no other portable way; at
    import, before any worker thread writes a file)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def read_bytes(uri: str | Path) -> bytes:
    fs, path = resolve(uri)

    def get() -> bytes:
        with fs.open(path, "rb") as f:
            return f.read()

    return with_retries("read", uri, get)


def remove(uri: str | Path) -> None:
    """Delete the file ``uri`` (with the retries of :func:`with_retries`); one already gone is fine."""
    fs, path = resolve(uri)

    def delete() -> None:
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)

    with_retries("delete", uri, delete)


def exists(uri: str | Path, name: str | None = None) -> bool:
    """Whether ``uri`` names a file or a folder now (not in a cached listing). A storage that cannot be reached
    raises (after the retries) rather than answering False, as s3fs's own ``exists`` would; the error names
    ``<name> <uri>`` (what the user called it) when ``name`` is given."""
    fs, path = resolve(uri)

    def info() -> bool:
        fs.invalidate_cache(path)
        try:
            fs.info(path)
        except FileNotFoundError:
            return False
        return True

    return with_retries("exists" if name is None else "check", uri if name is None else f"{name} {uri}", info)


def write_parquet(uri: str | Path, table: pa.Table, **options: object) -> int:
    """Write ``table`` as zstd Parquet, atomically (``options`` go to ``pyarrow.parquet.write_table``); the file's
    size in bytes."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", **options)
    write_bytes(uri, buf.getvalue())
    return buf.tell()


def read_parquet(uri: str | Path) -> pa.Table:
    return pq.read_table(io.BytesIO(read_bytes(uri)))


def read_many(uris: list[str], batch: int = 64) -> dict[str, bytes | None]:
    """Read many objects, ``batch`` per call (s3fs fetches a batch concurrently); a missing or unreadable one is
    None. All ``uris`` are on one filesystem. Objects the storage could not be reached for are fetched again (the
    retries of :func:`with_retries`), and raise ConnectionError when they never are: unreachable is not missing."""
    found: dict[str, bytes | None] = {}
    for start in range(0, len(uris), batch):
        chunk = uris[start : start + batch]
        fs, _ = resolve(chunk[0])
        pending = {uri: resolve(uri)[1] for uri in chunk}
        with_retries(f"read of {len(chunk)} object(s)", chunk[0].rsplit("/", 1)[0],
                     functools.partial(_cat, fs, pending, found))
    return found


def _cat(fs: fsspec.AbstractFileSystem, pending: dict[str, str], found: dict[str, bytes | None]) -> None:
    """Fetch the ``pending`` objects (uri -> path) into ``found``; the unreachable ones stay pending (and raise)."""
    got = fs.cat(list(pending.values()), on_error="return")
    unreachable = None
    for uri, path in list(pending.items()):
        value = got.get(path)
        if isinstance(value, BaseException) and (refused := access_error(value, uri)) is not None:
            raise refused from value        # not "missing": no object is readable without credentials
        if isinstance(value, BaseException) and _is_transient(value):
            unreachable = value
            continue
        found[uri] = value if isinstance(value, bytes) else None
        del pending[uri]
    if unreachable is not None:
        raise unreachable


def check_folder(uri: str | Path, name: str = "output_uri") -> None:
    """Refuse, before any work, a folder that a run cannot be written into, in one line: on a local disk an
    existing file or a path under one (:class:`GaniError`); on a store, one it cannot reach (ConnectionError after
    the retries) or whose credentials it refuses (StorageAccessError). ``name`` is what the user called it."""
    fs, path = resolve(uri)
    if isinstance(fs, LocalFileSystem):
        target = Path(path).absolute()
        existing = next(p for p in (target, *target.parents) if p.exists())
        if not existing.is_dir():
            where = "is a file" if existing == target else f"is under {existing}, a file"
            raise GaniError(f"{name} {uri} {where}: give a folder (new, or one of an earlier run to resume)")
        return
    exists(uri, name)       # asks the store now: unreachable or refused raises, naming ``<name> <uri>``


def must_exist(uri: str | Path, name: str = "input_uri") -> None:
    """Raise FileNotFoundError (``<name> <uri>: no such folder or object``) unless ``uri`` names something now;
    like every call here, an unreachable store raises ConnectionError and refused credentials StorageAccessError,
    both naming ``<name> <uri>``."""
    if not exists(uri, name):
        raise FileNotFoundError(f"{name} {uri}: no such folder or object")


def names_under(uri: str) -> set[str]:
    """The names of the entries directly under the folder ``uri`` (empty when it does not exist), as they are now:
    a cached listing would miss what other processes (the workers) wrote since."""
    fs, path = resolve(uri)

    def listing() -> set[str]:
        fs.invalidate_cache(path)
        try:
            return {PurePosixPath(p).name for p in fs.ls(path, detail=False)}
        except FileNotFoundError:
            return set()

    return with_retries("list", uri, listing)


def modified_under(uri: str) -> dict[str, float]:
    """The entries directly under the folder ``uri`` as :func:`names_under` finds them, each with the time it was
    last written (seconds since the epoch: a local file's mtime, an object's LastModified), from the one listing."""
    return {name: modified_time(e) for name, e in _listing(uri).items()}


def sizes_under(uri: str) -> dict[str, int | None]:
    """The entries directly under the folder ``uri`` as :func:`names_under` finds them, each with its size in bytes
    (None where the listing does not say), from the one listing."""
    return {name: e.get("size") for name, e in _listing(uri).items()}


def listed_whole(sizes: dict[str, int | None], name: str, recorded: int | None) -> bool:
    """Whether ``name`` is in the listing ``sizes`` (:func:`sizes_under`) as the file written of ``recorded`` bytes:
    listed, not empty, and at that size (a size not recorded, or not listed: listed and not empty is enough). What
    tells a file cut short or overwritten from the one written, without reading it."""
    if name not in sizes or sizes[name] == 0:
        return False
    return recorded is None or sizes[name] in (None, recorded)


def _listing(uri: str) -> dict[str, dict]:
    """fsspec's details of each entry directly under the folder ``uri``, by name, as they are now."""
    fs, path = resolve(uri)

    def listing() -> dict[str, dict]:
        fs.invalidate_cache(path)
        try:
            entries = fs.ls(path, detail=True)
        except FileNotFoundError:
            return {}
        return {PurePosixPath(e["name"]).name: e for e in entries}

    return with_retries("list", uri, listing)


def modified_time(info: dict) -> float:
    """When the entry of a listing (fsspec's ``info``) was last written, in seconds since the epoch (0.0 when the
    filesystem does not say)."""
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value) if isinstance(value, int | float) else 0.0


def fingerprint(info: dict) -> str | None:
    """What says, from a listing alone, that a file still holds the bytes it held: its size and its ETag (an object
    store's digest of the content) or else its modification time in nanoseconds; None when the listing has
    neither. A resume compares it with the one its row recorded instead of reading the file again."""
    size = info.get("size")
    tag = info.get("ETag") or info.get("etag")
    if tag:
        return f"{size}:etag:{str(tag).strip(chr(34))}"
    modified = info.get("mtime", info.get("LastModified"))
    if size is None or modified is None:
        return None
    return f"{size}:mtime:{round(modified_time(info) * 1e9)}"


def remove_orphaned_temp_files(uri: str | Path) -> list[str]:
    """Remove the temporary files under the local folder ``uri`` that interrupted writes left behind (their writer
    was killed before it could clean up); their paths. A temp file is an orphan when the process that wrote it on
    this host is gone, or, written on another host (a shared filesystem), when it is ORPHAN_AGE old. Live writers'
    files are left alone. Object stores have no temp files: nothing to do there."""
    fs, path = resolve(uri)
    if not isinstance(fs, LocalFileSystem) or not Path(path).is_dir():
        return []
    host, now, removed = _host(), time.time(), []
    for folder, _, files in os.walk(path):
        for name in files:
            m = _TEMP_FILE.fullmatch(name)
            if not m:
                continue
            file = Path(folder) / name
            try:
                orphan = (not process_running(int(m.group(1))) if m.group(2) == host
                          else now - file.stat().st_mtime > ORPHAN_AGE)
                if orphan:
                    file.unlink()
                    removed.append(str(file))
            except FileNotFoundError:      # renamed into place or removed by its writer meanwhile
                pass
    return removed


def process_running(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host now (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # someone else's process
        return True
    return True
