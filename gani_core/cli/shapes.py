"""``gani shapes``: seeded images of the shapes domain (or of a kind out of it) and their true factors."""

from __future__ import annotations

import argparse
import json

import torch

from gani_core import storage
from gani_core.cli.common import check_output_folder
from gani_core.cli.parser import PLAIN_SHAPES_SEED, SPLIT_SEED
from gani_core.errors import GaniError
from gani_core.render import grid_png
from gani_core.shapes.domain import FACTOR_NAMES, sample_images, to_physical
from gani_core.shapes.out_of_domain import IN_DOMAIN, KINDS, sample_kind


def run(args: argparse.Namespace) -> int:
    if args.list_kinds:
        width = max(map(len, KINDS))
        print("\n".join(f"{name:<{width}}  {kind.description}" for name, kind in KINDS.items()))
        return 0
    if args.out is None:
        raise GaniError("give a folder or URI to write to (OUT), or --list-kinds")
    check_output_folder(args.out, option="OUT")
    if args.kind == IN_DOMAIN and args.split is None:
        if args.split_seed is not None:
            raise GaniError("--split-seed seeds a kind's split (--kind, --split); the plain images take --seed")
        return _write_legacy_shapes(args)
    if args.seed is not None:
        raise GaniError("--seed seeds the plain in-domain images; a kind's split (--kind, --split) takes --split-seed")
    return _write_kind(args)


def _write_legacy_shapes(args: argparse.Namespace) -> int:
    """``gani shapes OUT`` as it always was: the domain's images from torch's stream at ``--seed``."""
    seed = PLAIN_SHAPES_SEED if args.seed is None else args.seed
    images, t = sample_images(args.count, args.resolution, torch.Generator().manual_seed(seed))
    factors = {}
    for i in range(args.count):
        name = f"shapes-{seed}-{i:03d}.png"
        storage.write_bytes(storage.join(args.out, name), grid_png((images[i : i + 1] + 1) / 2))
        factors[name] = {"normalised": dict(zip(FACTOR_NAMES, t[i].tolist(), strict=True)),
                         "physical": dict(zip(FACTOR_NAMES, to_physical(t[i : i + 1])[0].tolist(), strict=True))}
    _merge_factors(args.out, factors)
    print(f"wrote {args.count} images of the shapes domain ({args.resolution} px) and factors.json to {args.out}")
    return 0


def _write_kind(args: argparse.Namespace) -> int:
    """``--kind`` / ``--split``: a split of a kind of out_of_domain.KINDS (its stream seeded by ``--split-seed``),
    its ground truth in factors.json."""
    split = args.split or "test"
    seed = SPLIT_SEED if args.split_seed is None else args.split_seed
    images, truth = sample_kind(args.kind, args.count, args.resolution, split, seed)
    factors = {}
    for i, f in enumerate(truth):
        name = f"{args.kind}-{split}-{i:03d}.png"
        storage.write_bytes(storage.join(args.out, name), grid_png((images[i : i + 1] + 1) / 2))
        factors[name] = f
    _merge_factors(args.out, factors)
    print(f"wrote {args.count} {args.kind} images ({split} split, {args.resolution} px) and factors.json to "
          f"{args.out}")
    return 0


def _merge_factors(out: str, factors: dict[str, dict]) -> None:
    """``factors`` into OUT/factors.json: merged with the entries already there (keyed by file name; an image
    written again replaces its entry), so that kinds written one after the other into one folder keep their ground
    truth."""
    uri = storage.join(out, "factors.json")
    merged = json.loads(storage.read_bytes(uri)) if storage.exists(uri) else {}
    merged.update(factors)
    storage.write_bytes(uri, json.dumps(dict(sorted(merged.items())), indent=2).encode())
