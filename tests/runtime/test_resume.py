"""Resumable runs: saved latents continue bit for bit; mismatches refused; OOM keeps the state."""

from __future__ import annotations

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


def test_cli_out_of_memory_names_next_mode_keeps_state_and_resume_finishes(tiny_folder, tmp_path, monkeypatch, capsys):
    """inference.py on the tiny folder: a CUDA OOM injected at step 3 -> exit 3 with the next memory
    mode; the state after step 2 is kept; --resume runs only the remaining steps."""
    from wan.cli import inference as cli
    from wan.pipelines.pipeline_stableavatar import StableAvatarPipeline

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "out"
    argv = [f"--{k}={v}" for k, v in tiny_folder.items()] + [
        f"--validation_reference_path={EXAMPLES / 'case-1' / 'reference.png'}",
        f"--validation_driven_audio_path={EXAMPLES / 'case-2' / 'audio.wav'}",
        f"--output_dir={out}", "--width=32", "--height=32", "--clip_sample_n_frames=17", "--overlap_window_length=3",
        f"--sample_steps={STEPS}", "--device=cpu",
    ]  # fmt: skip
    calls = {"steps": []}
    plain = StableAvatarPipeline.predict_windows

    def predict(self, latents_all, t, windows, cond, progress=None):
        step = self.scheduler.timesteps.tolist().index(float(t))
        calls["steps"].append(step)
        if calls.get("oom_at") == step:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return plain(self, latents_all, t, windows, cond, progress)

    monkeypatch.setattr(StableAvatarPipeline, "predict_windows", predict)
    monkeypatch.setattr("wan.audio.load_audio", lambda path, *a, **k: _short_audio())
    monkeypatch.setattr("wan.pipelines.pipeline_stableavatar.load_audio", lambda path, *a, **k: _short_audio())
    calls["oom_at"] = 2
    assert cli.main(argv) == 3
    err = capsys.readouterr().err
    assert "--GPU_memory_mode model_cpu_offload" in err and "--resume" in err and "resume_state.safetensors" in err
    assert load_state(out / "resume_state.safetensors").steps_done == 2

    calls.update(oom_at=None, steps=[])
    assert cli.main([*argv, "--resume"]) == 0
    assert calls["steps"] == [2, 3]  # only the remaining steps ran
    assert (out / "video_with_audio.mp4").is_file() and not (out / "resume_state.safetensors").exists()

    calls.update(oom_at=0, steps=[])
    assert cli.main([*argv, "--seed=7"]) == 3  # no step saved yet: nothing to resume, and no path is named
    assert "--resume" not in capsys.readouterr().err
    (out / "resume_state.safetensors").unlink(missing_ok=True)
    save_state(out / "resume_state.safetensors", ResumeState(torch.zeros(1), 1, STEPS, 0, "model_full_load", {"seed": 42}))
    assert cli.main([*argv, "--resume"]) == 2
    assert "--resume refused" in capsys.readouterr().err


def _short_audio():
    import numpy as np

    return (np.random.default_rng(1).standard_normal(24443) * 0.1).astype(np.float32)
