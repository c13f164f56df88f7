"""Gradient Modification Modules: one shallow network per tuned layer that produces its weight update.

Every form starts at exactly zero update (a zero-initialised output), so tuning starts at the original
generator, and the tuned generator is ``W + GMM(...)``: a single application to the original weights.

Forms (``form``, TuneConfig.form), see docs/method.md for what each measured:
- ``lowrank``: a free rank-r update ``A Bᵀ`` (no input; the LoRA-like reference point).
- ``param``: parameter-conditioned (reading (B) of the paper's abstract): a row-wise 2-layer MLP over each
  output channel's normalised original weights, ``ΔW[o] = MLP(Ŵ[o])``.
- ``param-lowrank``: parameter-conditioned with a rank-r output: ``ΔW = P tanh(Qᵀ Ŵ R) Sᵀ`` (GANI's default).
- ``grad``: gradient-conditioned (reading (A)): the layer's reconstruction gradient at the original
  weights and the pivot, normalised, mixed by identity-plus-rank-r maps along both axes with a tanh.
- ``full``: a free dense update per weight; with Adam this is exactly PTI's tuning of the weights.

Weights are treated as 2-D matrices [O, I·k·k] (a convolution's output channels by its fan-in).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import nn

GMMForm = Literal["lowrank", "param", "param-lowrank", "grad", "full"]
GMM_FORMS: tuple[str, ...] = get_args(GMMForm)


def _normalised(t: torch.Tensor) -> torch.Tensor:
    return t / (t.square().mean().sqrt() + 1e-12)


class LayerGMM(nn.Module):
    """The update network of one layer. ``forward()`` returns ΔW with the layer's weight shape."""

    def __init__(
        self,
        weight: torch.Tensor,               # the layer's original weight [O, I, k, k] (or any [O, ...])
        form: GMMForm,                      # which form, see the module docstring
        rank: int = 32,                     # rank of low-rank factors
        hidden: int = 32,                   # hidden width of the row-wise MLP
        grad: torch.Tensor | None = None,   # the layer's reconstruction gradient (form "grad")
        seed: int = 0,                      # seeds the non-zero initialisations
    ) -> None:
        super().__init__()
        self.form = form
        self.shape = tuple(weight.shape)
        if form == "full":
            self.delta = nn.Parameter(torch.zeros(self.shape, device=weight.device))
            return
        if weight.ndim < 2:
            raise ValueError(f"GMM form {form!r} needs a weight matrix or kernel, got shape {list(weight.shape)}")
        out_dim = weight.shape[0]
        fan_in = weight[0].numel()
        gen = torch.Generator().manual_seed(seed)
        rank = min(rank, out_dim, fan_in)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=gen).to(weight.device)

        w2 = _normalised(weight.detach().reshape(out_dim, fan_in))
        if form == "lowrank":
            self.A = nn.Parameter(torch.zeros(out_dim, rank, device=weight.device))
            self.B = nn.Parameter(randn(fan_in, rank) / math.sqrt(rank))
        elif form == "param":
            self.register_buffer("w_hat", w2)
            self.fc1 = nn.Linear(fan_in, hidden, device=weight.device)
            self.fc2 = nn.Linear(hidden, fan_in, device=weight.device)
            nn.init.normal_(self.fc1.weight, std=1 / math.sqrt(fan_in), generator=gen)
            nn.init.zeros_(self.fc1.bias)
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)
        elif form == "param-lowrank":
            self.register_buffer("w_hat", w2)
            self.Q = nn.Parameter(randn(out_dim, rank) / math.sqrt(out_dim))
            self.R = nn.Parameter(randn(fan_in, rank) / math.sqrt(fan_in))
            self.P = nn.Parameter(torch.zeros(out_dim, rank, device=weight.device))
            self.S = nn.Parameter(randn(fan_in, rank) / math.sqrt(rank))
        elif form == "grad":
            if grad is None:
                raise ValueError("a gradient-conditioned GMM needs the layer's gradient")
            self.register_buffer("g_hat", _normalised(grad.detach().reshape(out_dim, fan_in)))
            self.U1 = nn.Parameter(randn(out_dim, rank) / math.sqrt(out_dim))
            self.V1 = nn.Parameter(randn(out_dim, rank) / math.sqrt(out_dim))
            self.U2 = nn.Parameter(randn(fan_in, rank) / math.sqrt(fan_in))
            self.V2 = nn.Parameter(randn(fan_in, rank) / math.sqrt(fan_in))
            self.gain = nn.Parameter(torch.zeros((), device=weight.device))
        else:
            raise ValueError(f"unknown GMM form {form!r}; expected one of {GMM_FORMS}")

    def forward(self) -> torch.Tensor:
        if self.form == "lowrank":
            d = self.A @ self.B.t()
        elif self.form == "param":
            d = self.fc2(torch.nn.functional.leaky_relu(self.fc1(self.w_hat), 0.2))
        elif self.form == "param-lowrank":
            d = self.P @ torch.tanh(self.Q.t() @ self.w_hat @ self.R) @ self.S.t()
        elif self.form == "grad":
            g = self.g_hat
            g = g + self.U1 @ (self.V1.t() @ g)          # mix output channels
            g = torch.tanh(g + (g @ self.V2) @ self.U2.t())  # mix fan-in
            d = self.gain * g
        else:
            return self.delta
        return d.reshape(self.shape)


class GMMSet(nn.Module):
    """One :class:`LayerGMM` per tuned layer; ``deltas()`` gives ΔW by parameter name."""

    def __init__(
        self,
        weights: dict[str, torch.Tensor],
        form: GMMForm,
        rank: int = 32,
        hidden: int = 32,
        grads: dict[str, torch.Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.names = list(weights)
        self.layers = nn.ModuleList(
            LayerGMM(w, form, rank=rank, hidden=hidden, grad=(grads or {}).get(name), seed=seed + i)
            for i, (name, w) in enumerate(weights.items())
        )

    def deltas(self) -> dict[str, torch.Tensor]:
        return {name: layer() for name, layer in zip(self.names, self.layers, strict=True)}

    def forward(self) -> dict[str, torch.Tensor]:      # what torch.func.functional_call calls: the deltas
        return self.deltas()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
