"""Edits of a run's images: each image's pivot moved along latent directions and rendered through the image's own
tuned generator and through the original one, side by side, with a table of how much of each edit the tuning kept.

    OUT/strips/IMAGE.METHOD.DIRECTION.png   two rows of cells: the input, then the original generator's edit at each
                                            strength (top) and the tuned generator's (bottom); columns labelled with
                                            the strength and its unit, rows with the generator (for w and wplus,
                                            which tune nothing, the bottom row is the pivot's edit through the
                                            original generator again, labelled "pivot (w), no tuning")
    OUT/gifs/IMAGE.METHOD.DIRECTION.gif     (``gif``) the tuned edit through the strengths and back
    OUT/rows/part-KEY.parquet               the rows of one batch of images, written after their strips
    OUT/edits.parquet                       every row in OUT (EDITS_SCHEMA), gathered from the parts (gather_edits)

OUT is ``RUN/edits`` by default. DIRECTION is the direction's name (gani_core.directions): an edit restricted to
some style inputs (``--layers``) is another direction, whose name carries them (``factor-hue.L0-3``), so that it
never overwrites the edit of every layer; its rows' ``layers`` says which ("0-3"; null: every one).

A row is one image x method x direction x strength, with the metrics of the registry's ``edit`` group
(gani_core.metric_registry: each defined there once): ``lpips_to_original_edit`` is LPIPS (alex) between the tuned
generator's render of ``w_pivot + s * offset`` and the original generator's render of the same latent: 0 where the tuned
generator edits as the original does (always, for w and wplus, which tune nothing); ``factor_change``
(``factor_change_original``) is, where the generator carries a factor probe and the direction is one of its factors
(``factor:NAME``), the change of that factor the probe reads between strength 0 and ``s`` on the tuned (original)
render, in the probe's normalised units; null otherwise. ``id_similarity_edit`` is the identity the edit keeps: the
cosine similarity of dlib's face descriptors (gani_core.metrics.aligned_face_descriptor) of the tuned render at ``s``
and at 0, for an image whose run measured identity (its row's ``id_similarity`` is not null: inverted with ``--align
ffhq`` or ``--identity``); null otherwise, where a render has no descriptor, and where dlib is not installed here.
Strength 0 is rendered, once per image x direction, where a factor change or the identity needs it.

The edit of image k at strength s renders ``w_k + s * offset`` with ``W + ΔW_k``: the K images of a batch render all
the strengths of a direction together (measure.render_tuned: one vmapped call on a GPU, one image at a time on a
CPU, where that is faster), without copying the generator; the original generator renders them in plain batches, and
LPIPS compares every pair of the batch in one call; the identity takes one face descriptor per tuned render. An
edit equals rendering the same latent through ``deltas.apply_deltas(G, ΔW_k)`` to float rounding
(tests/test_edit.py).

Resume rule: the rows of an image x method x direction are kept when they are ok and carry this request's
``edit_key``: the image's row (``finished``, ``config_hash``, ``checkpoint_sha256``), the direction (its spec, name,
unit and a digest of its offset: another file, ``--layers`` or ``--raw`` is another offset) and the strengths; with
``gif``, when a GIF was made too (rows written before a metric or ``layers`` existed are kept: a missing column
reads as null).
Everything else is computed again and replaces them: the newest rows of an image x method x direction win, as a
group, and its strip is overwritten. So another set of strengths (or ``gif``, or a result inverted again) for the
same image x method x direction replaces the earlier edit, rows, strip and GIF (a GIF left from a ``gif`` request is
deleted when its group is replaced without one); to keep both, edit into another OUT. ``gani edit`` counts these
strips as replaced. An image whose pivot or deltas cannot be read fails alone, with one failed row per direction x
strength whose error names its deltas file; the others of its batch complete. So does an image x direction whose
original or tuned render holds NaN or infinity (``the render at strength S is not finite``: a latent beyond what
float32 renders), never an ok row of NaN metrics. A request interrupted (Ctrl-C) in the middle of a batch still
writes the rows of the strips it finished as a part, so a rerun keeps every strip it made.

One name, one direction: OUT is not a run folder (:func:`check_out`), and a direction whose name OUT's rows (of any
image) give to another spec is refused before anything is written (:func:`check_names_free`), rather than overwrite
the strips and rows of another file of the same stem.

Entry points (the CLI's ``gani edit``, and a Prefect task):

    method, rows = select_rows(run_rows, image_ids, method, run)    # the run's ok rows to edit (GaniError if none)
    ckpt = checkpoint_of(rows)                                      # the checkpoint they were tuned from
    plan = EditPlan(directions, strengths, gif)                     # directions: gani_core.directions
    missing = check_outputs(run, rows, named)                       # images without deltas (GaniError if all)
    todo = pending(out.stored_rows(), rows, plan)                   # image_id -> direction names to compute
    new = edit_images(G, run, out, rows, plan, todo, batch_size, missing=missing)   # strips, parts; the rows
    table = gather_edits(out)                                       # edits.parquet: every row in OUT
    result = run_edits(G, run, out, rows, plan, batch_size)         # all of the above, in this process

    original, tuned = render_edits(G, pivots, stack_deltas(deltas), offset, strengths)   # [K, S, 3, R, R] each
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import json
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from gani_core import storage
from gani_core.checkpoints.ref import CheckpointRef, recorded_checkpoint
from gani_core.defaults import TUNING_METHODS
from gani_core.editing import factor_tools
from gani_core.errors import DeltasError, GaniError
from gani_core.factors import FactorProbe
from gani_core.invert_files import halved_on_oom
from gani_core.measure import lpips_pairs, render_original, render_tuned
from gani_core.metric_registry import check_names, names, parquet_field
from gani_core.metrics import aligned_face_descriptor, cosine_or_none, finite_or_none, to_unit
from gani_core.networks import Generator
from gani_core.render import PNG_COMPRESS_LEVEL, grid_png
from gani_core.run_folder import (
    CLOCK_MARGIN,
    PREVIEW_CELL_MAX,
    PREVIEW_CELL_MIN,
    RUN_ENTRIES,
    RunFolder,
    result_key,
)

if TYPE_CHECKING:
    from gani_core.directions import EditDirection

EDITS_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("method", pa.string()),
    ("direction", pa.string()),                 # the direction's short name (EditDirection.name): in file names
    ("spec", pa.string()),                      # the direction as given (--direction)
    ("strength", pa.float64()),                 # in ``unit``s (failed rows too: one per strength)
    ("unit", pa.string()),                      # "step" | "sigma" | "W unit" | "raw"
    ("layers", pa.string()),                    # the style inputs edited ("0-3", "5"), null for every one (and in
                                                # rows written before the column: every one, as then named)
    *[parquet_field(n) for n in names("edit")],     # the registry's edit metrics at this strength (module docstring)
    ("status", pa.string()), ("error", pa.string()),
    ("strip", pa.string()),                     # strips/IMAGE.METHOD.DIRECTION.png, relative to OUT (ok rows)
    ("gif", pa.string()),                       # gifs/IMAGE.METHOD.DIRECTION.gif, or null without one
    ("edit_key", pa.string()),                  # what the rows were computed from (the resume rule)
    ("checkpoint_sha256", pa.string()), ("config_hash", pa.string()),
    ("finished", pa.float64()),                 # when the rows of this image x method x direction were made
])

KEY_COLUMNS = ("image_id", "method", "direction", "strength", "status", "edit_key", "finished")   # every edit row's
FACTOR_SPEC = "factor:"         # the spec of a generator's factor direction (gani_core.directions): factor:NAME
GIF_FRAME_MS = 250              # how long each strength is shown in a GIF
ROW_LABELS = ("original", "tuned")     # a strip's rows; for w and wplus the bottom one is NOT_TUNED_LABEL's
NOT_TUNED_LABEL = "pivot ({method}), no tuning"     # what the bottom row of a method that tunes nothing shows

Group = tuple[str, str, str]    # (image_id, method, direction name): the rows kept or replaced together
OnBatch = Callable[[int], None]  # called after each batch with the number of its images


# ------------------------------------------------------------------------------------------------------------------
# What to edit


def select_rows(rows: Sequence[dict], image_ids: Sequence[str], method: str | None, run: str) -> tuple[str, list[dict]]:
    """The method and the run's ok rows of it to edit: of ``image_ids``, in their order, or every ok image of the
    method. Without ``method``: the first tuning method (gani, then pti) with an ok row among them. Raises GaniError
    naming the run for an image id not in the run, an image without an ok row of the method, or no ok row at all."""
    ids = list(dict.fromkeys(image_ids))
    known = {r["image_id"] for r in rows}
    for image_id in ids:
        if image_id not in known:
            raise GaniError(f"{run}: no image {image_id!r} in this run; `gani show {run}` lists its images")
    ok = [r for r in rows if r["status"] == "ok" and (not ids or r["image_id"] in ids)]
    methods = [method] if method is not None else [m for m in TUNING_METHODS if any(r["method"] == m for r in ok)]
    if not methods:
        which = f"image(s) {', '.join(map(repr, ids))}" if ids else "any image"
        raise GaniError(f"{run}: no successful tuned result ({', '.join(TUNING_METHODS)}) for {which}; --method w or "
                        f"wplus edits a pivot alone (see `gani show {run}`)")
    chosen = methods[0]
    found = {r["image_id"]: r for r in ok if r["method"] == chosen}
    if not ids:
        if not found:
            raise GaniError(f"{run}: no successful {chosen} result in this run; see `gani show {run}`")
        return chosen, list(found.values())
    for image_id in ids:
        if image_id not in found:
            raise GaniError(f"{run}: no successful {chosen} result for image {image_id!r}; see `gani show {run}`")
    return chosen, [found[i] for i in ids]


def checkpoint_of(rows: Sequence[dict]) -> CheckpointRef:
    """The checkpoint ``rows`` were tuned from (resolved from their ``checkpoint`` spec), which must still be that
    checkpoint: another file under the same name (its sha256 differs) would give the deltas to weights they were not
    made for. Rows of several checkpoints are refused too (GaniError)."""
    shas = sorted({r["checkpoint_sha256"] for r in rows})
    if len(shas) > 1:
        raise GaniError(f"these results come from {len(shas)} checkpoints ({', '.join(s[:12] for s in shas)}); give "
                        "the ids of images tuned from one of them")
    return recorded_checkpoint(rows[0]["checkpoint"], rows[0]["checkpoint_sha256"])


def check_outputs(run: RunFolder, rows: Sequence[dict], named: bool = False) -> set[str]:
    """The ids of the images among ``rows`` whose deltas file (which holds the pivot) is missing, from one listing
    of deltas/: they fail alone. Raises GaniError when none of them has one (nothing could be edited): naming the
    images and their files when the user ``named`` them, else asking whether RUN is a whole run folder."""
    on_disk = storage.names_under(run.path("deltas"))
    files = {r["image_id"]: f"deltas/{result_key(r['image_id'], r['method'])}.parquet" for r in rows}
    missing = {i for i, name in files.items() if name.removeprefix("deltas/") not in on_disk}
    if missing and len(missing) == len(files):
        if named:
            gone = [i for i in files if i in missing]
            raise GaniError(f"{run.uri}: no deltas file for image(s) {', '.join(map(repr, gone))} "
                            f"({', '.join(files[i] for i in gone)}: the weight deltas and pivot to edit); rerun the "
                            "`gani invert` command of this run: it computes again a result whose deltas file is gone")
        raise GaniError(f"{run.uri}: no deltas/ file for the {len(missing)} result(s) to edit (each holds the "
                        "image's weight deltas and pivot); is it a whole run folder?")
    return missing


@dataclass(frozen=True)
class EditPlan:
    """What every image of a request gets: each direction at each strength (``0`` added to the renders where a
    factor change needs it), and with ``gif`` an animation of the tuned edit."""

    directions: tuple[EditDirection, ...]
    strengths: tuple[float, ...]
    gif: bool = False

    def __post_init__(self) -> None:
        names = [d.name for d in self.directions]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise GaniError(f"two --direction give the same name {twice}: their strips would overwrite each other")
        if not self.directions or not self.strengths:
            raise GaniError("an edit needs at least one direction and one strength")

    @functools.cached_property
    def digests(self) -> dict[str, str]:
        """Each direction's offset, hashed (part of its edit key): another file, layers or scaling is another key."""
        return {d.name: hashlib.sha256(d.offset.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()
                for d in self.directions}

    def edit_key(self, row: dict, direction: EditDirection) -> str:
        """What the rows of ``row``'s image x ``direction`` are computed from (the module docstring's resume rule)."""
        payload = {"image": [row.get("finished"), row.get("config_hash"), row.get("checkpoint_sha256")],
                   "direction": [direction.spec, direction.name, direction.unit, self.digests[direction.name]],
                   "strengths": [float(s) for s in self.strengths]}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def default_directions(G: Generator) -> list[str]:
    """The direction an edit takes when none is given: ``factor:hue`` on a generator carrying a hue factor (the
    built-in one), else ``pca:0``, the principal direction of W every generator has."""
    edits = G.factor_edits
    return ["factor:hue"] if edits is not None and "hue" in edits.names else ["pca:0"]


def parse_plan(G: Generator, checkpoint_sha256: str, specs: Sequence[str], strengths: Sequence[float],
               layers: str | None = None, raw: bool = False, gif: bool = False) -> EditPlan:
    """The plan of an edit request on ``G``: each direction spec at the ``layers`` (gani_core.directions), the
    strengths as a set in ascending order (a repeat adds nothing; the order given changes neither the strip nor the
    edit key). Raises a one-line DirectionsError (or GaniError, for two directions of one name) for what cannot be
    used."""
    from gani_core.directions import parse_directions, parse_layers

    parsed = parse_directions(list(specs), G, checkpoint_sha256, layers=parse_layers(layers, G.num_ws), raw=raw)
    return EditPlan(tuple(parsed), tuple(sorted({float(s) + 0.0 for s in strengths})), gif=gif)   # -0.0 is 0.0


@dataclass(frozen=True)
class PreparedEdit:
    """An edit request checked (:func:`prepare_edit`): what it edits, with what, into where."""

    method: str
    rows: list[dict]            # the run's ok rows to edit
    ckpt: CheckpointRef
    G: Generator
    out: EditFolder
    specs: tuple[str, ...]      # the directions' specs (or the default's), a local file's made absolute
    plan: EditPlan
    missing: set[str]           # images without a deltas file: they fail alone
    stored: dict[Group, list[dict]] = field(default_factory=dict)   # out's rows (EditFolder.stored_rows), read once


def prepare_edit(run: RunFolder, run_rows: Sequence[dict], specs: Sequence[str] | None,
                 strengths: Sequence[str | float], load: Callable[[CheckpointRef], Generator],
                 method: str | None = None, image_ids: Sequence[str] = (), layers: str | None = None,
                 raw: bool = False, gif: bool = False, out_uri: str | None = None,
                 out_option: str = "--out") -> PreparedEdit:
    """An edit of ``run_rows`` (the run's stored rows) checked piece by piece before anything is written, each
    refusal one line (GaniError, ValueError, OSError): the strengths, the rows to edit (:func:`select_rows`) and
    their checkpoint (:func:`checkpoint_of`), the output folder (``out_uri``, default RUN/edits, named
    ``out_option`` in the error: not a file, not a run folder, :func:`check_out`), the directions parsed with the
    checkpoint's generator (``load(ckpt)``; without ``specs``, :func:`default_directions`; a spec given twice counts
    once), each direction's name free in the output folder (:func:`check_names_free`: one name, one direction), the
    deltas files (:func:`check_outputs`: one listing). What ``gani edit`` and the edit-dataset flow both do first."""
    from gani_core.directions import parse_strengths

    values = parse_strengths([str(s) for s in strengths])     # a float from a UI may be nan or inf
    method, rows = select_rows(run_rows, list(image_ids), method, run.uri)
    ckpt = checkpoint_of(rows)
    out = EditFolder(out_uri or run.path("edits"))
    stored = check_out(out, out_option)
    G = load(ckpt)
    chosen = tuple(specs) if specs else tuple(default_directions(G))     # repeats: once each (parse_directions)
    plan = parse_plan(G, ckpt.sha256, chosen, values, layers, raw, gif)
    check_names_free(stored, plan, out, out_option)
    missing = check_outputs(run, rows, named=bool(image_ids))
    return PreparedEdit(method, rows, ckpt, G, out, tuple(d.spec for d in plan.directions), plan, missing, stored)




def check_out(out: EditFolder, option: str = "--out") -> dict[Group, list[dict]]:
    """``out``'s stored rows (:meth:`EditFolder.stored_rows`), once it is known to be a folder (or nothing yet) and
    not a run folder: one holding RUN_ENTRIES, or rows/ parts that are no edit rows (a run's). Raises a one-line
    GaniError (or OSError: a file) naming it as ``option``."""
    storage.check_folder(out.uri, option)
    try:
        if RUN_ENTRIES.isdisjoint(storage.names_under(out.uri)):
            return out.stored_rows()
    except NotEditRowsError:
        pass
    raise GaniError(f"{option} {out.uri} is a run folder; edits go to a folder of their own (default RUN/edits)")


def check_names_free(stored: Mapping[Group, list[dict]], plan: EditPlan, out: EditFolder,
                     option: str = "--out") -> None:
    """One name, one direction: raises a one-line GaniError when a direction of ``plan`` has a name whose
    ``stored`` rows (of any image) carry another spec, whose strips and rows it would overwrite (two files of one
    stem: ``a/smile.npy``, ``b/smile.npy``). A spec recorded as a relative path (before specs were made absolute)
    is read from the current folder."""
    from gani_core.directions import local_spec

    specs: dict[str, set[str]] = {}
    for (_, _, name), group in stored.items():
        specs.setdefault(name, set()).update(r["spec"] for r in group if r.get("spec") is not None)
    for d in plan.directions:
        other = sorted(s for s in specs.get(d.name, ()) if s != d.spec
                       and not (s.lower().endswith(".npy") and local_spec(s) == d.spec))
        if not other:
            continue
        spec = other[0]
        raise GaniError(f"direction name {d.name!r} in {out.uri} is {spec}'s; {d.spec} would replace it: rename the "
                        f"file or edit into another {option}")


def pending(stored: Mapping[Group, list[dict]], rows: Sequence[dict], plan: EditPlan) -> dict[str, list[str]]:
    """image_id -> the names of the directions whose edits are to be computed (those ``stored`` does not hold for
    this plan: the resume rule); images with nothing to compute are left out."""
    todo: dict[str, list[str]] = {}
    for row in rows:
        names = [d.name for d in plan.directions
                 if not _kept(stored.get((row["image_id"], row["method"], d.name)), plan.edit_key(row, d), plan.gif)]
        if names:
            todo[row["image_id"]] = names
    return todo


def _kept(group: list[dict] | None, key: str, gif: bool) -> bool:
    return bool(group) and all(r["status"] == "ok" and r["edit_key"] == key and (r["gif"] or not gif) for r in group)


# ------------------------------------------------------------------------------------------------------------------
# The edits folder


class EditFolder:
    """OUT of ``gani edit`` (the module docstring's layout): its paths, its parts and its table."""

    def __init__(self, uri: str) -> None:
        self.uri = RunFolder(uri).uri      # a local folder kept absolute, as a run folder is

    def __repr__(self) -> str:
        return f"EditFolder({self.uri!r})"

    def path(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    @property
    def table_uri(self) -> str:
        return self.path("edits.parquet")

    @staticmethod
    def strip_name(image_id: str, method: str, direction: str) -> str:
        return f"strips/{result_key(image_id, method)}.{direction}.png"

    @staticmethod
    def gif_name(image_id: str, method: str, direction: str) -> str:
        return f"gifs/{result_key(image_id, method)}.{direction}.gif"

    def write_part(self, rows: list[dict]) -> str | None:
        """The rows of one batch as rows/part-KEY.parquet, written after their strips (the same rows computed again
        replace their part); its URI, or None for no rows."""
        if not rows:
            return None
        keys = sorted({f"{r['image_id']}.{r['method']}.{r['direction']}@{r['edit_key']}" for r in rows})
        uri = self.path("rows", f"part-{hashlib.sha256(chr(10).join(keys).encode()).hexdigest()[:20]}.parquet")
        storage.write_parquet(uri, edits_table(rows))
        return uri

    def stored_rows(self) -> dict[Group, list[dict]]:
        """Every stored row, grouped by image x method x direction, the newest group winning: edits.parquet, and
        the parts under rows/ written since it (a part that cannot be parsed was never whole, and is skipped).
        Raises NotEditRowsError (one line) for a table without the edit columns (KEY_COLUMNS: a run's rows)."""
        table_time = storage.modified_under(self.uri).get("edits.parquet")
        entries = storage.modified_under(self.path("rows"))
        parts = sorted(n for n, t in entries.items() if n.startswith("part-") and n.endswith(".parquet")
                       and (table_time is None or t >= table_time - CLOCK_MARGIN))
        found = _edit_rows(storage.read_parquet(self.table_uri), self.table_uri) if table_time is not None else []
        for uri, data in (storage.read_many([self.path("rows", n) for n in parts]) if parts else {}).items():
            try:
                table = pq.read_table(pa.BufferReader(data)) if data else None
            except (pa.ArrowInvalid, OSError):
                continue
            found += _edit_rows(table, uri) if table is not None else []
        groups: dict[Group, list[dict]] = {}
        for row in sorted(found, key=lambda r: r.get("finished") or 0.0):
            key = (row["image_id"], row["method"], row["direction"])
            group = groups.get(key)
            if group is None or group[0]["finished"] != row["finished"]:
                groups[key] = [row]     # a newer group replaces the older
            elif all(r["strength"] != row["strength"] for r in group):     # a part the table holds already
                group.append(row)
        return dict(sorted(groups.items()))


def _edit_rows(table: pa.Table, uri: str) -> list[dict]:
    """The rows of the table read from ``uri``; NotEditRowsError when it lacks an edit column (KEY_COLUMNS)."""
    missing = [c for c in KEY_COLUMNS if c not in table.column_names]
    if missing:
        raise NotEditRowsError(f"{uri} holds no edit rows (no {', '.join(missing)} column): a run's rows? edits go "
                               "to a folder of their own")
    return table.to_pylist()


class NotEditRowsError(GaniError):
    """A table under an edits folder whose rows are no edits (a run folder's, given as the edits folder)."""


def edits_table(rows: Iterable[dict]) -> pa.Table:
    """Rows as an EDITS_SCHEMA table (a key that is no column raises KeyError, rather than being left out)."""
    rows = list(rows)
    check_names({k for r in rows for k in r}, EDITS_SCHEMA.names, "edits.parquet")
    return pa.Table.from_pydict({n: [r.get(n) for r in rows] for n in EDITS_SCHEMA.names}, schema=EDITS_SCHEMA)


def gather_edits(out: EditFolder) -> list[dict]:
    """edits.parquet: every row in ``out`` (the newest group of each image x method x direction), written once;
    the rows, in image, method, direction order."""
    rows = [r for group in out.stored_rows().values() for r in group]
    storage.write_parquet(out.table_uri, edits_table(rows))
    return rows


# ------------------------------------------------------------------------------------------------------------------
# Editing


def batches(items: Sequence[dict], size: int) -> Iterator[list[dict]]:
    """``items``, ``size`` at a time (the batches of edit_images, and those a flow would hand to its tasks)."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


@dataclass
class _Loaded:
    row: dict
    pivot: torch.Tensor                 # [num_ws, w_dim] on G's device
    deltas: dict[str, torch.Tensor]     # by parameter name, on G's device
    input: torch.Tensor | None          # [3, C, C] in [0, 1]: the input cell of the run's preview (None: none)


def edit_images(G: Generator, run: RunFolder, out: EditFolder, rows: Sequence[dict], plan: EditPlan,
                todo: Mapping[str, Collection[str]] | None = None, batch_size: int = 1,
                on_batch: OnBatch | None = None, missing: Collection[str] = ()) -> list[dict]:
    """Edit ``rows`` (ok rows of ``run``) with ``plan``, ``batch_size`` images at a time: ``todo[image_id]`` names the
    directions to compute (default: all). Each batch's strips (and GIFs) are written, then its rows as one part of
    ``out``; returns the rows. An image in ``missing`` (check_outputs), or whose pivot or deltas cannot be read, fails
    alone. ``on_batch(n)`` is called after each batch of n images. Interrupted (KeyboardInterrupt) in the middle of
    a batch, the rows of the strips it finished are written as a part before the interrupt goes on: a rerun keeps
    them. Without ``plan.gif``, the GIF an image x direction of a batch had from an earlier request is deleted once
    the batch's part is written (its new rows say it has none)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    names = {r["image_id"]: list(todo[r["image_id"]]) if todo is not None else [d.name for d in plan.directions]
             for r in rows if todo is None or r["image_id"] in todo}
    work = [r for r in rows if r["image_id"] in names]
    tools = factor_tools(G)
    probe = copy.deepcopy(tools[1]).to(G.mapping.w_avg.device) if tools is not None else None
    gifs = storage.names_under(out.path("gifs")) if work and not plan.gif else set()     # one listing
    new: list[dict] = []
    finished: list[dict] = []           # the rows of each strip of a batch as it is written, for an interrupt
    for batch in batches(work, batch_size):
        finished.clear()
        try:
            done = halved_on_oom(G, batch, lambda part: _edit_loaded(G, run, out, part, plan, names, probe,
                                                                      set(missing), finished))
        except KeyboardInterrupt:
            with contextlib.suppress(GaniError, OSError, ValueError):   # not saved: the rerun computes them again
                _write_part(out, _newest(finished), gifs)
            raise
        _write_part(out, done, gifs)    # last: a row in a part means its strip is whole
        new += done
        if on_batch is not None:
            on_batch(len(batch))
    return new


def _write_part(out: EditFolder, rows: list[dict], gifs: set[str]) -> None:
    """``rows`` as a part of ``out``, then the GIFs among ``gifs`` (names under gifs/) of their ok groups that have
    none now deleted (a GIF of an earlier request, which these rows replace)."""
    out.write_part(rows)
    stale = {PurePosixPath(out.gif_name(r["image_id"], r["method"], r["direction"])).name for r in rows
             if r["status"] == "ok" and not r["gif"]}
    for name in sorted(stale & gifs):
        storage.remove(out.path("gifs", name))
        gifs.discard(name)


def _newest(rows: Sequence[dict]) -> list[dict]:
    """``rows`` with the newest rows of each image x method x direction only (a batch done again in halves, out of
    memory, made some twice)."""
    latest: dict[Group, float] = {}
    for r in rows:
        key = (r["image_id"], r["method"], r["direction"])
        latest[key] = max(latest.get(key, r["finished"]), r["finished"])
    return [r for r in rows if r["finished"] == latest[(r["image_id"], r["method"], r["direction"])]]


@torch.no_grad()
def _edit_loaded(G: Generator, run: RunFolder, out: EditFolder, batch: list[dict], plan: EditPlan,
                 names: Mapping[str, list[str]], probe: FactorProbe | None, missing: set[str],
                 finished: list[dict]) -> list[dict]:
    """Each image of ``batch`` read (one that cannot be read fails alone), then edited along each direction; the
    rows, each image x direction's also added to ``finished`` as soon as its strip is written."""
    loaded, rows = [], []
    previews = storage.read_many([run.preview_uri(r["image_id"], r["method"]) for r in batch])   # one call
    for row in batch:
        try:
            if row["image_id"] in missing:
                raise FileNotFoundError(f"{run.deltas_uri(row['image_id'], row['method'])}: no such file")
            loaded.append(_load(G, run, row, previews[run.preview_uri(row["image_id"], row["method"])]))
        except (GaniError, ValueError, OSError, KeyError) as exc:
            wanted = [d for d in plan.directions if d.name in names[row["image_id"]]]
            error = str(exc) if isinstance(exc, DeltasError) else f"{type(exc).__name__}: {exc}"   # names its file
            rows += failed_rows(row, wanted, plan, error)
    finished += rows
    stacked = stack_deltas([x.deltas for x in loaded]) if loaded else {}
    for direction in plan.directions:
        chosen = [k for k, x in enumerate(loaded) if direction.name in names[x.row["image_id"]]]
        if chosen:
            index = torch.tensor(chosen, device=G.mapping.w_avg.device)
            deltas = {n: d if len(chosen) == len(loaded) else d[index] for n, d in stacked.items()}
            rows += _edit_direction(G, out, [loaded[k] for k in chosen], deltas, direction, plan, probe, finished)
    return rows


def _load(G: Generator, run: RunFolder, row: dict, preview: bytes | None) -> _Loaded:
    """One image's pivot and deltas (checked against G: a name that is no parameter, another shape, a non-finite
    value is a ValueError), on G's device, and the input cell of its ``preview`` (PNG bytes; None: none)."""
    image_id, method = row["image_id"], row["method"]
    device = G.mapping.w_avg.device
    deltas, pivot = run.read_result(image_id, method)       # one read of the deltas file, which holds both
    pivot = pivot.reshape(G.num_ws, G.w_dim)                # gani before issue 18 kept it flat
    if not bool(torch.isfinite(pivot).all()):
        raise ValueError(f"{image_id}.{method}: the stored pivot is not finite")
    params = dict(G.named_parameters())
    for name, delta in deltas.items():
        if name not in params or tuple(delta.shape) != tuple(params[name].shape):
            raise ValueError(f"{image_id}.{method}: layer {name!r} of shape {list(delta.shape)} is not a parameter "
                             "of this generator")
        if not bool(torch.isfinite(delta).all()):
            raise ValueError(f"{image_id}.{method}: layer {name!r}: delta has NaN or inf entries")
    return _Loaded(row, pivot.to(device), {n: d.to(device) for n, d in deltas.items()}, _preview_input(preview))


def _preview_input(data: bytes | None) -> torch.Tensor | None:
    """The input cell of a preview (previews/IMAGE.METHOD.png: its first of four square cells), [3, C, C] in [0, 1];
    None when there is no preview or it is not such a grid (the strip then shows a blank input)."""
    if data is None:
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            cell = img.width // 4
            if cell < 1 or img.height < cell:
                return None
            pixels = np.asarray(img.convert("RGB").crop((0, 0, cell, cell)))
    except OSError:
        return None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255


def _edit_direction(G: Generator, out: EditFolder, images: list[_Loaded], deltas: Mapping[str, torch.Tensor],
                    direction: EditDirection, plan: EditPlan, probe: FactorProbe | None,
                    finished: list[dict]) -> list[dict]:
    """The K images' edits along ``direction`` at every strength, rendered together (``deltas``: theirs, stacked);
    their strips and rows (each image's also added to ``finished`` once its strip is written)."""
    factor = _factor_index(direction, probe)
    faces = _identity_measured(images)
    strengths = list(plan.strengths)
    if (factor is not None or any(faces)) and 0.0 not in strengths:
        strengths.append(0.0)       # rendered for the factor change and the identity, not shown
    original, tuned = render_edits(G, torch.stack([x.pivot for x in images]), deltas, direction.offset, strengths)
    unfinite = _not_finite(original, tuned, strengths)
    faces = [face and k not in unfinite for k, face in enumerate(faces)]
    shown = len(plan.strengths)
    zero = strengths.index(0.0) if 0.0 in strengths else None
    measured = {"lpips_to_original_edit": lpips_pairs(tuned[:, :shown], original[:, :shown]).double().numpy(),
                "id_similarity_edit": _identity_kept(tuned, zero, faces)[:, :shown]}
    if factor is not None:
        measured["factor_change"] = _factor_changes(probe, tuned, factor, zero)[:, :shown].double().numpy()
        measured["factor_change_original"] = _factor_changes(probe, original, factor, zero)[:, :shown].double().numpy()
    check_names(measured, names("edit"), "edit metrics")
    rows = []
    for k, x in enumerate(images):
        if k in unfinite:
            made = failed_rows(x.row, [direction], plan, f"the render at strength {unfinite[k]:g} is not finite")
            rows += made
            finished += made
            continue
        try:
            files = _write_outputs(out, x, direction, plan, G.label, original[k, :shown], tuned[k, :shown])
            made = [_row(x.row, direction, plan, strength, {n: float(v[k, i]) for n, v in measured.items()}, files)
                    for i, strength in enumerate(plan.strengths)]
        except (GaniError, ValueError, OSError) as exc:
            made = failed_rows(x.row, [direction], plan, f"{type(exc).__name__}: {exc}")
        rows += made
        finished += made
    return rows


def _not_finite(original: torch.Tensor, tuned: torch.Tensor, strengths: Sequence[float]) -> dict[int, float]:
    """Image index -> the first strength at which its original or tuned render [K, S, 3, R, R] holds NaN or
    infinity (a latent pushed beyond what float32 renders): its edit fails, never ok with NaN metrics."""
    finite = (original.flatten(2).isfinite().all(2) & tuned.flatten(2).isfinite().all(2)).cpu()     # [K, S]
    return {k: strengths[int((~row).nonzero()[0])] for k, row in enumerate(finite) if not row.all()}


@torch.no_grad()
def render_edits(G: Generator, pivots: torch.Tensor, deltas: Mapping[str, torch.Tensor], offset: torch.Tensor,
                 strengths: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The edits of K images: ``pivots[k] + s * offset`` for each strength s, rendered (const noise) by the original
    generator and by image k's tuned one (``W + deltas[name][k]``, never a copy of G): (original, tuned), each
    [K, S, 3, R, R] on G's device, about [-1, 1].

    pivots [K, num_ws, w_dim]; deltas {parameter name: [K, ...]} on G's device (:func:`stack_deltas`; empty for w
    and wplus, which tune nothing); offset [num_ws, w_dim] (or [w_dim]). Image k's renders are its edits rendered
    through ``deltas.apply_deltas(G, its deltas)``, to float rounding, whatever else is in the batch."""
    device = G.mapping.w_avg.device
    s = torch.tensor(list(strengths), dtype=torch.float32, device=device)
    pivots = pivots.to(device=device, dtype=torch.float32)
    ws = pivots[:, None] + s[None, :, None, None] * offset.to(pivots)                    # [K, S, num_ws, w_dim]
    return render_original(G, ws), render_tuned(G, dict(deltas), ws)


def stack_deltas(deltas: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """K images' deltas by parameter name, stacked: {name: [K, ...]} over every layer any of them has (zeros where
    one has none: images of one method with different configurations)."""
    names = list(dict.fromkeys(n for d in deltas for n in d))
    like = {n: d[n] for d in deltas for n in d}
    return {n: torch.stack([d[n] if n in d else torch.zeros_like(like[n]) for d in deltas]) for n in names}


def _factor_index(direction: EditDirection, probe: FactorProbe | None) -> int | None:
    """Which of the probe's factors ``direction`` edits (a spec ``factor:NAME``), or None."""
    spec = direction.spec.strip()
    if probe is None or not spec.startswith(FACTOR_SPEC):
        return None
    factor = spec.removeprefix(FACTOR_SPEC)
    return probe.factor_names.index(factor) if factor in probe.factor_names else None


