"""Window schedule, audio spans, blend weights and guidance against PIPELINE.md §6-7 and the pipeline goldens."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import CASES
from wan.pipelines import sliding_window as sw
from wan.pipelines.scheduling import build_scheduler, set_timesteps, step_window


def spans(windows: list[sw.Window]) -> list[tuple[int, int]]:
    return [(w.start, w.end) for w in windows]


# ---------------------------------------------------------------------------------------------
# Frame arithmetic and the worked example
# ---------------------------------------------------------------------------------------------


def test_frame_arithmetic_of_worked_example():
    m = 160_000  # 10.0 s at 16 kHz
    assert sw.num_video_frames(m) == 250
    assert sw.num_latent_frames(m) == 63
    assert sw.num_decoded_frames(63) == 249
    assert sw.frames_per_window(81) == 21
    assert sw.window_seq_len(81, 512, 512) == 21 * 32 * 32
    assert sw.window_seq_len(81, 480, 832) == 32_760


def test_worked_example_overlap_5():
    windows = sw.schedule_for_audio(160_000, clip_length=81, overlap=5)
    assert spans(windows) == [(0, 21), (16, 37), (32, 53), (48, 63)]
    assert [w.is_last for w in windows] == [False, False, False, True]
    assert [w.blend_frames for w in windows] == [0, 5, 5, 5]
    assert windows[-1].num_frames == 15
    assert (windows[-1].audio_start, windows[-1].audio_end) == (122_880, 160_000)
    # non-last windows hear exactly 4 * 21 frames = 53,760 samples from start * 2560
    for w in windows[:-1]:
        assert w.audio_start == w.start * 2560
        assert w.audio_end - w.audio_start == 53_760


def test_worked_example_overlap_10():
    windows = sw.schedule_for_audio(160_000, clip_length=81, overlap=10)
    assert spans(windows) == [(0, 21), (11, 32), (22, 43), (33, 54), (44, 63)]


def original_loop(latent_frames: int, fpb: int, overlap: int, m: int, max_windows: int = 1000) -> list[tuple[int, int, int, int]]:
    """The original's while-loop transcribed from PIPELINE.md §6 (one denoising step), with a guard
    for its infinite loop; returns (start, end, audio_start, audio_end) per window."""
    out = []
    start, end = 0, fpb
    last = False
    while end <= latent_frames:
        if end == latent_frames:
            audio = (start * 2560, m)
        else:
            audio = (start * 2560, start * 2560 + (end - start) * 4 * 640)
        out.append((start, end, *audio))
        if len(out) > max_windows:
            raise RuntimeError("infinite loop")
        if last:
            break
        if end != latent_frames:
            start = start + fpb - overlap
            if start + fpb < latent_frames:
                end = start + fpb
            else:
                end = latent_frames
                last = True
    return out


@pytest.mark.parametrize("clip_length", [17, 33, 81])
@pytest.mark.parametrize("overlap", [0, 1, 2, 3, 4])
def test_schedule_equals_original_loop_where_it_terminates(clip_length, overlap):
    fpb = sw.frames_per_window(clip_length)
    checked = 0
    for total_frames in range(1, 400, 3):
        m = total_frames * 640 + 123
        t = sw.num_latent_frames(m)
        if t <= fpb:  # the original produces nothing or never ends there; covered below
            continue
        ref = original_loop(t, fpb, overlap, m)
        got = [(w.start, w.end, w.audio_start, w.audio_end) for w in sw.window_schedule(t, fpb, overlap, m)]
        assert got == ref, (t, fpb, overlap)
        checked += 1
    assert checked > 50


def test_windows_cover_every_frame_and_last_is_longer_than_overlap():
    for t in range(22, 200):
        windows = sw.window_schedule(t, 21, 5, t * 2560)
        covered = sorted({f for w in windows for f in range(w.start, w.end)})
        assert covered == list(range(t))
        assert windows[-1].end == t and windows[-1].is_last
        assert windows[-1].num_frames > 5
        for prev, nxt in zip(windows, windows[1:], strict=False):
            assert nxt.start == prev.end - 5  # the blended frames are exactly the previous window's tail


# ---------------------------------------------------------------------------------------------
# Edge cases the original does not handle
# ---------------------------------------------------------------------------------------------


def test_audio_shorter_than_one_window_gives_one_short_window():
    m = 50 * 640  # 2 s: 50 frames -> 13 latent frames < 21
    assert original_loop(13, 21, 5, m) == []  # the original generates nothing
    (w,) = sw.schedule_for_audio(m, clip_length=81, overlap=5)
    assert (w.start, w.end, w.audio_start, w.audio_end, w.is_last, w.blend_frames) == (0, 13, 0, m, True, 0)


@pytest.mark.parametrize("total_frames", [81, 82, 83, 84])
def test_audio_of_exactly_one_window_finishes(total_frames):
    m = total_frames * 640 + 10
    assert sw.num_latent_frames(m) == 21
    with pytest.raises(RuntimeError, match="infinite loop"):
        original_loop(21, 21, 5, m)
    (w,) = sw.schedule_for_audio(m, clip_length=81, overlap=5)
    assert (w.start, w.end, w.audio_start, w.audio_end, w.is_last) == (0, 21, 0, m, True)


def test_one_frame_more_than_a_window_gives_two_windows():
    m = 85 * 640  # 22 latent frames
    windows = sw.schedule_for_audio(m, clip_length=81, overlap=5)
    assert spans(windows) == [(0, 21), (16, 22)]


@pytest.mark.parametrize("overlap", [21, 22, -1])
def test_bad_overlap_raises(overlap):
    with pytest.raises(ValueError, match="overlap_window_length"):
        sw.schedule_for_audio(160_000, clip_length=81, overlap=overlap)


def test_audio_shorter_than_one_frame_raises():
    with pytest.raises(ValueError, match="fewer than one video frame"):
        sw.schedule_for_audio(639, clip_length=81, overlap=5)
    assert sw.num_latent_frames(640) == 1


# ---------------------------------------------------------------------------------------------
# Blend weights and guidance
# ---------------------------------------------------------------------------------------------


def test_overlap_weights_values():
    assert sw.overlap_weights(5, "uniform").tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    log5 = sw.overlap_weights(5, "log")
    assert torch.allclose(log5, torch.tensor([0.0, 0.3574, 0.6201, 0.8280, 1.0]), atol=1e-4)
    log10 = sw.overlap_weights(10, "log")
    ref10 = [0, 0.1747, 0.3234, 0.4528, 0.5674, 0.6702, 0.7634, 0.8486, 0.9272, 1.0]
    assert torch.allclose(log10, torch.tensor(ref10), atol=1e-4)
    # the log ramp is the closed form log(1 + u (e - 1)) with u = j / (O - 1)
    closed = torch.tensor([math.log1p(j / 9 * (math.e - 1)) for j in range(10)])
    assert torch.allclose(log10, closed, atol=1e-6)
    assert sw.overlap_weights(1, "uniform").tolist() == [0.5]
    assert sw.overlap_weights(0, "log").numel() == 0
    assert sw.overlap_weights(3, "uniform", dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="uniform"):
        sw.overlap_weights(5, "linear")


@pytest.mark.parametrize("case,scheme", [("pipeline", "uniform"), ("pipeline_log", "log")])
def test_overlap_weights_equal_golden(case, scheme):
    ref = load_file(str(CASES / case / "outputs.safetensors"))["overlap_window_weight"]
    got = sw.overlap_weights(ref.shape[2], scheme).view(1, 1, -1, 1, 1)
    assert torch.equal(got, ref)


def test_combine_guidance_formula():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 2, 4, 5, 6, generator=g)
    got = sw.combine_guidance(rows, audio_scale=5.0, text_scale=3.0)
    assert got.shape == (1, 2, 4, 5, 6)
    expected = rows[0] * (1 - 5.0) + rows[1] * (5.0 - 3.0) + rows[2] * 3.0
    assert torch.allclose(got[0], expected, atol=1e-5)
    # scales 1/1 keep only the fully conditioned row
    assert torch.allclose(sw.combine_guidance(rows, 1.0, 1.0)[0], rows[2], atol=1e-6)
    with pytest.raises(ValueError, match="3 rows"):
        sw.combine_guidance(rows[:2], 5.0, 3.0)


def test_merge_window_blends_only_leading_frames():
    pred = torch.arange(10, dtype=torch.float32).view(1, 1, 10, 1, 1).repeat(1, 2, 1, 2, 2)
    window = sw.Window(index=1, start=4, end=9, audio_start=0, audio_end=1, blend_frames=3, is_last=False)
    new = torch.full((1, 2, 5, 2, 2), 100.0)
    w = sw.overlap_weights(3, "uniform")
    written = sw.merge_window(pred, new, window, w, blend=True)
    assert written.dtype == torch.bfloat16
    assert pred[0, 0, :, 0, 0].tolist() == [0, 1, 2, 3, 4.0, 52.5, 100, 100, 100, 9]
    # at step 0 the window overwrites
    pred2 = torch.zeros(1, 2, 10, 2, 2)
    sw.merge_window(pred2, new, window, w, blend=False)
    assert pred2[0, 0, 4:9, 0, 0].tolist() == [100.0] * 5
    with pytest.raises(ValueError, match="5 frames"):
        sw.merge_window(pred2, new[:, :, :4], window, w, blend=True)


# ---------------------------------------------------------------------------------------------
# The pipeline goldens: window lists and the model-free half of the loop
# ---------------------------------------------------------------------------------------------


def load_case(name: str):
    case = json.loads((CASES / name / "case.json").read_text())
    inputs = load_file(str(CASES / name / "inputs.safetensors"))
    outputs = load_file(str(CASES / name / "outputs.safetensors"))
    return case, inputs, outputs


def golden_schedule(case, inputs) -> list[sw.Window]:
    args = case["call"]["args"]
    return sw.schedule_for_audio(inputs["audio_16k"].numel(), args["clip_length"], args["overlap_window_length"])


def test_windows_equal_golden_list():
    case, inputs, _ = load_case("pipeline")
    windows = golden_schedule(case, inputs)
    derived = case["derived"]
    assert sw.num_latent_frames(derived["audio_samples"]) == derived["latent_frames"]
    assert sw.num_decoded_frames(derived["latent_frames"]) == derived["decoded_frames"]
    assert sw.frames_per_window(case["call"]["args"]["clip_length"]) == derived["frames_per_window_latent"]
    assert len(windows) == derived["num_windows_per_step"]
    recorded = case["windows"]
    assert len(recorded) == len(windows) * case["call"]["args"]["num_inference_steps"]
    for rec in recorded:
        w = windows[rec["window"]]
        assert (w.start, w.end) == (rec["index_start"], rec["index_end"])
        assert list(range(w.start, w.end)) == rec["idx_list"]
        assert [w.audio_start, w.audio_end] == rec["audio_sample_range"]
        assert w.audio_end - w.audio_start == rec["audio_len"]
        assert w.num_frames == rec["legal_compressed_frames_num"]
        args = case["call"]["args"]
        assert sw.window_seq_len(args["num_frames"], args["height"], args["width"]) == rec["seq_len"]


def test_guidance_equals_golden():
    _, _, outputs = load_case("pipeline")
    case = json.loads((CASES / "pipeline" / "case.json").read_text())
    args = case["call"]["args"]
    got = sw.combine_guidance(outputs["dit_out_s0_w0"], args["audio_guide_scale"], args["text_guide_scale"])
    assert torch.equal(got, outputs["guided_noise_pred_s0_w0"])


def test_model_free_loop_reproduces_golden_latents():
    """Given the recorded guided predictions, scheduler steps + overlap blending + bf16 rounding must
    reproduce every recorded per-window step and per-step latent of the original bit for bit.
    (pipeline_log stores only window 0's predictions, so only its blend weights are checked.)"""
    case, inputs, outputs = load_case("pipeline")
    args = case["call"]["args"]
    windows = golden_schedule(case, inputs)
    scheduler = build_scheduler(case["components"]["scheduler"]["kwargs"])
    timesteps = set_timesteps(scheduler, args["num_inference_steps"])
    weights = sw.overlap_weights(args["overlap_window_length"], args["overlapping_weight_scheme"])
    latents = inputs["latents"].float()
    for i, t in enumerate(timesteps):
        pred = torch.zeros_like(latents)
        for w in windows:
            eps = outputs[f"guided_noise_pred_s{i}_w{w.index}"]
            stepped = step_window(scheduler, eps, t, latents[:, :, w.latent_slice].clone())
            assert torch.equal(stepped, outputs[f"scheduler_out_s{i}_w{w.index}"]), (i, w.index)
            sw.merge_window(pred, stepped, w, weights, blend=i != 0)
        latents = pred
        ref = outputs.get(f"latents_after_step{i}", outputs["final_latents"])
        assert torch.equal(latents, ref), f"step {i}"
    assert torch.equal(latents, outputs["final_latents"])
