"""Mixed precision for the optimisation loops: bf16 autocast (no loss scaling needed), or plain fp32."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """The context the renders and losses of one optimisation step run in. Parameters stay fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
