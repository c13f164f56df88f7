"""NVIDIA network pickles (stylegan2-ada-pytorch snapshots, and StyleGAN2 pickles of the stylegan3 repo),
read as data: the records' parameters, buffers and init arguments build our own Generator."""

from __future__ import annotations

from typing import Any

import torch

from gani_core.checkpoints.safe_pickle import PersistentRecord, safe_unpickle
from gani_core.errors import CheckpointError
from gani_core.networks import Generator, GeneratorConfig

# NVIDIA's Generator.__init__ signature, to bind positional init args by name.
_GENERATOR_ARGS = ["z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs"]
# Keyword arguments that change nothing in what a generator renders in evaluation.
_IGNORED_KWARGS = {"fp16_channels_last", "channels_last", "fused_modconv_default", "w_avg_beta", "num_ws"}


def _flatten(record: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a record tree: parameters and persistent buffers, by dotted name."""
    state = record.state
    out: dict[str, torch.Tensor] = {}
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for table in ("_parameters", "_buffers"):
        for name, value in (state.get(table) or {}).items():
            if value is not None and name not in skip:
                out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, PersistentRecord):
            out.update(_flatten(child, prefix + name + "."))
        elif child is not None:
            raise CheckpointError(f"unexpected submodule {prefix + name} of type {type(child).__name__}")
    return out


def _init_kwargs(record: PersistentRecord) -> dict[str, Any]:
    args = list(record.state.get("_init_args") or ())
    kwargs = dict(record.state.get("_init_kwargs") or {})
    kwargs.update(dict(zip(_GENERATOR_ARGS, args, strict=False)))
    return kwargs


def _config_from_kwargs(kw: dict[str, Any], source: str) -> GeneratorConfig:
    mapping = dict(kw.get("mapping_kwargs") or {})
    synthesis = dict(kw.get("synthesis_kwargs") or {})
    architecture = synthesis.pop("architecture", "skip")
    if architecture != "skip":
        raise CheckpointError(f"{source}: generator architecture {architecture!r} is not supported (only 'skip', "
                              "StyleGAN2 config-f)")
    for key, value, default in (("activation", mapping.pop("activation", "lrelu"), "lrelu"),
                                ("activation", synthesis.pop("activation", "lrelu"), "lrelu"),
                                ("resample_filter", list(synthesis.pop("resample_filter", [1, 3, 3, 1])), [1, 3, 3, 1]),
                                ("kernel_size", synthesis.pop("kernel_size", 3), 3)):
        if value != default:
            raise CheckpointError(f"{source}: {key}={value!r} is not supported (only {default!r})")
    unknown = sorted((set(mapping) | set(synthesis)) - _IGNORED_KWARGS - {
        "num_layers", "lr_multiplier", "layer_features", "embed_features",
        "channel_base", "channel_max", "num_fp16_res", "conv_clamp", "use_noise"})
    if unknown:
        raise CheckpointError(f"{source}: unsupported generator options {unknown}")
    if synthesis.get("use_noise", True) is False:
        raise CheckpointError(f"{source}: generators without noise inputs are not supported")
    try:
        return GeneratorConfig(
            z_dim=int(kw["z_dim"]), c_dim=int(kw.get("c_dim", 0)), w_dim=int(kw["w_dim"]),
            img_resolution=int(kw["img_resolution"]), img_channels=int(kw.get("img_channels", 3)),
            mapping_layers=int(mapping.get("num_layers", 8)),
            mapping_lr_multiplier=float(mapping.get("lr_multiplier", 0.01)),
            layer_features=mapping.get("layer_features"), embed_features=mapping.get("embed_features"),
            channel_base=int(synthesis.get("channel_base", 32768)),
            channel_max=int(synthesis.get("channel_max", 512)),
            num_fp16_res=int(synthesis.get("num_fp16_res", 0)),
            conv_clamp=None if synthesis.get("conv_clamp") is None else float(synthesis["conv_clamp"]),
            label=f"NVIDIA network pickle {source}",
        )
    except KeyError as exc:
        raise CheckpointError(f"{source}: the generator record has no {exc.args[0]!r} init argument") from exc


def _pick_generator(obj: Any, source: str) -> PersistentRecord:
    if isinstance(obj, PersistentRecord):
        return obj
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a network pickle dict with 'G_ema', found {type(obj).__name__}")
    for key in ("G_ema", "G"):
        if isinstance(obj.get(key), PersistentRecord):
            return obj[key]
    raise CheckpointError(f"{source}: no generator in this pickle (it holds {sorted(map(str, obj))}); "
                          "expected 'G_ema' as in stylegan2-ada-pytorch snapshots")


def load_nvidia_pickle(data: bytes, source: str) -> Generator:
    record = _pick_generator(safe_unpickle(data, source), source)
    if record.class_name != "Generator":
        raise CheckpointError(f"{source}: the network is a {record.class_name!r}, not a StyleGAN2 Generator")
    modules = record.state.get("_modules") or {}
    synthesis = modules.get("synthesis")
    if not isinstance(synthesis, PersistentRecord) or synthesis.class_name != "SynthesisNetwork":
        raise CheckpointError(f"{source}: the generator has no StyleGAN2 SynthesisNetwork")
    if "input" in (synthesis.state.get("_modules") or {}):
        raise CheckpointError(f"{source}: this is a StyleGAN3 generator, which is not supported (StyleGAN2 only)")
    cfg = _config_from_kwargs(_init_kwargs(record), source)
    G = Generator(cfg)
    state = _flatten(record)
    load_weights(G, state, source)
    return G.eval().requires_grad_(False)


def load_weights(G: Generator, state: dict[str, torch.Tensor], source: str) -> None:
    """Load the weights ``state`` (parameters and buffers by name) strictly into ``G``, in float32, with one
    clear CheckpointError listing what does not match. Every checkpoint format ends here."""
    own = G.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})")
        raise CheckpointError(f"{source}: the weights do not fit the generator they describe: {'; '.join(parts)}")
    G.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()})


