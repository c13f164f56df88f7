"""What the ``gani`` commands share: the exit codes, checks of outputs and devices, the input images, the rows table.

Torch-free at import: the parser imports this module, and the functions that need torch or pyarrow import them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gani_core.errors import GaniError

if TYPE_CHECKING:
    from gani_core.dataset import ImageSource

# The exit codes of every command (the top-level --help states them).
EXIT_CODES = {
    0: "done",
    1: "the run completed, but some images failed (gani invert: failed rows, with their reasons)",
    2: "bad usage or input: an option, a path, an image, a checkpoint or an output that cannot be used",
    3: "failed otherwise (out of memory, a bug): one line says what; GANI_DEBUG=1 shows the traceback",
    130: "interrupted (Ctrl-C); gani invert keeps every finished result: rerun the same command to continue",
}

CONFIG_HASH_SHOWN = 8       # characters of a config hash `gani show` prints


class Interrupted(Exception):
    """Ctrl-C during a command that has something to say about what it kept: ``gani CMD: interrupted: <this>``."""


def check_output_folder(out: str, option: str = "--out") -> None:
    """Refuse, before any work, a folder that cannot be made at ``out``: an existing file, or a path under one; a
    store that cannot be reached or refuses the credentials (storage.check_folder), naming ``option``."""
    from gani_core import storage

    storage.check_folder(out, option)


def check_output_file(out: str, option: str = "--out", what: str = "a file name") -> None:
    """Refuse, before any work, a file that cannot be written at ``out``: an existing folder, or a path under a
    file (remote URIs are checked by the store when written)."""
    if "://" in out:
        return
    path = Path(out).absolute()
    if path.is_dir():
        raise GaniError(f"{option} {out} is a folder: give {what}")
    existing = _first_existing(path.parent)
    if not existing.is_dir():
        raise GaniError(f"{option} {out} is under {existing}, a file: give {what} in a folder")


def _first_existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists())


def resolve_device(requested: str | None, option: str = "--device") -> str:
    """The torch device a command runs on: ``requested``, or cuda when available, else cpu. A device that is not
    there (``--device cuda`` on a machine without CUDA) is refused in one line, before anything loads."""
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise GaniError(f"{option} {requested}: not a torch device (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise GaniError(f"{option} {requested}: no CUDA device is available here; use {option} cpu")
        if device.index is not None and device.index >= count:
            raise GaniError(f"{option} {requested}: this machine has {count} CUDA device(s), cuda:0 to "
                            f"cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GaniError(f"{option} {requested}: no MPS device is available here; use {option} cpu")
    return requested


def input_images(args: list[str], exclude: str | None = None) -> list[ImageSource]:
    """`gani invert`'s IMAGES: a file is taken as given (a bad one becomes a failed row), a folder or prefix gives
    the images under it (gani_core.dataset.list_images), but none under the folder ``exclude`` (the command's
    output, when it lies inside an input); a path that does not exist, or a folder without images, is an error
    naming the path as given, before anything runs."""
    from gani_core import storage
    from gani_core.dataset import image_sources, list_images

    sources: list[str] = []
    paths: list[str] = []       # each image's `source` in the rows: a file as given, a folder's images under it
    stats: list[str | None] = []    # what the listing says of each (a resume reads no file whose listing is unchanged)
    for arg in args:
        # storage.exists asks the storage now and raises when it cannot be reached (s3fs's own answers False).
        if not storage.exists(arg):
            raise FileNotFoundError(f"{arg}: no such file or folder")
        fs, path = storage.resolve(arg)
        if fs.isfile(path):
            sources.append(arg)
            paths.append(arg)
            stats.append(storage.fingerprint(fs.info(path)))
            continue
        try:
            found = list_images(arg, exclude=exclude)
        except FileNotFoundError as exc:
            # list_images names the flows' parameter (input_uri); here the path is one of IMAGES, as typed.
            raise FileNotFoundError(str(exc).replace(f"input_uri {arg}", arg, 1)) from None
        sources += [image.source for image in found]
        paths += [f"{arg.rstrip('/')}/{image.input_path}" for image in found]
        stats += [image.stat for image in found]
    return image_sources(sources, paths, stats)


def hidden_columns(rows: list[dict]) -> tuple[str, ...]:
    """The identity columns (the registry's ``faces`` group) when the run did not measure identity: no row has a
    value of them or a reason for none (``id_note``); a run without faces would show columns of ``-``."""
    from gani_core.metric_registry import names

    faces = names("faces")
    measured = any(r.get("id_note") or any(r.get(n) is not None for n in faces) for r in rows)
    return () if measured else faces


def print_rows(rows: list[dict], with_config: bool = False) -> None:
    """A run's rows as a table on stdout (without the columns :func:`hidden_columns` hides), the failures (with
    their reasons) under it."""
    from gani_core.metric_registry import METRICS
    from gani_core.run_folder import DISPLAY_COLUMNS

    hidden = hidden_columns(rows)
    columns = [c for c in DISPLAY_COLUMNS if c != "error" and c not in hidden]   # failures are listed under it
    if with_config:
        columns.insert(columns.index("status") + 1, "config")

    def cell(row: dict, column: str) -> str:
        if column == "config":
            return (row.get("config_hash") or "-")[:CONFIG_HASH_SHOWN]
        v = row.get(column)
        if column in METRICS:
            return METRICS[column].format(v)
        return "-" if v is None else str(v)

    table = [[cell(r, c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)))
    for r in rows:
        if r.get("status") != "ok":
            print(f"failed: {r['image_id']} [{r['method']}]: {r.get('error')}")
        elif r.get("id_note"):
            print(f"no id_similarity: {r['image_id']} [{r['method']}]: {r['id_note']}")


def note(text: str) -> None:
    """A note on stderr, on its own line."""
    print(f"note: {text}", file=sys.stderr)


def kept_after_interrupt(count: Callable[[], int], what: str, uri: str) -> str:
    """What an interrupted command leaves, for its Interrupted line: ``count()`` finished ``what`` in ``uri``,
    which a rerun keeps; when counting fails too (the storage went away), what can be said without it."""
    try:
        kept = f"{count()} {what}(s) kept in {uri}"
    except (OSError, ValueError):
        kept = f"{what}s finished so far are in {uri}"
    return f"{kept}; rerun the same command to continue"
