"""``gani export``: a run's results as files other tools load: the tuned generator, the pivot latent.

    gani export RUN IMAGE_ID --out F.safetensors         the image's tuned generator in gani's format (its pivot latent
                                                         in the metadata, ``w_pivot``)
    gani export RUN IMAGE_ID --format rosinality --out F.pt
                                                         the same as rosinality's ``{"g_ema", "latent_avg"}``: what e4e,
                                                         HyperStyle, ReStyle and StyleCLIP load
    gani export RUN IMAGE_ID --latent F.npy              the pivot latent, [num_ws, w_dim] float32 (with --out: both;
                                                         a bare --latent goes beside --out)
    gani export RUN --all --out DIR [--latent]           every ok tuned result: DIR/IMAGE_ID.METHOD.safetensors (.pt),
                                                         DIR/IMAGE_ID.METHOD.npy, DIR/IMAGE_ID.METHOD.json

The tuned generator is the row's checkpoint with the result's weight deltas applied (the checkpoint is loaded once,
whatever the number of results). A result of w or wplus tunes nothing: its latent exports, a generator is refused
(it would be the run's checkpoint unchanged; --latent says how to get what there is).

``--all`` resumes. ``DIR/IMAGE_ID.METHOD.json``, written after a result's files, names the row they were made from
(its ``finished`` time, checkpoint, configuration and image hashes) and the files; a rerun keeps a file that it lists
for the same row and that is there, and writes only what is missing. Every file is written whole (temp file, then
rename: gani_core.storage), so an interrupted export leaves no half file. A result whose deltas cannot be read fails
alone, in one line; the others are written, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import torch

from gani_core import storage
from gani_core.checkpoints.native import generator_to_bytes
from gani_core.checkpoints.ref import recorded_checkpoint
from gani_core.checkpoints.rosinality import check_rosinality, clamp_note, rosinality_bytes
from gani_core.cli.common import Interrupted, check_output_file, check_output_folder
from gani_core.deltas import apply_deltas
from gani_core.errors import DeltasError, GaniError, StorageAccessError
from gani_core.invert import METHODS, has_tuning
from gani_core.networks import Generator
from gani_core.run_folder import RUN_ENTRIES, RunFolder, result_key

# Each --format and the file suffixes it is written under (the first: the name --all gives its files).
FORMATS: dict[str, tuple[str, ...]] = {"safetensors": (".safetensors",), "rosinality": (".pt", ".pth")}
LATENT_SUFFIX = ".npy"
PROGRESS_SECONDS = 5.0      # --all: a progress line at most this often
# The fields of a row that say which result an exported file was made from (a rerun of the image replaces them).
ROW_IDENTITY = ("image_id", "method", "finished", "checkpoint_sha256", "config_hash", "image_sha256")


@dataclass(frozen=True)
class Wanted:
    """What to write for a result: the tuned generator in ``fmt`` at ``generator``, the pivot at ``latent``."""

    fmt: str
    generator: str | None       # path or URI, None: no generator
    latent: str | None          # path or URI of the .npy, None: no latent


def run(args: argparse.Namespace) -> int:
    check_options(args)
    folder = RunFolder(args.run)
    stored = folder.read_run()
    if stored.incomplete_note:
        print(stored.incomplete_note, file=sys.stderr)
    if args.all:
        return export_all(args, folder, stored.rows)
    return export_one(args, folder, stored.rows)


# ----------------------------------------------------------------------------------------------------
# Options


def check_options(args: argparse.Namespace) -> None:
    """Refuse, before anything is read or written, options that cannot be used together, output paths that cannot
    be written and suffixes that are not their format's (argparse has refused IMAGE_ID with --all, and neither)."""
    suffixes = FORMATS[args.format]
    tunes = args.method is None or has_tuning(args.method)
    if args.all:
        if args.out is None:
            raise GaniError("--all needs --out DIR, the folder to write the results' files to")
        if args.latent:
            raise GaniError(f"with --all, --latent takes no file name: each latent goes to DIR/IMAGE_ID.METHOD"
                            f"{LATENT_SUFFIX}")
        if not tunes and args.latent is None:
            raise GaniError(f"{args.method} does not tune the generator, so --all has no generator to export; add "
                            "--latent to export its latents")
        check_output_folder(args.out)
        return
    if args.out is None and args.latent is None:
        raise GaniError(f"give --out FILE{suffixes[0]} (the tuned generator), --latent FILE{LATENT_SUFFIX} (the "
                        "pivot latent), or both")
    if args.out is not None:
        if not tunes:
            raise GaniError(f"{args.method} does not tune the generator: its result is a latent for the run's "
                            f"checkpoint as it is; export it with --latent FILE{LATENT_SUFFIX}")
        check_output_file(args.out, what=f"a {suffixes[0]} file name")
        _check_suffix(args.out, "--out", suffixes, f"--format {args.format} writes")
    if args.latent == "" and args.out is None:
        raise GaniError(f"--latent without a file name is written beside --out; give --latent FILE{LATENT_SUFFIX}")
    if args.latent:
        check_output_file(args.latent, "--latent", f"a {LATENT_SUFFIX} file name")
        _check_suffix(args.latent, "--latent", (LATENT_SUFFIX,), "the latent is written as")