def _factor_changes(probe: FactorProbe, renders: torch.Tensor, factor: int, zero: int) -> torch.Tensor:
    """The probe's reading of ``factor`` on renders [K, S, 3, R, R], minus its reading at strength index ``zero``:
    [K, S] on the CPU."""
    read = probe(renders.flatten(0, 1).clamp(-1, 1)).view(*renders.shape[:2], -1)[..., factor]
    return (read - read[:, zero : zero + 1]).cpu()


def _identity_measured(images: Sequence[_Loaded]) -> list[bool]:
    """Which images get ``id_similarity_edit``: those whose run measured identity (their row's ``id_similarity`` is
    not null), where dlib is installed (else none: never an error)."""
    from gani_core.faces.models import available

    wanted = [x.row.get("id_similarity") is not None for x in images]
    return wanted if any(wanted) and available() else [False] * len(images)


def _identity_kept(tuned: torch.Tensor, zero: int | None, faces: Sequence[bool]) -> np.ndarray:
    """``id_similarity_edit`` of K images from their tuned renders [K, S, 3, R, R] (about [-1, 1]): [K, S] float64,
    the cosine similarity of each render's face descriptor and that of the render at strength index ``zero`` (one
    descriptor per render); NaN (null) for an image not in ``faces`` and where a render has no descriptor."""
    kept = np.full(tuned.shape[:2], np.nan)
    for k, face in enumerate(faces):
        if not face:
            continue
        descriptors = [aligned_face_descriptor(render)[0] for render in to_unit(tuned[k]).cpu()]
        similarity = [cosine_or_none(d, descriptors[zero]) for d in descriptors]
        kept[k] = [np.nan if v is None else v for v in similarity]
    return kept


