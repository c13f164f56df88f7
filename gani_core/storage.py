"""Reading and writing run outputs by URI: a local folder or anything fsspec reads (``s3://`` via s3fs).

Writes are atomic: on a local disk the bytes go to a temporary file in the same folder that is renamed
into place; on object stores a PUT is all-or-nothing. A reader or a crash never sees half an object.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path, PurePosixPath

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem


def resolve(uri: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of ``uri`` (plain paths are local)."""
    fs, path = fsspec.core.url_to_fs(str(uri))
    return fs, path


def join(uri: str | Path, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *parts])


def write_bytes(uri: str | Path, data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically, creating parent folders."""
    fs, path = resolve(uri)
    if isinstance(fs, LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    else:
        with fs.open(path, "wb") as f:
            f.write(data)


def read_bytes(uri: str | Path) -> bytes:
    fs, path = resolve(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def exists(uri: str | Path) -> bool:
    fs, path = resolve(uri)
    return fs.exists(path)


def write_parquet(uri: str | Path, table: pa.Table, **options: object) -> None:
    """Write ``table`` as zstd Parquet, atomically (``options`` go to ``pyarrow.parquet.write_table``)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", **options)
    write_bytes(uri, buf.getvalue())


def read_parquet(uri: str | Path) -> pa.Table:
    return pq.read_table(io.BytesIO(read_bytes(uri)))


def read_many(uris: list[str], batch: int = 64) -> dict[str, bytes | None]:
    """Read many objects, ``batch`` per call (s3fs fetches a batch concurrently); a missing or unreadable one is
    None. All ``uris`` are on one filesystem."""
    found: dict[str, bytes | None] = {}
    for start in range(0, len(uris), batch):
        chunk = uris[start : start + batch]
        fs, _ = resolve(chunk[0])
        paths = [resolve(u)[1] for u in chunk]
        got = fs.cat(paths, on_error="return")
        for uri, path in zip(chunk, paths, strict=True):
            value = got.get(path)
            found[uri] = value if isinstance(value, bytes) else None
    return found


def names_under(uri: str) -> set[str]:
    """The names of the entries directly under the folder ``uri`` (empty when it does not exist)."""
    fs, path = resolve(uri)
    try:
        return {PurePosixPath(p).name for p in fs.ls(path, detail=False)}
    except FileNotFoundError:
        return set()