def _check_suffix(path: str, option: str, suffixes: tuple[str, ...], what: str) -> None:
    """Refuse a file name that is not what it holds (a .pt of --format safetensors would be misread by its reader);
    ``what``: the sentence before the suffixes ("--format rosinality writes")."""
    if path.lower().endswith(suffixes):
        return
    suffix = PurePosixPath(path.split("?", 1)[0]).suffix.lower()
    given = f"a {suffix} file" if suffix else "a name without a suffix"
    hint = "" if option != "--out" else next(
        (f"; {suffix} is --format {fmt}" for fmt, known in FORMATS.items() if suffix in known), "")
    raise GaniError(f"{option} {path}: {given}; {what} {' or '.join(suffixes)}{hint}")


def _methods(args: argparse.Namespace, generator: bool) -> list[str]:
    """The methods whose result is exported, in order of preference: --method, else the tuned methods (gani, then
    pti) when a generator is asked for, else every method in METHODS' order."""
    if args.method is not None:
        return [args.method]
    return [m for m in METHODS if has_tuning(m)] if generator else list(METHODS)


# ----------------------------------------------------------------------------------------------------
# One image


def export_one(args: argparse.Namespace, folder: RunFolder, rows: list[dict]) -> int:
    """``gani export RUN IMAGE_ID``: the first of the methods with an ok result for the image; every file written
    only once everything is read."""
    row = pick_row(rows, args.image_id, _methods(args, generator=args.out is not None), args.run)
    latent = _beside(args.out, FORMATS[args.format]) if args.latent == "" else args.latent
    wanted = Wanted(args.format, args.out, latent)
    checkpoints = Checkpoints(args.format)
    G = checkpoints.load(row) if wanted.generator else None
    tuned, pivot = read_result(folder, row, G, checkpoints)
    for _, line in write_result(wanted, row, tuned, pivot, folder.uri).values():
        print(line)
    return 0


def _beside(out: str, suffixes: tuple[str, ...]) -> str:
    """The latent's path beside the generator file ``out`` (whose suffix is one of ``suffixes``): F.pt -> F.npy."""
    suffix = next(s for s in suffixes if out.lower().endswith(s))
    return out[: -len(suffix)] + LATENT_SUFFIX


def pick_row(rows: list[dict], image_id: str, methods: list[str], run: str) -> dict:
    """The ok row of ``image_id`` of the first of ``methods`` that has one; GaniError naming what is missing."""
    if not any(r["image_id"] == image_id for r in rows):
        raise GaniError(f"{run}: no image {image_id!r} in this run; `gani show {run}` lists its images")
    found = {r["method"]: r for r in rows if r["image_id"] == image_id and r["method"] in methods
             and r["status"] == "ok"}
    if not found:
        what = "tuned result" if all(has_tuning(m) for m in methods) else "result"
        raise GaniError(f"{run}: no successful {what} for image {image_id!r} (methods {methods}); see "
                        f"`gani show {run}`")
    return next(found[m] for m in methods if m in found)


# ----------------------------------------------------------------------------------------------------
# Reading a result, writing its files


