"""After training: the factor probe, the edit directions and the quality report of the built-in generator.

`finish_builtin(out)` works in the training folder ``out`` (each stage is skipped when its file exists):
    probe.safetensors        the factor probe, trained on rendered images (held-out R² in its metadata)
    shapesRES.safetensors    G_ema with its factor edit directions and probe: what ``builtin`` loads once
                             installed
    quality.json             sample quality (training.quality) of G_ema, and of the untrained generator
    curves.png               the training curves
``install=True`` copies the generator and the probe into gani_core/weights/.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from gani_core import storage
from gani_core.checkpoints import load_generator
from gani_core.checkpoints.builtin import PROBE_FILE, TRAINED_FILE, TRAINED_RESOLUTION, build_builtin
from gani_core.checkpoints.native import probe_from_bytes, probe_to_bytes, read_metadata, save_generator
from gani_core.editing import factor_changes
from gani_core.errors import GaniError
from gani_core.shapes.directions import fit_factor_edits
from gani_core.shapes.probe import check_shapes_probe, train_probe

Log = Callable[[str], None]


def finish_builtin(out: str | Path, device: str | torch.device = "cpu", install: bool = False,
                   probe_steps: int = 4000, quality_samples: int = 2000, log: Log = print) -> dict:
    out = Path(out)
    G = load_generator(out / "G_ema.safetensors", device=device)
    res = G.img_resolution

    probe_path = out / "probe.safetensors"
    if probe_path.exists():
        probe = probe_from_bytes(probe_path.read_bytes(), str(probe_path))
        check_shapes_probe(probe, str(probe_path))
        probe = probe.to(device)
    else:
        log(f"training the factor probe ({probe_steps} steps)")
        probe, report = train_probe(res, steps=probe_steps, device=device, log=log)
        storage.write_bytes(probe_path, probe_to_bytes(probe, extra={"report": json.dumps(asdict(report))}))
    probe_r2 = json.loads(read_metadata(probe_path.read_bytes())["report"])["r2"]
    log("probe held-out R²: " + json.dumps(probe_r2))

    log("fitting the factor edit directions")
    G.factor_edits = fit_factor_edits(G, probe)
    w_avg = G.mapping.w_avg[None].repeat(G.num_ws, 1)
    response = factor_changes(G, probe, w_avg, G.factor_edits)
    log("linear R² of each factor in W: " + _fmt(G.factor_edits.names, G.factor_edits.linear_r2.tolist()))
    log("factor change for ±1 step at w_avg: " + _fmt(G.factor_edits.names, response.tolist()))
    final = out / f"shapes{res}.safetensors"
    G.factor_probe = probe
    save_generator(G.cpu(), final, extra={"domain": "shapes"})
    G.to(device)

    from gani_core.training.quality import evaluate_quality

    log(f"evaluating sample quality ({quality_samples} samples)")
    untrained = build_builtin(res).to(device)
    quality = {"trained": evaluate_quality(G, probe, quality_samples),
               "untrained": evaluate_quality(untrained, probe, quality_samples),
               "probe_r2": probe_r2,
               "edit_linear_r2": dict(zip(G.factor_edits.names, G.factor_edits.linear_r2.tolist(), strict=True)),
               "edit_response_at_w_avg": dict(zip(G.factor_edits.names, response.tolist(), strict=True)),
               "label": G.label}
    storage.write_bytes(out / "quality.json", json.dumps(quality, indent=2).encode())
    log(json.dumps({k: quality[k] for k in ("trained", "untrained")}, indent=1))
    plot_curves(out / "curves.jsonl", out / "curves.png")
    if install:
        if res != TRAINED_RESOLUTION:
            raise GaniError(f"only a {TRAINED_RESOLUTION} px generator can be installed as `builtin`, not {res} px")
        TRAINED_FILE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(final, TRAINED_FILE)
        shutil.copyfile(probe_path, PROBE_FILE)
        log(f"installed {TRAINED_FILE} and {PROBE_FILE}")
    else:
        log(f"wrote {final} (load it with --checkpoint {final}); --install makes it what `builtin` loads")
    return quality


def _fmt(names: tuple[str, ...], values: list[float]) -> str:
    return ", ".join(f"{n} {v:.3f}" for n, v in zip(names, values, strict=True))


def plot_curves(curves: Path, png: Path) -> None:
    """Losses and regularisers against kimg, from curves.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [json.loads(line) for line in curves.read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    panels = (("loss_G", "loss_D"), ("score_real", "score_fake"), ("r1_penalty", "pl_penalty"))
    for ax, keys in zip(axes, panels, strict=True):
        for key in keys:
            pts = [(line["kimg"], line[key]) for line in lines if key in line]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=key, linewidth=1)
        ax.set_xlabel("kimg")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("gani train-builtin: shapes domain", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
