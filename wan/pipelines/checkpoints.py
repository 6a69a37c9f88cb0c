"""The on-disk checkpoint layout, in one place, and an up-front check of every file in it.

Layout (as the original README and ``deepspeed_config/wan2.1/wan_civitai.yaml`` lay it out)::

    checkpoints/
      Wan2.1-Fun-V1.1-1.3B-InP/            --pretrained_model_name_or_path (1.3B base)
        config.json                        DiT config
        diffusion_pytorch_model.safetensors
        Wan2.1_VAE.pth
        models_t5_umt5-xxl-enc-bf16.pth
        models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth
        google/umt5-xxl/                   tokenizer
      Wan2.1-I2V-14B-480P/                 14B base: the same files, the DiT sharded
        diffusion_pytorch_model-0000k-of-0000n.safetensors + diffusion_pytorch_model.safetensors.index.json
      wav2vec2-base-960h/                  --pretrained_wav2vec_path
      StableAvatar-1.3B/                   --transformer_path: one of
        transformer3d-square.pt | transformer3d-rec-vec.pt

``CheckpointPaths.from_args`` resolves the CLI's three paths; ``validate()`` reads only headers
(safetensors header, zip central directory, sizes), so it takes well under a second, and raises
one CheckpointError listing every missing or damaged file with the command that downloads it.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from wan.models.loading import DOWNLOAD_HINTS, CheckpointError

BASE_MODEL_DIRS = {"1.3B": "Wan2.1-Fun-V1.1-1.3B-InP", "14B": "Wan2.1-I2V-14B-480P"}
STABLEAVATAR_DIR = "StableAvatar-1.3B"
TRANSFORMER_VARIANTS = {"square": "transformer3d-square.pt", "rec-vec": "transformer3d-rec-vec.pt"}
WAV2VEC_DIR = "wav2vec2-base-960h"

DIT_CONFIG = "config.json"
DIT_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
# wan_civitai.yaml subpaths (vae_kwargs / text_encoder_kwargs / image_encoder_kwargs)
VAE_FILE = "Wan2.1_VAE.pth"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
TOKENIZER_DIR = "google/umt5-xxl"

# Smallest plausible size of each .pth/.pt, about half of its smallest release (bf16) size: a file
# below this is a truncated or failed download. Released: VAE 508 MB, T5 11.4 GB, CLIP 4.8 GB.
# A transformer checkpoint may hold only the trained part of the DiT, hence the low floor.
MIN_BYTES: dict[str, int] = {"vae": 100_000_000, "t5": 5_000_000_000, "clip": 1_000_000_000, "transformer": 1_000_000}
# DiT width -> model size, read from the base model's config.json
SIZE_BY_DIM = {1536: "1.3B", 5120: "14B"}


# ----------------------------------------------------------------------------------------------
# file checks: each returns None when the file looks whole, or what is wrong with it
# ----------------------------------------------------------------------------------------------


def safetensors_problem(path: Path) -> str | None:
    """Header readable and the file as long as its header says (catches truncated downloads)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n <= 0 or n > size - 8:
                return f"unreadable safetensors header ({size} bytes on disk)"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as exc:
        return f"unreadable safetensors header ({exc})"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    needed = 8 + n + max(ends, default=0)
    if needed > size:
        return f"truncated: its header describes {needed} bytes, the file has {size}"
    return None


def torch_file_problem(path: Path, min_bytes: int = 0) -> str | None:
    """A torch.save zip archive with its central directory (or a legacy pickle), of a sane size."""
    size = path.stat().st_size
    if size < min_bytes:
        return f"only {size} bytes, expected at least {min_bytes} (truncated download?)"
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            return f"damaged zip archive, probably truncated ({exc})"
        if not any(name.endswith("data.pkl") for name in names):
            return "a zip archive without data.pkl, not a torch.save file"
        return None
    if magic[:1] == b"\x80":  # legacy (pre-1.6) torch.save pickle: nothing more to check cheaply
        return None
    return "not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)"


def _required(path: Path, kind: str = "file") -> str | None:
    exists = path.is_dir() if kind == "folder" else path.is_file()
    return None if exists else f"{kind} not found"


