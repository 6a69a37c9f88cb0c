"""Tiny StableAvatar pipelines on the CPU for the runtime tests (memory modes, TeaCache, resume)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import EXAMPLES

REFERENCE = EXAMPLES / "case-1" / "reference.png"
# 1.53 s of audio at 64x64 with 17-frame windows overlapping by 3: 10 latent frames, 4 windows
# (the last one short), as in the pipeline golden case.
AUDIO = (np.random.default_rng(0).standard_normal(24443) * 0.1).astype(np.float32)
CALL = dict(prompt="a woman speaking", height=64, width=64, clip_length=17, overlap_window_length=3)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    from wan.testing.tiny_checkpoints import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("tiny_ckpt"))


@pytest.fixture(scope="session")
def make_pipe(tiny_folder):
    """make_pipe(**load_pipeline kwargs) -> a fresh tiny pipeline on the CPU (float32)."""
    from wan.pipelines.loading import load_pipeline

    def make(**kwargs):
        paths = tiny_folder
        pipe = load_pipeline(
            paths["pretrained_model_name_or_path"],
            paths["transformer_path"],
            paths["pretrained_wav2vec_path"],
            paths["config_path"],
            device="cpu",
            **kwargs,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


def generate(pipe, steps: int = 3, output_type: str = "latent", seed: int = 0, **kwargs):
    """One tiny generation; returns the pipeline output."""
    kwargs = {**CALL, **kwargs}
    return pipe(REFERENCE, AUDIO, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type=output_type, **kwargs)
