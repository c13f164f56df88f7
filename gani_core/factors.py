"""Factor edit directions and the factor probe: what a generator of images with known factors carries.

A generator whose images have named factors (the built-in one: the `shapes` domain's x, y, size, ...)
carries two things beside its weights, defined here (a dataclass and a small module):

- `FactorEdits`: for each factor k, a unit direction d_k in W that moves it, its step s_k (the spread of
  mapped latents along d_k) and the held-out R² of the linear fit w -> factor (how linear it is in W);
- `FactorProbe`: a small CNN that reads the factors of an image, the measurement for generated images
  (whose factors are not known). Its outputs are the factors in the order of ``factor_names``.

`gani_core.editing.edit_accuracy` uses both; fitting them belongs to the domain (gani_core.shapes).
This module sits at the bottom: it imports torch and the standard library only, so that the generator
(networks.py), the checkpoint formats and the domain can all import it without a cycle.

Stored beside the weights in a generator's ``.safetensors`` file (checkpoints/native.py):
    edits   tensors ``edits.directions`` [K, w_dim], ``edits.steps`` [K], ``edits.linear_r2`` [K];
            metadata ``edit_factors`` (JSON list of the names)
    probe   tensors ``probe.`` + its state dict; metadata ``probe.factors`` (JSON list), ``probe.resolution``
A probe file of its own (the shipped ``shapes64-probe.safetensors``) holds the probe's keys without a prefix.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

EDITS_PREFIX = "edits."                 # the edit directions' tensors inside a generator file
EDITS_METADATA_KEY = "edit_factors"     # their factor names (JSON list)
PROBE_PREFIX = "probe."                 # the probe's tensors and metadata inside a generator file


@dataclass
class FactorEdits:
    names: tuple[str, ...]              # the factors, in the order of the rows below
    directions: torch.Tensor            # [K, w_dim] unit directions in W
    steps: torch.Tensor                 # [K] edit step in W units: std of mapped latents along the direction
    linear_r2: torch.Tensor             # [K] held-out R² of the linear fit w -> factor (how linear it is in W)

    def to(self, device: str | torch.device) -> FactorEdits:
        return FactorEdits(self.names, self.directions.to(device), self.steps.to(device), self.linear_r2.to(device))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{EDITS_PREFIX}directions": self.directions.cpu().float().contiguous(),
                f"{EDITS_PREFIX}steps": self.steps.cpu().float().contiguous(),
                f"{EDITS_PREFIX}linear_r2": self.linear_r2.cpu().float().contiguous()}

    def metadata(self) -> dict[str, str]:
        return {EDITS_METADATA_KEY: json.dumps(list(self.names))}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> FactorEdits | None:
        """The edits stored in a generator file, or None when it holds none (ValueError/KeyError if malformed)."""
        if EDITS_METADATA_KEY not in metadata or f"{EDITS_PREFIX}directions" not in tensors:
            return None
        names = tuple(json.loads(metadata[EDITS_METADATA_KEY]))
        d = tensors[f"{EDITS_PREFIX}directions"]
        if d.ndim != 2 or d.shape[0] != len(names):
            raise ValueError(f"stored edit directions have shape {list(d.shape)} for {len(names)} factors")
        return cls(names, d, tensors[f"{EDITS_PREFIX}steps"], tensors[f"{EDITS_PREFIX}linear_r2"])


class FactorProbe(nn.Module):
    """Reads the factors of images: [N, 3, R, R] in [-1, 1] -> [N, K] normalised factors (about 0..1).

    Strided 4x4 convolutions down to 4x4, then a two-layer head; images of another size are resampled
    (area) to ``resolution`` first.
    """

    def __init__(
        self,
        factor_names: Sequence[str],    # the factors it reads, in the order of its outputs
        resolution: int = 64,           # the image size it reads (a power of two >= 4)
        width: int = 16,                # channels of the first layer; doubled at each stride, at most 8x
    ) -> None:
        super().__init__()
        self.factor_names = tuple(factor_names)
        self.resolution = resolution
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.LeakyReLU(0.2)]
        ch, res = width, resolution
        while res > 4:
            out = min(ch * 2, 8 * width)
            layers += [nn.Conv2d(ch, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            ch, res = out, res // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(ch * 16, 128), nn.LeakyReLU(0.2),
                                  nn.Linear(128, len(self.factor_names)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, R, R] in [-1, 1] → normalised factors [N, K] (about 0..1)."""
        if images.shape[-1] != self.resolution:
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="area")
        return self.head(self.features(images)) + 0.5

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The state dict on the CPU, keys under ``prefix`` (``PROBE_PREFIX`` inside a generator file)."""
        return {prefix + k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    def metadata(self, prefix: str = "") -> dict[str, str]:
        return {f"{prefix}factors": json.dumps(list(self.factor_names)), f"{prefix}resolution": str(self.resolution)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                     prefix: str = "") -> FactorProbe | None:
        """The probe stored under ``prefix``, in evaluation mode on the CPU; None when there is none.

        Raises ValueError (or KeyError / RuntimeError from the state dict) when it is malformed.
        """
        if f"{prefix}factors" not in metadata:
            return None
        names = json.loads(metadata[f"{prefix}factors"])
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"probe factors must be a non-empty list of names, got {names!r}")
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        first = state.get("features.0.weight")
        if first is None:
            raise ValueError("the probe's tensors are missing (features.0.weight)")
        probe = cls(names, resolution=int(metadata[f"{prefix}resolution"]), width=first.shape[0])
        probe.load_state_dict(state)
        return probe.eval().requires_grad_(False)
