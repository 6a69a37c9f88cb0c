"""Checkpoint folder layout and up-front validation, on tiny stand-in files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wan.models.loading import CheckpointError
from wan.pipelines.checkpoints import MIN_BYTES, CheckpointPaths, safetensors_problem, torch_file_problem

NO_FLOORS = {role: 0 for role in MIN_BYTES}


def _write_base(base: Path, dim: int = 1536, shards: int = 0) -> None:
    (base / "google" / "umt5-xxl").mkdir(parents=True)
    (base / "config.json").write_text(json.dumps({"dim": dim, "num_layers": 2}))
    if shards:
        weight_map = {}
        for i in range(1, shards + 1):
            name = f"diffusion_pytorch_model-{i:05d}-of-{shards:05d}.safetensors"
            save_file({f"blocks.{i}.w": torch.ones(4, 4)}, str(base / name))
            weight_map[f"blocks.{i}.w"] = name
        (base / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    else:
        save_file({"patch_embedding.weight": torch.ones(8, 4)}, str(base / "diffusion_pytorch_model.safetensors"))
    for name in ("Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth", "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"):
        torch.save({"w": torch.randn(16, 16)}, base / name)
    (base / "google" / "umt5-xxl" / "tokenizer.json").write_text("{}")


def _write_wav2vec(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "preprocessor_config.json").write_text("{}")
    save_file({"w": torch.zeros(3)}, str(folder / "model.safetensors"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """checkpoints/ as the README lays it out, with tiny files."""
    _write_base(tmp_path / "Wan2.1-Fun-V1.1-1.3B-InP")
    _write_wav2vec(tmp_path / "wav2vec2-base-960h")
    (tmp_path / "StableAvatar-1.3B").mkdir()
    for name in ("transformer3d-square.pt", "transformer3d-rec-vec.pt"):
        torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "StableAvatar-1.3B" / name)
    return tmp_path


def test_layout_resolves_and_validates(root):
    paths = CheckpointPaths.from_args(root / "Wan2.1-Fun-V1.1-1.3B-InP", root / "StableAvatar-1.3B" / "transformer3d-square.pt")
    assert paths == CheckpointPaths.from_root(root, "1.3B", "square")
    assert paths.wav2vec_dir == root / "wav2vec2-base-960h"  # default: the base folder's sibling
    assert paths.t5.name == "models_t5_umt5-xxl-enc-bf16.pth" and paths.tokenizer_dir == root / "Wan2.1-Fun-V1.1-1.3B-InP/google/umt5-xxl"
    assert paths.dit_weights == [root / "Wan2.1-Fun-V1.1-1.3B-InP" / "diffusion_pytorch_model.safetensors"]
    assert paths.model_size() == "1.3B"
    assert paths.validate(NO_FLOORS) is paths
    assert CheckpointPaths.from_root(root, variant="rec-vec").validate(NO_FLOORS).transformer_path.name == "transformer3d-rec-vec.pt"


def test_missing_files_are_all_named_with_their_download(root):
    base = root / "Wan2.1-Fun-V1.1-1.3B-InP"
    (base / "models_t5_umt5-xxl-enc-bf16.pth").unlink()
    (root / "wav2vec2-base-960h" / "model.safetensors").unlink()
    paths = CheckpointPaths.from_root(root)
    with pytest.raises(CheckpointError) as err:
        paths.validate(NO_FLOORS)
    text = str(err.value)
    assert "2 checkpoint problem(s)" in text
    assert f"{base / 'models_t5_umt5-xxl-enc-bf16.pth'}: file not found; download it with: hf download alibaba-pai/Wan2.1-Fun-V1.1-1.3B-InP" in text
    assert "model.safetensors: file not found (nor pytorch_model.bin); download it with: hf download facebook/wav2vec2-base-960h" in text


def test_truncated_safetensors(root):
    path = root / "Wan2.1-Fun-V1.1-1.3B-InP" / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    assert "truncated" in safetensors_problem(path)
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors: truncated"):
        CheckpointPaths.from_root(root).validate(NO_FLOORS)
    path.write_bytes(b"\xff" * 64)
    assert "unreadable safetensors header" in safetensors_problem(path)


def test_truncated_or_foreign_pth(root):
    vae = root / "Wan2.1-Fun-V1.1-1.3B-InP" / "Wan2.1_VAE.pth"
    vae.write_bytes(vae.read_bytes()[:600])
    assert "damaged zip archive" in torch_file_problem(vae)
    with pytest.raises(CheckpointError, match=r"Wan2\.1_VAE\.pth: damaged zip archive"):
        CheckpointPaths.from_root(root).validate(NO_FLOORS)
    vae.write_text("<html>rate limited</html>")
    assert "not a PyTorch checkpoint" in torch_file_problem(vae)


def test_size_floors_catch_small_files(root):
    with pytest.raises(CheckpointError) as err:
        CheckpointPaths.from_root(root).validate()  # the real floors: our stand-ins are far too small
    text = str(err.value)
    assert f"expected at least {MIN_BYTES['t5']}" in text and "models_clip_open-clip" in text and "Wan2.1_VAE.pth" in text


def test_sharded_14b_base(tmp_path):
    base = tmp_path / "Wan2.1-I2V-14B-480P"
    _write_base(base, dim=5120, shards=3)
    _write_wav2vec(tmp_path / "wav2vec2-base-960h")
    paths = CheckpointPaths.from_args(base)
    assert paths.model_size() == "14B" and len(paths.dit_weights) == 3 and paths.transformer_path is None
    paths.validate(NO_FLOORS)
    (base / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"00002-of-00003\.safetensors: file not found; download it with: hf download Wan-AI/Wan2.1-I2V-14B-480P"):
        paths.validate(NO_FLOORS)


def test_transformer_path_must_be_a_file(root):
    paths = CheckpointPaths.from_args(root / "Wan2.1-Fun-V1.1-1.3B-InP", root / "StableAvatar-1.3B")
    with pytest.raises(CheckpointError, match=r"must be a file.*transformer3d-square\.pt or .*transformer3d-rec-vec\.pt"):
        paths.validate(NO_FLOORS)
    paths = CheckpointPaths.from_args(root / "Wan2.1-Fun-V1.1-1.3B-InP", root / "StableAvatar-1.3B" / "transformer3d-sqare.pt")
    with pytest.raises(CheckpointError, match="transformer3d-sqare.pt: file not found; download it with: hf download FrancisRing/StableAvatar"):
        paths.validate(NO_FLOORS)


def test_renamed_folders_get_download_and_flag_hint(root):
    (root / "Wan2.1-Fun-V1.1-1.3B-InP").rename(root / "wan13b")
    paths = CheckpointPaths.from_args(root / "wan13b", pretrained_wav2vec_path=root / "nowhere")
    (root / "wan13b" / "Wan2.1_VAE.pth").unlink()
    problems = paths.problems(NO_FLOORS)
    assert len(problems) == 2
    assert "Wan2.1_VAE.pth: file not found" in problems[0] and "point the flag at checkpoints/Wan2.1-Fun-V1.1-1.3B-InP" in problems[0]
    assert "nowhere: wav2vec2 folder not found (--pretrained_wav2vec_path)" in problems[1]


def test_missing_base_folder(tmp_path):
    with pytest.raises(CheckpointError, match="base model folder not found"):
        CheckpointPaths.from_root(tmp_path).validate(NO_FLOORS)
    with pytest.raises(ValueError, match="1.3B model only"):
        CheckpointPaths.from_root(tmp_path, "14B", "square")
