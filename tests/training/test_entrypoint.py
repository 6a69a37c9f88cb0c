"""The real entry point end to end on CPU: train_1B_square.py with the original flags on the tiny
checkpoint folder (wan.testing.tiny_checkpoints) and a clip folder in the preprocessing layout.

Real loaders (checked_checkpoints, load_transformer, VAE/umT5/CLIP/wav2vec2 at tiny sizes), real
conditioning, checkpoint + resume, the validation mp4 through StableAvatarPipeline, and --lora with
the adapter loaded back for inference.
"""

from __future__ import annotations

import json
import logging
import runpy
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
FRAMES = 9  # pixel frames per clip (1 + 4k); 3 latent frames


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> dict[str, Path]:
    from wan.testing.tiny_checkpoints import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("tiny_checkpoints"))


def flags(ckpt: dict[str, Path], data: Path, out: Path, steps: int, validation: bool = True) -> list[str]:
    """The launcher's flags (train_1B_square.sh), sized down: 32x32, 9 frames, fp32."""
    clip = data.parent / "square" / "speech" / "00000"
    argv = [
        f"--pretrained_model_name_or_path={ckpt['pretrained_model_name_or_path']}",
        f"--transformer_path={ckpt['transformer_path']}",
        f"--pretrained_wav2vec_path={ckpt['pretrained_wav2vec_path']}",
        f"--config_path={ckpt['config_path']}",
        f"--train_data_square_dir={data}",
        "--bucket_size=square=32x32",
        f"--video_sample_n_frames={FRAMES}",
        "--train_batch_size=1",
        "--dataloader_num_workers=0",
        f"--max_train_steps={steps}",
        "--checkpointing_steps=2",
        "--learning_rate=1e-3",
        "--lr_warmup_steps=0",
        "--seed=42",
        f"--output_dir={out}",
        "--report_to=none",
        "--train_mode=i2v",
        "--uniform_sampling",
        "--motion_sub_loss",
        "--validation_steps=2",
    ]
    if validation:
        argv += [
            f"--validation_reference_path={clip / 'images' / 'frame_0.png'}",
            f"--validation_driven_audio_path={clip / 'audio.wav'}",
            "--validation_sample_steps=2",
        ]
    return argv


