"""LoRA on the DiT through peft, saved in the original's key format.

Targets (as the original's ``create_network``): every ``nn.Linear`` of the DiT whose qualified name
contains neither "vocal" nor "audio" (368 modules on the 1.3B model). Trained with the adapters:
every parameter whose name contains "vocal" or "audio" (``vocal_projector.*`` and the blocks'
``cross_attn.k_vocal/v_vocal``). peft's default init is the original's: down (A) Kaiming-uniform
with a = sqrt(5), up (B) zeros; scale = alpha / rank.

Adapter file (safetensors), keys as the original ``lora_utils`` writes them, so files move both ways:
    lora_transformer__<module name, dots -> underscores>.lora_down.weight  [r, in]
    ...lora_up.weight [out, r];  ...alpha []
plus the trained audio parameters under their plain DiT keys (``vocal_projector.proj_model.proj.weight``...).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

PREFIX = "lora_transformer__"
AUDIO_WORDS = ("vocal", "audio")
ADAPTER_NAME = "default"
FP32_ISLANDS = ("time_embedding", "time_projection")


def lora_target_modules(model: nn.Module) -> list[str]:
    """Qualified names of the Linear layers LoRA wraps."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not any(w in n for w in AUDIO_WORDS)]


def exact_names_pattern(names: list[str]) -> str:
    """A peft ``target_modules`` regex matching exactly these qualified names (a list would also
    match any module whose name merely ends with one, e.g. inside ``vocal_projector``)."""
    import re

    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def is_audio_param(name: str) -> bool:
    return any(w in name for w in AUDIO_WORDS)


def add_lora(model: nn.Module, rank: int, alpha: float) -> list[str]:
    """Inject peft LoRA layers into ``model`` and set requires_grad on adapters + audio params only.
    Returns the target module names."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = lora_target_modules(model)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=exact_names_pattern(targets), lora_dropout=0.0, init_lora_weights=True)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    # The DiT runs its timestep MLPs as an fp32 island that upcasts plain Linear weights only; a
    # LoRA-wrapped Linear there would see fp32 inputs with bf16 weights, so those stay fp32.
    for name in FP32_ISLANDS:
        island = getattr(model, name, None)
        if island is not None:
            island.float()
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name or is_audio_param(name))
    return targets


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter file's content: LoRA weights in the original's key format + trained audio params."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in _lora_layers(model).items():
        key = PREFIX + name.replace(".", "_")
        out[f"{key}.lora_down.weight"] = layer.lora_A[ADAPTER_NAME].weight.detach().cpu().contiguous()
        out[f"{key}.lora_up.weight"] = layer.lora_B[ADAPTER_NAME].weight.detach().cpu().contiguous()
        out[f"{key}.alpha"] = torch.tensor(float(layer.lora_alpha[ADAPTER_NAME]))
    for name, p in model.named_parameters():
        if is_audio_param(name) and "lora_" not in name:
            out[name.replace(".base_layer.", ".")] = p.detach().cpu().contiguous()
    return out


def save_lora(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the adapter file (atomically: temp file + os.replace)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(lora_state_dict(model), str(tmp), metadata={"format": "pt", "lora_key_format": "stableavatar-lora_utils"})
    os.replace(tmp, path)


def _split(state: dict[str, torch.Tensor], model: nn.Module):
    """-> ({module name: (down, up, alpha)}, {plain key: tensor}); LoRA names resolved against the model."""
    by_flat = {n.replace(".", "_"): n for n, m in model.named_modules() if isinstance(m, nn.Linear) or hasattr(m, "base_layer")}
    loras: dict[str, list] = {}
    plain: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(PREFIX):
            flat, kind = key[len(PREFIX) :].split(".", 1)
            if flat not in by_flat:
                raise KeyError(f"LoRA key {key} names no Linear layer of this model")
            entry = loras.setdefault(by_flat[flat], [None, None, None])
            entry[{"lora_down.weight": 0, "lora_up.weight": 1, "alpha": 2}[kind]] = value
        elif ".lora_A." in key or ".lora_B." in key:
            raise ValueError(f"{key}: peft/diffusers-format LoRA keys are not supported; convert to lora_down/lora_up")
        else:
            plain[key] = value
    for name, (down, up, _) in loras.items():
        if down is None or up is None:
            raise KeyError(f"LoRA for {name} lacks lora_down or lora_up")
    return loras, plain


def load_lora_into(transformer: nn.Module, path: str | os.PathLike, scale: float = 1.0, merge: bool = False) -> nn.Module:
    """Apply a StableAvatar LoRA file to ``transformer`` (the inference side of ``--lora_path``).

    merge=True: ``W += scale * alpha / r * up @ down`` in place (no runtime cost, not removable).
    merge=False: inject peft LoRA layers holding the weights, scaled by ``scale``.
    Trained audio parameters in the file are loaded in both cases; a key the model lacks is an error.
    """
    from wan.models.loading import load_state_dict_file

    state = load_state_dict_file(path)
    loras, plain = _split(state, transformer)
    own = dict(transformer.named_parameters())
    missing = [k for k in plain if k not in own]
    if missing:
        raise KeyError(f"{path}: {len(missing)} keys are not parameters of the model, e.g. {missing[:5]}")
    with torch.no_grad():
        for k, v in plain.items():
            own[k].copy_(v.to(own[k].dtype))
        if merge:
            modules = dict(transformer.named_modules())
            for name, (down, up, alpha) in loras.items():
                weight = modules[name].weight
                r = down.shape[0]
                factor = scale * (float(alpha) if alpha is not None else r) / r
                weight.add_((factor * (up.float() @ down.float())).to(weight.dtype))
            return transformer

    from peft import LoraConfig, inject_adapter_in_model

    settings = {(d.shape[0], float(a) if a is not None else float(d.shape[0])) for d, _, a in loras.values()}
    if len(settings) != 1:
        raise ValueError(f"{path}: LoRA layers with different rank/alpha {sorted(settings)}; load it with merge=True")
    (rank, alpha), = settings
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=exact_names_pattern(sorted(loras)))
    inject_adapter_in_model(config, transformer, adapter_name=ADAPTER_NAME)
    layers = _lora_layers(transformer)
    with torch.no_grad():
        for name, (down, up, _) in loras.items():
            layer = layers[name]
            layer.lora_A[ADAPTER_NAME].weight.copy_(down)
            layer.lora_B[ADAPTER_NAME].weight.copy_(up)
            layer.set_scale(ADAPTER_NAME, scale)
    return transformer
