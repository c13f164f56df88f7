"""``gani info``: what a checkpoint holds, as JSON."""

from __future__ import annotations

import argparse
import json

from gani_core.checkpoints.ref import resolve_checkpoint
from gani_core.networks import num_parameters


def run(args: argparse.Namespace) -> int:
    G = resolve_checkpoint(args.checkpoint).load()
    info = {
        "label": G.label, "resolution": G.img_resolution, "num_ws": G.num_ws, "z_dim": G.z_dim,
        "w_dim": G.w_dim, "c_dim": G.c_dim, "mapping_layers": G.cfg.mapping_layers,
        "channels": {res: G.cfg.channels_at(res) for res in G.cfg.block_resolutions},
        "num_fp16_res": G.cfg.num_fp16_res, "conv_clamp": G.cfg.conv_clamp,
        "parameters": num_parameters(G), "tunable_layers": len(G.tunable_layers()),
        "factor_edits": list(G.factor_edits.names) if G.factor_edits is not None else None,
    }
    print(json.dumps(info, indent=2))
    return 0