class Checkpoints:
    """The checkpoints of the rows being exported, each resolved, checked and loaded once."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self._loaded: dict[tuple[str, str], Generator] = {}

    def load(self, row: dict) -> Generator:
        """The row's checkpoint (the row's own: results of other runs may share the folder), refused when it is not
        the one the row was tuned on or the format cannot hold it."""
        key = (row["checkpoint"], row["checkpoint_sha256"])
        if key not in self._loaded:
            G = recorded_checkpoint(row["checkpoint"], row["checkpoint_sha256"]).load()
            if self.fmt == "rosinality":
                check_rosinality(G)
                if note := clamp_note(G):
                    print(note, file=sys.stderr)
            self._loaded[key] = G
        return self._loaded[key]


def read_result(folder: RunFolder, row: dict, G: Generator | None,
                checkpoints: Checkpoints) -> tuple[Generator | None, torch.Tensor]:
    """The result's tuned generator (``G`` with its deltas; None without ``G``) and pivot [num_ws, w_dim]. Raises
    GaniError naming the result and its file when they cannot be read or do not apply."""
    image_id, method = row["image_id"], row["method"]
    try:
        pivot = folder.read_pivot(image_id, method)
        tuned = None
        if G is not None:
            tuned = apply_deltas(G, folder.read_deltas(image_id, method))
            tuned.cfg.label = f"{G.label} tuned to {image_id} by {method}"
    except (StorageAccessError, ConnectionError):
        raise                   # the store, not this result: every other one would fail the same way
    except DeltasError as exc:  # names the file and says what to do
        raise GaniError(f"{image_id} ({method}): {exc}") from exc
    except (GaniError, ValueError, OSError, KeyError) as exc:
        raise GaniError(f"{image_id} ({method}): cannot read its result {folder.deltas_uri(image_id, method)}: "
                        f"{type(exc).__name__}: {exc}") from exc
    if pivot.ndim == 1:         # a result of gani before issue 18 kept it flat
        num_ws = G.num_ws if G is not None else (_num_ws(row) or checkpoints.load(row).num_ws)
        pivot = pivot.reshape(num_ws, -1)
    return tuned, pivot


def _num_ws(row: dict) -> int | None:
    """num_ws of the row's generator from its resolution: 2 for the 4 px block (conv, ToRGB), 2 more per block."""
    resolution = row.get("resolution")
    return 2 * int(resolution).bit_length() - 4 if resolution else None


def write_result(wanted: Wanted, row: dict, tuned: Generator | None, pivot: torch.Tensor, run: str
                 ) -> dict[str, tuple[int, str]]:
    """Write what ``wanted`` asks for, each file atomically; by file written, its size and a line saying what it
    is."""
    files: dict[str, tuple[bytes, str]] = {}
    if wanted.generator is not None:
        assert tuned is not None
        if wanted.fmt == "rosinality":
            files[wanted.generator] = (rosinality_bytes(tuned), f"{tuned.label}, as rosinality's g_ema and latent_avg")
        else:
            data = generator_to_bytes(tuned, extra={
                "w_pivot": json.dumps(pivot.flatten().tolist()), "num_ws": str(tuned.num_ws), "source_run": run,
                "image_id": row["image_id"], "method": row["method"]})
            files[wanted.generator] = (data, f"{tuned.label}; its pivot latent is in the file's metadata ('w_pivot')")
    if wanted.latent is not None:
        buffer = io.BytesIO()
        np.save(buffer, pivot.to(torch.float32).numpy(), allow_pickle=False)
        files[wanted.latent] = (buffer.getvalue(), f"the pivot latent of {row['image_id']} ({row['method']}), "
                                                   f"{list(pivot.shape)} float32")
    for uri, (data, _) in files.items():
        storage.write_bytes(uri, data)
    return {uri: (len(data), f"wrote {uri}: {what}") for uri, (data, what) in files.items()}


# ----------------------------------------------------------------------------------------------------
# Every image


