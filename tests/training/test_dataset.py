"""The clip-folder dataset and the mixed-bucket loader plan."""

import pytest
import tiny
import torch

from wan.data.dataset import TalkingVideoDataset, prompt_for
from wan.data.mixing import MixedAspectLoader


def test_item_shapes_and_values(tiny_data):
    ds = TalkingVideoDataset(tiny_data, 32, 32, 9)
    item = ds[(0, 123)]
    assert item["pixel_values"].shape == (9, 3, 32, 32)
    assert item["tgt_face_masks"].shape == (1, 9, 32, 32) and item["tgt_lip_masks"].max() == 1
    assert item["pixel_value_masks"][0].sum() == 0 and item["pixel_value_masks"][1:].min() == 1
    assert torch.equal(item["masked_pixel_values"][1:], torch.zeros_like(item["masked_pixel_values"][1:]))
    # 9 frames at 12 frames / 0.48 s = 25 fps -> 0.36 s of 16 kHz audio, normalised
    assert item["vocal_input_values"].shape == (5760,)
    assert abs(item["vocal_input_values"].mean().item()) < 1e-4
    assert item["text_prompt"] == "The protagonist is talking"
    ref = (item["pixel_values"][0].permute(1, 2, 0) * 0.5 + 0.5) * 255
    assert torch.allclose(item["clip_pixel_values"], ref, atol=1e-3)  # the reference is the window's first frame
    assert torch.equal(ds[(0, 123)]["pixel_values"], item["pixel_values"])  # same seed, same window


def test_missing_lip_masks_names_the_folder_and_tool(tmp_path):
    lst = tiny.make_dataset(tmp_path, clips=1, frames=4)
    clip = tmp_path / "square" / "speech" / "00000"
    for f in (clip / "lip_masks").iterdir():
        f.unlink()
    (clip / "lip_masks").rmdir()
    with pytest.raises(FileNotFoundError, match="lip_masks.*lip_mask_extractor.py"):
        TalkingVideoDataset(lst, 32, 32, 5)


def test_prompt_from_path():
    assert prompt_for("/d/rec/singing/00001") == "The protagonist is singing"
    assert prompt_for("/d/vec/dancing/00001").startswith("The protagonist is simultaneously dancing")
    with pytest.raises(ValueError, match="speech\\|singing\\|dancing"):
        prompt_for("/d/rec/other/00001")


class _Sized(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_plan_is_independent_of_process_count():
    datasets = [_Sized(5), _Sized(3)]
    one = MixedAspectLoader(datasets, batch_size=2, seed=3, rank=0, world_size=1)
    two = [MixedAspectLoader(datasets, batch_size=1, seed=3, rank=r, world_size=2) for r in range(2)]
    assert len(one) == len(two[0]) == 3 + 2
    for step in one.plan(epoch=4):
        together = two[0].local_keys(step) + two[1].local_keys(step)
        assert one.local_keys(step) == together
    assert one.plan(4) == two[1].plan(4) and one.plan(4) != one.plan(5)
    seen = {k[1] for s in one.plan(0) if s.bucket == 0 for k in one.local_keys(s)}
    assert seen == set(range(5))  # every clip once (the last batch wraps)
