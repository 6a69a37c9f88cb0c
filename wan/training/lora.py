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
Reading it back (and the other common LoRA formats) is ``wan.models.lora``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from wan.models.lora import FP32_ISLANDS, _lora_layers, load_lora_into  # noqa: F401  (load_lora_into: the inference side)

PREFIX = "lora_transformer__"
AUDIO_WORDS = ("vocal", "audio")
ADAPTER_NAME = "default"


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
