"""Resumable runs: saved latents continue bit for bit; mismatches refused; OOM keeps the state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import EXAMPLES
from tests.runtime.conftest import generate
from wan.runtime.resume import ResumeMismatchError, ResumeState, StepSaver, check_compatible, load_state, save_state

STEPS = 4
FIELDS = {"prompt": "a woman speaking", "sample_steps": STEPS, "seed": 0}


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def pipe(make_pipe):
    return make_pipe()


@pytest.mark.parametrize("every, stop_after", [(1, 2), (2, 3)])
def test_interrupted_then_resumed_equals_uninterrupted(pipe, tmp_path, every, stop_after):
    full = generate(pipe, steps=STEPS).latents
    path = tmp_path / "state.safetensors"
    saver = StepSaver(path, every, STEPS, seed=0, memory_mode="model_full_load", fields=FIELDS)

    def crash_after(p, step, t, latents):
        saver(p, step, t, latents)
        if step + 1 == stop_after:
            raise Interrupted

    with pytest.raises(Interrupted):
        generate(pipe, steps=STEPS, callback_on_step_end=crash_after)
    state = load_state(path)
    assert state.steps_done == stop_after // every * every  # the newest save at or before the crash
    check_compatible(state, FIELDS, "model_cpu_offload", path)  # memory mode may change
    # another seed on purpose: with saved latents the initial noise is not drawn
    resumed = generate(pipe, steps=STEPS, seed=123, latents=state.latents, start_step=state.steps_done)
    assert torch.equal(resumed.latents, full)


def test_resume_after_the_last_step_only_decodes(pipe, tmp_path):
    path = tmp_path / "state.safetensors"
    full = generate(pipe, steps=STEPS, callback_on_step_end=StepSaver(path, 3, STEPS, 0, "model_full_load", FIELDS))
    state = load_state(path)
    assert state.steps_done == STEPS  # saved after the last step even off the period
    again = generate(pipe, steps=STEPS, latents=state.latents, start_step=STEPS)
    assert torch.equal(again.latents, full.latents)


def test_mismatched_resume_is_refused_naming_the_fields(tmp_path):
    path = save_state(tmp_path / "s.safetensors", ResumeState(torch.zeros(1, 16, 2, 4, 4), 2, STEPS, 0, "model_full_load", FIELDS))
    state = load_state(path)
    with pytest.raises(ResumeMismatchError, match=r"sample_steps: saved 4, now 8.*seed: saved 0, now 1"):
        check_compatible(state, {**FIELDS, "sample_steps": 8, "seed": 1}, "model_full_load", path)


def test_saving_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "s.safetensors"
    save_state(path, ResumeState(torch.ones(1, 16, 2, 4, 4), 1, STEPS, 0, "model_full_load", FIELDS))

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("wan.runtime.resume.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_state(path, ResumeState(torch.full((1, 16, 2, 4, 4), 7.0), 2, STEPS, 0, "model_full_load", FIELDS))
    assert load_state(path).steps_done == 1 and torch.equal(load_state(path).latents, torch.ones(1, 16, 2, 4, 4))
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]  # no temp file left behind


class CLI:
    """inference.py on the tiny folder (32x32, 17-frame windows, STEPS steps) with hooks: ``oom_at`` injects a
    CUDA out-of-memory error at that step; ``steps`` lists the steps that ran, ``latents`` the final latents,
    ``frames`` the uint8 frames handed to the mp4 writer ([T, H, W, 3]; x264's output bytes are not
    reproducible from run to run even for equal frames, so the frames are compared, not the file)."""

    def __init__(self, tiny_folder, monkeypatch):
        from wan.cli import generation, inference
        from wan.pipelines.pipeline_stableavatar import StableAvatarPipeline

        self.main, self.oom_at, self.steps, self.latents, self.frames = inference.main, None, [], None, []
        self.flags = [f"--{k}={v}" for k, v in tiny_folder.items()] + [
            f"--validation_reference_path={EXAMPLES / 'case-1' / 'reference.png'}",
            f"--validation_driven_audio_path={EXAMPLES / 'case-2' / 'audio.wav'}",
            "--width=32", "--height=32", "--clip_sample_n_frames=17", "--overlap_window_length=3", f"--sample_steps={STEPS}", "--device=cpu",
        ]  # fmt: skip
        plain_predict, plain_call, plain_chunks = StableAvatarPipeline.predict_windows, StableAvatarPipeline.__call__, generation._uint8_chunks

        def predict(pipe, latents_all, t, windows, cond, progress=None):
            step = pipe.scheduler.timesteps.tolist().index(float(t))
            self.steps.append(step)
            if self.oom_at == step:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return plain_predict(pipe, latents_all, t, windows, cond, progress)

        def call(pipe, *args, **kwargs):
            out = plain_call(pipe, *args, **kwargs)
            self.latents = out.latents.clone()
            return out

        def chunks(result, *args, **kwargs):
            for chunk in plain_chunks(result, *args, **kwargs):
                self.frames.append(np.array(chunk))
                yield chunk

        monkeypatch.delenv("WORLD_SIZE", raising=False)
        monkeypatch.setattr(StableAvatarPipeline, "predict_windows", predict)
        monkeypatch.setattr(StableAvatarPipeline, "__call__", call)
        monkeypatch.setattr(generation, "_uint8_chunks", chunks)  # generate() looks it up where it lives
        monkeypatch.setattr("wan.audio.load_audio", lambda path, *a, **k: _short_audio())
        monkeypatch.setattr("wan.pipelines.pipeline_stableavatar.load_audio", lambda path, *a, **k: _short_audio())

    def __call__(self, out, *flags: str, oom_at: int | None = None) -> int:
        self.oom_at, self.steps, self.latents, self.frames = oom_at, [], None, []
        return self.main([*self.flags, f"--output_dir={out}", *flags])


@pytest.fixture
def cli(tiny_folder, monkeypatch):
    return CLI(tiny_folder, monkeypatch)


def test_cli_out_of_memory_names_next_mode_keeps_state_and_resume_finishes(cli, tmp_path, capsys):
    """inference.py on the tiny folder: a CUDA OOM injected at step 3 -> exit 3 with the next memory
    mode; the state after step 2 is kept; --resume runs only the remaining steps, and its final latents
    and mp4 equal, bit for bit, those of a run that was never stopped."""
    assert cli(tmp_path / "whole") == 0 and cli.steps == list(range(STEPS))
    whole, whole_frames = cli.latents, np.concatenate(cli.frames)
    out = tmp_path / "out"
    assert cli(out, oom_at=2) == 3
    err = capsys.readouterr().err
    assert "--GPU_memory_mode model_cpu_offload" in err and "--resume" in err and "resume_state.safetensors" in err
    assert load_state(out / "resume_state.safetensors").steps_done == 2

    assert cli(out, "--resume") == 0
    assert cli.steps == [2, 3]  # only the remaining steps ran
    assert torch.equal(cli.latents, whole) and np.array_equal(np.concatenate(cli.frames), whole_frames)
    assert (out / "video_with_audio.mp4").is_file() and not (out / "resume_state.safetensors").exists()

    assert cli(out, "--seed=7", oom_at=0) == 3  # no step saved yet: nothing to resume, and no path is named
    assert "--resume" not in capsys.readouterr().err
    (out / "resume_state.safetensors").unlink(missing_ok=True)
    save_state(out / "resume_state.safetensors", ResumeState(torch.zeros(1), 1, STEPS, 0, "model_full_load", {"seed": 42}))
    assert cli(out, "--resume") == 2
    assert "--resume refused" in capsys.readouterr().err


def _short_audio():
    return (np.random.default_rng(1).standard_normal(24443) * 0.1).astype(np.float32)