def _row(row: dict, direction: EditDirection, plan: EditPlan, strength: float, metrics: Mapping[str, float],
         files: dict[str, str | None]) -> dict:
    """The ok row of one image x direction x strength: its ``metrics`` (the registry's edit group; NaN or a name
    missing: null)."""
    fields = {
        "image_id": row["image_id"], "method": row["method"], "direction": direction.name, "spec": direction.spec,
        "strength": float(strength), "unit": direction.unit, "layers": direction.layers,
        **{n: metrics.get(n) for n in names("edit")},
        "status": "ok", "error": None, **files, "edit_key": plan.edit_key(row, direction),
        "checkpoint_sha256": row.get("checkpoint_sha256"), "config_hash": row.get("config_hash"),
    }
    return {k: finite_or_none(v) for k, v in fields.items()}


def failed_rows(row: dict, directions: Sequence[EditDirection], plan: EditPlan, error: str) -> list[dict]:
    """One failed row per direction x strength of an image that could not be edited, with the reason."""
    now = time.time()
    return [{"image_id": row["image_id"], "method": row["method"], "direction": d.name, "spec": d.spec,
             "strength": float(s), "unit": d.unit, "layers": d.layers, "status": "failed", "error": error,
             "edit_key": plan.edit_key(row, d), "checkpoint_sha256": row.get("checkpoint_sha256"),
             "config_hash": row.get("config_hash"), "finished": now}
            for d in directions for s in plan.strengths]