# ----------------------------------------------------------------------------------------------
# the layout
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointPaths:
    """Where every weight file of one StableAvatar setup lives."""

    base_dir: Path  # Wan2.1 base model folder (--pretrained_model_name_or_path)
    wav2vec_dir: Path  # wav2vec2-base-960h folder (--pretrained_wav2vec_path)
    transformer_path: Path | None = None  # StableAvatar DiT weights on top of the base (--transformer_path)
    vae_subpath: str = VAE_FILE
    t5_subpath: str = T5_FILE
    clip_subpath: str = CLIP_FILE
    tokenizer_subpath: str = TOKENIZER_DIR

    @classmethod
    def from_args(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        transformer_path: str | os.PathLike | None = None,
        pretrained_wav2vec_path: str | os.PathLike | None = None,
        **subpaths: str,
    ) -> CheckpointPaths:
        """From the CLI flags. Without ``--pretrained_wav2vec_path`` the wav2vec folder is the base
        folder's sibling ``wav2vec2-base-960h`` (the README's layout). ``subpaths`` override the
        yaml subpaths (``vae_subpath=...``)."""
        base = Path(pretrained_model_name_or_path).expanduser()
        wav2vec = Path(pretrained_wav2vec_path).expanduser() if pretrained_wav2vec_path else base.parent / WAV2VEC_DIR
        transformer = Path(transformer_path).expanduser() if transformer_path else None
        return cls(base_dir=base, wav2vec_dir=wav2vec, transformer_path=transformer, **subpaths)

    @classmethod
    def from_root(cls, root: str | os.PathLike, model_size: str = "1.3B", variant: str | None = "square") -> CheckpointPaths:
        """The README layout under ``root`` (``checkpoints/``); ``variant`` picks the StableAvatar
        1.3B weights (``square`` | ``rec-vec``) or None for the bare base model."""
        if model_size not in BASE_MODEL_DIRS:
            raise ValueError(f"unknown model size {model_size!r}; choose from {sorted(BASE_MODEL_DIRS)}")
        if variant is not None and variant not in TRANSFORMER_VARIANTS:
            raise ValueError(f"unknown StableAvatar variant {variant!r}; choose from {sorted(TRANSFORMER_VARIANTS)}")
        if variant is not None and model_size != "1.3B":
            raise ValueError("released StableAvatar weights exist for the 1.3B model only; pass variant=None for 14B")
        root = Path(root).expanduser()
        transformer = root / STABLEAVATAR_DIR / TRANSFORMER_VARIANTS[variant] if variant else None
        return cls(base_dir=root / BASE_MODEL_DIRS[model_size], wav2vec_dir=root / WAV2VEC_DIR, transformer_path=transformer)

    # -- the files -------------------------------------------------------------------------

    @property
    def dit_config(self) -> Path:
        return self.base_dir / DIT_CONFIG

    @property
    def dit_weights(self) -> list[Path]:
        """The base DiT's safetensors: the single file, else the shards named by the index (or found)."""
        single = self.base_dir / DIT_WEIGHTS
        if single.is_file():
            return [single]
        index = self.base_dir / DIT_INDEX
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"unreadable shard index {index}: {exc}; {self._hint('base')}") from exc
            return [self.base_dir / name for name in names]
        return sorted(self.base_dir.glob("diffusion_pytorch_model*.safetensors")) or [single]

    @property
    def vae(self) -> Path:
        return self.base_dir / self.vae_subpath

    @property
    def t5(self) -> Path:
        return self.base_dir / self.t5_subpath

    @property
    def clip(self) -> Path:
        return self.base_dir / self.clip_subpath

    @property
    def tokenizer_dir(self) -> Path:
        return self.base_dir / self.tokenizer_subpath

    def model_size(self) -> str:
        """``"1.3B"`` or ``"14B"``, from the base config's ``dim`` (the folder name if unreadable)."""
        try:
            dim = json.loads(self.dit_config.read_text()).get("dim")
            if dim in SIZE_BY_DIM:
                return SIZE_BY_DIM[dim]
        except (OSError, ValueError):
            pass
        return "14B" if "14B" in self.base_dir.name else "1.3B"

    # -- checking --------------------------------------------------------------------------

    def _hint(self, role: str) -> str:
        """The download command for a file of ``role`` ("base", "wav2vec", "transformer")."""
        if role == "transformer":
            return f"download it with: {DOWNLOAD_HINTS[STABLEAVATAR_DIR]}"
        if role == "wav2vec":
            folder, current = WAV2VEC_DIR, self.wav2vec_dir
        else:
            current = self.base_dir
            folder = current.name if current.name in DOWNLOAD_HINTS else BASE_MODEL_DIRS[self.model_size()]
        note = "" if current.name == folder else f", and point the flag at checkpoints/{folder}"
        return f"download it with: {DOWNLOAD_HINTS[folder]}{note}"

    def problems(self, min_bytes: Mapping[str, int] | None = None) -> list[str]:
        """Every missing or damaged file, one line each with its download command; [] if all is well."""
        floors = {**MIN_BYTES, **(min_bytes or {})}
        found: list[str] = []

        def report(path: Path, problem: str | None, role: str) -> None:
            if problem:
                found.append(f"{path}: {problem}; {self._hint(role)}")

        if not self.base_dir.is_dir():
            report(self.base_dir, "base model folder not found (--pretrained_model_name_or_path)", "base")
        else:
            config_problem = _required(self.dit_config)
            if config_problem is None:
                try:
                    json.loads(self.dit_config.read_text())
                except ValueError as exc:
                    config_problem = f"not valid JSON ({exc})"
            report(self.dit_config, config_problem, "base")
            try:
                for shard in self.dit_weights:
                    report(shard, _required(shard) or safetensors_problem(shard), "base")
            except CheckpointError as exc:
                found.append(str(exc))
            for role, path in (("vae", self.vae), ("t5", self.t5), ("clip", self.clip)):
                report(path, _required(path) or torch_file_problem(path, floors[role]), "base")
            tok = self.tokenizer_dir
            tok_problem = _required(tok, "folder")
            if tok_problem is None and not any((tok / n).is_file() for n in ("tokenizer.json", "spiece.model")):
                tok_problem = "holds neither tokenizer.json nor spiece.model"
            report(tok, tok_problem, "base")

        found.extend(self._wav2vec_problems())
        if self.transformer_path is not None:
            path = self.transformer_path
            if path.is_dir():
                choices = " or ".join(str(path / name) for name in TRANSFORMER_VARIANTS.values())
                report(path, f"--transformer_path must be a file, not a folder: {choices}", "transformer")
            else:
                report(path, _required(path) or torch_file_problem(path, floors["transformer"]), "transformer")
        return found

    def _wav2vec_problems(self) -> list[str]:
        folder = self.wav2vec_dir
        if not folder.is_dir():
            return [f"{folder}: wav2vec2 folder not found (--pretrained_wav2vec_path); {self._hint('wav2vec')}"]
        lines = []
        if not (folder / "config.json").is_file():
            lines.append(f"{folder / 'config.json'}: file not found; {self._hint('wav2vec')}")
        if not any((folder / n).is_file() for n in ("preprocessor_config.json", "processor_config.json")):
            lines.append(f"{folder / 'preprocessor_config.json'}: file not found; {self._hint('wav2vec')}")
        weights = [folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()]
        if not weights:
            lines.append(f"{folder / 'model.safetensors'}: file not found (nor pytorch_model.bin); {self._hint('wav2vec')}")
        for path in weights[:1]:  # transformers reads the safetensors one when both exist
            problem = safetensors_problem(path) if path.suffix == ".safetensors" else torch_file_problem(path)
            if problem:
                lines.append(f"{path}: {problem}; {self._hint('wav2vec')}")
        return lines

    def validate(self, min_bytes: Mapping[str, int] | None = None) -> CheckpointPaths:
        """Raise one CheckpointError listing every problem (see ``problems``); return self if none."""
        found = self.problems(min_bytes)
        if found:
            raise CheckpointError(f"{len(found)} checkpoint problem(s); see checkpoints/README.md for the layout:\n  " + "\n  ".join(found))
        return self