def export_all(args: argparse.Namespace, folder: RunFolder, rows: list[dict]) -> int:
    """``gani export RUN --all --out DIR``: each image's result (of the first of the methods with an ok one), files
    already exported for the same row kept. Exit code 1 when a result failed."""
    methods = _methods(args, generator=True)
    generator = all(has_tuning(m) for m in methods)     # w, wplus (--method): their latents alone (check_options)
    chosen = rows_to_export(rows, methods)
    if not chosen:
        latents = "" if any(not has_tuning(m) for m in methods) else (
            "; a run of w or wplus tunes no generator: export its latents with --method w --latent"
            if any(r["status"] == "ok" and not has_tuning(r["method"]) for r in rows) else "")
        raise GaniError(f"{args.run}: no successful result of {methods} to export{latents}; see "
                        f"`gani show {args.run}`")
    names = storage.sizes_under(args.out)
    if not RUN_ENTRIES.isdisjoint(names):
        raise GaniError(f"--out {args.out} is a run folder; exports go to a folder of their own")
    done = _read_sidecars(args.out, chosen, names)
    checkpoints = Checkpoints(args.format)
    counts = {"wrote": 0, "kept": 0, "failed": 0}
    last = time.monotonic()
    try:
        for i, row in enumerate(chosen):
            key = result_key(row["image_id"], row["method"])
            files = {"generator": key + FORMATS[args.format][0]} if generator else {}
            if args.latent is not None:
                files["latent"] = key + LATENT_SUFFIX
            counts[_export_row(args, folder, row, files, done.get(key, {}), names, checkpoints)] += 1
            if time.monotonic() - last >= PROGRESS_SECONDS:
                last = time.monotonic()
                print(f"gani export: {i + 1}/{len(chosen)} results: {_counts(counts)}", file=sys.stderr)
    except KeyboardInterrupt:
        raise Interrupted(f"{_counts(counts)}; rerun the same command to continue") from None
    print(_counts(counts))
    return 1 if counts["failed"] else 0


def _counts(counts: dict[str, int]) -> str:
    return f"wrote {counts['wrote']}, kept {counts['kept']} (already exported), failed {counts['failed']}"


def rows_to_export(rows: Iterable[dict], methods: list[str]) -> list[dict]:
    """Per image, in the run's order, its ok row of the first of ``methods`` that has one."""
    ok = {(r["image_id"], r["method"]): r for r in rows if r["status"] == "ok" and r["method"] in methods}
    images = dict.fromkeys(image_id for image_id, _ in ok)
    return [next(ok[(i, m)] for m in methods if (i, m) in ok) for i in images]


def _export_row(args: argparse.Namespace, folder: RunFolder, row: dict, files: dict[str, str],
                sidecar: dict, listing: dict[str, int | None], checkpoints: Checkpoints) -> str:
    """Write the files of ``row`` that are not already there for it, whole (``listing``: the sizes of the files in
    DIR); "wrote", "kept" or "failed"."""
    identity = {k: row.get(k) for k in ROW_IDENTITY}
    have = _exported(sidecar, identity, listing)
    missing = {kind: name for kind, name in files.items() if name not in have}
    if not missing:
        return "kept"
    G = checkpoints.load(row) if "generator" in missing else None     # a checkpoint that cannot be used: abort
    try:
        tuned, pivot = read_result(folder, row, G, checkpoints)
    except GaniError as exc:
        print(f"gani export: {exc}", file=sys.stderr)
        return "failed"
    out = {kind: storage.join(args.out, name) for kind, name in missing.items()}
    written = write_result(Wanted(args.format, out.get("generator"), out.get("latent")), row, tuned, pivot, folder.uri)
    sizes = {**{n: s for n, s in (sidecar.get("sizes") or {}).items() if n in have},
             **{missing[kind]: written[uri][0] for kind, uri in out.items()}}
    record = {"run": folder.uri, "row": identity, "files": sorted(sizes), "sizes": sizes}
    key = result_key(row["image_id"], row["method"])
    storage.write_bytes(storage.join(args.out, f"{key}.json"), json.dumps(record, indent=1).encode())
    return "wrote"


def _exported(sidecar: dict, identity: dict, listing: dict[str, int | None]) -> set[str]:
    """The files a record says were exported for the row ``identity`` that are still there whole: listed at the
    size the record gives (a record written before sizes were kept: listed and not empty)."""
    files, sizes = sidecar.get("files"), sidecar.get("sizes") or {}
    if sidecar.get("row") != identity or not isinstance(files, list) or not isinstance(sizes, dict):
        return set()
    return {name for name in files if storage.listed_whole(listing, name, sizes.get(name))}


def _read_sidecars(out: str, rows: list[dict], names: Collection[str]) -> dict[str, dict]:
    """The records (DIR/IMAGE_ID.METHOD.json) of the ``rows`` that have one, by result key; an unreadable one is
    as none (its files are written again)."""
    keys = [k for k in (result_key(r["image_id"], r["method"]) for r in rows) if f"{k}.json" in names]
    raw = storage.read_many([storage.join(out, f"{k}.json") for k in keys]) if keys else {}
    records = {}
    for key in keys:
        try:
            record = json.loads(raw.get(storage.join(out, f"{key}.json")) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(record, dict):
            records[key] = record
    return records
