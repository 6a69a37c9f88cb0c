"""The end-to-end pipeline: golden cases against the original, edge cases, streaming output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import assert_golden


@pytest.mark.slow
def test_golden_pipeline_uniform():
    """4 windows (the last shorter), 3 steps, uniform blend: final latents and the decoded video."""
    assert_golden("pipeline")


@pytest.mark.slow
def test_golden_pipeline_log():
    """The same with the 'log' blend: final latents (the recording of this case holds no decoded video)."""
    assert_golden("pipeline_log")


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):
    from wan.pipelines import load_pipeline
    from wan.testing.tiny_checkpoints import write_tiny_checkpoints

    paths = write_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))
    return load_pipeline(
        paths["pretrained_model_name_or_path"], paths["transformer_path"], paths["pretrained_wav2vec_path"], paths["config_path"], device="cpu"
    )


def _speech(seconds: float) -> np.ndarray:
    from tests.conftest import EXAMPLES
    from wan.audio import load_audio

    audio = load_audio(EXAMPLES / "case-2" / "audio.wav")
    return audio[: int(seconds * 16000)]


def _run(pipe, audio, **kw):
    kw = {"height": 32, "width": 32, "num_inference_steps": 2, "clip_length": 17, "overlap_window_length": 2, "output_type": "latent", **kw}
    return pipe(image=str(_reference()), audio=audio, generator=torch.Generator().manual_seed(0), **kw)


def _reference():
    from tests.conftest import EXAMPLES

    return EXAMPLES / "case-2" / "reference.png"


def test_audio_shorter_than_one_window_gives_one_short_window(tiny_pipe):
    """1 s of audio (25 frames -> 7 latent frames) is shorter than a 17-frame window (5 latent
    frames)... use a 33-frame window (9 latent): the original produced nothing; we run one window."""
    out = _run(tiny_pipe, _speech(1.0), clip_length=33)
    assert out.latents.shape[2] == 7
    assert torch.isfinite(out.latents).all() and out.latents.abs().sum() > 0


@pytest.mark.parametrize("frames", [81, 84])
def test_audio_of_exactly_one_window_finishes(tiny_pipe, frames):
    """81-84 frames with an 81-frame window: the original loops forever; we run the one window."""
    out = _run(tiny_pipe, _speech(frames * 640 / 16000 + 1e-4), clip_length=81, overlap_window_length=5)
    assert out.latents.shape[2] == 21


def test_stream_output_equals_whole_decode(tiny_pipe):
    audio = _speech(1.2)
    whole = _run(tiny_pipe, audio, output_type="pt")
    stream = _run(tiny_pipe, audio, output_type="stream")
    frames = torch.cat([c.float() for c in stream.videos], dim=2)
    torch.testing.assert_close((frames / 2 + 0.5).clamp(0, 1), whole.videos, rtol=0, atol=2e-6)
    assert whole.videos.shape[2] == tiny_pipe.num_output_frames(len(audio))


def test_bad_inputs_fail_before_any_model_runs(tiny_pipe, tmp_path):
    audio = _speech(1.0)
    with pytest.raises(ValueError, match="multiples of 16"):
        _run(tiny_pipe, audio, height=40)
    with pytest.raises(ValueError, match="4k\\+1"):
        _run(tiny_pipe, audio, clip_length=16)
    with pytest.raises(ValueError, match="overlap_window_length"):
        _run(tiny_pipe, audio, overlap_window_length=5)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        tiny_pipe(image=str(tmp_path / "nope.png"), audio=audio, height=32, width=32, num_inference_steps=1, clip_length=17, overlap_window_length=2)


def test_last_window_true_length_changes_only_the_last_window(tiny_pipe):
    """Opt-in flag: the short last window runs unpadded. Frames no window but the last one touches
    are unchanged at step 0 (one step: no blending feeds the change back)."""
    audio = _speech(1.6)  # 40 frames -> 10 latent frames; windows [0,5) [3,8) [6,10): the last has 4 frames
    base = _run(tiny_pipe, audio, num_inference_steps=1)
    short = _run(tiny_pipe, audio, num_inference_steps=1, last_window_true_length=True)
    assert base.windows[-1].num_frames == 4
    last = base.windows[-1]
    torch.testing.assert_close(short.latents[:, :, : last.start], base.latents[:, :, : last.start], rtol=0, atol=0)
    assert not torch.equal(short.latents[:, :, last.start :], base.latents[:, :, last.start :])


def test_memory_does_not_grow_with_video_length(tiny_pipe, tmp_path):
    """What follows the denoising, inside the ``output_type="stream"`` call and while the mp4 is written,
    holds no more tensor memory for 6 windows than for 2: frames stream from the VAE into the encoder and
    the decoded video is never held whole, neither by the pipeline nor by the writer. The meter starts
    after the last step (the DiT's working set would otherwise hide the decode, and metering it is slow)."""
    import contextlib

    from wan.testing.memory import LiveTensorBytes
    from wan.utils.video_io import decoded_to_uint8, write_video

    peaks, frames, windows = [], [], []
    for seconds in (1.16, 3.08):  # 8 and 20 latent frames: 2 and 6 windows of 5 overlapping by 2
        meter = LiveTensorBytes()
        with torch.no_grad(), contextlib.ExitStack() as metered:
            out = _run(tiny_pipe, _speech(seconds), num_inference_steps=1, output_type="stream",
                       callback_on_step_end=lambda *_, m=meter: metered.enter_context(m))  # fmt: skip  (1 step: entered once)
            written = write_video(tmp_path / f"{seconds}.mp4", (decoded_to_uint8(c) for c in out.videos), progress=False)
        peaks.append(meter.peak)
        frames.append(written.num_frames)
        windows.append(len(out.windows))
    extra_video_bytes = (frames[1] - frames[0]) * 3 * 32 * 32 * 4  # the extra frames as float32
    assert windows == [2, 6] and frames == [29, 77] and peaks[0] > 0
    assert peaks[1] - peaks[0] <= 0.05 * extra_video_bytes, f"peak grew from {peaks[0]} to {peaks[1]} bytes"


def test_bf16_vae_option_is_close_to_float32(tiny_pipe):
    """--vae_dtype bfloat16: the same latents decode to nearly the same frames."""
    import copy
    import math

    audio = _speech(1.0)
    ref = _run(tiny_pipe, audio, num_inference_steps=1, output_type="pt")
    pipe = copy.copy(tiny_pipe)
    pipe.register_modules(vae=copy.deepcopy(tiny_pipe.vae).to(torch.bfloat16))
    out = _run(pipe, audio, num_inference_steps=1, output_type="pt")
    mse = (out.videos - ref.videos).pow(2).mean().item()
    assert 0 < mse and 10 * math.log10(1 / mse) > 30, mse
