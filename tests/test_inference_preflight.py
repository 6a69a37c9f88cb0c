"""inference.py fails before the work: every input that would break the run after the models loaded
(or after the whole denoise) is an exit-2 message from ``validate()``, and nothing large is read."""

from __future__ import annotations

import logging
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from tests.conftest import EXAMPLES
from wan.cli import inference as cli
from wan.cli import preflight


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from wan.testing.tiny_checkpoints import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture
def argv(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return [
        *(f"--{k}={v}" for k, v in tiny_folder.items()),
        f"--validation_reference_path={EXAMPLES / 'case-2' / 'reference.png'}",
        f"--validation_driven_audio_path={EXAMPLES / 'case-2' / 'audio.wav'}",
        f"--output_dir={tmp_path / 'out'}",
        "--width=64",
        "--height=64",
        "--overlap_window_length=5",
    ]


def _validate(argv, *extra, check_checkpoints=True):
    cli.validate(cli.parse_args([*argv, *extra]), check_checkpoints=check_checkpoints)


@pytest.fixture
def no_load(monkeypatch):
    """main() must stop before any model loads."""

    def must_not_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setitem(sys.modules, "wan.pipelines", types.SimpleNamespace(load_pipeline=must_not_load))


def test_the_tiny_folder_passes(argv):
    _validate(argv)


# ---------------------------------------------------------------------------------------------
# the output folder
# ---------------------------------------------------------------------------------------------


def test_output_dir_that_is_a_file(argv, tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(cli.InferenceArgumentError, match="taken is a file, not a folder"):
        _validate(argv, f"--output_dir={tmp_path / 'taken'}", check_checkpoints=False)


def test_output_dir_that_cannot_be_created(argv, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(cli.InferenceArgumentError, match="file/out cannot be written"):
        _validate(argv, f"--output_dir={tmp_path / 'file' / 'out'}", check_checkpoints=False)


def test_output_dir_whose_write_probe_fails(argv, monkeypatch):
    def read_only(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(preflight.tempfile, "NamedTemporaryFile", read_only)
    with pytest.raises(cli.InferenceArgumentError, match="cannot be written \\(Permission denied\\)"):
        _validate(argv, check_checkpoints=False)


def test_full_disk(argv, monkeypatch):
    """40 s at 64x64 needs about 16 MiB + 1001 frames x 64 x 64 x 0.25 bytes: 10 MiB free is too little."""
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: types.SimpleNamespace(free=10 << 20))
    with pytest.raises(cli.InferenceArgumentError, match="10 MiB free, the video needs about 17 MiB"):
        _validate(argv, "--save_every=0", check_checkpoints=False)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: types.SimpleNamespace(free=18 << 20))
    _validate(argv, "--save_every=0", check_checkpoints=False)


def test_output_bytes_grow_with_frames_pixels_and_options():
    one = preflight.output_bytes(100, 64, 64)
    assert preflight.output_bytes(200, 64, 64) - one == one - preflight.output_bytes(0, 64, 64) > 0
    assert preflight.output_bytes(100, 64, 64, save_intermediate=True) == 2 * one
    assert preflight.output_bytes(100, 64, 64, save_every=1) > one


# ---------------------------------------------------------------------------------------------
# the audio and the image
# ---------------------------------------------------------------------------------------------


def test_silent_audio_fails_in_validate(argv, tmp_path, no_load, capsys):
    sf.write(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000)
    assert cli.main([*argv, f"--validation_driven_audio_path={tmp_path / 'silent.wav'}"]) == 2
    assert "--validation_driven_audio_path: audio file" in capsys.readouterr().err


@pytest.mark.parametrize("side,warns", [(16, True), (128, False)])
def test_small_reference_warns_above_4x(argv, tmp_path, caplog, side, warns):
    Image.new("RGB", (side, side), (120, 80, 60)).save(tmp_path / "small.png")
    with caplog.at_level(logging.WARNING, logger="wan.inference"):
        _validate(argv, f"--validation_reference_path={tmp_path / 'small.png'}", "--width=512", "--height=512", check_checkpoints=False)
    assert ("upscaled 32x" in caplog.text) is warns
    assert ("upscaled" in caplog.text) is warns


# ---------------------------------------------------------------------------------------------
# the weights: keys and shapes before anything loads
# ---------------------------------------------------------------------------------------------


def _with_transformer(argv, path):
    return [a for a in argv if not a.startswith("--transformer_path")] + [f"--transformer_path={path}"]


def _released(tiny_folder) -> dict[str, torch.Tensor]:
    return torch.load(tiny_folder["transformer_path"], weights_only=True)


def test_wrong_key_in_the_stableavatar_pt(argv, tiny_folder, tmp_path, no_load, capsys):
    state = _released(tiny_folder)
    state["vocal_projector.extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "extra.pt")
    assert cli.main(_with_transformer(argv, tmp_path / "extra.pt")) == 2
    assert "extra.pt: 1 keys are not StableAvatar DiT keys: ['vocal_projector.extra.weight']" in capsys.readouterr().err


def test_wrong_shape_in_the_stableavatar_pt(argv, tiny_folder, tmp_path):
    state = _released(tiny_folder)
    key = next(k for k in state if "k_vocal.weight" in k)
    state[key] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(cli.InferenceArgumentError, match=f"1 tensors have the wrong shape: {key}: file \\(3, 3\\)"):
        _validate(_with_transformer(argv, tmp_path / "shape.pt"))


def test_missing_key_in_a_base_file(argv, tiny_folder, tmp_path):
    """The VAE without one tensor: named, with the file, before umT5 (read first) is loaded."""
    base = tiny_folder["pretrained_model_name_or_path"]
    state = torch.load(base / "Wan2.1_VAE.pth", weights_only=True)
    state.pop("decoder.head.2.bias")
    folder = tmp_path / "base"
    folder.mkdir()
    for item in base.iterdir():
        (folder / item.name).symlink_to(item)
    (folder / "Wan2.1_VAE.pth").unlink()
    torch.save(state, folder / "Wan2.1_VAE.pth")
    args = [a for a in argv if not a.startswith("--pretrained_model_name_or_path")] + [f"--pretrained_model_name_or_path={folder}"]
    with pytest.raises(cli.InferenceArgumentError, match="Wan2.1_VAE.pth does not match WanVAE: 1 missing keys: model.decoder.head.2.bias"):
        _validate(args)


class _RunsCode:
    """Unpickling this calls ``Path.touch`` on the marker: a checkpoint that runs code when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_unsafe_pickle_is_refused_by_name_and_never_runs(argv, tiny_folder, tmp_path, no_load, capsys):
    state = _released(tiny_folder)
    state["payload"] = _RunsCode(tmp_path / "ran")
    torch.save(state, tmp_path / "unsafe.pt")
    assert cli.main(_with_transformer(argv, tmp_path / "unsafe.pt")) == 2
    err = capsys.readouterr().err
    assert "unsafe.pt: refused: not a plain tensor checkpoint" in err and "truncated" not in err
    assert not (tmp_path / "ran").exists()


def test_non_tensor_entry_is_refused(argv, tiny_folder, tmp_path):
    state = _released(tiny_folder)
    state["step"] = 1000
    torch.save(state, tmp_path / "step.pt")
    with pytest.raises(cli.InferenceArgumentError, match="step.pt: refused: not a plain tensor checkpoint \\(entry 'step' is a int"):
        _validate(_with_transformer(argv, tmp_path / "step.pt"))


def test_tiny_folder_without_its_yaml_names_the_yaml(argv, tiny_folder):
    """The default yaml declares the released umT5/VAE/CLIP sizes: every mismatch is an encoder size."""
    args = [a for a in argv if not a.startswith("--config_path")]
    with pytest.raises(cli.InferenceArgumentError) as err:
        _validate(args)
    first_line = str(err.value).splitlines()[0]
    assert "the t5/vae/clip files do not have the sizes" in first_line
    assert f"pass --config_path={tiny_folder['config_path']}" in first_line


def test_weight_check_reads_no_weights(argv, monkeypatch):
    """The check runs on meta tensors: loading a real tensor from disk is never reached."""
    import safetensors.torch

    def no_read(*a, **k):
        raise AssertionError("weights were read")

    monkeypatch.setattr(safetensors.torch, "load_file", no_read)
    real_load = torch.load

    def meta_only(*a, **k):
        assert k.get("map_location") == "meta", "a weight file was loaded with its data"
        return real_load(*a, **k)

    monkeypatch.setattr(torch, "load", meta_only)
    _validate(argv)


def test_checkpoint_error_while_loading_exits_2(argv, monkeypatch, capsys):
    """A CheckpointError raised after validation (e.g. a file replaced meanwhile) is one line, exit 2."""
    from wan.models.loading import CheckpointError

    def broken(*a, **k):
        raise CheckpointError("x.pt does not match WanT5Encoder: 1 missing keys: a")

    monkeypatch.setitem(sys.modules, "wan.pipelines", types.SimpleNamespace(load_pipeline=broken))
    monkeypatch.setattr(cli, "validate", lambda args: None)
    assert cli.main(argv) == 2
    assert "inference.py: error: x.pt does not match WanT5Encoder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# a killed write's temporary files
# ---------------------------------------------------------------------------------------------


def _dead_pid() -> int:
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temp_files_are_removed_on_start(argv, tmp_path, monkeypatch):
    from tests.test_inference_cli import FakePipeline

    out = tmp_path / "out"
    out.mkdir()
    dead, alive = _dead_pid(), os.getppid()
    stale = [out / f".video_with_audio.tmp{dead}.mp4", out / f".video_without_audio.tmp{dead}.mp4", out / f".cropped_audio.tmp{dead}.wav"]
    busy = out / f".video_with_audio.tmp{alive}.mp4"  # another process still writing
    for path in (*stale, busy):
        path.write_bytes(b"partial")
    monkeypatch.setitem(sys.modules, "wan.pipelines", types.SimpleNamespace(load_pipeline=lambda path, **k: FakePipeline()))
    monkeypatch.setattr(cli, "validate", lambda args: None)
    assert cli.main([*argv, "--sample_steps=1", "--save_every=0"]) == 0
    assert not any(p.exists() for p in stale)
    assert busy.exists()
    assert (out / "video_with_audio.mp4").is_file()