# ------------------------------------------------------------------------------------------------------------------
# Strips and GIFs


def _write_outputs(out: EditFolder, x: _Loaded, direction: EditDirection, plan: EditPlan, label: str,
                   original: torch.Tensor, tuned: torch.Tensor) -> dict:
    """The strip (and GIF) of one image x direction from its renders [S, 3, R, R]; their names under ``out`` and
    the time they were finished (the rows' ``finished``)."""
    image_id, method = x.row["image_id"], x.row["method"]
    cells, scale = _cells(torch.cat([to_unit(original), to_unit(tuned)]).cpu())
    size = cells.shape[-1]
    first = (_resized(x.input, size) if x.input is not None else torch.ones(3, size, size))[None]
    n = len(plan.strengths)
    columns = ["input" if x.input is not None else "input (no preview)",
               *(f"{_signed(s)} {_units(direction.unit, s)}" for s in plan.strengths)]
    layers = f" at layers {direction.layers}" if direction.layers is not None else ""
    caption = f"{image_id} | {method} | {direction.spec}{layers} | {label}"
    bottom = f"{ROW_LABELS[1]} ({method})" if method in TUNING_METHODS else NOT_TUNED_LABEL.format(method=method)
    png = strip_png(torch.cat([first, cells[:n], first, cells[n:]]), columns, (ROW_LABELS[0], bottom), caption, scale)
    strip = out.strip_name(image_id, method, direction.name)
    storage.write_bytes(out.path(strip), png)
    gif = None
    if plan.gif:
        gif = out.gif_name(image_id, method, direction.name)
        storage.write_bytes(out.path(gif), gif_bytes(cells[n:], scale))
    return {"strip": strip, "gif": gif, "finished": time.time()}