def run_script(monkeypatch, argv: list[str]) -> None:
    """``python train_1B_square.py ARGV``, in this process (the shim file itself runs as __main__)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    monkeypatch.setattr(sys, "argv", [str(REPO / "train_1B_square.py"), *argv])
    runpy.run_path(str(REPO / "train_1B_square.py"), run_name="__main__")
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def test_train_checkpoint_validate_resume(ckpt, tiny_data, tmp_path, monkeypatch, caplog):
    import av

    out = tmp_path / "run"
    run_script(monkeypatch, flags(ckpt, tiny_data, out, steps=2))

    # 1. Checkpoint: accelerate state, train_state.json and the released-format DiT weights.
    step2 = out / "checkpoint-2"
    assert json.loads((step2 / "train_state.json").read_text())["global_step"] == 2
    weights = torch.load(step2 / "transformer3d-checkpoint-2.pt", weights_only=True)
    start = torch.load(ckpt["transformer_path"], weights_only=True)
    assert set(weights) == set(start)
    trained = [k for k in weights if not torch.equal(weights[k], start[k].float())]
    assert trained and all(k.startswith(("blocks.", "vocal_projector.")) for k in trained), trained[:5]

    # 2. Validation video: h264 frames + the driving audio.
    video = out / "sample" / "sample-2.mp4"
    with av.open(str(video)) as container:
        kinds = {s.type for s in container.streams}
        frames = sum(1 for _ in container.decode(video=0))
    assert kinds == {"video", "audio"}
    assert frames == FRAMES

    # 3. Resume to step 3 == 3 uninterrupted steps (same final weights).
    with caplog.at_level(logging.INFO, logger="wan.training.trainer"):
        run_script(monkeypatch, [*flags(ckpt, tiny_data, out, steps=3, validation=False), "--resume_from_checkpoint=latest"])
    assert f"resumed from {step2} at step 2" in caplog.text  # not a fresh run that happens to reach the same weights
    straight = tmp_path / "straight"
    run_script(monkeypatch, flags(ckpt, tiny_data, straight, steps=3, validation=False))
    assert json.loads((out / "checkpoint-3" / "train_state.json").read_text())["global_step"] == 3
    resumed = torch.load(out / "checkpoint-3" / "transformer3d-checkpoint-3.pt", weights_only=True)
    uninterrupted = torch.load(straight / "checkpoint-3" / "transformer3d-checkpoint-3.pt", weights_only=True)
    assert any(not torch.equal(resumed[k], weights[k]) for k in trained)  # step 3 did train
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=1e-6, atol=1e-7, msg=key)


def test_lora_run_and_adapter_loads_for_inference(ckpt, tiny_data, tmp_path):
    from wan.models.transformer import load_transformer
    from wan.pipelines import load_pipeline
    from wan.training.cli import main
    from wan.training.lora import load_lora_into

    out = tmp_path / "lora"
    trainer = main("1B_square", [*flags(ckpt, tiny_data, out, steps=2), "--lora", "--rank=4", "--network_alpha=2"])
    adapter = out / "checkpoint-2" / "lora-checkpoint-2.safetensors"
    assert adapter.is_file()
    assert (out / "sample" / "sample-2.mp4").is_file()  # the validation ran through the peft-wrapped DiT
    assert not (out / "checkpoint-2" / "transformer3d-checkpoint-2.pt").exists()

    # The adapter on a freshly loaded DiT reproduces the trained model.
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    base, dit_path = ckpt["pretrained_model_name_or_path"], ckpt["transformer_path"]
    loaded = load_lora_into(load_transformer(base, dit_path, dtype=torch.float32), adapter, scale=1.0).eval()
    plain = load_transformer(base, dit_path, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    cfg = model.config
    x = dict(
        x=torch.randn(1, 16, 3, 4, 4, generator=g),
        t=torch.tensor([600.0]),
        context=[torch.randn(7, cfg.text_dim, generator=g)],
        seq_len=12,
        clip_fea=torch.randn(1, 257, cfg.clip_dim, generator=g),
        y=torch.randn(1, 20, 3, 4, 4, generator=g),
        vocal_embeddings=torch.randn(1, 12, cfg.audio_in_dim, generator=g),
        video_sample_n_frames=FRAMES,
    )
    with torch.no_grad():
        expected, got, before = model(**x), loaded(**x), plain(**x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (before - expected).abs().max() > 1e-6  # the adapter changes the model

    # ... and generates through the inference pipeline.
    wav2vec, config = ckpt["pretrained_wav2vec_path"], ckpt["config_path"]
    pipe = load_pipeline(base, transformer_path=dit_path, wav2vec_path=wav2vec, config_path=config, device="cpu")
    load_lora_into(pipe.transformer, adapter, scale=1.0)
    clip = tiny_data.parent / "square" / "speech" / "00000"
    result = pipe(
        image=str(clip / "images" / "frame_0.png"),
        audio=str(clip / "audio.wav"),
        height=32,
        width=32,
        num_inference_steps=2,
        clip_length=FRAMES,
        overlap_window_length=1,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(result.latents).all()


def test_vae_posterior_is_the_originals_sample():
    """Normalised mean, but the encoder's raw std (the original's DiagonalGaussianDistribution over
    [normalised mu, raw logvar]); not the std rescaled to the normalised space."""
    from wan.models.vae import WanVAE
    from wan.testing.recipe import fill_state_dict
    from wan.training._encoders import vae_posterior

    vae = fill_state_dict(WanVAE(base_dim=8)).eval()
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mean, std = vae_posterior(vae)(video)
    with torch.no_grad():
        raw = vae.model.encode(video).latent_dist
    torch.testing.assert_close(mean, vae.encode(video))
    torch.testing.assert_close(std, raw.std)
    assert not torch.allclose(std, raw.std / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1), rtol=1e-2)


def test_bf16_run_on_cpu(ckpt, tiny_data, tmp_path):
    """--mixed_precision=bf16 --gradient_checkpointing (the launchers' setting) through the real encoders:
    bf16 DiT/VAE/umT5, float32 CLIP and wav2vec2; the checkpoint is in bf16 like the release."""
    from wan.training.cli import main

    out = tmp_path / "bf16"
    main("1B_square", [*flags(ckpt, tiny_data, out, steps=2, validation=False), "--mixed_precision=bf16", "--gradient_checkpointing"])
    weights = torch.load(out / "checkpoint-2" / "transformer3d-checkpoint-2.pt", weights_only=True)
    start = torch.load(ckpt["transformer_path"], weights_only=True)
    assert all(v.dtype == torch.bfloat16 and torch.isfinite(v).all() for v in weights.values())
    assert any(not torch.equal(weights[k], start[k]) for k in weights if k.startswith("blocks."))
