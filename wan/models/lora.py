"""LoRA files at inference: read the common key formats, check them, apply them through peft.

``--lora_path PATH[:SCALE]`` (repeatable) and the app's LoRA field come here. Four key styles are read,
all describing the same thing, a low-rank delta ``W += scale * alpha / r * up @ down`` per Linear:

==================  ==================================================================================
format              keys
==================  ==================================================================================
``stableavatar``    our training output (``wan.training.lora.save_lora``):
                    ``lora_transformer__blocks_0_self_attn_q.lora_down.weight / .lora_up.weight / .alpha``
                    plus full tensors of the trained audio modules under their plain names
``kohya``           ``lora_unet_blocks_0_self_attn_q.lora_down.weight / .lora_up.weight / .alpha`` (musubi-tuner)
``comfyui``         ``diffusion_model.blocks.0.self_attn.q.lora_down.weight / .lora_up.weight / .alpha``
``peft``            ``[transformer.|diffusion_model.|base_model.model.]blocks.0.self_attn.q.lora_A.weight /
                    .lora_B.weight`` (diffusers/peft; diffusers' own Wan names ``attn1.to_q`` ... are mapped)
==================  ==================================================================================

Our modules keep Wan2.1's original names (``blocks.N.self_attn.q``, ``cross_attn.k_img``, ``ffn.0``), which
is what kohya/ComfyUI files already name, so reading them only undoes a prefix and, for the flattened styles,
the dot -> underscore mangling (resolved against the model's own module names). diffusers' converters map
these files the other way, to diffusers' renamed modules, so they are not used here. Without an ``alpha``
key, ``alpha = r`` (peft's and kohya's convention).

Application is peft's: one adapter per file (``inject_adapter_in_model``, per-layer ranks and alphas through
``rank_pattern``/``alpha_pattern``), scaled with ``set_scale``. ``merge=True`` (the default) folds every
adapter into the weights (``LoraLayer.merge``) and removes the wrappers: no cost per step. ``merge=False``
keeps the wrappers (hooks). Full tensors in a file (our audio modules) are applied as deltas from the
weights before any LoRA, ``W0 + scale * (F - W0)``, in both modes: scale 1 is the file's tensor, scale 0
changes nothing, and several files add up.

Errors are raised before any weight changes: keys that match no module (listing some, with the guessed
format), a rank or shape that does not fit (naming the key; a LoRA for another model size says which).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

FORMATS: dict[str, str] = {
    "stableavatar": "StableAvatar training output (lora_transformer__*.lora_down/.lora_up/.alpha)",
    "kohya": "kohya/musubi (lora_unet_*.lora_down/.lora_up/.alpha)",
    "comfyui": "ComfyUI (diffusion_model.*.lora_down/.lora_up/.alpha)",
    "peft": "diffusers/peft (*.lora_A/.lora_B)",
}
_PART = {  # key suffix -> which tensor of the pair
    ".lora_down.weight": "down", ".lora_A.weight": "down", ".lora_A.default.weight": "down",
    ".lora_up.weight": "up", ".lora_B.weight": "up", ".lora_B.default.weight": "up",
    ".alpha": "alpha",
}  # fmt: skip
_PREFIXES = ("lora_transformer__", "lora_unet_", "diffusion_model.", "base_model.model.", "transformer.")
# diffusers' names of the Wan2.1 modules -> the original names our model keeps.
_DIFFUSERS_NAMES = (
    (".attn1.to_out.0", ".self_attn.o"), (".attn2.to_out.0", ".cross_attn.o"), (".attn1.to_", ".self_attn."),
    (".attn2.to_", ".cross_attn."), (".attn2.add_k_proj", ".cross_attn.k_img"), (".attn2.add_v_proj", ".cross_attn.v_img"),
    (".ffn.net.0.proj", ".ffn.0"), (".ffn.net.2", ".ffn.2"),
)  # fmt: skip
ADAPTER_PREFIX = "inference_lora_"
FP32_ISLANDS = ("time_embedding", "time_projection")  # the DiT runs these MLPs in float32


class LoraError(ValueError):
    """A LoRA file does not fit the model; the message names the file, the key and the reason."""


@dataclass(frozen=True)
class LoraSpec:
    """One ``--lora_path PATH[:SCALE]``."""

    path: Path
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """``PATH`` or ``PATH:SCALE`` (a trailing ``:number`` is the scale; Windows drive letters survive)."""
        path, sep, scale = str(text).rpartition(":")
        if sep and path:
            try:
                return cls(Path(path), float(scale))
            except ValueError:
                pass
        return cls(Path(text))


@dataclass
class LoraFile:
    """A LoRA file resolved against a model: ``layers`` module -> (down [r, in], up [out, r], alpha)."""

    path: Path
    format: str
    layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # full tensors under parameter names


def _guess_format(keys: Sequence[str]) -> str:
    if any(k.startswith("lora_transformer__") for k in keys):
        return "stableavatar"
    if any(k.startswith("lora_unet_") for k in keys):
        return "kohya"
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "peft"
    return "comfyui"


def _module_name(stem: str, flat: dict[str, str]) -> str:
    """A key without its LoRA suffix -> our module name (may not exist: the caller checks)."""
    for prefix in _PREFIXES:
        if stem.startswith(prefix):
            stem = stem[len(prefix) :]
            break
    if "." not in stem:  # kohya-style flattened names: resolve against the model's own
        return flat.get(stem, stem)
    for theirs, ours in _DIFFUSERS_NAMES:
        stem = stem.replace(theirs, ours)
    return stem


def _preset_hint(in_features: int, model: nn.Module) -> str:
    from wan.configs.presets import TRANSFORMER_PRESETS

    ours = getattr(getattr(model, "config", None), "dim", None)
    theirs = [name for name, p in TRANSFORMER_PRESETS.items() if p["dim"] == in_features]
    if theirs and ours is not None and in_features != ours:
        mine = [name for name, p in TRANSFORMER_PRESETS.items() if p["dim"] == ours] or [f"dim {ours}"]
        return f"; this LoRA looks made for the {theirs[0]} model (dim {in_features}), this is the {mine[0]} model (dim {ours})"
    return ""


def read_lora(path: str | os.PathLike, model: nn.Module) -> LoraFile:
    """Read ``path`` (safetensors/.pt/.pth/.bin) and resolve every key against ``model``; raises
    ``LoraError`` (shape first, then unmatched keys) or ``FileNotFoundError`` without touching the model."""
    from wan.models.loading import load_state_dict_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path} (--lora_path PATH[:SCALE])")
    state = load_state_dict_file(path)
    fmt = _guess_format(list(state))
    modules = dict(model.named_modules())
    linears = {n for n, m in modules.items() if isinstance(m, nn.Linear) or hasattr(m, "base_layer")}
    flat = {n.replace(".", "_"): n for n in linears}
    params = dict(model.named_parameters())
    out = LoraFile(path, fmt)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unmatched: list[str] = []
    for key, value in state.items():
        suffix = next((s for s in _PART if key.endswith(s)), None)
        if suffix is None:
            name = key.removeprefix("diffusion_model.")
            if name in params:
                out.tensors[name] = value
            else:
                unmatched.append(key)
            continue
        name = _module_name(key[: -len(suffix)], flat)
        if name not in linears:
            unmatched.append(key)
            continue
        parts.setdefault(name, {})[_PART[suffix]] = value
    for name, p in parts.items():
        if "down" not in p or "up" not in p:
            raise LoraError(f"{path}: the LoRA for {name} lacks its {'down (lora_A)' if 'down' not in p else 'up (lora_B)'} matrix")
        down, up = p["down"], p["up"]
        base = modules[name]
        base = getattr(base, "base_layer", base)
        rank = down.shape[0]
        if down.dim() != 2 or up.dim() != 2 or down.shape[1] != base.in_features or up.shape != (base.out_features, rank):
            raise LoraError(
                f"{path}: {name}: down {tuple(down.shape)} / up {tuple(up.shape)} do not fit the layer "
                f"[{base.out_features}, {base.in_features}] (expected down [r, {base.in_features}], up [{base.out_features}, r])"
                + _preset_hint(down.shape[-1], model)
            )
        alpha = float(p["alpha"]) if "alpha" in p else float(rank)
        out.layers[name] = (down, up, alpha)
    for name, value in out.tensors.items():
        if value.shape != params[name].shape:
            raise LoraError(f"{path}: {name} has shape {tuple(value.shape)}, the model's is {tuple(params[name].shape)}")
    if unmatched:
        raise LoraError(
            f"{path}: {len(unmatched)} of {len(state)} keys match no module of this model, e.g. {unmatched[:5]} "
            f"(format guessed from the keys: {FORMATS[fmt]}; formats read: {', '.join(FORMATS)})"
        )
    if not out.layers and not out.tensors:
        raise LoraError(f"{path}: no LoRA weights in the file")
    return out


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def apply_loras(model: nn.Module, loras: Sequence[tuple[LoraFile, float]], merge: bool = True) -> nn.Module:
    """Apply ``(file, scale)`` pairs to ``model`` in place (see module doc); returns ``model``."""
    from peft import LoraConfig, inject_adapter_in_model

    params = dict(model.named_parameters())
    deltas: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for lora, scale in loras:  # full tensors: deltas from the weights before any LoRA
            for name, value in lora.tensors.items():
                delta = scale * (value.float() - params[name].float())
                deltas[name] = deltas[name] + delta if name in deltas else delta
        for name, delta in deltas.items():
            params[name].copy_((params[name].float() + delta).to(params[name].dtype))

    adapters: dict[str, list[str]] = {}  # module -> adapters on it
    for i, (lora, scale) in enumerate(loras):
        if not lora.layers:
            continue
        adapter = f"{ADAPTER_PREFIX}{i}"
        ranks = {n: d.shape[0] for n, (d, _, _) in lora.layers.items()}
        rank = max(set(ranks.values()), key=list(ranks.values()).count)
        config = LoraConfig(
            r=rank,
            lora_alpha=rank,
            target_modules="^(" + "|".join(re.escape(n) for n in sorted(lora.layers)) + ")$",
            rank_pattern={re.escape(n): r for n, r in ranks.items()},
            alpha_pattern={re.escape(n): a for n, (_, _, a) in lora.layers.items()},
            lora_dropout=0.0,
        )
        with warnings.catch_warnings():  # several files are several adapters on purpose
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            inject_adapter_in_model(config, model, adapter_name=adapter)
        layers = _lora_layers(model)
        with torch.no_grad():
            for name, (down, up, _) in lora.layers.items():
                layer = layers[name]
                layer.lora_A[adapter].weight.copy_(down)
                layer.lora_B[adapter].weight.copy_(up)
                layer.set_scale(adapter, scale)
                adapters.setdefault(name, []).append(adapter)

    layers = _lora_layers(model)
    for name, names in adapters.items():
        layers[name].set_adapter(names)  # every file's adapter active at once: their deltas add
    if merge:
        for name, names in adapters.items():
            layer = layers[name]
            layer.merge(adapter_names=names)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
        vars(model).pop("peft_config", None)  # no adapter left
    elif adapters:
        for island in FP32_ISLANDS:  # wrapped Linears there must see float32 weights (see training/lora.py)
            if any(n.startswith(island + ".") for n in adapters) and hasattr(model, island):
                getattr(model, island).float()
    return model


def load_loras(model: nn.Module, specs: Sequence[LoraSpec | str], merge: bool = True) -> nn.Module:
    """Read every file (all checked before any is applied), then ``apply_loras``."""
    specs = [s if isinstance(s, LoraSpec) else LoraSpec.parse(s) for s in specs]
    files = [(read_lora(s.path, model), s.scale) for s in specs]
    return apply_loras(model, files, merge=merge)


def load_lora_into(model: nn.Module, path: str | os.PathLike, scale: float = 1.0, merge: bool = False) -> nn.Module:
    """One file: ``load_loras(model, [LoraSpec(path, scale)], merge)`` (hooks by default, as training's
    validation uses it)."""
    return load_loras(model, [LoraSpec(Path(path), scale)], merge=merge)
