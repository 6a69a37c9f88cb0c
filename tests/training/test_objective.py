"""Objective, masks and schedules against hand-computed numbers."""

import math

import pytest
import torch

from wan.data.masks import image_start_mask, loss_mask_to_latent, mask_latent_channels
from wan.training import objective as obj


def test_sigma_table_is_the_shift5_formula():
    t, s = obj.sigma_table(1000, 5.0)
    for idx in (0, 1, 250, 999):
        u = (1000 - idx) / 1000
        expected = 5 * u / (1 + 4 * u)
        assert s[idx].item() == pytest.approx(expected, rel=1e-6)
        assert t[idx].item() == pytest.approx(1000 * expected, rel=1e-5)


@pytest.mark.parametrize(
    "batch,expected",
    [(1, [(0, 1000)]), (4, [(0, 250), (250, 500), (500, 750), (750, 1000)]), (3, [(0, 1000)] * 3)],
)
def test_timestep_strata(batch, expected):
    # 3 does not divide 1000, so all three share one stratum (i = 3, groups = 1)
    assert [obj.timestep_stratum(r, batch, 1000) for r in range(batch)] == expected


def test_64_processes_use_8_strata_of_125():
    strata = {obj.timestep_stratum(r, 64, 1000) for r in range(64)}
    assert sorted(strata) == [(125 * k, 125 * (k + 1)) for k in range(8)]
    assert obj.timestep_stratum(9, 64, 1000) == (125, 250)


def test_loss_matches_hand_computation():
    # target per channel c and pixel p: [[1, 2], [3, 4], [5, 6]]; prediction 0, so mse = target^2
    target = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]).view(1, 3, 1, 1, 2)
    pred = torch.zeros_like(target)
    face = torch.tensor([1.0, 0.0]).view(1, 1, 1, 1, 2)
    lip = torch.tensor([0.0, 1.0]).view(1, 1, 1, 1, 2)
    # r < 0.4: weights 1 + face + lip = 2 everywhere: 2 * 91 / 6
    assert obj.mask_weighted_mse(pred, target, face, lip, 0.1).item() == pytest.approx(182 / 6)
    # 0.4 <= r < 0.5: face column only: (1 + 9 + 25) / 6
    assert obj.mask_weighted_mse(pred, target, face, lip, 0.45).item() == pytest.approx(35 / 6)
    # r >= 0.5: lip column only: (4 + 16 + 36) / 6
    assert obj.mask_weighted_mse(pred, target, face, lip, 0.5).item() == pytest.approx(56 / 6)
    # channel differences of the target are all 2 -> sub-loss 4; 0.75 * 182/6 + 0.25 * 4
    assert obj.stableavatar_loss(pred, target, face, lip, 0.1, None, 0.25).item() == pytest.approx(23.75)
    weighting = obj.loss_weighting("none", torch.tensor([0.3]))
    assert obj.stableavatar_loss(pred, target, face, lip, 0.1, weighting, None).item() == pytest.approx(182 / 6)


def test_add_noise_and_target():
    x0, eps = torch.full((1, 2, 1, 1, 1), 2.0), torch.full((1, 2, 1, 1, 1), -1.0)
    noisy, target = obj.add_noise(x0, eps, torch.tensor([0.25]))
    assert noisy.flatten().tolist() == [1.25, 1.25]  # 0.75 * 2 + 0.25 * -1
    assert target.flatten().tolist() == [-3.0, -3.0]


def test_clip_threshold_schedule():
    assert obj.clip_threshold(0, 0.0, 0.05, 5, 1000) == pytest.approx(0.25)
    assert obj.clip_threshold(500, 0.0, 0.05, 5, 1000) == pytest.approx(0.15)
    assert obj.clip_threshold(1000, 0.2, 0.05, 5, 1000) == pytest.approx(0.05)
    # after the decay, a norm 8x the threshold clips to threshold / 8; 20x is capped at / 10
    assert obj.clip_threshold(1001, 0.4, 0.05, 5, 1000) == pytest.approx(0.05 / 8)
    assert obj.clip_threshold(1001, 1.0, 0.05, 5, 1000) == pytest.approx(0.005)


def test_step_draws_are_seeded_and_shared():
    a = obj.draw_step(obj.step_generator(7, 0, 3), 0.1, 0.3)
    b = obj.draw_step(obj.step_generator(7, 0, 3), 0.1, 0.3)
    assert a == b
    rates = [obj.draw_step(obj.step_generator(7, 0, k), 0.1, 0.3) for k in range(2000)]
    assert sum(d.drop_audio for d in rates) / 2000 == pytest.approx(0.1, abs=0.03)
    assert sum(d.clip_level for d in rates) / 2000 == pytest.approx(0.3, abs=0.04)


def test_mask_channels_mark_the_reference_latent_frame():
    m = image_start_mask(9, 16, 16)[None]  # [1, 9, 1, 16, 16]
    y = mask_latent_channels(m, (3, 2, 2))
    assert y.shape == (1, 4, 3, 2, 2)
    assert torch.all(y[:, :, 0] == 1) and torch.all(y[:, :, 1:] == 0)


def test_loss_mask_resize_averages_frames():
    mask = torch.zeros(1, 1, 9, 8, 8)
    mask[:, :, :, :4] = 1  # top half
    out = loss_mask_to_latent(mask, (3, 1, 1))
    assert out.shape == (1, 1, 3, 1, 1)
    assert torch.allclose(out, torch.full_like(out, 0.5))


def test_seq_len():
    assert obj.seq_len_for((21, 64, 64), (1, 2, 2)) == 21 * 32 * 32
    assert obj.seq_len_for((21, 60, 104), (1, 2, 2)) == math.ceil(60 * 104 / 4 * 21)
