"""The time-step-aware audio adapter: per-frame audio windows and the golden case."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import CASES, assert_golden
from wan.models.audio_adapter import AudioAdapter, audio_window_index, audio_window_ranges, split_audio_windows

EXAMPLES = json.loads((CASES / "audio_adapter_1b" / "split_examples.json").read_text())["examples"]


@pytest.mark.parametrize("ex", EXAMPLES, ids=lambda e: f"n{e['num_frames']}-len{e['audio_len']}")
def test_windows_match_original(ex):
    ranges = audio_window_ranges(ex["audio_len"], ex["num_frames"])
    assert [list(r) for r in ranges] == ex["split_audio_sequence"]
    index, lens = audio_window_index(ex["audio_len"], ranges, expand=4)
    ref = ex["split_tensor_with_padding_expand4"]
    assert index.tolist() == ref["source_index"]
    assert lens.tolist() == ref["k_lens"]
    assert index.shape[1] == ref["window_len"]


def test_split_copies_tokens_and_pads_at_end():
    tokens = torch.arange(1, 21, dtype=torch.float32).view(1, 20, 1).repeat(2, 1, 3)
    windows, lens = split_audio_windows(tokens, video_frames=17)
    index, _ = audio_window_index(20, audio_window_ranges(20, 17))
    for f in range(windows.shape[1]):
        for j in range(windows.shape[2]):
            src = int(index[f, j])
            expected = 0.0 if src < 0 else float(src + 1)
            assert windows[:, f, j].eq(expected).all()
    assert lens.tolist() == [5, 9, 13, 13, 10]


def test_worked_example_167_tokens():
    """MODEL.md §5.2: 84 frames of audio (167 tokens) over an 81-frame clip."""
    ranges = audio_window_ranges(167, 81)
    assert len(ranges) == 21
    assert ranges[0] == (-7, 1) and ranges[1] == (1, 9) and ranges[2] == (9, 17) and ranges[20] == (157, 165)
    _, lens = audio_window_index(167, ranges)
    assert (lens[0].item(), 17 - lens[0].item()) == (6, 11)
    assert (lens[20].item(), 17 - lens[20].item()) == (14, 3)


def test_golden_audio_adapter():
    assert_golden("audio_adapter_1b")


@pytest.mark.parametrize("video_frames,tokens", [(17, 33), (33, 65), (81, 161), (45, 90)])
def test_any_clip_length(video_frames, tokens):
    adapter = AudioAdapter(dim=32, context_dim=32, num_heads=4).eval()
    frames = (video_frames - 1) // 4 + 1
    latents = torch.randn(1, frames * 4, 32)
    out, lens = adapter(torch.randn(1, tokens, 768), latents, torch.randn(1, 6, 32), torch.randn(1, 32), video_frames)
    assert out.shape[:2] == (1, frames) and out.shape[3] == 32
    assert lens.shape == (frames,)