def _cells(images: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Images [N, 3, R, R] as a strip shows them, as previews do: small ones upscaled (nearest, by the whole factor
    returned) to at least PREVIEW_CELL_MIN px, large ones downscaled (area) to PREVIEW_CELL_MAX px."""
    size = images.shape[-1]
    if size > PREVIEW_CELL_MAX:
        return F.interpolate(images, size=(PREVIEW_CELL_MAX, PREVIEW_CELL_MAX), mode="area"), 1
    return images, -(-PREVIEW_CELL_MIN // size)


def _resized(image: torch.Tensor, size: int) -> torch.Tensor:
    """[3, C, C] at [3, size, size] (area when smaller: a preview's upscaled cell goes back to its pixels)."""
    if image.shape[-1] == size:
        return image
    mode = "area" if image.shape[-1] > size else "nearest"
    return F.interpolate(image[None], size=(size, size), mode=mode)[0]


def _units(unit: str, strength: float) -> str:
    """``unit`` as a label of ``strength`` says it: "1 step", "-2 steps", "+0.5 sigmas" ("raw" as it is)."""
    return unit if unit == "raw" or abs(strength) == 1 else f"{unit}s"


def _signed(strength: float) -> str:
    return "0" if strength == 0 else f"{strength:+g}"


def strip_png(cells: torch.Tensor, columns: Sequence[str], rows: Sequence[str], caption: str, scale: int) -> bytes:
    """Cells [len(rows) * len(columns), 3, C, C] in [0, 1], row by row, as PNG bytes: render.grid_png's labelled
    columns and caption, each cell upscaled ``scale`` times, with each row's label at its left. The labels are
    stored as text too ("Columns", "Rows": joined by " | "; "Description": the caption)."""
    grid = Image.open(io.BytesIO(grid_png(cells, caption, len(columns), columns, scale)))
    font = ImageFont.load_default()
    cell = cells.shape[-1] * scale
    width = int(max(font.getlength(r) for r in rows)) + 8
    img = Image.new("RGB", (width + grid.width, grid.height), "white")
    img.paste(grid, (width, 0))
    draw = ImageDraw.Draw(img)
    for i, label in enumerate(rows):
        draw.text((4, i * cell + cell // 2), label, fill="black", font=font, anchor="lm")
    info = PngInfo()
    for key in ("Columns", "Description"):
        if key in grid.text:
            info.add_text(key, grid.text[key])
    info.add_text("Rows", " | ".join(rows))
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def gif_bytes(frames: torch.Tensor, scale: int = 1) -> bytes:
    """Frames [S, 3, C, C] in [0, 1] as an endless GIF that goes through them and back (0, 1, ..., S-1, ..., 1),
    each upscaled ``scale`` times (nearest) and shown GIF_FRAME_MS."""
    order = [*range(len(frames)), *range(len(frames) - 2, 0, -1)]
    pixels = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if scale > 1:
        pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    images = [Image.fromarray(pixels[i]) for i in order]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=GIF_FRAME_MS, loop=0)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------------------------
# A whole request in this process


@dataclass
class EditResult:
    """What :func:`run_edits` did, counted per image x direction (a strip each)."""

    rows: list[dict]                        # this request's rows, kept and new
    written: int                            # strips made now
    kept: int                               # strips kept from an earlier request with the same inputs
    failed: int                             # image x direction that failed (failed rows)
    table: list[dict] = field(default_factory=list)     # edits.parquet: every row in OUT
    replaced: int = 0                       # of ``written``: strips that overwrote an earlier ok edit of theirs
                                            # (other strengths, gif or result: the newest group wins)


def run_edits(G: Generator, run: RunFolder, out: EditFolder, rows: Sequence[dict], plan: EditPlan,
              batch_size: int = 1, on_batch: OnBatch | None = None, missing: Collection[str] = (),
              on_start: Callable[[int], None] | None = None,
              stored: Mapping[Group, list[dict]] | None = None) -> EditResult:
    """Edit ``rows`` with ``plan`` here: keep what ``out`` already holds for the same inputs (the resume rule),
    compute the rest ``batch_size`` images at a time, then write edits.parquet. ``on_start(n)`` is told how many
    images are to be computed, ``on_batch`` (edit_images) how many each batch did. ``stored``: ``out``'s rows when
    the caller has read them (PreparedEdit.stored), else read here."""
    stored = out.stored_rows() if stored is None else stored
    todo = pending(stored, rows, plan)
    if on_start is not None:
        on_start(len(todo))
    new = edit_images(G, run, out, rows, plan, todo, batch_size, on_batch, missing)
    fresh = {(r["image_id"], r["direction"]) for r in new}
    kept = [r for row in rows for d in plan.directions if (row["image_id"], d.name) not in fresh
            for r in stored.get((row["image_id"], row["method"], d.name), [])]
    groups = {(r["image_id"], r["method"], r["direction"]): r["status"] for r in new}
    failed = sum(status != "ok" for status in groups.values())
    replaced = sum(status == "ok" and any(r["status"] == "ok" for r in stored.get(key, []))
                   for key, status in groups.items())
    kept_groups = len({(r["image_id"], r["direction"]) for r in kept})
    return EditResult([*kept, *new], len(groups) - failed, kept_groups, failed, gather_edits(out), replaced)


def strips_on_disk(out: EditFolder, rows: Sequence[dict], plan: EditPlan) -> int:
    """How many of the request's strips ``out`` holds now (what an interrupted request keeps)."""
    stored = out.stored_rows()
    return sum(_kept(stored.get((r["image_id"], r["method"], d.name)), plan.edit_key(r, d), plan.gif)
               for r in rows for d in plan.directions)
